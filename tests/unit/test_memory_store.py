"""Memory store: round trips, trajectories, resume, merge, corrupt shards, and the CLI."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

from kinject.errors import UserError
from kinject.memory.store import MemoryStore, StoreMeta, item_id, merge_stores


def meta(**kw):
    base = dict(expert="e", expert_hidden=8, expert_layers=4, layers=["last", "minus2"], slots=3, dtype="float32")
    return StoreMeta(**{**base, **kw})


def recs(ids):
    return [{"id": i, "question": f"q {i}?", "background": f"bg {i}", "n_tokens": len(i)} for i in ids]


def test_roundtrip_by_id_and_batch(tmp_path):
    st = MemoryStore.create(tmp_path / "s", meta())
    a, b = torch.randn(2, 2, 3, 8), torch.randn(3, 2, 3, 8)
    st.add(recs(["a", "bb"]), a)
    st.add(recs(["c", "dd", "e"]), b)
    st2 = MemoryStore(tmp_path / "s")  # reopen from disk
    assert len(st2) == 5 and st2.ids == ["a", "bb", "c", "dd", "e"]
    assert torch.equal(st2.get("dd"), b[1])
    assert torch.equal(st2.get_batch(["e", "a"]), torch.stack([b[2], a[0]]))
    assert st2.record("c")["background"] == "bg c" and st2.record("c")["shard"] == "shard-00001.safetensors"
    st2.verify()
    with pytest.raises(UserError, match="no memory for id 'zz'"):
        st2.get("zz")


@pytest.mark.parametrize("dtype,tdtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_half_precision_storage(tmp_path, dtype, tdtype):
    st = MemoryStore.create(tmp_path / dtype, meta(dtype=dtype))
    x = torch.randn(2, 2, 3, 8)
    st.add(recs(["a", "b"]), x)
    assert st.get("a").dtype == tdtype
    assert torch.equal(st.get_batch(["b"]), x[1:].to(tdtype).float())
    s = st.stats()
    assert s["slot_bytes_per_sample"] == 2 * 3 * 8 * 2


def test_ragged_trajectories(tmp_path):
    st = MemoryStore.create(tmp_path / "t", meta(trajectories=True))
    trs = [torch.randn(2, 5, 8), torch.randn(2, 0, 8), torch.randn(2, 2, 8)]
    st.add(recs(["a", "b", "c"]), torch.randn(3, 2, 3, 8), trs)
    st = MemoryStore(tmp_path / "t")
    assert torch.equal(st.trajectory("a"), trs[0]) and st.trajectory("b").shape == (2, 0, 8)
    x, mask = st.trajectories(["c", "b", "a"])
    assert x.shape == (3, 2, 5, 8) and mask.sum(1).tolist() == [2, 0, 5]
    assert torch.equal(x[0, :, :2], trs[2]) and torch.count_nonzero(x[0, :, 2:]) == 0
    plain = MemoryStore.create(tmp_path / "p", meta())
    plain.add(recs(["a"]), torch.randn(1, 2, 3, 8))
    with pytest.raises(UserError, match="keeps no trajectories"):
        plain.trajectory("a")


def test_truncated_and_corrupt_shards_are_named(tmp_path):
    st = MemoryStore.create(tmp_path / "s", meta())
    st.add(recs(["a", "b"]), torch.randn(2, 2, 3, 8))
    shard = tmp_path / "s" / "shards" / "shard-00000.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-40])
    with pytest.raises(UserError, match="truncated.*shard-00000"):
        MemoryStore(tmp_path / "s").get("a")
    # same size, broken header
    shard.write_bytes(b"\xff" * 8 + data[8:])
    with pytest.raises(UserError, match="corrupt memory shard .*shard-00000"):
        MemoryStore(tmp_path / "s").get("a")
    # same size, valid header, flipped payload byte: caught by verify's sha256
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(UserError, match="sha256 differs"):
        MemoryStore(tmp_path / "s").verify()
    shard.unlink()
    with pytest.raises(UserError, match="shard missing"):
        MemoryStore(tmp_path / "s").get("b")


def test_resume_meta_mismatch_and_merge(tmp_path):
    st = MemoryStore.create(tmp_path / "s", meta())
    st.add(recs(["a"]), torch.randn(1, 2, 3, 8))
    assert MemoryStore.create(tmp_path / "s", meta()).ids == ["a"]  # resume = reopen
    with pytest.raises(UserError, match="slots: 4 \\(config\\) vs 3"):
        MemoryStore.create(tmp_path / "s", meta(slots=4))
    p1 = MemoryStore.create(tmp_path / "p1", meta())
    p2 = MemoryStore.create(tmp_path / "p2", meta())
    x1, x2 = torch.randn(2, 2, 3, 8), torch.randn(2, 2, 3, 8)
    p1.add(recs(["x", "z"]), x1)
    p2.add(recs(["y", "a"]), x2)  # "a" is already in the target: skipped
    out = merge_stores(tmp_path / "s", [tmp_path / "p1", tmp_path / "p2"], order=["a", "x", "y", "z"])
    out = MemoryStore(tmp_path / "s")
    assert out.ids == ["a", "x", "y", "z"]
    assert torch.equal(out.get("y"), x2[0]) and torch.equal(out.get("z"), x1[1])
    out.verify()
    bad = MemoryStore.create(tmp_path / "b", meta(layers=["last"]))
    bad.add(recs(["q"]), torch.randn(1, 1, 3, 8))
    with pytest.raises(UserError, match="built differently"):
        merge_stores(tmp_path / "s", [tmp_path / "b"])


def test_item_id():
    assert item_id({"id": 7, "question": "x"}) == "7"
    assert item_id({"question": "x"}) == item_id({"question": "x", "id": ""}) != item_id({"question": "y"})


CLI = [sys.executable, "-m", "kinject.cli"]


def write_cfg(tmp_path, model_dir, **kw):
    qs = tmp_path / "q.jsonl"
    qs.write_text("".join(json.dumps({"question": q, "answer": ["x"]}) + "\n" for q in
                          ["Who?", "What is the capital of Norland?", "Which catalyst?", "Why?", "When?"]))
    cfg = {"kind": "memory_build", "expert": str(model_dir), "questions": [str(qs)], "out": str(tmp_path / "mem"),
           "layers": ["last", "minus2"], "slots": 4, "max_new_tokens": 6, "batch_size": 2, "shard_size": 2,
           "device": "cpu", "system": "You are a catalysis expert.", **kw}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def one_error_line(res, pattern):
    # (transformers' weight-loading progress bar may precede it when a model was loaded)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert pattern in lines[0], lines[0]


def invoke(*args):
    """The CLI in-process (typer's runner): same commands, without a new interpreter per call."""
    from typer.testing import CliRunner

    from kinject.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_build_resume_inspect(tmp_path, tiny_model_dir, tiny_tokenizer):
    cfg = write_cfg(tmp_path, tiny_model_dir)
    res = invoke("memory", "build", "--config", cfg, "limit=3")
    assert res.exit_code == 0, res.output
    assert "3 memories (3 new, 0 already stored)" in res.output
    res = invoke("memory", "build", "--config", cfg)
    assert "5 memories (2 new, 3 already stored)" in res.output, res.output
    st = MemoryStore(tmp_path / "mem")
    assert len(st) == 5 and st.shape == (2, 4, 64) and len(st.meta.shards) == 3
    assert st.get_batch(st.ids).shape == (5, 2, 4, 64)
    manifest = json.loads((tmp_path / "mem" / "manifest.json").read_text())
    assert manifest["metrics"]["n"] == 5 and manifest["metrics"]["samples"] == 2
    res = invoke("memory", "inspect", tmp_path / "mem")
    assert res.exit_code == 0 and "n: 5" in res.output and "full_over_slots_ratio" in res.output
    assert "generated tokens per sample" in res.output
    # resuming with another expert (same shape, other weights) would mix memories: refused
    from kinject.models import TinySpec, make_tiny_model, save_model

    save_model(make_tiny_model(TinySpec(vocab=600, hidden=64, layers=2, heads=4), tokenizer=tiny_tokenizer, seed=5),
               tiny_tokenizer, tmp_path / "other")
    res = invoke("memory", "build", "--config", cfg, f"expert={tmp_path / 'other'}")
    assert isinstance(res.exception, UserError) and "expert_fingerprint" in str(res.exception)


def test_bad_inputs_are_user_errors(tmp_path, tiny_model_dir):
    import shutil

    from kinject.config import load_config
    from kinject.memory.build import build_memory
    from kinject.memory.config import MemoryBuildConfig

    notok = tmp_path / "notok"
    shutil.copytree(tiny_model_dir, notok)
    for f in notok.glob("tokenizer*"):
        f.unlink()
    for model, kw, pattern in [(tiny_model_dir, {"layers": ["last", "lastish"]}, "unknown layer key 'lastish'"),
                               (tiny_model_dir, {"slots": 0}, "slots must be >= 1"),
                               (tiny_model_dir, {"layers": ["minus5"]}, "only 2 decoder layers"),
                               (notok, {}, "no tokenizer files")]:
        cfg = load_config(write_cfg(tmp_path, model, **kw), expect=MemoryBuildConfig)
        with pytest.raises(UserError, match=pattern):
            build_memory(cfg, progress=False)
    assert not (tmp_path / "mem").exists()  # nothing written
    # the command line prints them as one `error:` line with exit code 2
    res = subprocess.run([*CLI, "memory", "build", "--config", str(write_cfg(tmp_path, tiny_model_dir, slots=0))],
                         capture_output=True, text=True)
    one_error_line(res, "slots must be >= 1")
    res = subprocess.run([*CLI, "memory", "inspect", str(tmp_path)], capture_output=True, text=True)
    one_error_line(res, "not a memory store")
