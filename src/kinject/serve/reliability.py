"""`kinject bench reliability`: faults and load on the real server, one table.

Over one set of loaded models, on loopback servers (as `kinject bench serve`):

1. load: `requests` chat completions of `--data` with `concurrency` in flight at the config's
   max batch size, cold; every answer checked against the same question asked alone
   (`loadtest.load_runs`): nothing lost, nothing mismatched.
2. malformed requests: a fixed set (`malformed_cases`) of bad bodies, keys, paths and admin
   calls; each must get its 4xx in OpenAI's error shape (never a 5xx), and the server must
   answer a good request afterwards.
3. hot-plug stall: load (the `--data` questions in turn, `concurrency` in flight) while
   `POST /admin/domains` adds a domain (a configured domain's expert and injector under the
   name `hotplugged`, its bank built from a questions JSONL in the worker process), then the
   same requests idle, each from cold caches: p99 while adding / p99 idle (target < 2).
4. restart recovery: that server is stopped and a new one started from the same config (models
   loaded again, the registry replayed): the added domain must be listed, available, and give
   the answer it gave before the restart.
5. routing accuracy on the labelled `--data`, without and with abstention (the served banks'
   thresholds), as `kinject ppr eval` computes it.

The registry and the bank built for the added domain live under `--out/registry`: the served
config's own registry is never read nor written. Writes bench.json + summary.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from kinject.errors import UserError
from kinject.log import get_logger
from kinject.serve.loadtest import fire, load_runs, run_questions

log = get_logger(__name__)

HOTPLUG = "hotplugged"  # the name the added domain is served under
ERROR_KEYS = {"message", "type", "param", "code"}  # OpenAI's error object
STALL_TARGET = 2.0  # p99 while adding a domain / p99 idle
NESTING = 1900  # deeper than Python's recursion limit, a 3.8 kB body


@dataclass(frozen=True)
class Case:
    """One malformed request and the error it must get."""

    name: str
    method: str
    path: str
    status: int
    code: str | None
    body: bytes | None = None
    key: str = "public"  # the bearer key sent: public, admin, wrong, none


def malformed_cases(cfg, domain: str) -> list[Case]:
    """The documented 4xx cases (docs/serving.md, "Batching, limits, shutdown") for `cfg`;
    `domain`: a configured domain (an add under its name is a 409)."""
    def chat(**kw) -> bytes:
        return json.dumps({"model": "base", "messages": [{"role": "user", "content": "hi"}], **kw}).encode()

    opts = cfg.pipeline.domains[domain]
    add = {"name": domain, "bank": str(cfg.pipeline.banks), "expert": str(opts.expert), "injector": str(opts.injector)}
    too_long = "word " * (cfg.max_question_tokens + 1)  # at least one token per word
    cases = [
        Case("bad JSON", "POST", "/v1/chat/completions", 400, "invalid_json", b'{"model": "base", "messages": ['),
        Case("invalid UTF-8", "POST", "/v1/chat/completions", 400, "invalid_json", b'{"model": "\xff"}'),
        Case("lone surrogate in content", "POST", "/v1/chat/completions", 400, "invalid_text",
             b'{"model": "base", "messages": [{"role": "user", "content": "a\\ud800b"}]}'),
        Case("deeply nested JSON", "POST", "/v1/chat/completions", 400, "invalid_json",
             chat()[:-1] + b', "x": ' + b"[" * NESTING + b"]" * NESTING + b"}"),
        Case("body over max_body_bytes", "POST", "/v1/chat/completions", 413, "body_too_large",
             chat(messages=[{"role": "user", "content": "x" * cfg.max_body_bytes}])),
        Case("body not an object", "POST", "/v1/chat/completions", 422, "invalid_field", b"[1, 2]"),
        Case("no messages", "POST", "/v1/chat/completions", 422, "invalid_field", b'{"model": "base"}'),
        Case("empty messages", "POST", "/v1/chat/completions", 422, "invalid_field", chat(messages=[])),
        Case("unknown role", "POST", "/v1/chat/completions", 422, "invalid_field",
             chat(messages=[{"role": "robot", "content": "hi"}])),
        Case("no user message", "POST", "/v1/chat/completions", 422, "invalid_field",
             chat(messages=[{"role": "system", "content": "no question"}])),
        Case("max_tokens 0", "POST", "/v1/chat/completions", 422, "invalid_field", chat(max_tokens=0)),
        Case("n 2", "POST", "/v1/chat/completions", 422, "invalid_field", chat(n=2)),
        Case("temperature 9", "POST", "/v1/chat/completions", 422, "invalid_field", chat(temperature=9)),
        Case("question over max_question_tokens", "POST", "/v1/chat/completions", 400, "question_too_long",
             chat(messages=[{"role": "user", "content": too_long}])),
        Case("5 stop strings", "POST", "/v1/chat/completions", 400, "invalid_stop", chat(stop=list("abcde"))),
        Case("response_format json_object", "POST", "/v1/chat/completions", 400, "unsupported_response_format",
             chat(response_format={"type": "json_object"})),
        Case("unknown model", "POST", "/v1/chat/completions", 404, "model_not_found", chat(model="gpt-4")),
        Case("unknown model, streaming", "POST", "/v1/chat/completions", 404, "model_not_found",
             chat(model="gpt-4", stream=True)),
        Case("GET unknown model", "GET", "/v1/models/gpt-4", 404, "model_not_found"),
        Case("unknown path", "POST", "/v1/completions", 404, "unknown_url", chat()),
        Case("wrong method", "DELETE", "/v1/chat/completions", 405, "method_not_allowed"),
        Case("missing key", "POST", "/v1/chat/completions", 401, "invalid_api_key", chat(), key="none"),
        Case("wrong key", "GET", "/v1/models", 401, "invalid_api_key", key="wrong"),
        Case("missing admin key", "GET", "/admin/domains", 401, "invalid_api_key", key="none"),
        Case("public key on admin", "DELETE", f"/admin/domains/{domain}", 401, "invalid_api_key"),
        Case("add: missing fields", "POST", "/admin/domains", 422, "invalid_field", b'{"name": "x"}', key="admin"),
        Case("add: unknown field", "POST", "/admin/domains", 422, "invalid_field",
             json.dumps({**add, "name": "x", "colour": "red"}).encode(), key="admin"),
        Case("add: injector missing", "POST", "/admin/domains", 400, "bad_domain",
             json.dumps({**add, "name": "x", "injector": "/nonexistent/injector"}).encode(), key="admin"),
        Case("add: name served", "POST", "/admin/domains", 409, "domain_exists", json.dumps(add).encode(),
             key="admin"),
        Case("delete: unknown domain", "DELETE", "/admin/domains/nonexistent", 404, "domain_not_found", key="admin"),
        Case("delete: general", "DELETE", "/admin/domains/general", 400, "bad_domain", key="admin"),
    ]
    return cases


def check_case(case: Case, status: int, body: bytes) -> str | None:
    """None when (status, body) is the case's error in OpenAI's shape; else what is wrong."""
    try:
        err = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return f"{status}, not an OpenAI error object: {body[:120]!r}"
    if status != case.status:
        return f"status {status}, expected {case.status}"
    if not isinstance(err, dict) or set(err) != ERROR_KEYS:
        return f"error object with fields {sorted(err) if isinstance(err, dict) else type(err).__name__}"
    if case.code is not None and err["code"] != case.code:
        return f"code {err['code']!r}, expected {case.code!r}"
    return None


def status_classes(status: dict[str, int]) -> tuple[int, int]:
    """(4xx, 5xx) counts of a `fire` status histogram."""
    return (sum(n for k, n in status.items() if k.startswith("4")),
            sum(n for k, n in status.items() if k.startswith("5")))


def fire_cases(url: str, cases: list[Case], keys: dict[str, str]) -> dict:
    import httpx

    rows = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for case in cases:
            headers = {"Content-Type": "application/json"}
            if case.key != "none":
                headers["Authorization"] = f"Bearer {keys[case.key]}"
            r = client.request(case.method, case.path, content=case.body, headers=headers)
            wrong = check_case(case, r.status_code, r.content)
            rows.append({"case": case.name, "request": f"{case.method} {case.path}", "expected": case.status,
                         "status": r.status_code, "ok": wrong is None, **({"wrong": wrong} if wrong else {})})
    status: dict[str, int] = {}
    for r in rows:
        status[str(r["status"])] = status.get(str(r["status"]), 0) + 1
    n4, n5 = status_classes(status)
    return {"requests": len(rows), "as_expected": sum(r["ok"] for r in rows), "4xx": n4, "5xx": n5,
            "status": status, "cases": rows}


def probe(run: dict) -> dict:
    """A `fire` result as a table row: the answers dropped, the 4xx/5xx counted."""
    run.pop("answers", None)
    run["4xx"], run["5xx"] = status_classes(run["status"])
    return run


async def hot_plug(url: str, model: str, questions: list[str], concurrency: int, max_seconds: float,
                   headers: dict, admin: dict, body: dict, models) -> dict:
    """Load (`questions` in turn) while `body` is added, then the same requests idle (the
    baseline); the memory caches cleared before each, so both ask alike from cold."""
    import httpx

    models.clear_caches()
    async with httpx.AsyncClient(base_url=url, timeout=max_seconds) as client:
        t0, took = time.perf_counter(), []
        add = asyncio.create_task(client.post("/admin/domains", json=body, headers=admin))
        add.add_done_callback(lambda _: took.append(time.perf_counter() - t0))
        during = await fire(url, model, questions, 10**9, concurrency, max_seconds, headers, until=add.done)
        try:
            r = await add
            status, error = r.status_code, None if r.status_code == 201 else r.text[:500]
        except httpx.HTTPError as e:  # e.g. not added within max_seconds
            status, error = None, f"{type(e).__name__}: {e}"
    models.clear_caches()
    idle = await fire(url, model, questions, during["requests"], concurrency, max_seconds, headers)
    idle, during = probe(idle), probe(during)
    p99, base = during["latency_ms_p99"], idle["latency_ms_p99"]
    return {"domain": body["name"], "bank": body["bank"], "idle": idle, "during_add": during,
            "add_status": status, "add_error": error,
            "add_s": round(took[0], 2), "p99_ratio": round(p99 / base, 3) if p99 and base else None}


def routing_accuracy(router, labelled) -> dict:
    """`kinject ppr eval`'s accuracy of the served banks on `labelled`, without and with abstention."""
    from kinject.ppr.encoders import MemoEncoder
    from kinject.ppr.evaluate import evaluate
    from kinject.ppr.router import FALLBACK, Router

    enc = MemoEncoder(router.encoder)  # the questions are encoded once for both
    out: dict = {"n": len(labelled)}
    for name, abstain in (("without_abstention", False), ("with_abstention", True)):
        r = Router(enc, router.banks, router.margin, abstain)
        res = evaluate(r, labelled, n_latency=0, progress=False)
        out[name] = {"accuracy": round(res.accuracy, 4), "macro_accuracy": round(res.macro_accuracy, 4),
                     "to_general": sum(x == FALLBACK for x in res.routes), "thresholds": r.thresholds}
    return out


