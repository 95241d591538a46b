"""Nearest-prototype routing: score per domain = max cosine over its prototypes, route = argmax.

`general` is an ordinary route. With a margin, a decision whose best - second score is below
it falls back to `general` (the plain base model). Every decision carries the route, its score
and all scores, so the mixed-domain pipeline can record them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kinject.errors import UserError
from kinject.ppr.banks import Bank, encoder_config_of, load_bank, read_index
from kinject.ppr.config import EncoderConfig
from kinject.ppr.encoders import Encoder, count_over, load_encoder

FALLBACK = "general"


@dataclass
class Decision:
    route: str
    score: float  # score of the chosen route (the best score when the margin rule fired)
    scores: dict[str, float]  # every domain's score, in bank order
    fallback: bool = False  # the margin rule sent it to `general`
    truncated_from: int | None = None  # token count before truncation, if the query was too long

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Router:
    encoder: Encoder
    banks: list[Bank]
    margin: float | None = None
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

    @classmethod
    def from_dir(cls, banks_dir: str | Path, encoder: EncoderConfig | Encoder | None = None,
                 margin: float | None = None) -> Router:
        """Load a banks dir with its own encoder (or the given one, which must match)."""
        d = Path(banks_dir)
        index = read_index(d)
        if encoder is None or isinstance(encoder, EncoderConfig):
            encoder = load_encoder(encoder or encoder_config_of(index))
        banks = [load_bank(d, name, encoder_id=encoder.id, dim=encoder.dim) for name in index["domains"]]
        return cls(encoder, banks, margin)

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
            fell = self.margin is not None and gap[i] < self.margin
            all_scores = dict(zip(self.domains, row))
            out.append(Decision(FALLBACK if fell else route,
                                all_scores.get(FALLBACK, row[best[i]]) if fell else row[best[i]],
                                all_scores, bool(fell)))
        return out

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
