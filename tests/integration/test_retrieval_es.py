"""Elasticsearch backend against a real server: runs only when KINJECT_ES_URL is set (no server
can be installed on the CI machine); same code path as the other backends."""

import json
import os
import uuid

import pytest

from kinject.retrieval.base import open_index, read_meta
from kinject.retrieval.index import add_to_index, build_index, delete_from_index

pytestmark = [
    pytest.mark.es,
    pytest.mark.skipif(not os.environ.get("KINJECT_ES_URL"), reason="set KINJECT_ES_URL to run against Elasticsearch"),
]


def test_build_search_add_delete_reopen(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "title": "Zorvanite", "text": "Zorvanite is a platinum catalyst melting at 1450 kelvin."},
        {"id": "b", "title": "Brastine", "text": "Brastine was discovered in Norland."},
    ]))
    idx = tmp_path / f"es-{uuid.uuid4().hex[:8]}"
    build_index(src, idx, backend="elasticsearch", progress=False)
    meta = read_meta(idx)
    assert meta["backend"] == "elasticsearch" and meta["options"]["index_name"].startswith("kinject-es-")
    with open_index(idx) as r:
        assert r.count() == 2 and r.search("platinum catalysts", 1)[0].id == "a"
        assert [h[0].id for h in r.batch_search(["Norland", "zorvanite"], 1)] == ["b", "a"]
    more = tmp_path / "m.jsonl"
    more.write_text(json.dumps({"id": "c", "title": "Moravite", "text": "Moravite is a cobalt catalyst."}) + "\n")
    add_to_index(idx, more, progress=False)
    (tmp_path / "ids").write_text("a\n")
    assert delete_from_index(idx, tmp_path / "ids").deleted == 1
    with open_index(idx) as r:
        assert r.count() == 2 and r.search("cobalt", 1)[0].id == "c"
        assert "a" not in {h.id for h in r.search("platinum catalyst", 10)}
        r.es.indices.delete(index=r.index_name)
