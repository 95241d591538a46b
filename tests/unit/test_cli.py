import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "kinject.cli"]


def run(*args):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def test_help_lists_groups():
    res = run("--help")
    assert res.returncode == 0
    for group in ("model", "config", "demo"):
        assert group in res.stdout


@pytest.mark.parametrize("args", [("model", "info", "/nonexistent"),
                                  ("config", "show", "--config", "/nope.yaml")])
def test_user_errors_are_one_line_exit_2(args):
    res = run(*args)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "Traceback" not in res.stderr


def test_model_tiny_then_info(tmp_path):
    out = tmp_path / "m"
    res = run("model", "tiny", "--arch", "llama", "--hidden", "32", "--layers", "1", "--vocab", "400", "--out", str(out))
    assert res.returncode == 0, res.stderr
    info = run("model", "info", str(out))
    assert info.returncode == 0 and '"LlamaForCausalLM"' in info.stdout
