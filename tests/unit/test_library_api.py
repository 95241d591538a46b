"""kinject as a library: `import kinject` is light and changes nothing in the host process; the
public names load lazily; the `kinject` command, not the import, sets the offline variables."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import pytest

import kinject
from kinject.cli import OFFLINE_ENV

HEAVY = ("torch", "transformers", "huggingface_hub", "sentence_transformers", "numpy")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the offline variables (the test process has them set)."""
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV}
    return {**env, **extra}


def run_python(code: str, env: dict[str, str], *args: str) -> dict:
    res = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


IMPORT_CODE = f"""
import json, os, sys
import kinject
names = sorted(kinject.__all__)
print(json.dumps({{"env": {{k: os.environ.get(k) for k in {sorted(OFFLINE_ENV)!r}}},
                  "heavy": [m for m in {HEAVY!r} if m in sys.modules], "names": names}}))
"""


def test_import_kinject_sets_nothing_and_imports_no_torch():
    out = run_python(IMPORT_CODE, clean_env())
    assert out["env"] == {k: None for k in OFFLINE_ENV}
    assert out["heavy"] == []
    assert out["names"] == sorted(kinject.__all__) and "GagPipeline" in out["names"]


CLI_CODE = f"""
import json, os, sys
import kinject.cli
heavy = [m for m in {HEAVY[:3]!r} if m in sys.modules]  # imported before main: the variables would come too late
before = {{k: os.environ.get(k) for k in {sorted(OFFLINE_ENV)!r}}}
sys.argv = ["kinject", "version"]
try:
    kinject.cli.main()
except SystemExit as e:
    assert not e.code, e.code
after = {{k: os.environ.get(k) for k in {sorted(OFFLINE_ENV)!r}}}
print(json.dumps({{"heavy": heavy, "before": before, "after": after}}))
"""


def test_the_cli_sets_the_offline_variables_before_any_model_library():
    out = run_python(CLI_CODE, clean_env())
    assert out["heavy"] == []
    assert out["before"] == {k: None for k in OFFLINE_ENV}
    assert out["after"] == OFFLINE_ENV


def test_the_cli_keeps_a_value_the_user_set():
    out = run_python(CLI_CODE, clean_env(HF_HUB_OFFLINE="0"))
    assert out["after"]["HF_HUB_OFFLINE"] == "0"
    assert out["after"]["TRANSFORMERS_OFFLINE"] == "1"


NO_NETWORK_CODE = """
import json, socket, sys
import torch
torch.set_num_threads(1)
calls = []
def refuse(self, address, *a, **k):
    calls.append(str(address))
    raise OSError("network refused in this test")
socket.socket.connect = refuse
socket.create_connection = lambda address, *a, **k: refuse(None, address)
import kinject
model, tok = kinject.load_causal_lm(sys.argv[1], device="cpu")
errors = []
for missing in ("Qwen/Qwen3-8B", sys.argv[1] + "-missing"):
    try:
        kinject.load_causal_lm(missing, device="cpu")
    except kinject.UserError as e:
        errors.append(str(e))
print(json.dumps({"calls": calls, "type": type(model).__name__, "vocab": len(tok), "errors": errors}))
"""


def test_library_loaders_stay_local_without_the_offline_variables(tiny_model_dir, tiny_tokenizer):
    """No HF_HUB_OFFLINE in the environment and every socket refused: a local model loads, a hub
    id or a missing path is a UserError naming it, and nothing tried to connect."""
    out = run_python(NO_NETWORK_CODE, clean_env(), str(tiny_model_dir))
    assert out["calls"] == []
    assert out["type"] == "Qwen3ForCausalLM" and out["vocab"] == len(tiny_tokenizer)
    assert len(out["errors"]) == 2
    assert "does not exist: Qwen/Qwen3-8B" in out["errors"][0]
    assert f"{tiny_model_dir}-missing" in out["errors"][1]


def test_every_public_name_resolves_to_its_home():
    assert sorted(kinject.__all__) == sorted(kinject._EXPORTS)
    assert len(set(kinject.__all__)) == len(kinject.__all__)
    for name in kinject.__all__:
        obj = getattr(kinject, name)
        assert inspect.isclass(obj) or inspect.isfunction(obj), name
        assert obj.__name__ == name
        assert obj.__module__ == kinject._EXPORTS[name], (name, obj.__module__)
    assert set(kinject.__all__) <= set(dir(kinject))


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        kinject.NoSuchThing  # noqa: B018
    assert not hasattr(kinject, "not_exported")


def test_star_import_gives_the_public_names():
    ns: dict = {}
    exec("from kinject import *", ns)
    assert {n for n in ns if not n.startswith("__")} == set(kinject.__all__)


def test_no_library_module_imports_a_recipe():
    """The demo's recipes (`kinject.recipes`) import the library, never the other way round;
    the CLI only registers the `kinject demo` command."""
    from pathlib import Path

    src = Path(kinject.__file__).parent
    users = [p.relative_to(src).as_posix() for p in src.rglob("*.py")
             if "kinject.recipes" in p.read_text() and p.relative_to(src).parts[0] != "recipes"]
    assert users == ["cli.py"], users
