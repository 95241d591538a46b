"""`kinject eval run`: the harness with the real `base` method on a tiny random model."""

import json
import struct

import pytest
import yaml

from kinject.config import StrictModel, load_config
from kinject.errors import UserError
from kinject.eval.config import EvalConfig
from kinject.eval.harness import run_eval
from kinject.eval.method import MethodContext, build_method, register_method, resolve_method
from kinject.eval.results import read_results

QUESTIONS = [
    {"id": f"m{i}", "domain": "materials", "input": f"What is the efficiency of Ferovia-{i}?", "answer": [f"9{i}.5 %"]}
    for i in range(5)
] + [
    {"id": "g0", "domain": "general", "input": "What is the capital of Norland?", "answer": ["Velmora"]},
]
WIKI = [{"question": f"Who founded Quillex {i}?", "answer": ["Ada"], "hops": 1 + i % 2} for i in range(6)]


class LookupOptions(StrictModel):
    k: int
    answers: dict[str, str] = {}


class Lookup:
    """Test method: answers from a table, traces like a retrieval method (k passages)."""

    name = "lookup"

    def __init__(self, options, ctx):
        self.k, self.answers = options.k, options.answers

    def answer(self, batch):
        assert not any(k in row for row in batch for k in ("answer", "output"))  # gold answers are hidden
        return [{"prediction": ["first turn", self.answers.get(r["question"], "no idea")],
                 "trace": {"added_prompt_tokens": 10 * self.k, "n_retrievals": 1, "route": r.get("domain")}}
                for r in batch]


