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


def test_split_overrides_tells_questions_from_key_value_arguments():
    from kinject.cliargs import split_overrides

    args = ["What is E=mc2?", "device=cpu", "agent.max_rounds=2", "x = 1", "Who wrote it?", "lora.target-modules=[a]"]
    assert split_overrides(args) == (["What is E=mc2?", "x = 1", "Who wrote it?"],
                                     ["device=cpu", "agent.max_rounds=2", "lora.target-modules=[a]"])
    assert split_overrides(None) == ([], [])


@pytest.mark.parametrize("args", [
    ("gag", "answer", "--config", "configs/gag/materials_answer_tiny.yaml", "Who made Vailhisnal?", "no_such_key=1"),
    ("grip", "answer", "--config", "configs/grip/eval_tiny.yaml", "no_such_key=1", "Who made Vailhisnal?"),
    ("ppr", "route", "--banks", "/nonexistent", "Who made Vailhisnal?", "no_such_key=1"),
    ("ppr", "build", "--domain", "a=/nonexistent.jsonl", "--out", "/tmp/kinject-never-written", "no_such_key=1"),
    ("eval", "run", "--config", "configs/eval/tiny.yaml", "--out", "/tmp/kinject-never-written", "no_such_key=1"),
])
def test_one_override_syntax_on_every_command(args):
    """`key.sub=value` after the options reaches the config on every command, also where the
    other positional arguments are questions: a misspelt key is one error line naming it."""
    from kinject.resources import shipped_root

    res = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=shipped_root())
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "no_such_key" in lines[0], res.stderr
