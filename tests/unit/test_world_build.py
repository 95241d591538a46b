"""World generator: determinism, file schemas, separation/split guarantees, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from kinject.errors import UserError
from kinject.io import read_jsonl
from kinject.world.build import build_world
from kinject.world.checks import run_checks

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs/world/tiny.yaml"
DOMAINS = REPO / "configs/world/domains"
SMALL_OVERRIDES = ["fresh.reading_examples=600", "fresh.align_train=200", "fresh.align_dev=50",
                   "fresh.reading_dev=50", "fresh.pool_size=300", "private.entities=40",
                   "public.statement_docs=25", "public.closed_book_repeats=2", "wiki.two_hop=50"]


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The real tiny preset (the one the foundation models are trained on)."""
    return build_world(TINY, tmp_path_factory.mktemp("w") / "tiny")


def _data_files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def test_same_seed_byte_identical_other_seed_differs(tmp_path):
    a = build_world(TINY, tmp_path / "a", SMALL_OVERRIDES)
    b = build_world(TINY, tmp_path / "b", SMALL_OVERRIDES)
    c = build_world(TINY, tmp_path / "c", [*SMALL_OVERRIDES, "seed=1"])
    fa, fb, fc = _data_files(a), _data_files(b), _data_files(c)
    assert len(fa) >= 20 and fa == fb
    assert fa["general/pretrain.jsonl"] != fc["general/pretrain.jsonl"]
    assert run_checks(c)["no_private_names_in_pretrain"]["ok"]


def test_all_guarantees_hold_on_tiny(tiny_world):
    checks = run_checks(tiny_world)
    assert all(c["ok"] for c in checks.values()), {k: c for k, c in checks.items() if not c["ok"]}
    assert len(checks) == 8


