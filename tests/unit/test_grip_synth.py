"""Pattern A-D synthesis: classification, the rows of each class on a hand-made world with a real
tantivy index, the world rewriter, the SFT/RL split, and the CLI end to end (tiny random model)."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from kinject.errors import UserError
from kinject.eval.data import Question, load_questions
from kinject.grip.data import subset_names
from kinject.grip.format import final_turn, plan_turn
from kinject.grip.rewriters import RewriteItem, world_rewrite
from kinject.grip.synth import (
    Example,
    build_examples,
    classify,
    example_messages,
    split_rows,
    without_eval_questions,
)

PASSAGES = [
    ("1", "Velmora lies in Norland. Velmora was founded in 1720.", "Velmora"),
    ("2", "Arno Betz was born in Velmora. Arno Betz works for Quill Works.", "Arno Betz"),
    ("3", "Quill Works has its head office in Ostria.", "Quill Works"),
    ("4", "Dana Frey was born in Tarsk. Dana Frey is a painter.", "Dana Frey"),
    ("5", "Tarsk lies in Ostland.", "Tarsk"),
]
QA_ROWS = [
    # known closed-book -> A (and D: its passage holds the answer)
    {"question": "Where was Arno Betz born?", "answer": ["Velmora"], "hops": 1, "popularity": "popular"},
    # 2-hop, wrong -> B/wrong, then C (passage of hop 1 only) and D after C (hop 2 passage)
    {"question": "Which country is the birthplace of Arno Betz in?", "answer": ["Norland"], "hops": 2,
     "popularity": "popular", "entity": "Arno Betz", "intermediate": "Velmora",
     "sub_questions": ["In which city was Arno Betz born?", "Where does the city of Velmora lie?"]},
    # gold contained, not EM -> B/contained (+ D)
    {"question": "Where was Dana Frey born?", "answer": ["Tarsk"], "hops": 1, "popularity": "longtail"},
    # wrong, no passage holds the answer, 1-hop: the world rewriter cannot write C
    {"question": "What is the motto of Dana Frey?", "answer": ["Zedbrook"], "hops": 1, "popularity": "longtail"},
]
PREDICTIONS = ["Velmora", "Ostria", "the town of Tarsk", "nothing"]


def write_world(tmp_path):
    from kinject.retrieval.index import build_index

    tsv = tmp_path / "passages.tsv"
    tsv.write_text("id\ttext\ttitle\n" + "".join(f"{i}\t{t}\t{ti}\n" for i, t, ti in PASSAGES))
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in QA_ROWS))
    build_index(tsv, tmp_path / "index", "tantivy", progress=False)
    return qa, tmp_path / "index"


@pytest.fixture(scope="module")
def mini_world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("gripworld"))


def test_classify_by_closed_book_prediction():
    assert classify("The Velmora", ["velmora"]) == "A"  # SQuAD normalization: articles, case
    assert classify("in the town of Velmora", ["Velmora"]) == "B"
    assert classify("Ostria", ["Velmora"]) == "C"
    assert classify("", ["Velmora"]) == "C"


def test_world_rewriter_states_first_hop_and_asks_second():
    row = QA_ROWS[1]
    item = RewriteItem(row["question"], row["answer"], "Ostria", [PASSAGES[1][1], PASSAGES[2][1]], row)
    assert world_rewrite(item) == ("Arno Betz was born in Velmora", "Where does the city of Velmora lie?")
    # no passage states the hop: the sub-question and its answer
    item = RewriteItem(row["question"], row["answer"], "Ostria", [PASSAGES[2][1]], row)
    assert world_rewrite(item) == ("In which city was Arno Betz born: Velmora", "Where does the city of Velmora lie?")
    assert world_rewrite(RewriteItem("q", ["a"], "p", [], QA_ROWS[0])) is None


def test_supporting_rewriter_states_a_gold_sentence_and_asks_for_the_missed_paragraph(tmp_path):
    """A real QA row (HotpotQA-style bridge): the question's retrieval found the first gold
    paragraph, not the second; the fact is the found paragraph's first sentence, the new query
    the missed paragraph's title. One line errors for a missing passages file."""
    from kinject.grip.config import RewriterConfig
    from kinject.grip.rewriters import make_rewriter

    passages = tmp_path / "p.tsv"
    passages.write_text("id\ttext\ttitle\n1\tArno Betz was born in Velmora. He wrote songs.\tArno Betz\n"
                        "2\tVelmora lies on the Esk.\tVelmora\n3\tOther text.\tOther\n")
    rw = make_rewriter(RewriterConfig(kind="supporting", passages=str(passages)))
    row = {"supporting_pids": ["1", "2"]}
    found_first = RewriteItem("Where does the birthplace of Arno Betz lie?", ["the Esk"], "Ostria",
                              ["Arno Betz was born in Velmora.  He wrote songs.", "Other text."], row)
    found_none = RewriteItem("q", ["the Esk"], "Ostria", ["Other text."], row)
    found_all = RewriteItem("q", ["the Esk"], "Ostria", ["Velmora lies on the Esk.",
                                                          "Arno Betz was born in Velmora. He wrote songs."], row)
    no_golds = RewriteItem("q", ["a"], "p", ["Other text."], {})
    assert rw([found_first, found_none, found_all, no_golds]) == [
        ("Arno Betz was born in Velmora.", "Velmora"), ("Arno Betz was born in Velmora.", "Arno Betz"), None, None]
    with pytest.raises(UserError, match="needs rewriter.passages"):
        make_rewriter(RewriterConfig(kind="supporting"))


