"""The real server on loopback (uvicorn in a thread, free port) over tiny random models and a real
MiniLM router: the official openai client for chat, streaming and models; httpx for errors,
batching, overload, admin hot-plug, a domain fault and graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import threading
import time

import httpx
import pytest

from kinject.errors import UserError
from kinject.serve.app import create_app
from kinject.serve.config import ServeConfig
from kinject.serve.models import ServedModels
from kinject.serve.runner import ServerThread

from .mixed_world import build_mixed_world, options_of
from .test_ppr_data import questions

KEY, ADMIN = "test-key", "admin-secret"
Q = {d: questions(d, 4, seed=7) for d in ("general", "materials", "adjuvant")}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizer, tiny_model_dir):
    from kinject.retrieval.index import build_index

    root = tmp_path_factory.mktemp("serve")
    w = build_mixed_world(root, tiny_tokenizer, tiny_model_dir)
    passages = [{"id": f"p{i}", "title": f"Entity {i}", "text": f"Entity {i} was founded in {1800 + i}."}
                for i in range(8)]
    (root / "passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    build_index(root / "passages.jsonl", root / "index", progress=False)
    w["index"] = str(root / "index")
    return w


def make_cfg(world, **kw) -> ServeConfig:
    opts = options_of(world).model_dump()
    opts["grip"] = {"model": str(world["domains"]["materials"]["expert"]), "index": world["index"],
                    "max_rounds": 2, "max_new_tokens": 6}
    return ServeConfig(pipeline=opts, rag={"index": world["index"], "k": 2}, api_key=KEY,
                       max_body_bytes=4096, **{"max_tokens_cap": 4, **kw})


@pytest.fixture(scope="module")
def models(world):
    return ServedModels(make_cfg(world))


@pytest.fixture(scope="module")
def server(world, models):
    cfg = make_cfg(world, batching={"max_batch_size": 8, "max_wait_ms": 150})
    with ServerThread(create_app(cfg, models)) as srv:
        yield srv


def auth(key=KEY):
    return {"Authorization": f"Bearer {key}"}


def chat(url, model, q, key=KEY, **kw):
    return httpx.post(f"{url}/v1/chat/completions", headers=auth(key), timeout=60,
                      json={"model": model, "messages": [{"role": "user", "content": q}], **kw})


def test_openai_client_chat_stream_and_models(server):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    ids = [m.id for m in client.models.list()]
    assert ids == ["kinject-mixed", "base", "kinject-grip", "rag", "gag-materials", "gag-adjuvant"]
    for d in ("materials", "general"):
        resp = client.chat.completions.create(
            model="kinject-mixed", messages=[{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": Q[d][0]}])
        assert resp.object == "chat.completion" and resp.model == "kinject-mixed"
        ch = resp.choices[0]
        assert ch.message.role == "assistant" and isinstance(ch.message.content, str)
        assert ch.finish_reason in ("stop", "length")
        k = resp.model_extra["kinject"]
        assert k["route"] == d and set(k["route_scores"]) == {"general", "materials", "adjuvant"}
        assert k["method"] == ("base" if d == "general" else "gag-materials")
        assert k["timings"]["total_ms"] > 0 and k["timings"]["batch_size"] >= 1
        if d == "materials":
            assert isinstance(k["background"], str) and k["added_prompt_tokens"] == 4
        assert resp.usage.completion_tokens <= 4 and resp.usage.total_tokens > resp.usage.completion_tokens
        # streaming: the same answer as SSE chunks, the kinject object on the last one
        chunks = list(client.chat.completions.create(model="kinject-mixed", stream=True,
                                                     messages=[{"role": "user", "content": Q[d][0]}]))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == ch.message.content
        assert chunks[-1].choices[0].finish_reason == ch.finish_reason
        assert chunks[-1].model_extra["kinject"]["route"] == d
    for model in ("base", "rag", "gag-adjuvant", "kinject-grip"):
        q = "In which year was Entity 3 founded?"
        resp = client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}])
        assert isinstance(resp.choices[0].message.content, str)
        if model == "rag":
            hits = resp.model_extra["kinject"]["retrievals"]
            assert len(hits) == 2 and hits[0]["id"] == "p3"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server):
    url, h = server.url, {**auth(), "Content-Type": "application/json"}
    post = lambda body, **kw: httpx.post(f"{url}/v1/chat/completions", content=body, headers=kw.get("headers", h))  # noqa: E731
    r = post(b'{"model": "base", "messages": [')
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = post(json.dumps({"model": "base"}))
    assert r.status_code == 422 and r.json()["error"]["param"] == "messages"
    r = post(json.dumps({"model": "base", "messages": [{"role": "robot", "content": "hi"}]}))
    assert r.status_code == 422 and r.json()["error"]["param"] == "messages.0.role"
    r = post(json.dumps({"model": "base", "messages": [{"role": "system", "content": "no question"}]}))
    assert r.status_code == 422 and "user message" in r.json()["error"]["message"]
    r = post(json.dumps([1, 2]))
    assert r.status_code == 422
    r = post(json.dumps({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}))
    assert r.status_code == 404 and "gag-materials" in r.json()["error"]["message"]
    r = post(json.dumps({"model": "base", "messages": [{"role": "user", "content": "x" * 5000}]}))
    assert r.status_code == 413
    r = chat(url, "base", "word " * 300)
    assert r.status_code == 400 and r.json()["error"]["code"] == "question_too_long"
    r = chat(url, "base", "hi", max_tokens=1024)  # OpenAI clients' defaults: clipped to the cap, said so
    assert r.status_code == 200 and r.json()["kinject"]["max_tokens_clipped_to"] == 4
    assert r.json()["usage"]["completion_tokens"] <= 4
    assert r.json()["choices"][0]["finish_reason"] == ("length" if r.json()["usage"]["completion_tokens"] == 4 else "stop")
    assert "max_tokens_clipped_to" not in chat(url, "base", "hi", max_tokens=4).json()["kinject"]
    assert chat(url, "base", "hi", key="wrong").status_code == 401
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "base", "messages": []})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{url}/v1/models").status_code == 401
    # max_tokens within the cap cuts the answer there
    r = chat(url, "base", Q["general"][2], max_tokens=1)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 1
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    assert chat(url, "kinject-mixed", Q["adjuvant"][0]).json()["kinject"]["route"] == "adjuvant"


def test_concurrent_requests_are_batched_into_one_model_call(server):
    async def burst():
        async with httpx.AsyncClient(base_url=server.url, timeout=60, headers=auth()) as c:
            qs = [q for d in Q for q in Q[d][:2]]
            rs = await asyncio.gather(*(c.post("/v1/chat/completions", json={
                "model": "kinject-mixed", "messages": [{"role": "user", "content": q}]}) for q in qs))
            return qs, rs

    before = httpx.get(f"{server.url}/health").json()["queues"]["kinject-mixed"]
    qs, rs = asyncio.run(burst())
    after = httpx.get(f"{server.url}/health").json()["queues"]["kinject-mixed"]
    assert [r.status_code for r in rs] == [200] * len(qs)
    assert after["requests"] - before["requests"] == 6
    assert after["batches"] - before["batches"] < 6 and after["max_batch"] >= 2  # grouped, not one by one
    sizes = [r.json()["kinject"]["timings"]["batch_size"] for r in rs]
    assert max(sizes) >= 2
    assert [r.json()["kinject"]["route"] for r in rs] == [d for d in Q for _ in range(2)]


def test_overload_503_with_retry_after_and_timeout_504(world, models):
    cfg = make_cfg(world, batching={"max_batch_size": 1, "max_wait_ms": 0, "max_queue": 2})

    async def flood(url, n):
        async with httpx.AsyncClient(base_url=url, timeout=60, headers=auth()) as c:
            return await asyncio.gather(*(c.post("/v1/chat/completions", json={
                "model": "kinject-mixed", "messages": [{"role": "user", "content": Q["materials"][i % 4]}]})
                for i in range(n)))

    with ServerThread(create_app(cfg, models)) as srv:
        rs = asyncio.run(flood(srv.url, 24))
        codes = [r.status_code for r in rs]
        assert set(codes) == {200, 503} and codes.count(503) >= 1
        assert all(r.headers.get("retry-after") == "1" for r in rs if r.status_code == 503)
        assert chat(srv.url, "base", "hi").status_code == 200  # still serving
    cfg = make_cfg(world, request_timeout_s=0.001)
    with ServerThread(create_app(cfg, models)) as srv:
        r = chat(srv.url, "kinject-mixed", Q["materials"][0])
        assert r.status_code == 504 and "timed out" in r.json()["error"]["message"]
        _is_openai_error(chat(srv.url, "kinject-mixed", Q["materials"][0], stream=True), 504, "timeout")
        assert httpx.get(f"{srv.url}/health").status_code == 200


def test_admin_hot_plug_and_a_domain_fault(world, tmp_path):
    inj = tmp_path / "injector"
    shutil.copytree(world["domains"]["materials"]["injector"], inj)
    cfg = make_cfg(world, admin_key=ADMIN).model_dump()
    cfg["pipeline"]["domains"]["materials"]["injector"] = str(inj)
    models = ServedModels(ServeConfig(**cfg))
    with ServerThread(create_app(ServeConfig(**cfg), models)) as srv:
        url = srv.url
        adm = lambda k=ADMIN: {"Authorization": f"Bearer {k}"}  # noqa: E731
        assert httpx.delete(f"{url}/admin/domains/materials").status_code == 401
        assert httpx.delete(f"{url}/admin/domains/materials", headers=adm(KEY)).status_code == 401
        assert httpx.get(f"{url}/ready").json()["status"] == "ready"
        # a fault: the materials injector vanishes while serving -> only its requests fail (503),
        # readiness names it, liveness stays ok
        shutil.rmtree(inj)
        ready = httpx.get(f"{url}/ready").json()
        assert ready["status"] == "degraded" and ready["unavailable"] == ["materials"]
        assert "missing" in ready["domains"]["materials"]["reason"] and ready["domains"]["adjuvant"]["state"] == "available"
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        for d in ("materials", "adjuvant", "general"):
            r = chat(url, "kinject-mixed", Q[d][1])
            if d == "materials":
                assert r.status_code == 503 and r.json()["error"]["code"] == "domain_unavailable"
                assert "materials" in r.json()["error"]["message"] and "missing" in r.json()["error"]["message"]
            else:
                assert r.status_code == 200 and r.json()["kinject"]["route"] == d
        assert chat(url, "gag-materials", Q["materials"][1]).status_code == 503
        for model in ("gag-materials", "kinject-mixed"):  # streaming: the status, before any chunk
            _is_openai_error(chat(url, model, Q["materials"][1], stream=True), 503, "domain_unavailable")
        assert chat(url, "gag-adjuvant", Q["adjuvant"][1]).status_code == 200
        # hot-plug: remove the broken domain, add it back with a good injector, no restart
        r = httpx.delete(f"{url}/admin/domains/materials", headers=adm())
        assert r.status_code == 200 and r.json()["routes"] == ["general", "adjuvant"]
        assert chat(url, "gag-materials", "hi").status_code == 404
        r = chat(url, "kinject-mixed", Q["materials"][1])
        assert r.status_code == 200 and r.json()["kinject"]["route"] != "materials"
        good = world["domains"]["materials"]
        body = {"name": "materials", "bank": world["banks"], "expert": good["expert"], "injector": good["injector"],
                "system": good["system"], "instruction": good["instruction"], "max_background_tokens": 4}
        r = httpx.post(f"{url}/admin/domains", headers=adm(), json=body, timeout=60)
        assert r.status_code == 201 and r.json()["model"] == "gag-materials" and r.json()["snapshot"] == 2
        assert httpx.get(f"{url}/ready").json()["status"] == "ready"
        assert httpx.post(f"{url}/admin/domains", headers=adm(), json=body).status_code == 409
        r = httpx.post(f"{url}/admin/domains", headers=adm(), json={**body, "name": "x", "injector": "/nope"})
        assert r.status_code == 400 and "injector: /nope does not exist" in r.json()["error"]["message"]
        r = httpx.post(f"{url}/admin/domains", headers=adm(), json={"name": "x"})
        assert r.status_code == 422 and r.json()["error"]["param"] == "bank"
        r = chat(url, "kinject-mixed", Q["materials"][1])
        assert r.status_code == 200 and r.json()["kinject"]["route"] == "materials"
        assert "gag-materials" in [m["id"] for m in httpx.get(f"{url}/v1/models", headers=auth()).json()["data"]]
        assert httpx.delete(f"{url}/admin/domains/general", headers=adm()).status_code == 400
        assert httpx.delete(f"{url}/admin/domains/finance", headers=adm()).status_code == 404
    # without an admin key the admin endpoints are disabled
    with ServerThread(create_app(make_cfg(world), models)) as srv:
        r = httpx.delete(f"{srv.url}/admin/domains/adjuvant", headers={"Authorization": "Bearer x"})
        assert r.status_code == 403 and "disabled" in r.json()["error"]["message"]


def test_graceful_shutdown_drains_in_flight_requests(world, models):
    cfg = make_cfg(world, batching={"max_batch_size": 8, "max_wait_ms": 1000})
    srv = ServerThread(create_app(cfg, models)).start()
    results: list = []

    def one(i):
        results.append(chat(srv.url, "kinject-mixed", Q["adjuvant"][i]).status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    end = time.monotonic() + 60
    while httpx.get(f"{srv.url}/health").json()["queues"].get("kinject-mixed", {}).get("in_flight", 0) < 4:
        assert time.monotonic() < end
        time.sleep(0.01)
    # all 4 are in the server, their batch not run yet (max wait 1 s, max batch 8): drain as on SIGTERM
    srv.server.handle_exit(signal.SIGTERM, None)
    late = chat(srv.url, "kinject-mixed", Q["adjuvant"][0])  # the listener is still open: a clear 503
    assert late.status_code == 503 and late.json()["error"]["code"] == "draining" and late.headers["retry-after"] == "1"
    assert httpx.get(f"{srv.url}/ready").status_code == 503
    srv.thread.join(60)
    for t in threads:
        t.join(60)
    assert results == [200] * 4
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{srv.url}/health", timeout=2)


def test_load_bench_batched_vs_unbatched(world, models, tmp_path):
    from kinject.serve.loadtest import run_bench

    cfg = make_cfg(world, batching={"max_batch_size": 8, "max_wait_ms": 20, "max_queue": 64})
    qs = tmp_path / "q.jsonl"
    qs.write_text("".join(json.dumps({"question": q}) + "\n" for d in Q for q in Q[d]))
    with pytest.raises(UserError, match="distinct questions"):  # each run needs its own questions
        run_bench(cfg, tmp_path / "bench", 24, 8, "kinject-mixed", qs, 120, [1, 8], models=models)
    qs.write_text("".join(json.dumps({"question": q}) + "\n" for d in Q for q in questions(d, 25, seed=21)))
    out = run_bench(cfg, tmp_path / "bench", 24, 8, "kinject-mixed", qs, 120, [1, 8],
                    models=models)
    saved = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert saved == json.loads(json.dumps(out))
    assert out["all_200_or_503"] and [r["max_batch_size"] for r in out["runs"]] == [1, 8]
    for r in out["runs"]:
        assert r["ok"] + r["rejected_503"] == 24 and r["lost"] == 0 and r["unfinished"] == 0
        assert r["throughput_rps"] > 0 and r["latency_ms_p50"] <= r["latency_ms_p99"]
        assert r["distinct_questions"] == 24 and r["checked"] == r["ok"] and r["mismatched"] == 0
    assert out["all_answers_match_alone"] and "answers" not in saved["runs"][0]
    assert out["runs"][0]["mean_batch"] == 1 and out["runs"][1]["mean_batch"] > 1
    best = max(r["throughput_rps"] for r in out["runs"])
    assert out["batching_gain"] == pytest.approx(best / out["runs"][0]["throughput_rps"], rel=1e-2)


# ---------------------------------------------------------------- malformed requests: one 4xx each


def _raw(url, body: str | bytes, path="/v1/chat/completions"):
    return httpx.post(f"{url}{path}", content=body, headers={**auth(), "Content-Type": "application/json"}, timeout=60)


def _is_openai_error(r, status, code=None):
    err = r.json()["error"]
    assert r.status_code == status and set(err) == {"message", "type", "param", "code"}, r.text
    assert code is None or err["code"] == code, err


def test_lone_surrogate_is_a_400(server):
    _is_openai_error(_raw(server.url, '{"model": "base", "messages": [{"role": "user", "content": "a\\ud800b"}]}'),
                     400, "invalid_text")
    ok = '{"model": "base", "messages": [{"role": "user", "content": "a\\ud83d\\ude00b"}]}'  # a valid pair
    assert _raw(server.url, ok).status_code == 200


def test_deeply_nested_json_under_the_body_limit_is_a_400(server):
    body = '{"model": "base", "messages": [{"role": "user", "content": "hi"}], "x": ' + "[" * 1900 + "]" * 1900 + "}"
    assert len(body) < 4096  # the test server's body limit: this is not the 413 path
    _is_openai_error(_raw(server.url, body), 400, "invalid_json")
    assert "nested" in _raw(server.url, body).json()["error"]["message"]


def test_unknown_paths_and_methods_answer_the_openai_error_object(server):
    _is_openai_error(httpx.get(f"{server.url}/v1/nope"), 404, "unknown_url")
    _is_openai_error(httpx.post(f"{server.url}/v1/completions", json={}), 404, "unknown_url")
    _is_openai_error(httpx.delete(f"{server.url}/v1/chat/completions"), 405, "method_not_allowed")


def test_get_one_model(server):
    r = httpx.get(f"{server.url}/v1/models/gag-materials", headers=auth())
    assert r.status_code == 200 and r.json()["id"] == "gag-materials" and r.json()["object"] == "model"
    assert r.json()["kinject"]["state"] == "available"
    mixed = httpx.get(f"{server.url}/v1/models/kinject-mixed", headers=auth()).json()
    assert set(mixed["kinject"]["routing"]["domains"]) == {"general", "materials", "adjuvant"}
    _is_openai_error(httpx.get(f"{server.url}/v1/models/gpt-4", headers=auth()), 404, "model_not_found")
    assert httpx.get(f"{server.url}/v1/models/base").status_code == 401


def test_stop_is_honoured_and_a_bad_stop_is_a_400(server, tiny_tokenizer):
    from kinject.serve.app import finish_answer

    assert finish_answer("the answer is 42. Next", ["."], 20, tiny_tokenizer)[0] == "the answer is 42"
    assert finish_answer("a b c", ["c", "b"], 20, tiny_tokenizer)[::2] == ("a ", "stop")
    text, ids, why = finish_answer("one two three four five six", [], 2, tiny_tokenizer)
    assert len(ids) == 2 and why == "length" and "six" not in text
    assert finish_answer("short", ["zzz"], 50, tiny_tokenizer) == ("short", tiny_tokenizer("short", add_special_tokens=False)["input_ids"], "stop")
    # over HTTP: accepted (the answer never contains a stop string), bad ones are 400
    r = chat(server.url, "base", Q["general"][3], stop=["\n", "."])
    assert r.status_code == 200
    assert not any(x in r.json()["choices"][0]["message"]["content"] for x in ("\n", "."))
    _is_openai_error(chat(server.url, "base", "hi", stop=["a", "b", "c", "d", "e"]), 400, "invalid_stop")
    _is_openai_error(chat(server.url, "base", "hi", stop=""), 400, "invalid_stop")


def test_response_format_other_than_text_is_a_400(server):
    for fmt in ({"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}):
        _is_openai_error(chat(server.url, "base", "hi", response_format=fmt), 400, "unsupported_response_format")
    assert chat(server.url, "base", "hi", response_format={"type": "text"}).status_code == 200


def test_requests_queued_for_a_deleted_domain_get_404(world):
    models = ServedModels(make_cfg(world))
    cfg = make_cfg(world, admin_key=ADMIN, batching={"max_batch_size": 8, "max_wait_ms": 1500})
    with ServerThread(create_app(cfg, models)) as srv:
        codes: list = []
        threads = [threading.Thread(target=lambda q=q: codes.append(chat(srv.url, "gag-adjuvant", q)))
                   for q in Q["adjuvant"][:3]]
        for t in threads:
            t.start()
        end = time.monotonic() + 30
        while httpx.get(f"{srv.url}/health").json()["queues"].get("gag-adjuvant", {}).get("in_flight", 0) < 3:
            assert time.monotonic() < end
            time.sleep(0.01)
        assert httpx.delete(f"{srv.url}/admin/domains/adjuvant",
                            headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
        for t in threads:
            t.join(60)
        for r in codes:
            _is_openai_error(r, 404, "model_not_found")
            assert "removed" in r.json()["error"]["message"]


# ---------------------------------------------------------------- abstention, isolation, persistence


def _calibrated_banks(world, dest):
    """A copy of the world's banks with thresholds calibrated on held-out questions."""
    from kinject.ppr.banks import write_thresholds
    from kinject.ppr.calibrate import calibrate
    from kinject.ppr.router import Router

    shutil.copytree(world["banks"], dest)
    qs = {d: questions(d, 30, seed=11) for d in ("general", "materials", "adjuvant")}
    router = Router.from_pretrained(dest, abstain=False)
    rep = calibrate(router, [q for d in qs for q in qs[d]], [d for d in qs for _ in qs[d]])
    write_thresholds(dest, rep["thresholds"], rep)
    return rep


