"""PPR end to end on the tiny world, through the CLI (build, eval, add, route, remove) and the
plug-and-play rule: adding a domain must not cost the others > 0.5 points."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "kinject.cli"]


TINY_PPR = REPO / "configs" / "ppr" / "tiny.yaml"


def run(*args):
    res = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def results(out: Path) -> dict[tuple[str, str], dict]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {(r["dataset"], r["metric"]): r for r in rows}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ppr-world") / "world"
    run("world", "build", "--config", REPO / "configs" / "world" / "tiny.yaml", "--out", out)
    return out / "mixed_domain"


@pytest.mark.slow
def test_cli_build_eval_add_route_remove_on_tiny_world(world, tmp_path):
    banks = tmp_path / "banks"
    off = world / "offline"
    online = world / "online" / "mixed.jsonl"
    run("ppr", "build", "--domain", f"general={off / 'general.jsonl'}", "--config", TINY_PPR,
        "--domain", f"materials={off / 'materials.jsonl'}", "--out", banks, "-q")
    two = [f for f in sorted(banks.iterdir()) if f.suffix in (".safetensors",)]
    before_bytes = {f.name: f.read_bytes() for f in two}
    run("ppr", "eval", "--banks", banks, "--data", online, "--out", tmp_path / "e2",
        "--only", "general", "--only", "materials", "--n-latency", "10", "-q")
    run("ppr", "add", "--banks", banks, "--domain", f"adjuvant={off / 'adjuvant.jsonl'}", "--config", TINY_PPR, "-q")
    assert {f.name: f.read_bytes() for f in two} == before_bytes
    run("ppr", "eval", "--banks", banks, "--data", online, "--out", tmp_path / "e3a",
        "--only", "general", "--only", "materials", "--n-latency", "0", "-q")
    res = run("ppr", "eval", "--banks", banks, "--data", online, "--out", tmp_path / "e3",
              "--n-latency", "10", "-q")
    assert "confusion" in res.stdout

    r2, r3a, r3 = results(tmp_path / "e2"), results(tmp_path / "e3a"), results(tmp_path / "e3")
    # plug-and-play: the first two domains lose at most 0.5 points when the third is added
    assert r3a[("general", "accuracy")]["n"] + r3a[("materials", "accuracy")]["n"] == r2[("general", "accuracy")]["n"] * 2
    # The routing bars: a drop <= 0.5 points, >= 0.99 on all three routes. Measured with the tiny
    # PPR config (MiniLM, exemplar banks) on the tiny world: see the numbers in the PPR notes.
    drop = r2[("mixed", "accuracy")]["value"] - r3a[("mixed", "accuracy")]["value"]
    assert r2[("mixed", "accuracy")]["value"] >= 0.99 and drop <= 0.005, drop
    assert r3[("mixed", "accuracy")]["value"] >= 0.99 and r3[("mixed", "accuracy")]["n"] == 450
    assert set(r3) >= {("general", "accuracy"), ("materials", "accuracy"), ("adjuvant", "accuracy"),
                       ("mixed", "macro_accuracy"), ("mixed", "latency_ms_p50")}
    assert (tmp_path / "e3" / "confusion.png").stat().st_size > 1000

    routed = run("ppr", "route", "--banks", banks, "Which Faradaic efficiency does Questhezai-7 reach?")
    d = json.loads(routed.stdout.strip().splitlines()[-1])
    assert d["route"] == "materials" and set(d["scores"]) == {"general", "materials", "adjuvant"}

    run("ppr", "remove", "--banks", banks, "--domain", "adjuvant")
    assert json.loads((banks / "banks.json").read_text())["domains"] == ["general", "materials"]
    assert {f.name: f.read_bytes() for f in two} == before_bytes
