"""`kinject eval score` on hand-made JSONL: matching, list predictions, missing ones, errors."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kinject.errors import UserError
from kinject.eval.data import (
    gold_answers,
    load_predictions,
    load_questions,
    match_predictions,
    prediction_text,
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def refs(tmp_path):
    return write_jsonl(tmp_path / "refs.jsonl", [
        {"id": "q1", "input": "What is the efficiency of Ferovia-7?", "answer": ["93.5 %"], "domain": "materials"},
        {"id": "q2", "question": "Who runs Velmora?", "answer": ["Velmora Institute", "the VI"]},
        {"question": "Capital of Norland?", "answer": "Velmora"},
        {"id": "q4", "question": "Unanswered?", "answer": ["yes"]},
    ])


@pytest.fixture
def preds(tmp_path):
    return write_jsonl(tmp_path / "preds.jsonl", [
        {"id": "q1", "prediction": "93.5 %"},
        {"question": "Who  runs Velmora?", "prediction": ["I think", "the Velmora Institute"]},  # by question
        {"question": "capital of norland?", "prediction": "Velmora"},  # case differs: not the same question
        {"question": "Capital of Norland?", "prediction": "Velmora."},
        {"id": "zz", "prediction": "stray"},
    ])


def test_matching_rules(refs, preds):
    qs = load_questions(refs)
    assert [q.question for q in qs][0] == "What is the efficiency of Ferovia-7?"  # `input` field
    assert qs[2].answers == ["Velmora"] and qs[2].id is None
    m = match_predictions(qs, load_predictions(preds))
    assert m.predictions == ["93.5 %", "the Velmora Institute", "Velmora.", ""]
    assert [q.id for q in m.missing] == ["q4"]
    assert m.unmatched == 2
    assert prediction_text([]) == "" and prediction_text(None) == "" and prediction_text(["a", "b"]) == "b"


def test_score_command_writes_results(refs, preds, tmp_path):
    from kinject.cli import app
    from kinject.eval.results import read_results

    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["eval", "score", "--predictions", str(preds), "--references", str(refs),
                                   "--metrics", "em,f1,has_answer,rouge", "--out", str(out),
                                   "--method", "grip", "--dataset", "toy", "--split", "dev"])
    assert res.exit_code == 0, res.output
    rows = {r.metric: r for r in read_results(out)}
    assert {r.method for r in rows.values()} == {"grip"} and rows["em"].split == "dev"
    assert all(r.n == 4 and r.dataset == "toy" for r in rows.values())
    # em: q1 yes, q2 "the Velmora Institute" == "Velmora Institute" (article), q3 yes, q4 missing
    assert rows["em"].value == pytest.approx(3 / 4)
    assert rows["has_answer"].value == pytest.approx(3 / 4)
    assert "1 of 4 questions have no prediction" in res.output
    per_q = [json.loads(x) for x in (out / "scores__grip__toy.jsonl").read_text().splitlines()]
    assert [p["em"] for p in per_q] == [1.0, 1.0, 1.0, 0.0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["missing_predictions"] == 1 and manifest["unmatched_predictions"] == 2
    # a second method upserts into the same results.jsonl
    res = CliRunner().invoke(app, ["eval", "score", "--predictions", str(preds), "--references", str(refs),
                                   "--metrics", "em", "--out", str(out), "--method", "base", "--dataset", "toy"])
    assert res.exit_code == 0 and len(read_results(out)) == 5


def test_gold_answers_one_parser_for_every_row_shape():
    assert gold_answers({"answer": "Velmora"}, "f:1") == ["Velmora"]
    assert gold_answers({"answers": ["a", " ", 12]}, "f:1") == ["a", "12"]
    # the world's Stage II rows carry both: `answer` (every accepted wording) wins over `output`
    assert gold_answers({"answer": ["93.5 %", "93.5"], "output": "93.5 %"}, "f:1") == ["93.5 %", "93.5"]
    assert gold_answers({"output": "x"}, "f:1") == ["x"]
    with pytest.raises(UserError, match="f:1: 'answer' must be a string or a list"):
        gold_answers({"answer": {"text": "x"}}, "f:1")


def test_bad_references(tmp_path):
    p = write_jsonl(tmp_path / "r.jsonl", [{"question": "a", "answer": ["x"]}, {"question": "b"}])
    with pytest.raises(UserError, match=r"r.jsonl:2: missing answers"):
        load_questions(p)
    p = write_jsonl(tmp_path / "r2.jsonl", [{"question": "a", "answer": []}])
    with pytest.raises(UserError, match=r"r2.jsonl:1: empty gold answer list"):
        load_questions(p)
    p = write_jsonl(tmp_path / "r3.jsonl", [{"text": "a", "answer": ["x"]}])
    with pytest.raises(UserError, match="no question field"):
        load_questions(p)
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": "1"}])
    with pytest.raises(UserError, match=r"p.jsonl:1: missing field\(s\) 'prediction'"):
        load_predictions(p)


@pytest.mark.parametrize("metrics,fix,message", [
    ("em,bleu", None, "unknown metric 'bleu' in --metrics"),
    ("em", "noanswers", "missing answers"),
    ("bertscore_f1", "--option=bertscore_f1.layers=3", "unknown config key 'layers' in options of metric"),
    ("em", "--option=bertscore_f1.num_layers=3", "options given for metric 'bertscore_f1'"),
])
def test_cli_errors_one_line(refs, preds, tmp_path, metrics, fix, message):
    if fix == "noanswers":
        refs = write_jsonl(tmp_path / "bad.jsonl", [{"id": "q1", "question": "x"}])
    out = tmp_path / "o"
    extra = [fix] if fix and fix.startswith("--option") else []
    res = subprocess.run([sys.executable, "-m", "kinject.cli", "eval", "score", "--predictions", str(preds),
                          "--references", str(refs), "--metrics", metrics, "--out", str(out), *extra],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert not out.exists()  # nothing written