def test_a_removed_domains_questions_fall_back_to_general(world, tmp_path):
    rep = _calibrated_banks(world, tmp_path / "banks")
    cfg = make_cfg(world, admin_key=ADMIN).model_dump()
    cfg["pipeline"]["banks"] = str(tmp_path / "banks")
    models = ServedModels(ServeConfig(**cfg))
    with ServerThread(create_app(ServeConfig(**cfg), models)) as srv:
        routing = httpx.get(f"{srv.url}/v1/models/kinject-mixed", headers=auth()).json()["kinject"]["routing"]
        assert routing["domains"]["adjuvant"]["threshold"] == pytest.approx(rep["thresholds"]["adjuvant"])
        assert httpx.get(f"{srv.url}/ready").json()["domains"]["materials"]["threshold_source"] == "calibrated"
        assert chat(srv.url, "kinject-mixed", Q["adjuvant"][0]).json()["kinject"]["route"] == "adjuvant"
        httpx.delete(f"{srv.url}/admin/domains/adjuvant", headers={"Authorization": f"Bearer {ADMIN}"})
        wrong = 0
        for q in questions("adjuvant", 20, seed=12):
            k = chat(srv.url, "kinject-mixed", q).json()["kinject"]
            assert "adjuvant" not in k["route_scores"]
            wrong += k["route"] == "materials"
            if k["route"] == "general" and k["route_scores"]["materials"] > k["route_scores"]["general"]:
                assert k["route_fallback"] and k["route_scores"]["materials"] < k["route_score"] + 1  # sanity
        assert wrong <= 2  # without thresholds most of them go to materials (see the PPR tests)


