"""Nearest-prototype routing: score per domain = max cosine over its prototypes, route = argmax.

`general` is an ordinary route. Two rules send a question to `general` (the plain base model)
instead of a specialist that is not confident:

- threshold (on by default): a specialist wins only when its score reaches its bank's
  calibrated `threshold` (`kinject ppr calibrate`). A bank without one (e.g. hot-plugged from a
  JSONL) uses the median of the calibrated ones, since all share one encoder's cosine scale.
  This is what keeps the questions of a removed domain from its nearest neighbour.
- margin (off by default): best - second score below it.

Both need a `general` bank. Every decision carries the route, its score, all scores and the
threshold it was held to, so the mixed-domain pipeline can record them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kinject.encoders import Encoder, EncoderConfig
from kinject.errors import UserError
from kinject.ppr.banks import Bank, encoder_config_of, load_bank, read_index
from kinject.ppr.encoders import count_over, load_encoder

FALLBACK = "general"


@dataclass
class Decision:
    route: str
    score: float  # score of the chosen route (the best score when the margin rule fired)
    scores: dict[str, float]  # every domain's score, in bank order
    fallback: bool = False  # a threshold or the margin rule sent it to `general`
    threshold: float | None = None  # the best specialist's threshold (None: not held to one)
    truncated_from: int | None = None  # token count before truncation, if the query was too long

    def to_dict(self) -> dict:
        return asdict(self)


def thresholds_of(banks: Sequence[Bank]) -> tuple[dict[str, float], dict[str, str]]:
    """{domain: threshold}, {domain: "calibrated" | "default"} for every specialist bank;
    nothing without a `general` bank to fall back to or without any calibrated bank."""
    if FALLBACK not in [b.domain for b in banks]:
        return {}, {}
    own = {b.domain: float(b.meta["threshold"]) for b in banks
           if b.domain != FALLBACK and b.meta.get("threshold") is not None}
    if not own:
        return {}, {}
    default = float(np.median(list(own.values())))
    thr = {b.domain: own.get(b.domain, default) for b in banks if b.domain != FALLBACK}
    return thr, {d: "calibrated" if d in own else "default" for d in thr}


@dataclass
class Router:
    encoder: Encoder
    banks: list[Bank]
    margin: float | None = None
    abstain: bool = True  # apply the banks' thresholds
    timings: dict[str, float] = field(default_factory=dict)  # of the last route_batch call

    def __post_init__(self):
        if not self.banks:
            raise UserError("a router needs at least one domain bank")
        names = [b.domain for b in self.banks]
        if len(set(names)) != len(names):
            raise UserError(f"duplicate domain banks: {names}")
        self.domains = names
        self._protos = np.concatenate([b.prototypes for b in self.banks], axis=0)  # [K, dim]
        sizes = [b.k for b in self.banks]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        self.thresholds, self.threshold_source = thresholds_of(self.banks) if self.abstain else ({}, {})

    @classmethod
    def from_pretrained(cls, banks_dir: str | Path, encoder: EncoderConfig | Encoder | None = None,
                 margin: float | None = None, abstain: bool = True) -> Router:
        """Load a banks dir with its own encoder (or the given one, which must match)."""
        d = Path(banks_dir)
        index = read_index(d)
        if encoder is None or isinstance(encoder, EncoderConfig):
            encoder = load_encoder(encoder or encoder_config_of(index))
        banks = [load_bank(d, name, encoder_id=encoder.id, dim=encoder.dim) for name in index["domains"]]
        return cls(encoder, banks, margin, abstain)

    def score_embeddings(self, emb: np.ndarray) -> np.ndarray:
        """[n, dim] unit vectors -> [n, n_domains] max cosine per domain."""
        sims = emb @ self._protos.T
        return np.maximum.reduceat(sims, self._offsets, axis=1)

    def decide(self, scores: np.ndarray) -> list[Decision]:
        best = scores.argmax(axis=1)
        if len(self.domains) > 1:
            top2 = np.sort(scores, axis=1)[:, -2:]
            gap = top2[:, 1] - top2[:, 0]
        else:
            gap = np.full(len(scores), np.inf)
        rows = scores.tolist()
        out = []
        for i, row in enumerate(rows):
            route = self.domains[best[i]]
            thr = self.thresholds.get(route)
            fell = ((self.margin is not None and gap[i] < self.margin) or (thr is not None and row[best[i]] < thr))
            all_scores = dict(zip(self.domains, row))
            out.append(Decision(FALLBACK if fell else route,
                                all_scores.get(FALLBACK, row[best[i]]) if fell else row[best[i]],
                                all_scores, bool(fell), thr))
        return out

    def status(self) -> dict:
        """Per domain: its threshold and where it comes from (for status endpoints)."""
        return {"margin": self.margin, "abstain": self.abstain,
                "domains": {d: {"threshold": self.thresholds.get(d), "threshold_source": self.threshold_source.get(d),
                                "prototypes": b.k} for d, b in zip(self.domains, self.banks)}}

    def route_batch(self, queries: Sequence[str], progress: bool = False) -> list[Decision]:
        t0 = time.perf_counter()
        emb = self.encoder.encode(queries, progress=progress)
        t1 = time.perf_counter()
        decisions = self.decide(self.score_embeddings(emb))
        t2 = time.perf_counter()
        for i, n in count_over(self.encoder, queries):
            decisions[i].truncated_from = n
        t3 = time.perf_counter()
        self.timings = {"encode_s": t1 - t0, "score_s": t2 - t1, "length_check_s": t3 - t2, "total_s": t3 - t0}
        return decisions

    def route(self, query: str) -> Decision:
        return self.route_batch([query])[0]
