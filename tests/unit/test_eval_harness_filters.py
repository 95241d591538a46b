"""Harness additions for the full comparison: per-method `datasets` filters, answers looked up
for a question-only dataset (`answers_from`), training curves in the report, nested option
paths in the inputs hash, and the demo stage's method list built from the artifacts."""

from __future__ import annotations

import json

import pytest

from kinject.errors import UserError
from kinject.eval.config import EvalConfig
from kinject.eval.data import load_questions
from kinject.eval.harness import option_fingerprints, run_eval

from .test_eval_harness import Lookup  # noqa: F401  (registers lookup_k{k})


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def world(tmp_path):
    write_jsonl(tmp_path / "dom.jsonl", [
        {"id": "m0", "domain": "materials", "instruction": "Be a chemist.", "input": "Which lab made X?",
         "answer": ["Lab A"]},
        {"id": "m1", "domain": "materials", "instruction": "Be a chemist.", "input": "Which lab made Y?",
         "answer": ["Lab B"]}])
    write_jsonl(tmp_path / "gen.jsonl", [{"question": "Capital of Norland?", "answer": ["Velmora"]}])
    write_jsonl(tmp_path / "mixed.jsonl", [{"question": "Which lab made Y?", "domain": "materials"},
                                           {"question": "Capital of  Norland?", "domain": "general"}])
    return tmp_path


def test_answers_from_fills_question_only_rows(tmp_path):
    w = world(tmp_path)
    qs = load_questions(w / "mixed.jsonl", answers_from=[w / "dom.jsonl", w / "gen.jsonl"])
    assert [q.answers for q in qs] == [["Lab B"], ["Velmora"]]  # matched by whitespace-normalized text
    assert qs[0].row["domain"] == "materials" and qs[0].row["instruction"] == "Be a chemist."
    assert qs[1].row["domain"] == "general"  # the row's own fields win
    assert "answer" not in qs[0].as_input() and qs[0].as_input()["instruction"] == "Be a chemist."
    with pytest.raises(UserError, match=r"mixed.jsonl:2: no answers in the row and its question is in none"):
        load_questions(w / "mixed.jsonl", answers_from=[w / "dom.jsonl"])
    with pytest.raises(UserError, match="or name files to look them up in with `answers_from`"):
        load_questions(w / "mixed.jsonl")


def make_cfg(w, **over) -> EvalConfig:
    cfg = {"data_root": str(w), "device": "cpu", "metrics": ["em"], "plots": True,
           "datasets": [{"name": "materials", "path": "dom.jsonl"}, {"name": "general", "path": "gen.jsonl"},
                        {"name": "mixed", "path": "mixed.jsonl", "answers_from": ["dom.jsonl", "gen.jsonl"]}],
           "methods": [{"name": "lookup_k1", "options": {"answers": {"Which lab made Y?": "Lab B"}},
                        "datasets": ["materials", "mixed"]},
                       {"name": "lookup_k2", "datasets": ["general"]}]}
    cfg.update(over)
    return EvalConfig(**cfg)


def test_datasets_filter_answers_from_and_curves(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = world(tmp_path / "w")
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 1])
    fig.savefig(tmp_path / "loss_curves.png")
    plt.close(fig)
    (tmp_path / "train_log.json").write_text(json.dumps([{"loss": 4.0, "step": 10}, {"loss": 2.0, "step": 20},
                                                          {"train_runtime": 6.0}]))
    cfg = make_cfg(w, training_curves={"expert materials_sft": str(tmp_path / "loss_curves.png"),
                                       "grip model": str(tmp_path / "train_log.json"),
                                       "gag adjuvant": str(tmp_path / "missing.png")})
    rows = run_eval(cfg, tmp_path / "out", quiet=True)
    ran = {(r.method, r.dataset) for r in rows}
    assert ran == {("lookup_k1", "materials"), ("lookup_k1", "mixed"), ("lookup_k2", "general")}
    em = {(r.method, r.dataset): r.value for r in rows if r.metric == "em"}
    assert em[("lookup_k1", "mixed")] == 0.5 and em[("lookup_k1", "materials")] == 0.5
    route = {(r.method, r.dataset): r.value for r in rows if r.metric == "routing_accuracy"}
    assert route[("lookup_k1", "mixed")] == 1.0  # the lookup method routes to the row's domain
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert (out / "curves" / "expert_materials_sft.png").is_file() and (out / "training_curves.png").is_file()
    assert "![training curves](training_curves.png)" in report and "(curves/expert_materials_sft.png)" in report
    assert (out / "curves" / "grip_model.png").read_bytes()[:4] == b"\x89PNG"  # a log is plotted
    assert "Training curves not found (stage not run): gag adjuvant." in report
    assert "| lookup_k2 | - | 0.000 | - |" in report  # a dataset the method does not run on is "-"


