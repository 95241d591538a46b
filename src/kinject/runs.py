"""Run manifests: every command that produces artifacts writes `<out>/manifest.json`.

The manifest records the resolved config, package versions, git commit, seed, wall time,
timings and metrics, written atomically. `inputs_hash` lets stages skip work whose inputs and
config are unchanged (see `is_complete`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from kinject.io import write_json_atomic

TRACKED_PACKAGES = (
    "kinject", "torch", "transformers", "tokenizers", "accelerate", "peft", "trl",
    "datasets", "sentence-transformers", "tantivy", "faiss-cpu", "numpy",
)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent,
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def config_dict(config: Any) -> Any:
    if isinstance(config, BaseModel):
        return config.model_dump(mode="json")
    return config


def inputs_hash(config: Any, *files: str | Path) -> str:
    """Content hash of a config and input files: equal hash -> the stage's output is reusable."""
    h = hashlib.sha256(json.dumps(config_dict(config), sort_keys=True, default=str).encode())
    for f in files:
        p = Path(f)
        if p.is_dir():
            for sub in sorted(x for x in p.rglob("*") if x.is_file() and not x.name.startswith(".")):
                h.update(str(sub.relative_to(p)).encode())
                h.update(sub.read_bytes())
        elif p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def read_manifest(out_dir: str | Path) -> dict | None:
    p = Path(out_dir) / "manifest.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def is_complete(out_dir: str | Path, expected_hash: str) -> bool:
    m = read_manifest(out_dir)
    return bool(m and m.get("status") == "complete" and m.get("inputs_hash") == expected_hash)


class RunRecorder:
    """Collects timings and metrics during a run; `write` produces the manifest."""

    def __init__(self, out_dir: str | Path, command: str, config: Any = None, seed: int | None = None):
        self.out_dir = Path(out_dir)
        self.command = command
        self.config = config
        self.seed = seed
        self.started = time.time()
        self.timings: dict[str, float] = {}
        self.metrics: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}

    @contextlib.contextmanager
    def timer(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 3)

    def write(self, out_dir: str | Path | None = None, inputs_hash: str | None = None) -> Path:
        target = Path(out_dir) if out_dir is not None else self.out_dir
        manifest = {
            "command": self.command,
            "argv": sys.argv,
            "status": "complete",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(time.time() - self.started, 3),
            "seed": self.seed,
            "git_commit": git_commit(),
            "versions": package_versions(),
            "config": config_dict(self.config),
            "inputs_hash": inputs_hash,
            "timings_s": self.timings,
            "metrics": self.metrics,
            **self.extra,
        }
        return write_json_atomic(target / "manifest.json", manifest)
