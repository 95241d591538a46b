"""Run manifests and fingerprints.

Every command that produces artifacts writes `<out>/manifest.json`: the resolved config,
package versions, git commit, seed, wall time, timings and metrics, written atomically.
`inputs_hash` lets stages skip work whose inputs and config are unchanged (see `is_complete`).

Fingerprints, the one policy for "are these the same files?" (stage hashes, the model a memory
store or an injector was made with, a routing encoder's id, the paths an evaluation names): a
file or directory is identified by its content, read cheaply. Every file (a directory's files in
sorted order with their relative paths; hidden files and directories skipped) counts whole when
it is at most `WHOLE_FILE_BYTES`; a larger one counts by its size plus a fixed sample: for
safetensors the header (every tensor's name, dtype, shape and offsets) and `SAMPLE_BYTES` at the
start, middle and end of every tensor, for other files `SAMPLE_BLOCKS` evenly spaced blocks.

- Cheap: at most `WHOLE_FILE_BYTES` per file plus a few small reads per tensor, whatever the
  model size (an 8B checkpoint's 16 GB of weights cost a few hundred KB of reads), so every
  stage check can afford it.
- Changes when a config, tokenizer or data file changes, when a file is added, removed, renamed
  or resized, and when training changes a tensor (an update moves nearly every element of a
  tensor, so its sampled spots too). Unseen: an edit confined to unsampled bytes of a file over
  `WHOLE_FILE_BYTES` (a hand edit of a weight). It does not change when a directory is copied,
  moved or downloaded again (no paths above it, no mtimes): artifacts stay valid elsewhere.
- Formats: `fingerprint` returns `"fp1-<16 hex>"`. Artifacts written by older versions hold
  fingerprints of another format (weights hashed differently); those prove nothing either way
  (`fingerprints_conflict`), so such an artifact is still read, and stage hashes over large
  weights or whole model directories differ once: those stages recompute, nothing fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import shutil
import struct
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


FINGERPRINT_FORMAT = "fp1"
WHOLE_FILE_BYTES = 16 * 2**20  # configs, tokenizers (a Qwen tokenizer.json: 11 MB), data, tiny models
SAMPLE_BYTES = 64  # per sampled spot of a tensor
SAMPLE_BLOCKS, BLOCK_BYTES = 64, 4096  # large files without a tensor layout


def _safetensors_spots(f, size: int) -> list[tuple[int, int]] | None:
    """(offset, length) of the header and of the start, middle and end of every tensor;
    None when the file does not parse as safetensors."""
    try:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            return None
        header = json.loads(f.read(n))
        base = 8 + n
        spots = {(0, base)}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = (base + int(x) for x in info["data_offsets"])
            k = min(SAMPLE_BYTES, end - start)
            spots |= {(start, k), ((start + end - k) // 2, k), (end - k, k)}
    except (struct.error, ValueError, TypeError, KeyError, AttributeError):
        return None
    return sorted(spots)


def _content(path: Path) -> bytes:
    """What a file contributes to a fingerprint: its bytes, or for a large file a digest of its
    size and sampled spots (see the module docstring)."""
    size = path.stat().st_size
    if size <= WHOLE_FILE_BYTES:
        return path.read_bytes()
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        spots = _safetensors_spots(f, size) if path.suffix == ".safetensors" else None
        if spots is None:
            spots = [(max(size - BLOCK_BYTES, 0) * i // (SAMPLE_BLOCKS - 1), BLOCK_BYTES) for i in range(SAMPLE_BLOCKS)]
        for offset, length in spots:
            f.seek(offset)
            h.update(f.read(length))
    return h.digest()


def _feed(h, path: Path) -> None:
    if path.is_dir():
        for sub in sorted(x for x in path.rglob("*") if x.is_file()):
            rel = sub.relative_to(path)
            if not any(part.startswith(".") for part in rel.parts):  # .cache/, .git/: not the model
                h.update(str(rel).encode())
                h.update(_content(sub))
    elif path.is_file():
        h.update(_content(path))


def fingerprint(path: str | Path) -> str:
    """`"fp1-<16 hex>"` identifying a file or directory by its content (policy: module
    docstring); "" when the path does not exist."""
    p = Path(path)
    if not p.exists():
        return ""
    h = hashlib.sha256()
    _feed(h, p)
    return f"{FINGERPRINT_FORMAT}-{h.hexdigest()[:16]}"


def model_fingerprint(model) -> str:
    """The fingerprint of the local directory a loaded model came from (`name_or_path`, set by
    `from_pretrained`); "" for a model that was built in memory."""
    src = str(getattr(model, "name_or_path", "") or "")
    return fingerprint(src) if src and Path(src).is_dir() else ""


def fingerprints_conflict(a: str, b: str) -> bool:
    """Whether two fingerprints prove different files: both known, of one format, unequal.
    An empty one (a model built in memory) or one of another format (written by an older
    version) proves nothing, so an artifact is never refused for it."""

    def fmt(fp: str) -> str:
        head, sep, _ = fp.partition("-")
        return head if sep else ""

    return bool(a) and bool(b) and fmt(a) == fmt(b) and a != b


def inputs_hash(config: Any, *files: str | Path) -> str:
    """Hash of a config and input files or directories (fingerprint policy): equal hash -> the
    stage's output is reusable. Missing paths count as absent."""
    h = hashlib.sha256(json.dumps(config_dict(config), sort_keys=True, default=str).encode())
    for f in files:
        _feed(h, Path(f))
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


def fresh_or_resume(out: Path, expected_hash: str) -> None:
    """Keep `out` for resuming only if it was started from the same inputs; else remove it."""
    marker = out.parent / f".{out.name}.inputs"
    if out.exists() and (not marker.is_file() or marker.read_text() != expected_hash):
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(expected_hash)


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