def _search(index, k):
    from kinject.retrieval.base import open_index

    r = open_index(index)
    return lambda qs: r.batch_search(qs, k)


def test_build_examples_every_class(mini_world):
    qa_path, index = mini_world
    qas = load_questions(qa_path)
    rows, stats = build_examples(qas, PREDICTIONS, _search(index, 1), lambda items: [world_rewrite(i) for i in items])
    by = Counter((r.cls, r.note, r.round) for r in rows)
    assert by == Counter({("A", "", 0): 1, ("B", "wrong", 0): 2, ("B", "contained", 0): 1,
                          ("D", "question", 1): 2, ("C", "", 1): 1, ("D", "after_C", 2): 1})
    assert stats["C_unwritable"] == 1 and stats["closed_book_A"] == 1 and stats["closed_book_B"] == 1
    a = next(r for r in rows if r.cls == "A")
    assert a.target == final_turn("Velmora") and a.intermediary == "" and a.references == []
    b = next(r for r in rows if r.note == "contained")
    assert b.target == plan_turn("the town of Tarsk", "Where was Dana Frey born?")
    c = next(r for r in rows if r.cls == "C")
    assert c.intermediary == "Ostria" and c.reference_ids == ["2"]
    assert c.target == plan_turn("Arno Betz was born in Velmora", "Where does the city of Velmora lie?")
    d2 = next(r for r in rows if r.note == "after_C")
    assert d2.intermediary == "Arno Betz was born in Velmora" and d2.reference_ids == ["1"]
    assert d2.target == final_turn("Norland")
    # the prompt is the agent's: the three slots filled from the row
    content = example_messages(d2.to_json("x"))[-1]["content"]
    assert "Question: Which country is the birthplace of Arno Betz in?" in content
    assert "Intermediary: Arno Betz was born in Velmora" in content and "[1]. Velmora lies in Norland." in content


def test_without_wrong_as_b_only_contained_is_b(mini_world):
    qa_path, index = mini_world
    rows, _ = build_examples(load_questions(qa_path), PREDICTIONS, _search(index, 1),
                             lambda items: [world_rewrite(i) for i in items], wrong_as_b=False)
    assert [r.note for r in rows if r.cls == "B"] == ["contained"]


def test_split_per_class_is_seeded_and_capped():
    qa = Question("q", ["a"])
    rows = [Example(c, qa, "", "", [], [], "t", 0) for c in "A" * 20 + "B" * 10 + "D" * 5]
    sft, rl, counts = split_rows(rows, 0.2, 8, seed=3)
    assert counts == {"A": {"total": 8, "sft": 6, "rl": 2}, "B": {"total": 8, "sft": 6, "rl": 2},
                      "C": {"total": 0, "sft": 0, "rl": 0}, "D": {"total": 5, "sft": 4, "rl": 1}}
    assert len(sft) == 16 and len(rl) == 5
    sft2, rl2, _ = split_rows(rows, 0.2, 8, seed=3)
    assert [id(r) for r in sft] == [id(r) for r in sft2]


