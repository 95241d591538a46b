"""Routing throughput: batched queries/s (encoding + scoring) and the share of time spent
outside the encoder. A command that writes JSON (`kinject bench ppr`), not a timed test."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence

import numpy as np

from kinject.ppr.router import Router


def bench_routing(router: Router, queries: Sequence[str], n: int = 2048, repeats: int = 3,
                  n_latency: int = 100) -> dict:
    """Median over `repeats` runs of routing `n` queries in batches (queries cycled to n).

    `share_outside_encoder` and `scoring_overhead` come from the same route calls (time in
    `encoder.encode` vs the rest: scoring, decisions, length checks), so machine noise between
    runs does not leak into them; `encode_only_queries_per_s` is a separate encode-only run."""
    import torch

    qs = [queries[i % len(queries)] for i in range(n)]
    router.route_batch(qs[: min(n, 128)])  # warm-up (allocations, lazy init)
    encode_only, total, inside, outside, cpu = [], [], [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        router.encoder.encode(qs)
        encode_only.append(time.perf_counter() - t)
        c = time.process_time()
        router.route_batch(qs)
        cpu.append(time.process_time() - c)
        tm = router.timings
        total.append(tm["total_s"])
        inside.append(tm["encode_s"])
        outside.append(tm["total_s"] - tm["encode_s"])
    latency = []
    for q in qs[:n_latency]:
        t = time.perf_counter()
        router.route(q)
        latency.append((time.perf_counter() - t) * 1000)
    med = statistics.median
    return {
        "n_queries": n,
        "repeats": repeats,
        "batch_size": getattr(router.encoder, "batch_size", None),
        "encoder_id": router.encoder.id,
        "n_domains": len(router.domains),
        "n_prototypes": int(sum(b.k for b in router.banks)),
        "queries_per_s": n / med(total),
        "encode_only_queries_per_s": n / med(encode_only),
        # CPU seconds of this process over all its threads: less sensitive to other jobs on a
        # shared machine; queries_per_s if this process had `torch_threads` cores to itself.
        "queries_per_s_from_cpu_time": n / (med(cpu) / torch.get_num_threads()),
        "share_outside_encoder": med(o / t for o, t in zip(outside, total)),
        "scoring_overhead_vs_encoding": med(o / i for o, i in zip(outside, inside)),
        "scoring_ms_per_1k_queries": 1000 * med(outside) / n * 1000,
        "latency_ms_p50": float(np.percentile(latency, 50)) if latency else None,
        "runs_s": {"route_total": total, "route_encode": inside, "encode_only": encode_only},
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
    }
