"""The eval CLI end to end in subprocesses: `eval run` with every answer metric on a tiny
model, `eval score` on its (edited) predictions file, `eval show` (about a minute on 2 cores)."""

import json
import subprocess
import sys

import pytest
import yaml

CLI = [sys.executable, "-m", "kinject.cli"]


def cli(*args):
    res = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


@pytest.mark.slow
def test_eval_run_score_show(tmp_path, tiny_model_dir):
    from kinject.eval.results import read_results

    rows = [{"id": f"q{i}", "domain": "materials", "input": f"What is the band gap of Ferovia-{i}?",
             "answer": [f"{i}.{i} eV"]} for i in range(12)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = ["em", "f1", "has_answer", "cover_em", "rouge", "bertscore_f1", "sts"]
    cfg = {"kind": "eval", "data_root": str(tmp_path), "device": "cpu", "num_threads": 1, "batch_size": 5, "max_new_tokens": 8,
           "metrics": metrics, "datasets": [{"name": "materials", "path": "qa.jsonl", "split": "dev"}],
           "methods": [{"name": "base", "options": {"model": str(tiny_model_dir)}}]}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    res = cli("eval", "run", "--config", str(tmp_path / "eval.yaml"), "--out", str(out))
    assert "report:" in res.stdout and (out / "report.md").is_file()
    run_rows = {r.metric: r.value for r in read_results(out)}
    assert set(metrics) <= set(run_rows) and run_rows["latency_ms_p50"] > 0

    # the random model's predictions, made non-trivial so model metrics are not all 0
    preds = [json.loads(x) for x in (out / "predictions" / "base__materials.jsonl").read_text().splitlines()]
    assert len(preds) == 12
    for i, p in enumerate(preds):
        p["prediction"] = p["answer"][0] if i % 3 == 0 else f"about {i} eV"
    (tmp_path / "preds.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    cli("eval", "score", "--predictions", str(tmp_path / "preds.jsonl"), "--references", str(tmp_path / "qa.jsonl"),
        "--metrics", ",".join(metrics), "--out", str(tmp_path / "score"), "--method", "edited",
        "--dataset", "materials", "--split", "dev")
    scored = {r.metric: r.value for r in read_results(tmp_path / "score")}
    assert scored["em"] == pytest.approx(4 / 12)
    assert scored["has_answer"] == pytest.approx(4 / 12)
    assert 4 / 12 < scored["bertscore_f1"] < 1 and 4 / 12 < scored["sts"] < 1
    assert 4 / 12 < scored["f1"] < 1  # "about 2 eV" shares "ev" with "2.2 eV"

    # eval show prints the stored table
    shown = cli("eval", "show", str(tmp_path / "score")).stdout
    assert "edited" in shown and "bertscore" in shown and "0.333" in shown