def test_a_domain_that_fails_at_start_is_isolated_or_fails_fast(world, tmp_path):
    cfg = make_cfg(world).model_dump()
    cfg["pipeline"]["domains"]["materials"]["injector"] = str(tmp_path / "gone")
    with pytest.raises(UserError, match="materials.injector"):
        ServedModels(ServeConfig(**cfg))
    cfg["on_domain_error"] = "isolate"
    models = ServedModels(ServeConfig(**cfg))
    with ServerThread(create_app(ServeConfig(**cfg), models)) as srv:
        ready = httpx.get(f"{srv.url}/ready").json()
        assert ready["status"] == "degraded" and ready["unavailable"] == ["materials"]
        assert "gone" in ready["domains"]["materials"]["reason"]
        r = chat(srv.url, "kinject-mixed", Q["materials"][0])
        _is_openai_error(r, 503, "domain_unavailable")
        assert chat(srv.url, "kinject-mixed", Q["adjuvant"][0]).json()["kinject"]["route"] == "adjuvant"
        _is_openai_error(chat(srv.url, "gag-materials", "hi"), 503, "domain_unavailable")


def test_hot_plug_builds_off_the_serving_path_and_survives_a_restart(world, tmp_path):
    registry = tmp_path / "serve.domains.json"
    cfg = make_cfg(world, admin_key=ADMIN, registry=str(registry))
    adm = {"Authorization": f"Bearer {ADMIN}"}
    name, dom = "vaccines", world["all_domains"]["adjuvant"]  # adjuvant's questions under a new name
    body = {"name": name, "bank": world["offline"]["adjuvant"], "expert": dom["expert"], "injector": dom["injector"],
            "system": dom["system"], "instruction": dom["instruction"], "max_background_tokens": 4}
    with ServerThread(create_app(cfg, ServedModels(cfg))) as srv:
        assert httpx.delete(f"{srv.url}/admin/domains/adjuvant", headers=adm).status_code == 200
        added: list = []
        t = threading.Thread(target=lambda: added.append(httpx.post(f"{srv.url}/admin/domains", headers=adm,
                                                                    json=body, timeout=300)))
        t.start()
        end = time.monotonic() + 60
        while name not in httpx.get(f"{srv.url}/ready").json()["adding"]:
            assert time.monotonic() < end and t.is_alive()
            time.sleep(0.01)
        # the bank is being built (a worker process): inference is not blocked meanwhile
        answered = 0
        while name in httpx.get(f"{srv.url}/ready").json()["adding"]:
            assert chat(srv.url, "kinject-mixed", Q["materials"][answered % 4]).status_code == 200
            answered += 1
        t.join(300)
        assert answered >= 1 and added[0].status_code == 201, added[0].text
        assert chat(srv.url, "kinject-mixed", Q["adjuvant"][0]).json()["kinject"]["route"] == name
        saved = json.loads(registry.read_text())
        assert list(saved["added"]) == [name] and saved["removed"] == ["adjuvant"]
        assert (tmp_path / "serve.domains.banks" / name / "banks.json").is_file()
        before = [m["id"] for m in httpx.get(f"{srv.url}/v1/models", headers=auth()).json()["data"]]
    # a restart serves exactly what was served before
    with ServerThread(create_app(cfg, ServedModels(cfg))) as srv:
        after = [m["id"] for m in httpx.get(f"{srv.url}/v1/models", headers=auth()).json()["data"]]
        assert sorted(after) == sorted(before) and f"gag-{name}" in after and "gag-adjuvant" not in after
        assert chat(srv.url, f"gag-{name}", "hi").status_code == 200
    registry.write_text("{broken")
    with pytest.raises(UserError, match="registry"):
        create_app(cfg, ServedModels(cfg))


