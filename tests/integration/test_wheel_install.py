"""A non-editable install carries its shipped configs and assets: built as a wheel, installed into
a bare folder and run from another directory, `kinject demo` finds them inside the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_ships_configs_and_runs_the_demo_from_elsewhere(tmp_path):
    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(wheels)], check=True,
                   cwd=tmp_path)
    (wheel,) = wheels.glob("kinject-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    shipped = target / "kinject" / "_shipped"
    for rel in ("configs/eval/tiny.yaml", "configs/real/eval_smollm2.yaml", "assets/foundation/tiny/base/config.json",
                "data/realqa/nq_oracle/dev.jsonl"):
        assert (shipped / rel).is_file(), rel
    code = ("import sys; from kinject.resources import shipped_root; print(shipped_root()); "
            "from kinject.cli import main; sys.argv = ['kinject', 'demo', '--quick', '--only', 'world', "
            f"'--out', {str(work / 'out')!r}]; main()")
    run = subprocess.run([sys.executable, "-c", code], cwd=work, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[0] == str(shipped)  # the wheel's copy, not the checkout
    assert (work / "out" / "world" / "world" / "entities.jsonl").is_file()
