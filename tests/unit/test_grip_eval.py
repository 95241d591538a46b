"""`grip eval`: scoring by subset, results.jsonl schema, predictions with every step, the
baselines on the same subsets, throughput bench, and the CLI's bad-input errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kinject.eval.data import Question
from kinject.grip.evaluate import answer_metrics, score_rows

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "kinject.cli"]
EVAL_CONFIG = str(REPO / "configs/grip/eval_tiny.yaml")


def test_score_rows_by_subset():
    qas = [Question("q1", ["Velmora"], row={"hops": 1, "popularity": "popular"}),
           Question("q2", ["Tarsk"], row={"hops": 1, "popularity": "longtail"}),
           Question("q3", ["Norland"], row={"hops": 2, "popularity": "popular"}),
           Question("q4", ["Ostland"], row={"hops": 2, "popularity": "longtail"})]
    rows = score_rows("grip", qas, ["Velmora", "in Tarsk", "Norland", "x"], "wiki", "test", [0, 1, 2, 1])
    val = {(r.dataset, r.metric): (r.value, r.n) for r in rows}
    assert val[("wiki", "em")] == (0.5, 4) and val[("wiki", "cover_em")] == (0.75, 4)
    assert val[("wiki_popular", "em")] == (1.0, 1) and val[("wiki_longtail", "em")] == (0.0, 1)
    assert val[("wiki_longtail", "cover_em")] == (1.0, 1) and val[("wiki_2hop", "em")] == (0.5, 2)
    assert val[("wiki", "avg_retrievals")] == (1.0, 4) and val[("wiki_2hop", "avg_retrievals")] == (1.5, 2)
    assert val[("wiki_longtail", "f1")][0] == pytest.approx(2 / 3)
    assert {r.metric for r in rows} == {*answer_metrics(), "avg_retrievals"}
    assert rows[0].dataset == "wiki"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from unit.test_grip_synth import write_world

    return write_world(tmp_path_factory.mktemp("grip_eval_world"))


def test_eval_writes_results_predictions_and_baselines(world, tiny_model_dir, tmp_path):
    from kinject.config import load_config
    from kinject.grip.config import GripEvalConfig
    from kinject.grip.evaluate import grip_eval

    qa, index = world
    cfg = load_config(EVAL_CONFIG, [f"model={tiny_model_dir}", f"index={index}", f"base_model={tiny_model_dir}",
                                    "agent.max_new_tokens=8", "baseline_max_new_tokens=4"], expect=GripEvalConfig)
    rows = grip_eval(cfg, qa, tmp_path / "ev")
    got = {(r.method, r.dataset, r.metric) for r in rows}
    for method in ("grip", "base", "rag_k3"):
        for ds in ("wiki", "wiki_popular", "wiki_longtail", "wiki_2hop"):
            assert {(method, ds, m) for m in (*answer_metrics(), "avg_retrievals")} <= got
    assert [json.loads(x) for x in (tmp_path / "ev/results.jsonl").read_text().splitlines()] == [
        r.model_dump() for r in rows]
    assert grip_eval(cfg, qa, tmp_path / "ev") == rows  # complete with the same inputs: read back
    preds = [json.loads(x) for x in (tmp_path / "ev/predictions.jsonl").read_text().splitlines()]
    grip = [p for p in preds if p["method"] == "grip"]
    assert len(grip) == 4 and all(p["steps"] and "retrieved_ids" in p["steps"][0] for p in grip)
    n_ret = sum(p["n_retrievals"] for p in grip) / 4
    assert next(r.value for r in rows if (r.method, r.dataset, r.metric) ==
                ("grip", "wiki", "avg_retrievals")) == pytest.approx(n_ret)
    man = json.loads((tmp_path / "ev/manifest.json").read_text())
    assert man["metrics"]["grip/questions_per_s"] > 0


def test_bench_batched_equals_one_at_a_time(world, tiny_model_dir, tmp_path):
    from kinject.config import load_config
    from kinject.grip.config import GripEvalConfig
    from kinject.grip.evaluate import grip_bench

    qa, index = world
    cfg = load_config(EVAL_CONFIG, [f"model={tiny_model_dir}", f"index={index}", "agent.max_new_tokens=6"],
                      expect=GripEvalConfig)
    res = grip_bench(cfg, qa, tmp_path, n=4)
    assert res["questions"] == 4 and res["same_answers"] is True
    assert res["batched"]["questions_per_s"] > 0 and json.loads((tmp_path / "bench.json").read_text()) == res


def _one_line_error(res):
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_cli_bad_inputs(world, tiny_model_dir, tmp_path):
    from kinject.models import TinySpec, make_tiny_model, save_model
    from unit.test_grip_sft import tokenizer_without_control_tokens

    qa, index = world
    base = [*CLI, "grip", "eval", "--config", EVAL_CONFIG, "--out", str(tmp_path / "o"), f"index={index}"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Where?", "answer": ["x"]}\n{"question": "Why?", "answer": ["y"}\n')
    err = _one_line_error(subprocess.run([*base, "--data", str(bad), f"model={tiny_model_dir}"],
                                         capture_output=True, text=True, timeout=300))
    assert f"{bad}:2: malformed JSON" in err and not (tmp_path / "o").exists()
    # a model that was never trained for GRIP: its tokenizer lacks the control tokens
    tok = tokenizer_without_control_tokens()
    plain = tmp_path / "plain"
    save_model(make_tiny_model(TinySpec(vocab=len(tok), hidden=32, layers=1, heads=2), tokenizer=tok), tok, plain)
    err = _one_line_error(subprocess.run([*base, "--data", str(qa), f"model={plain}"],
                                         capture_output=True, text=True, timeout=300))
    assert "no single-token [ANSWER]" in err and "kinject grip sft" in err
    err = _one_line_error(subprocess.run([*CLI, "grip", "answer", "--config", EVAL_CONFIG, "  "],
                                         capture_output=True, text=True, timeout=300))
    assert "question is empty" in err
