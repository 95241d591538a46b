"""What every suite shares: the environment record, timers, percentiles and the output pair
(`bench.json` + `summary.md`, both written atomically)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from kinject.io import write_json_atomic, write_text_atomic


def set_threads(threads: int | None) -> None:
    """1 torch thread by default: on the shared CPU one thread measured several times faster
    than two (the other core is busy with training)."""
    if threads:
        torch.set_num_threads(threads)


def environment() -> dict:
    import transformers

    env = {
        "machine": platform.machine(), "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(), "load_avg_1m_5m_15m": [round(x, 2) for x in os.getloadavg()],
        "nice": os.nice(0), "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda_version"] = torch.version.cuda
    return env


def now_ms() -> float:
    return time.perf_counter() * 1000.0


@contextmanager
def clock():
    """`with clock() as c: ...` then `c["ms"]` (wall) and `c["cpu_ms"]` (this process, all threads)."""
    box: dict = {}
    w, c = time.perf_counter(), time.process_time()
    try:
        yield box
    finally:
        box["ms"] = (time.perf_counter() - w) * 1000.0
        box["cpu_ms"] = (time.process_time() - c) * 1000.0


def median_ms(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(times)


def pct(values: Sequence[float], q: float) -> float | None:
    """Percentile by linear interpolation (numpy's default)."""
    if not values:
        return None
    import numpy as np

    return round(float(np.percentile(list(values), q)), 3)


def mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def write_outputs(out: Path, suite: str, result: dict, summary_lines: list[str]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    result = {"suite": suite, "environment": environment(), **result}
    write_json_atomic(out / "bench.json", result)
    env = result["environment"]
    head = [f"# kinject bench {suite}", "",
            f"torch {env['torch']}, transformers {env['transformers']}, {env['cpu_count']} CPUs, "
            f"{env['torch_threads']} torch thread(s), load average {env['load_avg_1m_5m_15m']}, "
            f"CUDA: {env.get('gpu', 'none')}", ""]
    write_text_atomic(out / "summary.md", "\n".join(head + summary_lines) + "\n")
    return out / "bench.json"


def md_table(rows: list[dict], cols: Sequence[str]) -> list[str]:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return lines
