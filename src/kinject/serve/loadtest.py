"""`kinject bench serve`: a bounded loopback load test of the real server.

For each max batch size (1 = unbatched), the server is started on a free loopback port over the
same loaded models, warmed up, then `requests` chat completions are fired with `concurrency`
in flight (httpx, asyncio). Every request must end in 200 or 503 (overload, with Retry-After):
anything else, a transport error or a request still open at the time bound counts as lost.

Each run is cold: the per-question memory caches are cleared before it and it asks questions
no other run (nor the warm-up) asked, so no batch size is served from another's cache and the
gain does not depend on the order of `--batch-sizes`. Every answer is then checked against the
same question asked alone (batch size 1, one request at a time, caches cleared): `mismatched`.
Reported: throughput (answered requests/s), latency p50/p99 of the 200s, the status counts,
the server's batch statistics, and the batching gain (throughput batched / unbatched).
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from pathlib import Path

import numpy as np

from kinject.errors import UserError
from kinject.log import get_logger

log = get_logger(__name__)

FALLBACK_QUESTIONS = [
    "What is the capital of Norland?", "Which lab developed Ferovia-2?", "Through which receptor does Sambram signal?",
    "In which year was Velmora founded?", "What is the surface area of Quillex-7?", "In what form does Raxhusher come?",
]


def load_questions(data: Path | None, needed: int) -> list[str]:
    """`needed` distinct questions: from `data`, or numbered variants of the built-in ones."""
    if data is None:
        return [f"{FALLBACK_QUESTIONS[i % len(FALLBACK_QUESTIONS)]} ({i // len(FALLBACK_QUESTIONS) + 1})"
                for i in range(needed)]
    from kinject.io import read_jsonl

    rows = read_jsonl(data, required=["question"])
    distinct = list(dict.fromkeys(r["question"] for r in rows))
    if len(distinct) < needed:
        raise UserError(f"{data}: {len(distinct)} distinct questions, the runs need {needed} (each run asks its "
                        "own): lower --requests or give a larger --data")
    return distinct[:needed]


async def fire(url: str, model: str, questions: list[str], n: int, concurrency: int, max_seconds: float,
               headers: dict, until=None) -> dict:
    """Up to `n` chat completions (request i asks questions[i % len]) with `concurrency` in flight.
    With `until` (a callable), no request starts once it returns true: `requests` is then the
    number sent. A request still open after `max_seconds` counts as unfinished (and lost)."""
    import httpx

    lat: list[float] = []
    status: dict[str, int] = {}
    answers: dict[str, str] = {}
    sent = 0

    async def one(client, i):
        t = time.perf_counter()
        try:
            r = await client.post("/v1/chat/completions", headers=headers, json={
                "model": model, "messages": [{"role": "user", "content": questions[i % len(questions)]}]})
            key = str(r.status_code)
            if r.status_code == 200:
                answers[questions[i % len(questions)]] = r.json()["choices"][0]["message"]["content"]
            if r.status_code == 503 and "retry-after" not in r.headers:
                key = "503-without-retry-after"
        except httpx.HTTPError as e:
            key = f"error:{type(e).__name__}"
        status[key] = status.get(key, 0) + 1
        if key == "200":
            lat.append(time.perf_counter() - t)

    async def worker(client):
        nonlocal sent
        while sent < n and not (until is not None and until()):
            sent += 1
            await one(client, sent - 1)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=max_seconds, limits=limits) as client:
        t0 = time.perf_counter()
        workers = [asyncio.create_task(worker(client)) for _ in range(min(concurrency, n))]
        _, pending = await asyncio.wait(workers, timeout=max_seconds) if workers else (set(), set())
        for t in pending:
            t.cancel()
        wall = time.perf_counter() - t0
    total = n if until is None else sent
    ok = status.get("200", 0)
    ms = np.array(lat) * 1000
    return {"requests": total, "concurrency": concurrency, "wall_s": round(wall, 3), "status": status,
            "ok": ok, "rejected_503": status.get("503", 0), "lost": total - ok - status.get("503", 0),
            "unfinished": total - sum(status.values()),
            "throughput_rps": round(ok / wall, 3) if wall else 0.0,
            "latency_ms_p50": round(float(np.percentile(ms, 50)), 2) if ok else None,
            "latency_ms_p99": round(float(np.percentile(ms, 99)), 2) if ok else None,
            "latency_ms_mean": round(float(ms.mean()), 2) if ok else None, "answers": answers}


def api_headers(cfg) -> dict:
    key = os.environ.get("KINJECT_API_KEY") or cfg.api_key
    return {"Authorization": f"Bearer {key}"} if key else {}


def run_questions(data: Path | None, requests: int, concurrency: int, batch_sizes: list[int]) -> list[str]:
    """The questions `load_runs` asks: a warm-up, then `requests` distinct ones per batch size."""
    if requests < 1 or concurrency < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise UserError("--requests and --concurrency must be >= 1 and --batch-sizes non-empty, each >= 1")
    return load_questions(data, 2 * max(batch_sizes) + requests * len(batch_sizes))


def load_runs(cfg, models, model: str, questions: list[str], requests: int, concurrency: int, max_seconds: float,
              batch_sizes: list[int], headers: dict) -> list[dict]:
    """One cold run per max batch size (its own server over `models`, its own `requests` of
    `questions` after a warm-up, see `run_questions`), every answer checked against the same
    question asked alone: `mismatched`."""
    import httpx

    from kinject.serve.app import create_app
    from kinject.serve.runner import ServerThread

    warm_n = 2 * max(batch_sizes)  # warm-up: load paths, allocate, first batches
    warm_q, run_q = questions[:warm_n], questions[warm_n:]
    if models.get(model) is None:
        raise UserError(f"--model {model!r} is not served by this config (models: {', '.join(models.names())})")
    cold = cfg.model_copy(update={"registry": None})  # the bench never touches the served domains' registry
    runs = []
    for k, bs in enumerate(batch_sizes):
        mine = run_q[k * requests:(k + 1) * requests]
        run_cfg = cold.model_copy(update={"batching": cfg.batching.model_copy(update={"max_batch_size": bs})})
        with ServerThread(create_app(run_cfg, models)) as srv:
            asyncio.run(fire(srv.url, model, warm_q, len(warm_q), min(len(warm_q), bs), max_seconds, headers))
            models.clear_caches()
            before = httpx.get(f"{srv.url}/health").json()["queues"].get(model, {})
            log.info(f"batch size {bs}: {requests} requests, {concurrency} in flight ...")
            res = asyncio.run(fire(srv.url, model, mine, requests, concurrency, max_seconds, headers))
            after = httpx.get(f"{srv.url}/health").json()["queues"].get(model, {})
        batches = after.get("batches", 0) - before.get("batches", 0)
        served = after.get("requests", 0) - before.get("requests", 0)
        res.update({"max_batch_size": bs, "max_wait_ms": cfg.batching.max_wait_ms, "max_queue": cfg.batching.max_queue,
                    "model_calls": batches, "mean_batch": round(served / batches, 2) if batches else None})
        res["distinct_questions"] = len(set(mine))
        log.info(f"  {res['throughput_rps']} req/s, p50 {res['latency_ms_p50']} ms, p99 {res['latency_ms_p99']} ms, "
            f"status {res['status']}, mean batch {res['mean_batch']}")
        runs.append(res)
    # the reference: every question asked alone (batch size 1, one at a time, cold)
    alone_cfg = cold.model_copy(update={"batching": cfg.batching.model_copy(update={"max_batch_size": 1})})
    models.clear_caches()
    log.info(f"checking {sum(len(r['answers']) for r in runs)} answers against the same questions asked alone ...")
    with ServerThread(create_app(alone_cfg, models)) as srv:
        asked = [q for r in runs for q in r["answers"]]
        alone = asyncio.run(fire(srv.url, model, asked, len(asked), 1, max_seconds * len(runs), headers))["answers"]
    for r in runs:
        answers = r.pop("answers")
        r["mismatched"] = sum(alone.get(q) != a for q, a in answers.items())
        r["checked"] = len(answers)
    return runs


def run_bench(cfg, out: Path, requests: int, concurrency: int, model: str, data: Path | None,
              max_seconds: float, batch_sizes: list[int], models=None) -> dict:
    """`models`: already loaded `ServedModels` for `cfg` (default: load them)."""
    import torch

    from kinject.io import write_json_atomic
    from kinject.serve.models import ServedModels

    questions = run_questions(data, requests, concurrency, batch_sizes)  # before any model loads
    torch.set_num_threads(cfg.threads)
    models = models or ServedModels(cfg)
    runs = load_runs(cfg, models, model, questions, requests, concurrency, max_seconds, batch_sizes, api_headers(cfg))
    by = {r["max_batch_size"]: r for r in runs}
    gain = None
    if 1 in by and len(by) > 1 and by[1]["throughput_rps"]:
        gain = round(max(r["throughput_rps"] for r in runs) / by[1]["throughput_rps"], 3)
    result = {
        "bench": "serve", "model": model, "questions": str(data) if data else "built-in",
        "pipeline": {"base": str(cfg.pipeline.base), "banks": str(cfg.pipeline.banks),
                     "domains": {d: str(o.injector) for d, o in cfg.pipeline.domains.items()}},
        "runs": runs, "batching_gain": gain,
        "all_200_or_503": all(r["lost"] == 0 for r in runs),
        "all_answers_match_alone": all(r["mismatched"] == 0 for r in runs),
        "cold_runs": True,
        "torch_threads": torch.get_num_threads(), "loadavg": list(os.getloadavg()),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "bench.json", result)
    return result