# ---------------------------------------------------------------- token streaming


def _sse(r) -> list[dict]:
    lines = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]", lines
    return [json.loads(ln) for ln in lines[:-1]]


def test_streaming_sends_the_same_answer_as_a_request_that_does_not_stream(server):
    for model, q, kw in (("base", Q["general"][1], {}), ("rag", "In which year was Entity 3 founded?", {}),
                         ("gag-materials", Q["materials"][2], {}), ("kinject-mixed", Q["adjuvant"][2], {}),
                         ("kinject-mixed", Q["materials"][3], {"max_tokens": 2}),
                         ("kinject-grip", "In which year was Entity 3 founded?", {}),  # not token by token
                         ("base", Q["general"][3], {"stop": ["\n", "."]})):
        whole = chat(server.url, model, q, **kw).json()
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", headers=auth(), timeout=60,
                          json={"model": model, "messages": [{"role": "user", "content": q}], "stream": True,
                                "stream_options": {"include_usage": True}, **kw}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            chunks = _sse(r)
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        done = chunks[-2]
        assert text == whole["choices"][0]["message"]["content"], (model, text, whole)
        assert done["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
        k = done["kinject"]
        assert {x: k.get(x) for x in ("route", "method", "background")} == \
            {x: whole["kinject"].get(x) for x in ("route", "method", "background")}
        assert k["timings"]["batch_size"] == 1 and k["timings"]["total_ms"] > 0
    queues = httpx.get(f"{server.url}/health").json()["queues"]
    assert queues["base:stream"]["requests"] >= 2 and "kinject-grip:stream" not in queues  # GRIP answers in stages


def test_streaming_errors_before_the_first_token_keep_their_status(server):
    def stream(model, q, **kw):
        return httpx.post(f"{server.url}/v1/chat/completions", headers=auth(), timeout=60,
                          json={"model": model, "messages": [{"role": "user", "content": q}], "stream": True, **kw})

    _is_openai_error(stream("gpt-4", "hi"), 404, "model_not_found")
    _is_openai_error(stream("base", "hi", stop=[""]), 400, "invalid_stop")
    _is_openai_error(stream("base", "word " * 300), 400, "question_too_long")


def test_stream_chunks_reach_the_client_before_the_answer_is_finished(world, models):
    """A model whose second word waits until the client has read the first: the SSE chunks are
    sent as the model produces text, not once it has finished. Then a stop string: the answer is
    cut as in a request that does not stream, and the generation is told to stop."""
    from kinject.serve.models import ServedModel

    seen, waited, stopped, cut = threading.Event(), [], [], threading.Event()
    words = ["The ", "catalyst", ". Ferovia", " reaches"]

    def stream(row):
        sink = row["sink"]
        sink.put(words[0])
        waited.append(seen.wait(30))
        for w in words[1:]:
            sink.put(w)
        if cut.is_set():  # a stop string was asked for: the server stops the generation
            stopped.append(sink.stop.wait(30))
        return {"prediction": "".join(words), "trace": {}}

    def answer(rows):
        return [{"prediction": "".join(words), "trace": {}} for _ in rows]

    def pieces_of(**kw) -> tuple[list[str], str]:
        with httpx.stream("POST", f"{srv.url}/v1/chat/completions", headers=auth(), timeout=60,
                          json={"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                                **kw}) as r:
            pieces, finish = [], None
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    choice = json.loads(line[6:])["choices"][0]
                    finish = choice["finish_reason"] or finish
                    if choice["delta"].get("content"):
                        pieces.append(choice["delta"]["content"])
                        seen.set()
        return pieces, finish

    models.static["slow"] = ServedModel("slow", answer, models.static["base"].tokenizer, "method", stream)
    try:
        with ServerThread(create_app(make_cfg(world, max_tokens_cap=32), models)) as srv:
            pieces, finish = pieces_of()
            assert waited == [True]  # the first chunk was read while the model was still answering
            assert pieces[:2] == ["The", " catalyst"]  # a trailing space waits for the next word
            assert "".join(pieces) == "The catalyst. Ferovia reaches" and finish == "stop"
            cut.set()
            pieces, finish = pieces_of(stop=["."])
            assert "".join(pieces) == "The catalyst" and finish == "stop" and stopped == [True]
            whole = chat(srv.url, "slow", "hi", stop=["."]).json()["choices"][0]
            assert whole["message"]["content"] == "The catalyst" and whole["finish_reason"] == "stop"
    finally:
        del models.static["slow"]


# ---------------------------------------------------------------- the reliability bench's parts


def test_every_malformed_case_gets_its_4xx_from_the_real_server(world, models):
    from kinject.serve.reliability import Case, fire_cases, malformed_cases

    cfg = make_cfg(world, admin_key=ADMIN)
    cases = malformed_cases(cfg, "materials")
    assert len({c.name for c in cases}) == len(cases) and all(400 <= c.status < 500 for c in cases)
    keys = {"public": KEY, "admin": ADMIN, "wrong": "not-the-key"}
    with ServerThread(create_app(cfg, models)) as srv:
        res = fire_cases(srv.url, cases, keys)
        assert res["requests"] == len(cases) and res["5xx"] == 0, [c for c in res["cases"] if not c["ok"]]
        assert res["as_expected"] == len(cases) and res["4xx"] == len(cases)
        # a case whose expectation the server does not meet is reported, with what was wrong
        off = fire_cases(srv.url, [Case("valid", "POST", "/v1/chat/completions", 400, None,
                                        json.dumps({"model": "base", "messages": [{"role": "user", "content": "hi"}]}
                                                   ).encode()),
                                   Case("wrong code", "GET", "/v1/nope", 404, "model_not_found")], keys)
        assert off["as_expected"] == 0 and off["status"] == {"200": 1, "404": 1}
        assert "not an OpenAI error object" in off["cases"][0]["wrong"]
        assert off["cases"][1]["wrong"] == "code 'unknown_url', expected 'model_not_found'"
        assert chat(srv.url, "base", "hi").status_code == 200  # still serving
    assert "materials" not in models.pipeline.unavailable and "x" not in models.pipeline.routes


def test_check_case_and_status_classes():
    from kinject.serve.reliability import Case, check_case, status_classes

    case = Case("bad JSON", "POST", "/v1/chat/completions", 400, "invalid_json")
    err = {"message": "m", "type": "invalid_request_error", "param": None, "code": "invalid_json"}
    assert check_case(case, 400, json.dumps({"error": err}).encode()) is None
    assert check_case(case, 422, json.dumps({"error": err}).encode()) == "status 422, expected 400"
    assert "fields" in check_case(case, 400, json.dumps({"error": {**err, "extra": 1}}).encode())
    assert "not an OpenAI error object" in check_case(case, 400, b"<html>")
    assert "not an OpenAI error object" in check_case(case, 400, b'{"detail": "x"}')
    assert status_classes({"200": 5, "404": 2, "422": 1, "503": 3, "503-without-retry-after": 1,
                           "error:ReadTimeout": 4}) == (3, 4)


def test_fire_until_and_its_time_bound(server):
    from kinject.serve.loadtest import fire

    qs = [Q["general"][0], Q["materials"][0]]
    end = time.perf_counter() + 1.0
    res = asyncio.run(fire(server.url, "base", qs, 10**9, 2, 60, auth(), until=lambda: time.perf_counter() >= end))
    assert res["requests"] >= 2 and res["ok"] == res["requests"] and res["lost"] == 0 and res["unfinished"] == 0
    assert set(res["answers"]) == set(qs)
    res = asyncio.run(fire(server.url, "base", qs, 3, 8, 60, auth()))
    assert res["requests"] == 3 and res["ok"] == 3 and res["concurrency"] == 8
    # a bound shorter than any answer: every request is lost, none is counted as answered
    res = asyncio.run(fire(server.url, "kinject-mixed", qs, 4, 2, 0.001, auth()))
    assert res["requests"] == 4 and res["ok"] == 0 and res["lost"] == 4 and res["latency_ms_p99"] is None


def test_routing_accuracy_with_and_without_abstention(world, tmp_path):
    from kinject.ppr.evaluate import LabelledQuestion
    from kinject.ppr.router import Router
    from kinject.serve.reliability import routing_accuracy

    rep = _calibrated_banks(world, tmp_path / "banks")
    labelled = [LabelledQuestion(q, d) for d in ("general", "materials", "adjuvant")
                for q in questions(d, 15, seed=31)]
    res = routing_accuracy(Router.from_pretrained(tmp_path / "banks"), labelled)
    assert res["n"] == 45 and res["without_abstention"]["thresholds"] == {}
    assert res["with_abstention"]["thresholds"] == pytest.approx(rep["thresholds"])
    for name, abstain in (("without_abstention", False), ("with_abstention", True)):
        routes = [d.route for d in Router.from_pretrained(tmp_path / "banks", abstain=abstain)
                  .route_batch([x.question for x in labelled])]
        acc = sum(r == x.label for r, x in zip(routes, labelled)) / len(labelled)
        assert res[name]["accuracy"] == pytest.approx(acc, abs=1e-4)
        assert res[name]["to_general"] == routes.count("general")
    assert res["with_abstention"]["to_general"] >= res["without_abstention"]["to_general"]