def ask(url: str, model: str, question: str, headers: dict) -> tuple[int, str | None]:
    import httpx

    r = httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=120,
                   json={"model": model, "messages": [{"role": "user", "content": question}]})
    return r.status_code, r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else None


def restart(cfg, before: list[str], question: str, answer: str | None, headers: dict) -> dict:
    """A new server from `cfg` (models loaded again, the registry replayed): is `HOTPLUG` back?"""
    import httpx

    from kinject.serve.app import create_app
    from kinject.serve.models import ServedModels
    from kinject.serve.runner import ServerThread

    t0 = time.perf_counter()
    models = ServedModels(cfg)
    with ServerThread(create_app(cfg, models)) as srv:
        took = time.perf_counter() - t0
        listed = [m["id"] for m in httpx.get(f"{srv.url}/v1/models", headers=headers).json()["data"]]
        state = httpx.get(f"{srv.url}/ready").json()["domains"].get(HOTPLUG, {}).get("state")
        status, again = ask(srv.url, f"gag-{HOTPLUG}", question, headers)
    return {"restart_s": round(took, 2), "models_before": before, "models_after": listed,
            "same_models": sorted(listed) == sorted(before), "listed": f"gag-{HOTPLUG}" in listed,
            "state": state, "status": status, "same_answer": status == 200 and again == answer,
            "question": question, "answer_before": answer, "answer_after": again}