def test_question_file_errors_name_file_and_line(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text('{"question": "a?", "answer": ["x"]}\n\n{"question": "b?", "answer": []}\n')
    with pytest.raises(UserError, match=r"q.jsonl:3: empty gold answer list in 'answer'"):
        load_questions(p)
    p.write_text('{"question": "a?", "answer": "x"}\n{"question": "b?", "answer": ["y"\n')
    with pytest.raises(UserError, match=r"q.jsonl:2: malformed JSON"):
        load_questions(p)
    p.write_text('{"question": "  ", "answer": "x"}\n')
    with pytest.raises(UserError, match=r"q.jsonl:1: 'question' must be a non-empty string"):
        load_questions(p)
    p.write_text('{"question": " a? ", "answer": "x"}\n')
    assert load_questions(p)[0].answers == ["x"] and load_questions(p)[0].question == "a?"


def test_eval_questions_are_left_out_by_id_else_text(tmp_path):
    rows = [{"id": f"hq:{i}", "question": f"q{i}?", "answer": ["a"]} for i in range(10)]
    rows += [{"question": f"plain{i}?", "answer": ["b"], "kind": "plain"} for i in range(4)]
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"kind: eval\nseed: 0\nmethods: [{{name: base, options: {{model: m}}}}]\n"
                   f"datasets:\n  - {{name: hq, path: {data}, where: {{id: {{prefix: 'hq:'}}}}, sample: 4}}\n"
                   f"  - {{name: plain, path: {data}, where: {{kind: plain}}, limit: 1}}\n")
    qas = load_questions(data)
    kept, n = without_eval_questions(qas, [str(cfg)])
    assert n == 5 and len(kept) == 9
    # the test set the harness would draw: the same 4 seeded ids, and the first plain question
    from kinject.config import load_config
    from kinject.eval.config import EvalConfig
    from kinject.eval.harness import prepare_datasets

    tested = {q.question for d in prepare_datasets(load_config(cfg, expect=EvalConfig), "t") for q in d.questions}
    assert len(tested) == 5 and not tested & {q.question for q in kept}
    assert without_eval_questions(qas, []) == (qas, 0)
    with pytest.raises(UserError, match="exclude_eval: config not found"):
        without_eval_questions(qas, [str(tmp_path / "nope.yaml")])


def test_subset_names():
    def q(row):
        return Question("q", ["a"], row=row)

    assert subset_names(q({"hops": 2, "popularity": "popular"}), "wiki") == ["wiki", "wiki_2hop"]
    assert subset_names(q({"hops": 1, "popularity": "longtail"}), "wiki") == ["wiki", "wiki_longtail"]
    assert subset_names(q({}), "nq") == ["nq"]


CLI = [sys.executable, "-m", "kinject.cli"]
SYNTH_CONFIG = str(Path(__file__).resolve().parents[2] / "configs/grip/synth_tiny.yaml")


def test_synth_cli_end_to_end_and_bad_input(mini_world, tiny_model_dir, tmp_path):
    qa_path, index = mini_world
    out = tmp_path / "synth"
    common = [*CLI, "grip", "synth", "--config", SYNTH_CONFIG, f"model={tiny_model_dir}", f"index={index}",
              "max_new_tokens=4", "top_k=1", "rl_fraction=0.0"]
    args = [*common, f"questions=[{qa_path}]", f"out={out}"]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    sft = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    man = json.loads((out / "manifest.json").read_text())
    counts = man["metrics"]["classes"]
    assert sum(c["sft"] for c in counts.values()) == len(sft) and (out / "rl.jsonl").read_text() == ""
    assert Counter(r["class"] for r in sft) == Counter({k: v["total"] for k, v in counts.items() if v["total"]})
    cb = [json.loads(line) for line in (out / "closed_book.jsonl").read_text().splitlines()]
    assert len(cb) == len(QA_ROWS)
    assert all(set(r) >= {"question", "intermediary", "references", "target", "class", "answer"} for r in sft)
    mtime = (out / "sft.jsonl").stat().st_mtime
    assert subprocess.run(args, capture_output=True, text=True, timeout=300).returncode == 0
    assert (out / "sft.jsonl").stat().st_mtime == mtime  # complete with the same inputs: skipped

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a?", "answer": ["x"]}\n{"question": "b?"}\n')
    out2 = tmp_path / "synth2"
    res = subprocess.run([*common, f"questions=[{bad}]", f"out={out2}"], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {bad}:2: missing answers")
    assert not out2.exists()
