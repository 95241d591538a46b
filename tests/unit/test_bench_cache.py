"""GagPipeline's per-question memory cache: same answers, hits on a repeat, LRU order, keys."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from kinject.bench.setup import random_setup

    torch.set_num_threads(1)  # tiny models: a second thread only waits on the shared CPU
    return random_setup(tmp_path_factory.mktemp("cache") / "models")


def _pipe(setup, cache_size):
    from kinject.gag.pipeline import GagPipeline

    return GagPipeline.from_pretrained(setup.expert, setup.base, setup.injector, setup.system, "", 6, "cpu", "float32", 4,
                       cache_size=cache_size)


def test_cache_same_answers_and_hits(setup):
    qs = [r["question"] for r in setup.rows[:5]]
    cached, plain = _pipe(setup, 16), _pipe(setup, 0)
    first = cached.answer(qs, max_new_tokens=4)
    assert cached.cache.stats() == {"size": 16, "entries": 5, "hits": 0, "misses": 5}
    again = cached.answer(qs, max_new_tokens=4)
    assert cached.cache.hits == 5 and cached.cache.misses == 5
    ref = plain.answer(qs, max_new_tokens=4)
    assert [a.__dict__ for a in first] == [a.__dict__ for a in again] == [a.__dict__ for a in ref]
    assert plain.cache.stats()["entries"] == 0  # size 0: never stores
    # a batch mixing hits and misses (and a duplicate) gives the inputs a fresh pipeline computes
    mixed = [qs[0], setup.rows[7]["question"], qs[0], qs[3]]
    _, got = cached.memories(mixed)
    _, want = plain.memories(mixed)
    assert got.keys() == want.keys() and got  # slots, or trajectories for an attention-pooling injector
    for k in got:
        torch.testing.assert_close(got[k], want[k])
    assert cached.cache.stats()["entries"] == 6


def test_cache_lru_and_key(setup):
    from kinject.gag.pipeline import MemoryCache

    c = MemoryCache(2)
    c.put(("a",), 1)
    c.put(("b",), 2)
    assert c.get(("a",)) == 1  # a is now the most recent
    c.put(("c",), 3)  # evicts b
    assert c.get(("b",)) is None and c.get(("c",)) == 3 and list(c.items) == [("a",), ("c",)]
    pipe = _pipe(setup, 8)
    q = setup.rows[0]["question"]
    pipe.answer([q], max_new_tokens=2)
    key = pipe._key(q)
    assert key[0] == q and key[1] == pipe.expert_fingerprint and pipe.expert_fingerprint.startswith("fp1-")
    pipe.background = pipe.background.model_copy(update={"max_new_tokens": 3})  # another cap: another background
    pipe.answer([q], max_new_tokens=2)
    assert pipe.cache.stats()["misses"] == 2 and pipe.cache.stats()["entries"] == 2