def hotplug_body(cfg, source: str, bank: Path) -> dict:
    """`POST /admin/domains` for `HOTPLUG`: the configured domain `source`'s expert and injector."""
    from kinject.serve.app import AddDomainRequest

    opts = cfg.pipeline.domains[source].model_dump(mode="json", exclude_none=True)
    keep = set(AddDomainRequest.model_fields) - {"name", "bank"}
    return {"name": HOTPLUG, "bank": str(bank), **{k: v for k, v in opts.items() if k in keep}}


def run_reliability(cfg, out: Path, data: Path, requests: int = 200, concurrency: int = 32,
                    model: str = "kinject-mixed", max_seconds: float = 300.0,
                    hotplug_from: str | None = None, hotplug_bank: Path | None = None) -> dict:
    import httpx
    import torch

    from kinject.bench.common import md_table, write_outputs
    from kinject.io import write_jsonl_atomic
    from kinject.ppr.evaluate import read_labelled
    from kinject.serve.app import create_app
    from kinject.serve.models import ServedModels
    from kinject.serve.runner import ServerThread

    # every user error before any model loads
    labelled = read_labelled(data)
    batch = cfg.batching.max_batch_size
    questions = run_questions(data, requests, concurrency, [batch])
    pool = list(dict.fromkeys(q.question for q in labelled))
    if not cfg.pipeline.domains:
        raise UserError("the config serves no GAG domain: nothing to copy for the hot-plug check")
    source = hotplug_from or next(iter(cfg.pipeline.domains))
    if source not in cfg.pipeline.domains:
        raise UserError(f"--hotplug-from {source!r} is not a configured domain ({', '.join(cfg.pipeline.domains)})")
    if hotplug_bank is not None and not hotplug_bank.is_file():
        raise UserError(f"--hotplug-bank {hotplug_bank}: no such file (a JSONL of questions)")
    reg = out / "registry"
    shutil.rmtree(reg, ignore_errors=True)  # ours: each run starts from the configured domains
    reg.mkdir(parents=True)
    if hotplug_bank is None:  # the --data questions of the copied domain
        mine = [{"question": q.question} for q in labelled if q.label == source]
        if not mine:
            raise UserError(f"{data}: no question labelled {source!r} to build the added domain's bank from; "
                            "give --hotplug-bank")
        hotplug_bank = reg / f"{HOTPLUG}.jsonl"
        write_jsonl_atomic(hotplug_bank, mine)
    # keys as the server reads them (the environment first); a random one where none is set
    keys = {"public": os.environ.get("KINJECT_API_KEY") or cfg.api_key or secrets.token_hex(8),
            "admin": os.environ.get("KINJECT_ADMIN_KEY") or cfg.admin_key or secrets.token_hex(8),
            "wrong": secrets.token_hex(8)}
    cfg = cfg.model_copy(update={"api_key": keys["public"], "admin_key": keys["admin"],
                                 "registry": reg / "serve.domains.json"})
    headers = {"Authorization": f"Bearer {keys['public']}"}
    admin = {"Authorization": f"Bearer {keys['admin']}"}

    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    torch.set_num_threads(cfg.threads)
    models = ServedModels(cfg)
    load = probe(load_runs(cfg, models, model, questions, requests, concurrency, max_seconds, [batch], headers)[0])
    log.info("routing accuracy on %s ...", data)
    routing = routing_accuracy(models.pipeline.snapshot.router, labelled)
    body = hotplug_body(cfg, source, hotplug_bank)
    check_q = next((q.question for q in labelled if q.label == source), pool[0])
    with ServerThread(create_app(cfg, models)) as srv:
        log.info("malformed requests ...")
        malformed = fire_cases(srv.url, malformed_cases(cfg, source), keys)
        malformed["then_200"] = ask(srv.url, model, pool[0], headers)[0] == 200
        log.info("hot-plug: load while %s is added from %s, then the same load idle ...", HOTPLUG, hotplug_bank)
        plug = asyncio.run(hot_plug(srv.url, model, pool, concurrency, max_seconds, headers, admin, body, models))
        served = [m["id"] for m in httpx.get(f"{srv.url}/v1/models", headers=headers).json()["data"]]
        status, answer = ask(srv.url, f"gag-{HOTPLUG}", check_q, headers)
    log.info("restart from the same config ...")
    back = restart(cfg, served, check_q, answer if status == 200 else None, headers)

    phases = [load, plug["during_add"], plug["idle"]]
    checks = {
        "no_lost": all(p["lost"] == 0 for p in phases),
        "no_mismatched": load["mismatched"] == 0,
        "no_5xx": all(p["5xx"] == 0 for p in phases) and malformed["5xx"] == 0,
        "malformed_all_expected": malformed["as_expected"] == malformed["requests"] and malformed["then_200"],
        "hot_plug_added": plug["add_status"] == 201,
        "restart_recovered": back["listed"] and back["state"] == "available" and back["same_answer"],
    }
    targets = {"stall_p99_under_2x": plug["p99_ratio"] is not None and plug["p99_ratio"] < STALL_TARGET}
    without, withab = routing["without_abstention"], routing["with_abstention"]
    rows = [
        {"what": f"load ({model}, max batch {batch}, cold)", **_cells(load),
         "result": f"{load['throughput_rps']} req/s, {load['checked']} answers checked against asked alone"},
        {"what": "malformed requests", "requests": malformed["requests"], "concurrency": 1, "4xx": malformed["4xx"],
         "5xx": malformed["5xx"],
         "result": f"{malformed['as_expected']}/{malformed['requests']} got their 4xx in the OpenAI error shape; "
                   f"then a request: {'200' if malformed['then_200'] else 'FAILED'}"},
        {"what": "during POST /admin/domains", **_cells(plug["during_add"]),
         "result": f"p99 {plug['p99_ratio']}x idle (target < {STALL_TARGET:g}); add {plug['add_status']} "
                   f"in {plug['add_s']} s"},
        {"what": "the same requests, idle", **_cells(plug["idle"]), "result": "the stall's baseline"},
        {"what": "restart from the same config", "requests": 1, "concurrency": 1,
         "result": f"gag-{HOTPLUG} {'served again' if back['listed'] else 'MISSING'} ({back['state']}), "
                   f"answer {'the same' if back['same_answer'] else 'DIFFERENT'}; "
                   f"models {'the same' if back['same_models'] else 'DIFFERENT'}; restart {back['restart_s']} s"},
        {"what": "routing without abstention", "requests": routing["n"],
         "result": f"accuracy {without['accuracy']} (macro {without['macro_accuracy']}), "
                   f"{without['to_general']} to general"},
        {"what": "routing with abstention", "requests": routing["n"],
         "result": f"accuracy {withab['accuracy']} (macro {withab['macro_accuracy']}), "
                   f"{withab['to_general']} to general; cost {round(without['accuracy'] - withab['accuracy'], 4)}"},
    ]
    failed = [k for k, ok in checks.items() if not ok]
    result = {"loadavg_start": loadavg_start, "model": model, "data": str(data), "config": {"batching": cfg.batching.model_dump(),
                                                            "banks": str(cfg.pipeline.banks)},
              "load": load, "malformed": malformed, "hot_plug": plug, "restart": back, "routing": routing,
              "checks": checks, "targets": targets, "failed": failed, "table": rows}
    cols = ["what", "requests", "concurrency", "p50_ms", "p99_ms", "4xx", "5xx", "lost", "mismatched", "result"]
    summary = md_table(rows, cols) + ["", "Checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}"
                                                                 for k, v in {**checks, **targets}.items())]
    wrong = [c for c in malformed["cases"] if not c["ok"]]
    summary += [f"- malformed `{c['case']}` ({c['request']}): {c['wrong']}" for c in wrong]
    write_outputs(out, "reliability", result, summary)
    return result


def _cells(run: dict) -> dict:
    return {"requests": run["requests"], "concurrency": run["concurrency"], "p50_ms": run["latency_ms_p50"],
            "p99_ms": run["latency_ms_p99"], "4xx": run["4xx"], "5xx": run["5xx"], "lost": run["lost"],
            "mismatched": run.get("mismatched")}
