"""Pronounceable fictional names, collision-free across the whole world.

Invariant (the separation tests rely on it): every *core word* of every entity name is unique
in the world and is not a word of any template or vocabulary. So a private name's words occur
in a text only if that text is about the private entity. Fresh names (for reading and
alignment examples) are drawn from the same generators but never reuse a world word.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from kinject.errors import UserError
from kinject.world.spec import NameSpec

ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "qu", "r",
          "s", "sh", "t", "tr", "v", "z", "th", "st"]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ou"]  # repeats: weights
CODAS = ["", "", "", "n", "r", "l", "s", "m", "x"]


def _core(rng: random.Random, lo: int, hi: int) -> str:
    parts = []
    for _ in range(rng.randint(lo, hi)):
        parts.append(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS))
    return "".join(parts).capitalize()


def syllable_capacity(spec: NameSpec) -> int:
    """Upper bound on distinct names the spec can make (for the impossible-size check)."""
    per = len(set(ONSETS)) * len(set(VOWELS)) * len(set(CODAS))
    cores = sum(per**k for k in range(spec.syllables[0], spec.syllables[1] + 1))
    if "{core2}" in spec.format:
        cores = cores * cores
    return cores


def syllable_name(spec: NameSpec, rng: random.Random, taken: set[str]) -> tuple[str, list[str]]:
    """One name and its core words; retries until the core words are unused."""
    for _ in range(1000):
        cores = [_core(rng, *spec.syllables)]
        if "{core2}" in spec.format:
            cores.append(_core(rng, *spec.syllables))
        if any(c.lower() in taken for c in cores) or len(set(cores)) < len(cores):
            continue
        name = spec.format.format(
            core=cores[0], core2=cores[-1], digit=rng.randint(1, 9),
            suffix=rng.choice(spec.suffixes) if spec.suffixes else "",
        )
        return name, cores
    raise UserError("name generator ran out of unused names (raise syllables or lower the entity counts)")


GENERATORS: dict[str, tuple[Callable, Callable]] = {
    "syllables": (syllable_name, syllable_capacity),
}


class NamePool:
    """Draws world-unique names; `taken` holds lower-cased words that names may not use."""

    def __init__(self, rng: random.Random, reserved_words: set[str]):
        self.rng = rng
        self.taken = set(reserved_words)

    def draw(self, spec: NameSpec, n: int, source: str, key: str) -> list[tuple[str, list[str]]]:
        make, capacity = GENERATORS[spec.generator]
        if n > capacity(spec) // 4:  # past a quarter of the space rejection sampling crawls
            raise UserError(f"{source}: {key}: {n} names requested but the generator can make about "
                            f"{capacity(spec) // 4}; allow more syllables or lower the entity count")
        out = []
        for _ in range(n):
            name, cores = make(spec, self.rng, self.taken)
            self.taken.update(c.lower() for c in cores)
            out.append((name, cores))
        return out


def fresh_names(spec: NameSpec, rng: random.Random, avoid: set[str], n: int) -> list[str]:
    """Names for fresh (throwaway) entities: any name whose words avoid the world's words.
    They may repeat among themselves (a reused name with another value is still a fresh fact)."""
    make, _ = GENERATORS[spec.generator]
    out = []
    for _ in range(n):
        name, _cores = make(spec, rng, avoid)
        out.append(name)
    return out
