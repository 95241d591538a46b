"""The real-model preset's pieces that need no real model: the private knowledge corpus and the
CLI's preset checks."""

import json
import subprocess
import sys

import pytest

from kinject.world.private import knowledge_passages


def test_knowledge_passages_unique_ids_windows_and_titles(tmp_path):
    d = tmp_path / "materials_domain"
    d.mkdir()
    text = " ".join(f"Fact {i} of Ferovia-7 is value{i}." for i in range(12))  # 60 words
    rows = [{"text": text, "entity": "Ferovia-7"}, {"text": text, "entity": "Ferovia-7"},
            {"text": "Ostrum-2 is made of ceria.", "entity": "Ostrum-2"}]
    (d / "knowledge_base.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = knowledge_passages(tmp_path, ["materials"], chunk_words=32, chunk_overlap=8)
    ids = [g["id"] for g in got]
    assert len(ids) == len(set(ids))  # two documents of one entity keep apart
    assert ids[:4] == ["materials:Ferovia-7:0#0", "materials:Ferovia-7:0#1", "materials:Ferovia-7:0#2",
                       "materials:Ferovia-7:1#0"]  # 60 words: windows at 0, 24, 48
    assert all(len(g["text"].split()) <= 32 for g in got)
    assert got[-1] == {"id": "materials:Ostrum-2:0#0", "title": "Ostrum-2", "text": "Ostrum-2 is made of ceria."}


@pytest.mark.parametrize("args,msg", [(["--preset", "gpt9"], "unknown demo preset 'gpt9'"),
                                      (["--preset", "smollm2", "--only", "eval"], "--only applies to the tiny preset")])
def test_demo_preset_errors_are_one_line(args, msg, tmp_path):
    res = subprocess.run([sys.executable, "-m", "kinject.cli", "demo", "--out", str(tmp_path / "o"), *args],
                         capture_output=True, text=True, timeout=120)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and msg in lines[0]
    assert not (tmp_path / "o").exists()


def test_real_methods_cover_every_row_and_lora_once_trained(tmp_path):
    """The harness entries the preset's eval stage runs: every method on the real base, `lora`
    only once both adapters exist, each a valid entry for its registered options."""
    from kinject.eval.config import EvalConfig
    from kinject.eval.harness import check_methods
    from kinject.recipes.smollm2 import DOMAINS, STAGES, real_methods

    art = {"real_base": tmp_path / "base", "knowledge_index": tmp_path / "index",
           **{f"expert_{d}": tmp_path / f"expert_{d}" for d in DOMAINS},
           **{f"real_injector_{d}": tmp_path / f"inj_{d}" for d in DOMAINS}}
    names = [m["name"] for m in real_methods(art)]
    assert names == ["base", "rag_k1", "rag_k3", "expert", "text_injection", "gag"]
    with_lora = real_methods({**art, **{f"real_lora_{d}": tmp_path / f"lora_{d}" for d in DOMAINS}})
    lora = with_lora[-1]
    assert lora == {"name": "lora", "datasets": list(DOMAINS), "options": {
        "base": str(tmp_path / "base"), "domains": {d: str(tmp_path / f"lora_{d}") for d in DOMAINS}}}
    cfg = EvalConfig(methods=with_lora, datasets=[{"name": d, "path": "x.jsonl"} for d in DOMAINS] + [
        {"name": "nq", "path": "y.jsonl"}])
    check_methods(cfg, "preset")  # every entry's options validate against its method
    assert [s.name for s in STAGES] == ["import", "corpus", "gag", "lora", "eval"]
