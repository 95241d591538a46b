"""`kinject ppr` bad input: one `error:` line, exit 2, nothing written or changed."""

from __future__ import annotations

import subprocess
import sys

from .test_ppr_data import questions, write_jsonl

CLI = [sys.executable, "-m", "kinject.cli"]


def run(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def assert_user_error(res, *needles):
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_groups_are_registered():
    res = run("ppr", "--help")
    assert res.returncode == 0
    for cmd in ("build", "add", "remove", "route", "eval"):
        assert cmd in res.stdout
    assert "ppr" in run("bench", "--help").stdout


def test_build_input_errors(tmp_path):
    good = write_jsonl(tmp_path / "m.jsonl", [{"question": q} for q in questions("materials", 5, 0)])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "banks"
    assert_user_error(run("ppr", "build", "--domain", f"materials={good}", "--domain", f"materials={good}",
                          "--out", out), "given twice")
    assert_user_error(run("ppr", "build", "--domain", f"materials={good}", "--domain", f"general={empty}",
                          "--out", out), "empty file")
    assert_user_error(run("ppr", "build", "--domain", f"x={tmp_path / 'nope.jsonl'}", "--out", out), "not found")
    assert not out.exists()


def test_bad_banks_dir_errors(tmp_path):
    assert_user_error(run("ppr", "route", "--banks", tmp_path / "none", "What?"), "banks dir not found")
    (tmp_path / "b").mkdir()
    assert_user_error(run("ppr", "remove", "--banks", tmp_path / "b", "--domain", "x"), "banks.json")
    (tmp_path / "b" / "banks.json").write_text("{broken")
    assert_user_error(run("ppr", "route", "--banks", tmp_path / "b", "What?"), "corrupt banks.json")
