import json

import pytest

from kinject.errors import UserError
from kinject.io import atomic_dir, read_jsonl, write_jsonl_atomic


def test_jsonl_roundtrip(tmp_path):
    rows = [{"a": 1}, {"a": "é"}]
    write_jsonl_atomic(tmp_path / "x.jsonl", rows)
    assert read_jsonl(tmp_path / "x.jsonl") == rows


def test_malformed_line_is_named(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"text": "ok"}) + "\n{oops\n")
    with pytest.raises(UserError, match=r"bad.jsonl:2: malformed JSON"):
        read_jsonl(p)


def test_missing_field_and_empty(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"text": "a"}\n{"txt": "b"}\n')
    with pytest.raises(UserError, match=r"m.jsonl:2: missing field\(s\) 'text'"):
        read_jsonl(p, required=["text"])
    e = tmp_path / "e.jsonl"
    e.write_text("\n")
    with pytest.raises(UserError, match="no records"):
        read_jsonl(e)


def test_atomic_dir_keeps_old_output_on_failure(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as d:
        (d / "f.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as d:
            (d / "f.txt").write_text("partial")
            raise RuntimeError("boom")
    assert (out / "f.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
