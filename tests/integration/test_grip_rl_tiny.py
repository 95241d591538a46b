"""End to end on a tiny random policy: `grip rl` trains with retrieval in the rollout, checkpoints,
resumes, logs per-step metrics + PNG, and writes `grip` / `grip_rl` rows to results.jsonl."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from kinject.grip.format import final_turn, plan_turn
from kinject.grip.rl_cli import register

pytestmark = pytest.mark.slow

PASSAGES = [("1", "Zorblat was born in Quimora.", "Zorblat"), ("2", "Quimora lies in Vandelia.", "Quimora"),
            ("3", "Ostrel works for Mirtan.", "Ostrel"), ("4", "Mirtan was founded in 1821.", "Mirtan")]
QA = [{"question": "Where was Zorblat born?", "answer": ["Quimora"]},
      {"question": "Which country is Quimora in?", "answer": ["Vandelia"]},
      {"question": "Who employs Ostrel?", "answer": ["Mirtan"]},
      {"question": "When was Mirtan founded?", "answer": ["1821"]}]


def _app():
    app = typer.Typer()

    @app.callback()
    def main():
        pass

    register(app)
    return app


def _invoke(args):
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


def test_outcome_rl_trains_resumes_and_reports(tmp_path, tiny_model_dir):
    from kinject.retrieval.index import build_index

    tsv = tmp_path / "passages.tsv"
    tsv.write_text("id\ttext\ttitle\n" + "".join(f"{i}\t{t}\t{ti}\n" for i, t, ti in PASSAGES))
    build_index(tsv, tmp_path / "index", progress=False)
    qa = tmp_path / "wiki" / "qa_test.jsonl"
    qa.parent.mkdir()
    qa.write_text("".join(json.dumps(r) + "\n" for r in QA))
    cfg = tmp_path / "rl.yaml"
    cfg.write_text(f"""kind: grip_rl
model: {tiny_model_dir}
reward: outcome
data: {{train: {qa}}}
retrieval: {{index: {tmp_path / 'index'}, top_k: 2}}
rollout: {{group_size: 2, prompts_per_step: 2, max_new_tokens: 8, max_resample_batches: 1}}
overlong: {{cache: 2}}
optim: {{max_steps: 2, learning_rate: 1.0e-3}}
eval: {{files: [{qa}]}}
save_steps: 1
""")
    out = tmp_path / "run"
    _invoke(["rl", "--config", str(cfg), "--out", str(out)])
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and (out / "model" / "config.json").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward", "groups_filtered_share", "retrievals_per_episode", "completions/mean_length", "entropy"):
        assert all(key in r for r in rows), key
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {(r["method"], r["metric"]) for r in results} == {
        (m, k) for m in ("grip", "grip_rl") for k in ("em", "f1", "cover_em", "avg_retrievals")}
    assert all(r["dataset"] == "wiki" and r["split"] == "test" and r["n"] == 4 for r in results)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 2 and manifest["metrics"]["wall_s_per_step"] > 0

    # same inputs: skipped; one more step: resumes from checkpoint-2 instead of starting over
    assert "complete already" in _invoke(["rl", "--config", str(cfg), "--out", str(out)]).output
    _invoke(["rl", "--config", str(cfg), "--out", str(out), "optim.max_steps=3"])
    state = json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_imitation_rl_runs_one_step_without_a_retriever(tmp_path, tiny_model_dir):
    data = tmp_path / "rl.jsonl"
    recs = [{"question": "Where was Zorblat born?", "target": final_turn("Quimora")},
            {"question": "Which country is the birthplace of Zorblat in?", "target": plan_turn("Quimora", "Quimora")},
            {"question": "bad", "target": "no markers"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = tmp_path / "rl.yaml"
    cfg.write_text(f"""kind: grip_rl
model: {tiny_model_dir}
reward: imitation
data: {{train: {data}}}
rollout: {{group_size: 2, prompts_per_step: 2, max_new_tokens: 8, max_resample_batches: 0}}
overlong: {{cache: 2}}
optim: {{max_steps: 1}}
""")
    out = tmp_path / "run"
    _invoke(["rl", "--config", str(cfg), "--out", str(out)])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped_reference_turns"] == 1 and manifest["train_records"] == 2
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.0 <= row["rewards/imitation_reward/mean"] <= 1.5 and row["retrievals_per_episode"] == 0