def test_tiny_sizes_and_schemas(tiny_world):
    w = tiny_world
    ents = read_jsonl(w / "entities.jsonl")
    for dom in ("materials", "adjuvant"):
        main = [e for e in ents if e["domain"] == dom and "." not in e["type"]]
        assert len(main) == 150 and all(5 <= len(e["facts"]) <= 6 for e in main)
        train = read_jsonl(w / f"{dom}_domain/qa_train.jsonl")
        dev = read_jsonl(w / f"{dom}_domain/qa_dev.jsonl")
        for r in train[:50] + dev:
            assert set(r) >= {"id", "domain", "entity", "attribute", "instruction", "input", "output",
                              "answer", "background"}
            assert r["domain"] == dom and r["output"] == r["answer"][0]
            assert r["entity"] in r["background"] and r["output"] in r["background"]
            assert len(r["output"].split()) <= 4  # short answers: EM is meaningful
        kb = read_jsonl(w / f"{dom}_domain/knowledge_base.jsonl")
        assert len(kb) == 150 * 12  # private.dapt_paraphrases in configs/world/tiny.yaml
    wiki = read_jsonl(w / "wiki/qa_train.jsonl") + read_jsonl(w / "wiki/qa_test.jsonl")
    two = [r for r in wiki if r["hops"] == 2]
    assert len(two) == 400 and {r["popularity"] for r in wiki} == {"popular", "longtail"}
    assert all(len(r["sub_questions"]) == 2 and r["intermediate"] for r in two)
    with (w / "wiki/passages.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    ids = {r["id"] for r in rows}
    assert list(rows[0]) == ["id", "text", "title"] and all(set(r["gold_passage_ids"]) <= ids for r in wiki)
    for f in ("offline/general", "offline/materials", "offline/adjuvant", "online/mixed"):
        rows = read_jsonl(w / f"mixed_domain/{f}.jsonl")
        assert rows and all(set(r) == {"question", "domain"} for r in rows)
        assert {r["domain"] for r in rows} <= {"general", "materials", "adjuvant"}
    online = {r["question"] for r in read_jsonl(w / "mixed_domain/online/mixed.jsonl")}
    offline = {r["question"] for f in ("general", "materials", "adjuvant")
               for r in read_jsonl(w / f"mixed_domain/offline/{f}.jsonl")}
    assert not online & offline
    align = read_jsonl(w / "general/align.jsonl")
    assert len(align) == 20000 and all(r["answer"][0] in r["background"] for r in align[:500])
    kinds = {json.loads(line)["kind"] for line in (w / "general/pretrain.jsonl").open()}
    assert kinds == {"reading", "closed_book", "statements", "passage"}


@pytest.fixture
def small_world(tmp_path) -> Path:
    return build_world(TINY, tmp_path / "small", SMALL_OVERRIDES)


def test_checks_catch_a_leak(small_world):
    """The separation checks are not vacuous: a private name slipped into pretraining fails."""
    w = small_world
    priv = next(r for r in read_jsonl(w / "materials_domain/qa_dev.jsonl"))
    with (w / "general/pretrain.jsonl").open("a") as f:
        f.write(json.dumps({"text": priv["background"], "kind": "statements"}) + "\n")
        f.write(json.dumps({"text": "Name the composition of the catalyst Zed-1.", "kind": "statements"}) + "\n")
    checks = run_checks(w)
    assert not checks["no_private_names_in_pretrain"]["ok"]
    assert not checks["heldout_wordings_not_in_pretrain"]["ok"]
    assert checks["no_longtail_in_pretrain"]["ok"]


def test_checks_catch_split_leak(small_world):
    w = small_world
    train = read_jsonl(w / "adjuvant_domain/qa_train.jsonl")
    dev = read_jsonl(w / "adjuvant_domain/qa_dev.jsonl")
    train.append({**dev[0], "id": "adjuvant-train-leak"})
    (w / "adjuvant_domain/qa_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    assert not run_checks(w)["splits_by_fact_and_wording"]["ok"]


def _spec_dir(tmp_path: Path, edit) -> Path:
    """A copy of the domain specs with one file edited, plus a config pointing at it."""
    d = tmp_path / "domains"
    shutil.copytree(DOMAINS, d)
    edit(d)
    cfg = tmp_path / "w.yaml"
    cfg.write_text(TINY.read_text())
    return cfg


@pytest.mark.parametrize("old,new,expect", [
    ("generator: syllables\n      syllables: [2, 3]\n      format: \"{core}-{digit}\"",
     "generator: hashes\n      syllables: [2, 3]\n      format: \"{core}-{digit}\"", "entity_types[0].names.generator"),
    ("- \"{entity} operates at {value}.\"", "- \"{entity} operates at {value} with {pressure}.\"",
     "missing attribute {pressure}"),
    ("kind: numeric\n        low: 60", "kind: gaussian\n        low: 60", "unknown generator 'gaussian'"),
])
def test_bad_spec_is_one_clear_error(tmp_path, old, new, expect):
    def edit(d: Path):
        p = d / "materials.yaml"
        text = p.read_text()
        assert old in text
        p.write_text(text.replace(old, new, 1))

    cfg = _spec_dir(tmp_path, edit)
    with pytest.raises(UserError) as e:
        build_world(cfg, tmp_path / "out", SMALL_OVERRIDES)
    assert "materials.yaml" in str(e.value) and expect in str(e.value)
    assert not (tmp_path / "out").exists()


def test_impossible_size_names_file_and_key(tmp_path):
    def edit(d: Path):
        p = d / "adjuvant.yaml"
        p.write_text(p.read_text().replace("syllables: [2, 3]\n      format: \"{core}\"",
                                           "syllables: [1, 1]\n      format: \"{core}\"", 1))

    cfg = _spec_dir(tmp_path, edit)
    with pytest.raises(UserError, match=r"adjuvant\.yaml: entity_types\[0\]\.names: 500 names requested"):
        build_world(cfg, tmp_path / "out", [*SMALL_OVERRIDES, "private.entities=500"])


def test_cli_build_stats_and_error(tmp_path):
    import subprocess
    import sys

    env_py = [sys.executable, "-m", "kinject.cli"]
    out = tmp_path / "w"
    r = subprocess.run([*env_py, "world", "build", "--config", str(TINY), "--out", str(out), *SMALL_OVERRIDES],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*env_py, "world", "stats", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "[ok] no_private_names_in_pretrain" in r.stdout and "FAIL" not in r.stdout
    r = subprocess.run([*env_py, "world", "build", "--config", str(TINY), "--out", str(tmp_path / "x"),
                        "private.entities=-"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:")


def test_renderer_matches_chat_template(tiny_tokenizer):
    from kinject.prompts import general_messages, knowledge_messages, render, with_answer
    from kinject.world.render import ChatRenderer, split_prompt

    chat = ChatRenderer()
    q, k, a = "What is the support of Zed-1?", "Zed-1 is supported on ceria.", "ceria"
    for answer in (a, "1998", "451 K"):  # a word gets the template's space, a number does not
        want = render(tiny_tokenizer, with_answer(general_messages(q), answer), False)
        assert chat.closed_book(q, answer) == want
    full = chat.reading(q, k, a)
    assert full == render(tiny_tokenizer, with_answer(knowledge_messages(q, k), a), False)
    prompt, answer = split_prompt(full)
    assert prompt == render(tiny_tokenizer, knowledge_messages(q, k), True)
    assert answer.startswith(" ceria<|im_end|>")  # one space: spelled as in running text
