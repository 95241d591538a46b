"""A deterministic synthetic passage corpus for parity tests and benchmarks.

Words are pseudo-English stems (consonant-vowel syllables) with English suffixes (-s, -ing,
-ed, -ly, -ation...) so the stemmer has work to do, drawn from a Zipf distribution like real
text, plus a small set of English function words. Queries are word samples from target
passages, so each query has a known relevant passage.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from kinject.retrieval.base import Doc

_CONS = list("bcdfghklmnprstvz") + ["ch", "sh", "th", "tr", "st"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ea"]
_SUFFIXES = ["", "", "", "s", "ing", "ed", "er", "ly", "ation", "ness", "es"]
_FUNCTION = "the of and to in is was for on with as by at from that which are it an be".split()


def make_vocab(n_stems: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stems: set[str] = set()
    while len(stems) < n_stems:
        n_syl = int(rng.integers(1, 4))
        stems.add("".join(_CONS[rng.integers(len(_CONS))] + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(n_syl))
                  + _CONS[rng.integers(len(_CONS))])
    words = [s + _SUFFIXES[rng.integers(len(_SUFFIXES))] for s in sorted(stems)]
    rng.shuffle(words)
    return np.array(_FUNCTION + words)


@dataclass
class SyntheticCorpus:
    n: int
    words: int = 100
    seed: int = 0
    n_stems: int = 50_000
    zipf_s: float = 1.05

    def __post_init__(self):
        self.vocab = make_vocab(self.n_stems, self.seed)
        ranks = np.arange(1, len(self.vocab) + 1, dtype=np.float64)
        p = ranks ** -self.zipf_s
        self.cdf = np.cumsum(p / p.sum())

    def _draw(self, rng: np.random.Generator, shape) -> np.ndarray:
        idx = np.searchsorted(self.cdf, rng.random(shape), side="right")
        return np.minimum(idx, len(self.vocab) - 1)

    def docs(self, block: int = 10_000) -> Iterator[Doc]:
        """The passages, generated block by block (deterministic for a given seed and block)."""
        for start in range(0, self.n, block):
            m = min(block, self.n - start)
            rng = np.random.default_rng([self.seed, start])
            body = self.vocab[self._draw(rng, (m, self.words))]
            title = self.vocab[np.clip(self._draw(rng, (m, 2)) + 200, 0, len(self.vocab) - 1)]
            for i in range(m):
                yield Doc(id=f"p{start + i}", title=" ".join(title[i]).title(), text=" ".join(body[i]))

    def queries(self, n: int, words: int = 6) -> list[tuple[str, str]]:
        """`n` (query, target passage id) pairs: `words` words sampled from the target passage."""
        rng = np.random.default_rng([self.seed, 7919])
        targets = sorted(set(rng.choice(self.n, size=min(n, self.n), replace=False).tolist()))
        want = set(targets)
        out = {}
        for d in self.docs():
            i = int(d.id[1:])
            if i in want:
                toks = d.text.split()
                pick = rng.choice(len(toks), size=min(words, len(toks)), replace=False)
                out[d.id] = " ".join(toks[j] for j in sorted(pick))
                if len(out) == len(want):
                    break
        return [(out[f"p{i}"], f"p{i}") for i in targets]
