"""examples/quickstart.py runs as shipped: on tiny random models built on the fly, and on a
directory laid out like the `make demo` outputs (`--models`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kinject.memory.spec import DEFAULT_MAX_NEW_TOKENS

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "quickstart.py"
DOMAINS = ["general", "materials", "adjuvant"]


def run_example(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quickstart")
    res = run_example("--work", str(tmp / "work"), "--json", str(tmp / "out.json"))
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp, json.loads((tmp / "out.json").read_text()), res.stdout


def check_common(out: dict) -> None:
    """What holds on any inputs: one result per question, routes among the banks' domains, the
    mixed pipeline answering each question by the method of its route."""
    rt = out["routing"]
    assert rt["domains"] == DOMAINS
    assert {d["route"] for d in rt["decisions"]} <= set(DOMAINS)
    assert rt["accuracy"] == sum(d["route"] == d["expected"] for d in rt["decisions"]) / len(rt["decisions"])
    assert [m["question"] for m in out["mixed"]] == [d["question"] for d in rt["decisions"]]
    for m, d in zip(out["mixed"], rt["decisions"], strict=True):
        assert m["route"] == d["route"]  # the pipeline's router is the one routed with above
        assert m["method"] == ("base" if m["route"] == "general" else f"gag-{m['route']}")
        assert isinstance(m["answer"], str)
    for r in out["gag"]:
        assert isinstance(r["answer"], str)
        # the expert wrote a background, capped by the injector's background spec (the random one
        # records none: the default cap)
        assert 0 < r["background_tokens"] <= DEFAULT_MAX_NEW_TOKENS
        assert isinstance(r["background"], str)
    for r in out["grip"]:
        assert isinstance(r["answer"], str) and 0 <= r["n_retrievals"] < 3
    assert set(out["seconds"]) == {"gag", "routing", "retrieval", "grip", "mixed"}


def test_random_models_every_part_answers(random_run):
    _, out, stdout = random_run
    assert out["source"] == "random" and out["notes"]
    check_common(out)
    assert [r["question"] for r in out["gag"]] == [f"What is the Faradaic efficiency of Ferovia-{i}?" for i in range(4)]
    assert {r["domain"] for r in out["gag"]} == {"materials"}
    # the router is real (MiniLM over the example's own banks): every held-out question routed right
    assert len(out["routing"]["decisions"]) == 15 and out["routing"]["accuracy"] == 1.0
    assert {d["expected"] for d in out["routing"]["decisions"]} == set(DOMAINS)
    # the index is real too: each question's own passage comes first
    assert len(out["retrieval"]) == 3
    for i, r in enumerate(out["retrieval"]):
        assert f"Vexkom-{i}" in r["question"]
        assert len(r["hits"]) == 3 and (r["hits"][0]["id"], r["hits"][0]["title"]) == (f"w-{i}", f"Vexkom-{i}")
    assert [r["question"] for r in out["grip"]] == [r["question"] for r in out["retrieval"]]
    assert "PPR routing over general, materials, adjuvant: accuracy 1.00" in stdout
    assert "Mixed pipeline" in stdout


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_models_dir_in_the_demo_layout(random_run):
    """`--models DIR` reads the demo's layout: the random run's models, banks and index placed there."""
    tmp, first, _ = random_run
    work, demo = tmp / "work", tmp / "demo"
    link(work / "banks", demo / "ppr" / "banks")
    link(work / "index", demo / "retrieval" / "wiki_index")
    link(work / "models" / "base", demo / "base")
    link(work / "models" / "base", demo / "grip" / "model")
    for d in DOMAINS[1:]:
        link(work / "models" / "expert", demo / "expert" / f"{d}_sft")
        link(work / "models" / "injector", demo / "gag" / d / "injector")
    world = demo / "world" / "world"
    dev = [{"input": f"Which lab developed Quarnel-{i}?", "answer": [f"Lab {i}"],
            "instruction": "You are an expert in catalytic materials."} for i in range(3)]
    write_jsonl(world / "materials_domain" / "qa_dev.jsonl", dev)
    write_jsonl(world / "adjuvant_domain" / "qa_dev.jsonl", [{**dev[0], "instruction": "You are an expert in vaccine adjuvants."}])
    mixed = [{"question": d["question"], "domain": d["expected"]} for d in first["routing"]["decisions"]]
    write_jsonl(world / "mixed_domain" / "online" / "mixed.jsonl", mixed)
    wiki = [{"question": f"Which country is the birthplace of Vexkom-{i} in?", "answer": ["Norland"]} for i in (5, 6, 7)]
    write_jsonl(world / "wiki" / "qa_test.jsonl", wiki)

    res = run_example("--models", str(demo), "--n", "2", "--json", str(tmp / "demo.json"))
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp / "demo.json").read_text())
    assert out["source"] == str(demo) and out["notes"] == []
    check_common(out)
    assert [(r["question"], r["gold"], r["domain"]) for r in out["gag"]] == [
        (r["input"], r["answer"], "materials") for r in dev[:2]]
    assert [d["question"] for d in out["routing"]["decisions"]] == [m["question"] for m in mixed[:6]]
    assert out["routing"]["accuracy"] == 1.0
    assert [r["hits"][0]["id"] for r in out["retrieval"]] == ["w-5", "w-6"]


def test_models_dir_missing_is_one_error_line(tmp_path):
    res = run_example("--models", str(tmp_path / "nowhere"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --models {tmp_path / 'nowhere'}: missing ")
    assert "run `make demo` first" in lines[0] and "Traceback" not in res.stderr
