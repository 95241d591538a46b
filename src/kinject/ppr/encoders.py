"""Routing with the shared sentence encoders (`kinject.encoders`: protocol, loader, backends).

Here: the routing loader (`load_encoder`: the shared one, with torch's CPU threads capped
first), the `--encoder` spelling (`parse_encoder`), a memo for work that encodes the same
questions again (`MemoEncoder`), and the count of queries longer than the encoder reads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kinject import encoders
from kinject.encoders import DEFAULT_ST_NAME, ENCODERS, Encoder, EncoderConfig
from kinject.errors import UserError


def load_encoder(cfg: EncoderConfig) -> Encoder:
    """The routing encoder `cfg` names (`kinject.encoders.load_encoder`), after capping torch's
    CPU threads (`cpu_threads`): routing shares its process with k-means and serving."""
    _set_threads()
    return encoders.load_encoder(cfg)


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