def test_bad_filters_are_one_line(tmp_path):
    w = world(tmp_path)
    bad = make_cfg(w, methods=[{"name": "lookup_k1", "datasets": ["wiki"]}])
    with pytest.raises(UserError, match="method 'lookup_k1': unknown dataset 'wiki'.*configured datasets: materials"):
        run_eval(bad, tmp_path / "o", quiet=True)
    with pytest.raises(UserError, match="empty `datasets` filter"):
        run_eval(make_cfg(w, methods=[{"name": "lookup_k1", "datasets": []}]), tmp_path / "o", quiet=True)
    missing = make_cfg(w, datasets=[{"name": "mixed", "path": "mixed.jsonl", "answers_from": ["nope.jsonl"]}],
                       methods=[{"name": "lookup_k1"}])
    with pytest.raises(UserError, match="dataset 'mixed': answers_from file not found: .*nope.jsonl"):
        run_eval(missing, tmp_path / "o", quiet=True)
    assert not (tmp_path / "o").exists()


def test_nested_option_paths_are_fingerprinted(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "w.bin").write_bytes(b"x")
    cfg = make_cfg(tmp_path, methods=[{"name": "lookup_k1", "options": {"domains": {"m": str(tmp_path / "adapter")}}}])
    assert str(tmp_path / "adapter") in option_fingerprints(cfg)