register_method("lookup_k{k}", options=LookupOptions)(Lookup)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def setup(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "qa_dev.jsonl", QUESTIONS)
    write_jsonl(data / "wiki.jsonl", WIKI)
    cfg = {
        "kind": "eval", "data_root": str(data), "device": "cpu", "num_threads": 1, "batch_size": 4, "max_new_tokens": 6,
        "metrics": ["em", "f1", "has_answer"],
        "datasets": [
            {"name": "materials", "path": "qa_dev.jsonl", "split": "dev", "metrics": ["em", "rouge"]},
            {"name": "wiki_2hop", "path": "wiki.jsonl", "where": {"hops": 2}},
        ],
        "methods": [
            {"name": "base", "options": {"model": str(tiny_model_dir)}},
            {"name": "lookup_k3", "options": {"answers": {"What is the efficiency of Ferovia-1?": "91.5 %",
                                                          "Who founded Quillex 1?": "Ada"}}},
        ],
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, tmp_path / "out"


def test_eval_run_end_to_end(setup, tiny_model_dir, tiny_tokenizer):
    cfg_path, out = setup
    import torch

    cfg = load_config(cfg_path, expect=EvalConfig)
    threads = torch.get_num_threads()
    rows = run_eval(cfg, out, source=str(cfg_path), quiet=True)
    assert torch.get_num_threads() == threads  # num_threads applies only while methods answer
    by = {(r.method, r.dataset, r.metric): r for r in rows}
    # metric lists per dataset; wiki filtered to hops == 2
    assert {m for (meth, d, m) in by if meth == "base" and d == "materials"} == {"em", "rouge", "latency_ms_p50",
                                                                                  "added_prompt_tokens", "avg_retrievals"}
    assert by[("base", "wiki_2hop", "em")].n == 3 and by[("base", "materials", "em")].n == 6
    assert by[("base", "materials", "added_prompt_tokens")].value == 0
    assert by[("base", "materials", "latency_ms_p50")].value > 0
    # the lookup method: 1 of 6 right on materials, 1 of 3 on wiki; traces aggregated
    assert by[("lookup_k3", "materials", "em")].value == pytest.approx(1 / 6)
    assert by[("lookup_k3", "wiki_2hop", "has_answer")].value == pytest.approx(1 / 3)
    assert by[("lookup_k3", "materials", "added_prompt_tokens")].value == 30  # k=3 from the name
    assert by[("lookup_k3", "materials", "avg_retrievals")].value == 1
    assert by[("lookup_k3", "materials", "routing_accuracy")].value == 1.0
    assert ("lookup_k3", "wiki_2hop", "routing_accuracy") not in by  # wiki rows have no domain
    assert read_results(out) == rows

    # base's predictions are exactly the shared greedy decoder's, one prompt at a time
    from kinject.generation import generate_texts
    from kinject.models import load_causal_lm
    from kinject.prompts import general_messages, render

    model, tok = load_causal_lm(tiny_model_dir, device="cpu")
    preds = [json.loads(x) for x in (out / "predictions" / "base__materials.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == [q["id"] for q in QUESTIONS]
    for p, q in zip(preds, QUESTIONS, strict=True):
        one = generate_texts(model, tok, [render(tok, general_messages(q["input"]))], max_new_tokens=6)[0]
        assert p["prediction"] == one.text and p["trace"]["new_tokens"] == one.n_new_tokens

    report = (out / "report.md").read_text()
    assert ("| method | materials (em) | wiki_2hop (em) | routing acc. | routing macro acc. | added tokens "
            "| latency p50 (ms) | retrievals |") in report
    assert "| lookup_k3 | 0.167 | 0.333 | 1.000 | 1.000 | 30.0 | 0.0 | 1.0 |" in report
    rouge_section = report.split("## rouge")[1].split("##")[0]
    assert "| method | materials |" in rouge_section and "| lookup_k3 | 0.167 |" in rouge_section
    assert not (out / "routing_confusion__base__materials.png").exists()  # base does not route
    assert by[("base", "materials", "avg_retrievals")].value == 0  # closed book: no retrieval
    assert "![accuracy vs retrievals per question](accuracy_vs_retrievals.png)" in report
    for png in ("accuracy.png", "accuracy_vs_tokens.png", "accuracy_vs_retrievals.png",
                "routing_confusion__lookup_k3__materials.png"):
        head = (out / png).read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24])[0] > 100
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["metrics"]["lookup_k3/materials/em"] == pytest.approx(1 / 6)

    # unchanged config + inputs: skipped (outputs untouched); --force redoes it
    mtime = (out / "results.jsonl").stat().st_mtime_ns
    assert run_eval(cfg, out, source=str(cfg_path), quiet=True) == rows
    assert (out / "results.jsonl").stat().st_mtime_ns == mtime
    cfg2 = load_config(cfg_path, ["methods=[{name: lookup_k3}]"], expect=EvalConfig)
    run_eval(cfg2, out, quiet=True)
    assert {r.method for r in read_results(out)} == {"lookup_k3"}
    # a changed dataset file changes the inputs hash: the run is redone
    mtime = (out / "results.jsonl").stat().st_mtime_ns
    run_eval(cfg2, out, quiet=True)
    assert (out / "results.jsonl").stat().st_mtime_ns == mtime
    write_jsonl(cfg_path.parent / "data" / "qa_dev.jsonl", QUESTIONS[:2])
    rows3 = run_eval(cfg2, out, quiet=True)
    assert rows3[0].n == 2 and (out / "results.jsonl").stat().st_mtime_ns != mtime


@pytest.mark.parametrize("override,message", [
    ("methods=[{name: gag_v9}]", "unknown method 'gag_v9'; known methods:"),
    ("methods=[{name: base, options: {model: x, temperature: 1}}]", "unknown config key 'temperature'"),
    ("methods=[{name: base}]", "missing config key 'model'"),
    ("methods=[{name: lookup_k3, options: {k: 4}}]", "option 'k' contradicts the name"),
    ("metrics=[em, bleu]", "unknown metric 'bleu'"),
    ("datasets=[{name: nope, path: missing.jsonl}]", "dataset 'nope': file not found"),
    ("datasets=[{name: a, path: qa_dev.jsonl}, {name: a, path: wiki.jsonl}]", "dataset name 'a' is used twice"),
    ("datasets=[{name: w, path: wiki.jsonl, where: {hops: 7}}]", "no questions matching"),
    ("metric_options={bleu: {}}", "unknown metric 'bleu'"),
    ("metric_options={sts: {}}", "options given for metric 'sts'"),
    ("metric_options={em: {x: 1}}", "metric 'em' takes no options"),
    ("methods=[{name: lookup_k3}, {name: lookup_k3, datasets: [materials]}]",
     "method 'lookup_k3' is listed twice for dataset 'materials'"),
])
def test_bad_config_one_line_nothing_written(setup, override, message):
    cfg_path, out = setup
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")) as e:
        cfg = load_config(cfg_path, [override], expect=EvalConfig)
        if "contradicts" in message:
            build_method("lookup_k3", {"k": 4}, MethodContext())
        run_eval(cfg, out, source=str(cfg_path), quiet=True)
    assert "\n" not in str(e.value)
    assert not out.exists()


def test_one_method_on_disjoint_datasets_with_its_own_options(setup):
    """RAG over each dataset's own index: the same method listed once per dataset, one report row."""
    cfg_path, out = setup
    cfg = load_config(cfg_path, ["methods=[{name: lookup_k3, datasets: [materials], options: {answers: "
                                 "{'What is the efficiency of Ferovia-1?': '91.5 %'}}}, {name: lookup_k3, datasets: "
                                 "[wiki_2hop], options: {answers: {'Who founded Quillex 1?': Ada}}}]"], expect=EvalConfig)
    by = {(r.method, r.dataset, r.metric): r.value for r in run_eval(cfg, out, quiet=True)}
    assert by[("lookup_k3", "materials", "em")] == pytest.approx(1 / 6)
    assert by[("lookup_k3", "wiki_2hop", "has_answer")] == pytest.approx(1 / 3)
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["lookup_k3__materials.jsonl",
                                                                       "lookup_k3__wiki_2hop.jsonl"]


def test_labels_put_one_method_twice_on_the_same_datasets(setup):
    """Two variants of one method (e.g. two training seeds) side by side: one row per label."""
    cfg_path, out = setup
    cfg = load_config(cfg_path, ["methods=[{name: lookup_k3, label: lookup_a, datasets: [materials], options: {answers: "
                                 "{'What is the efficiency of Ferovia-1?': '91.5 %'}}}, {name: lookup_k3, label: lookup_b, "
                                 "datasets: [materials]}]"], expect=EvalConfig)
    by = {(r.method, r.dataset, r.metric): r.value for r in run_eval(cfg, out, quiet=True)}
    assert by[("lookup_a", "materials", "em")] == pytest.approx(1 / 6)
    assert by[("lookup_b", "materials", "em")] == 0.0
    assert not any(m == "lookup_k3" for m, _, _ in by)
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["lookup_a__materials.jsonl",
                                                                       "lookup_b__materials.jsonl"]
    with pytest.raises(UserError, match="label"):
        load_config(cfg_path, ["methods=[{name: lookup_k3, label: 'a b'}]"], expect=EvalConfig)


def test_dataset_without_answers(setup):
    cfg_path, out = setup
    write_jsonl(cfg_path.parent / "data" / "noans.jsonl", [{"question": "a"}])
    cfg = load_config(cfg_path, ["datasets=[{name: x, path: noans.jsonl}]"], expect=EvalConfig)
    with pytest.raises(UserError, match="noans.jsonl:1: missing answers"):
        run_eval(cfg, out, quiet=True)


def test_method_registry_templates():
    spec, values = resolve_method("lookup_k12")
    assert spec.template == "lookup_k{k}" and values == {"k": "12"}
    assert resolve_method("base")[0].template == "base"
    with pytest.raises(UserError, match="unknown method 'lookup_kx'"):
        resolve_method("lookup_kx")


def test_cli_eval_run_error_is_one_line(setup):
    import subprocess
    import sys

    cfg_path, out = setup
    res = subprocess.run([sys.executable, "-m", "kinject.cli", "eval", "run", "--config", str(cfg_path),
                          "--out", str(out), "methods=[{name: nonexistent}]"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "unknown method 'nonexistent'" in lines[0]