def test_curve_files_prefer_pngs_then_logs(tmp_path):
    from kinject.recipes.tiny.eval import curve_files

    for rel in ("expert/m_sft/loss_curves.png", "expert/m_sft/log_history.json", "grip/model/train_log.json",
                "eval/accuracy_curve.png", "gag/m/checkpoints/step-5/history.jsonl", "world/world/x.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("[]")
    assert curve_files(tmp_path) == {"expert m_sft": str(tmp_path / "expert/m_sft/loss_curves.png"),
                                     "grip model": str(tmp_path / "grip/model/train_log.json")}


def test_demo_methods_from_artifacts(tmp_path):
    from kinject.recipes.tiny.eval import demo_methods

    art = {"foundation": tmp_path / "f", "wiki_index": tmp_path / "idx", "expert_materials": tmp_path / "em",
           "expert_adjuvant": tmp_path / "ea", "memory_materials": tmp_path / "mem",
           "injector_materials": tmp_path / "im"}
    entries, skipped = demo_methods(art)
    by = {e["name"]: e for e in entries}
    assert list(by) == ["base", "rag_k1", "rag_k3", "expert", "text_injection", "gag"]
    assert by["base"]["datasets"] == ["materials", "adjuvant", "general", "wiki_1hop", "wiki_2hop"]
    assert by["rag_k3"]["datasets"] == ["general", "wiki_1hop", "wiki_2hop"]
    assert by["expert"]["options"]["domains"] == {"materials": str(tmp_path / "em"), "adjuvant": str(tmp_path / "ea")}
    # online backgrounds are written like the stored memories: with the recorded background spec of
    # the injector and its memory store, nothing restated
    assert by["gag"]["options"]["domains"] == {"materials": {"expert": str(tmp_path / "em"), "injector": str(tmp_path / "im"),
                                                             "memory": str(tmp_path / "mem")}}
    assert by["text_injection"]["options"]["domains"]["materials"] == {"expert": str(tmp_path / "em"),
                                                                       "memory": str(tmp_path / "mem")}
    assert by["gag"]["datasets"] == ["materials"]
    assert set(skipped) == {"grip", "mixed"}
    art.update(injector_adjuvant=tmp_path / "ia", ppr_banks=tmp_path / "banks", grip_model=tmp_path / "g",
               eval_methods=[{"name": "lora", "options": {"base": "b", "domains": {}}, "datasets": ["materials"]}])
    entries, skipped = demo_methods(art)
    assert [e["name"] for e in entries] == ["base", "rag_k1", "rag_k3", "expert", "text_injection", "gag", "grip",
                                            "mixed", "lora"]
    mixed = entries[-2]
    assert mixed["datasets"] == ["mixed"] and set(mixed["options"]["domains"]) == {"materials", "adjuvant"}
    assert not skipped


def test_bad_method_options_are_one_line(tmp_path, tiny_model_dir):
    import subprocess
    import sys

    import yaml

    w = world(tmp_path)
    cases = {
        "options.domains is empty": {"name": "lora", "options": {"base": str(tiny_model_dir), "domains": {}}},
        "options of method 'gag'": {"name": "gag", "options": {"base": str(tiny_model_dir), "experts": {}}},
        "unknown dataset 'wiki'": {"name": "expert", "options": {"domains": {"materials": str(tiny_model_dir)}},
                                   "datasets": ["wiki"]},
        "has domain 'materials' but the method has only adjuvant": {
            "name": "expert", "options": {"domains": {"adjuvant": str(tiny_model_dir)}}, "datasets": ["materials"]},
    }
    for want, method in cases.items():
        cfg = {"kind": "eval", "data_root": str(w), "device": "cpu", "metrics": ["em"], "plots": False,
               "datasets": [{"name": "materials", "path": "dom.jsonl"}], "methods": [method]}
        with pytest.raises(UserError) as e:
            run_eval(EvalConfig(**cfg), tmp_path / "out", quiet=True)
        assert want in str(e.value) and "\n" not in str(e.value)
        assert not (tmp_path / "out").exists()
    # through the CLI: one `error:` line, exit 2
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "kinject.cli", "eval", "run", "--config", str(tmp_path / "c.yaml"),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True)
    errors = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert res.returncode == 2 and len(errors) == 1 and want in errors[0], res.stderr[-800:]


def test_sample_draws_a_seeded_subset_in_file_order(tmp_path):
    """`sample: N` takes N questions at random (the config's seed), in file order: a file sorted
    by type still gives every type; the same seed gives the same questions."""
    rows = [{"id": f"q{i}", "question": f"Question {i}?", "answer": ["a"], "type": "bridge" if i < 20 else "comparison"}
            for i in range(40)]
    write_jsonl(tmp_path / "qs.jsonl", rows)
    cfg = {"kind": "eval", "data_root": str(tmp_path), "device": "cpu", "metrics": ["em"], "plots": False,
           "datasets": [{"name": "s", "path": "qs.jsonl", "sample": 10, "by": "type"}],
           "methods": [{"name": "lookup_k1"}]}
    got = run_eval(EvalConfig.model_validate(cfg), tmp_path / "out", quiet=True)
    ids = [json.loads(x)["id"] for x in (tmp_path / "out/predictions/lookup_k1__s.jsonl").read_text().splitlines()]
    assert len(ids) == 10 and ids == sorted(ids, key=lambda x: int(x[1:]))  # file order
    assert {r.dataset for r in got} >= {"s/bridge", "s/comparison"}

    def drawn(seed: int) -> list[str]:
        run_eval(EvalConfig.model_validate({**cfg, "seed": seed}), tmp_path / f"out{seed}", quiet=True)
        lines = (tmp_path / f"out{seed}/predictions/lookup_k1__s.jsonl").read_text().splitlines()
        return [json.loads(x)["id"] for x in lines]

    assert drawn(0) == ids and drawn(1) != ids
