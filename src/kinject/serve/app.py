"""The FastAPI app: OpenAI-compatible chat completions over the served models.

Errors follow OpenAI's shape `{"error": {"message", "type", "param", "code"}}`, unknown paths
included: invalid JSON (or nested too deeply, or text that is not valid Unicode) 400, schema
422 naming the field, unsupported `response_format` or a bad `stop` 400, unknown model 404,
body over `max_body_bytes` 413, missing/wrong bearer key 401, queue full 503 + Retry-After,
a domain that is down 503, timeout 504, a route that failed unexpectedly 500 (only the
requests routed there). `max_tokens` above the cap is clipped to it (said in the response).

Generation is batched (one model call answers many requests), so it is not token-by-token:
a streaming request gets its answer as SSE chunks once its batch is done.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from kinject.errors import UserError
from kinject.mixed import DomainOptions, DomainUnavailable
from kinject.serve.batcher import Draining, MicroBatcher, Overloaded
from kinject.serve.config import ServeConfig
from kinject.serve.domains import BankBuilder, Registry, replay
from kinject.serve.models import ServedModels

log = logging.getLogger("kinject.serve")


# ---------------------------------------------------------------- request schemas


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # other OpenAI parameters are accepted and ignored
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    temperature: float | None = Field(None, ge=0, le=2)  # decoding is greedy
    stop: str | list[str] | None = None  # the answer is cut before the first occurrence
    response_format: dict | None = None  # only {"type": "text"}: nothing here can promise JSON


MAX_STOP = 4  # as OpenAI


def stop_strings(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP or any(not x for x in stops):
        raise ApiError(400, f"stop: up to {MAX_STOP} non-empty strings", param="stop", code="invalid_stop")
    return stops


def check_response_format(fmt: dict | None) -> None:
    if fmt is not None and fmt.get("type") != "text":
        raise ApiError(400, f"response_format {fmt.get('type')!r} is not supported: answers are free text "
                            "(use {\"type\": \"text\"} or leave it out)", param="response_format",
                       code="unsupported_response_format")


class AddDomainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    bank: str  # a banks dir holding `name`, or a JSONL of its offline questions
    expert: str
    injector: str
    system: str = ""
    instruction: str = ""
    max_background_tokens: int = Field(96, ge=1)


# ---------------------------------------------------------------- errors


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _validation_error(e: ValidationError) -> ApiError:
    errs = e.errors()
    first = errs[0]
    field = ".".join(str(x) for x in first["loc"]) or "body"
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    return ApiError(422, f"{field}: {first['msg']}{more}", param=field, code="invalid_field")


async def read_json(request: Request, limit: int):
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"request body of {length} bytes is over the limit of {limit}", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes", code="body_too_large")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply", code="invalid_json") from None
    try:  # a lone surrogate ("\ud800") parses, but no tokenizer can take it
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(400, f"request body has text that is not valid Unicode ({e.reason} at {e.start})",
                       code="invalid_text") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply", code="invalid_json") from None
    return data


def check_key(request: Request, key: str, realm: str) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ApiError(401, f"missing or wrong bearer key for the {realm} endpoints", type="authentication_error",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


# ---------------------------------------------------------------- the server state


class Server:
    """Served models, one micro-batcher per model name, one model worker thread."""

    def __init__(self, cfg: ServeConfig, models: ServedModels):
        self.cfg, self.models = cfg, models
        self.api_key = os.environ.get("KINJECT_API_KEY") or cfg.api_key
        self.admin_key = os.environ.get("KINJECT_ADMIN_KEY") or cfg.admin_key
        self.max_tokens_cap = cfg.max_tokens_cap or cfg.pipeline.max_new_tokens
        self.batchers: dict[str, MicroBatcher] = {}
        self.executor: ThreadPoolExecutor | None = None
        self.draining = False
        self.started = time.time()
        self.active = 0  # HTTP requests being handled (health/readiness probes excluded)
        self.failures: dict[str, str] = {}  # domain -> its last failure, until it answers again
        self.adding: set[str] = set()  # domains being built by POST /admin/domains
        self.builder = BankBuilder()
        self.registry = Registry(cfg.registry)
        replay(models, self.registry, cfg.on_domain_error == "isolate")

    def busy(self) -> bool:
        return self.active > 0 or any(b.pending or b.busy or b.in_flight for b in self.batchers.values())

    def batcher(self, name: str, fn) -> MicroBatcher:
        if name not in self.batchers:
            b = self.cfg.batching
            self.batchers[name] = MicroBatcher(name, fn, self.executor, b.max_batch_size, b.max_wait_ms, b.max_queue)
        return self.batchers[name]

    async def shutdown(self) -> None:
        self.draining = True
        await asyncio.gather(*(b.drain(self.cfg.graceful_timeout_s) for b in self.batchers.values()))
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        self.builder.shutdown()


def _tokens(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] if text else []


def _kinject_info(result: dict, timings: dict) -> dict:
    t = result.get("trace", {})
    info = {k: t[k] for k in ("route", "route_score", "route_scores", "route_fallback", "method", "snapshot",
                              "background", "expert_tokens", "added_prompt_tokens", "n_retrievals",
                              "step_answers") if k in t}
    info["retrievals"] = t.get("retrievals", [])
    tm = {f"{k[:-2]}_ms": round(v * 1000, 3) for k, v in t.get("timings", {}).items() if k.endswith("_s")}
    tm.update({k: round(v, 3) if isinstance(v, float) else v for k, v in timings.items()})
    info["timings"] = tm
    return info


def finish_answer(text: str, stops: list[str], max_tokens: int, tokenizer) -> tuple[str, list[int], str]:
    """The answer cut before its first stop string, then at `max_tokens` -> (text, ids, finish_reason)."""
    cuts = [i for i in (text.find(x) for x in stops) if i >= 0]
    if cuts:
        text = text[:min(cuts)]
    ids = _tokens(tokenizer, text)
    if len(ids) > max_tokens:  # cut at the requested budget
        return tokenizer.decode(ids[:max_tokens]), ids[:max_tokens], "length"
    return text, ids, "length" if not cuts and len(ids) >= max_tokens else "stop"  # full budget used: length


WORD = re.compile(r"\S+\s*|\s+")


def guarded(handler):
    """Any unexpected exception becomes an OpenAI-shaped 500 (logged), never a dropped connection."""

    @functools.wraps(handler)
    async def wrapper(*args, **kwargs):
        try:
            return await handler(*args, **kwargs)
        except ApiError:
            raise
        except Exception as e:
            log.exception("unexpected error in %s", handler.__name__)
            raise ApiError(500, f"internal error: {type(e).__name__}: {e}", type="server_error",
                           code="internal_error") from None

    return wrapper


def create_app(cfg: ServeConfig, models: ServedModels) -> FastAPI:
    server = Server(cfg, models)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kinject-model")
        yield
        await server.shutdown()

    app = FastAPI(title="kinject", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):  # unknown path, wrong method
        code = {404: "unknown_url", 405: "method_not_allowed"}.get(e.status_code)
        msg = (f"unknown path {request.method} {request.url.path}" if e.status_code == 404
               else f"{request.method} is not allowed on {request.url.path}" if e.status_code == 405 else str(e.detail))
        return ApiError(e.status_code, msg, code=code, headers=getattr(e, "headers", None)).response()

    @app.middleware("http")
    async def _count(request: Request, call_next):
        probe = request.url.path in ("/health", "/ready")
        server.active += 0 if probe else 1
        try:
            return await call_next(request)
        finally:
            server.active -= 0 if probe else 1

    def public(request: Request) -> None:
        if server.api_key:
            check_key(request, server.api_key, "public")

    def admin(request: Request) -> None:
        if not server.admin_key:
            raise ApiError(403, "admin endpoints are disabled: set KINJECT_ADMIN_KEY (or admin_key in the config)",
                           type="permission_error", code="admin_disabled")
        check_key(request, server.admin_key, "admin")

    @app.get("/health")
    @guarded
    async def health():
        snap = models.pipeline.snapshot
        return {"status": "draining" if server.draining else "ok", "models": models.names(),
                "routes": list(snap.routes), "snapshot": snap.version,
                "uptime_s": round(time.time() - server.started, 1),
                "queues": {n: {"pending": b.pending, "in_flight": b.in_flight, **b.stats.to_dict()} for n, b in server.batchers.items()}}

    @app.get("/ready")
    @guarded
    async def ready():
        """Readiness: 503 while draining; per domain its state, the reason and its threshold."""
        domains = models.domain_state(server.failures)
        down = sorted(d for d, v in domains.items() if v["state"] != "available")
        status = "draining" if server.draining else "degraded" if down else "ready"
        body = {"status": status, "unavailable": down, "domains": domains, "snapshot": models.pipeline.snapshot.version,
                "routing": {k: v for k, v in models.pipeline.snapshot.router.status().items() if k != "domains"},
                "adding": sorted(server.adding)}
        return JSONResponse(body, status_code=503 if server.draining else 200)

    def model_object(name: str) -> dict:
        obj = {"id": name, "object": "model", "created": int(server.started), "owned_by": "kinject"}
        if name == "kinject-mixed":
            obj["kinject"] = {"routing": models.pipeline.snapshot.router.status()}
        elif name.startswith("gag-"):
            state = models.domain_state(server.failures).get(name[4:])
            if state is not None:
                obj["kinject"] = state
        return obj

    @app.get("/v1/models")
    @guarded
    async def list_models(request: Request):
        public(request)
        return {"object": "list", "data": [model_object(n) for n in models.names()]}

    @app.get("/v1/models/{model_id}")
    @guarded
    async def get_model(model_id: str, request: Request):
        public(request)
        if models.get(model_id) is None:
            raise ApiError(404, f"model {model_id!r} does not exist; available: {', '.join(models.names())}",
                           param="model", code="model_not_found")
        return model_object(model_id)

    @app.post("/v1/chat/completions")
    @guarded
    async def chat(request: Request):
        t0 = time.perf_counter()
        public(request)
        data = await read_json(request, cfg.max_body_bytes)
        if not isinstance(data, dict):
            raise ApiError(422, "body: must be a JSON object", param="body", code="invalid_field")
        try:
            req = ChatRequest.model_validate(data)
        except ValidationError as e:
            raise _validation_error(e) from None
        served = models.get(req.model)
        if served is None:
            raise ApiError(404, f"model {req.model!r} does not exist; available: {', '.join(models.names())}",
                           param="model", code="model_not_found")
        asked = req.max_completion_tokens or req.max_tokens
        clipped = asked is not None and asked > server.max_tokens_cap
        max_tokens = min(asked or server.max_tokens_cap, server.max_tokens_cap)  # clients send 256-4096 by default
        stops = stop_strings(req.stop)
        check_response_format(req.response_format)
        users = [m for m in req.messages if m.role == "user"]
        question = users[-1].text().strip() if users else ""
        if not question:
            raise ApiError(422, "messages: needs a user message with non-empty text (the question)",
                           param="messages", code="invalid_field")
        n_q = len(_tokens(served.tokenizer, question))
        if n_q > cfg.max_question_tokens:
            raise ApiError(400, f"the question has {n_q} tokens, over this server's limit of {cfg.max_question_tokens}",
                           param="messages", code="question_too_long")
        if server.draining:
            raise ApiError(503, "server is shutting down", type="server_error", code="draining",
                           headers={"Retry-After": "1"})
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        batcher = server.batcher(served.name, served.answer)
        try:
            result, timings = await asyncio.wait_for(batcher.submit({"id": rid, "question": question}),
                                                     cfg.request_timeout_s)
        except Overloaded as e:
            raise ApiError(503, f"{e}; retry later", type="server_error", code="overloaded",
                           headers={"Retry-After": "1"}) from None
        except Draining as e:
            raise ApiError(503, str(e), type="server_error", code="draining", headers={"Retry-After": "1"}) from None
        except DomainUnavailable as e:  # a gag-<domain> request whose domain went away while it was queued
            if models.get(served.name) is None:
                raise ApiError(404, f"model {served.name!r} was removed while the request waited",
                               param="model", code="model_not_found") from None
            server.failures[served.name[4:]] = str(e)
            raise ApiError(503, str(e), type="server_error", code="domain_unavailable",
                           headers={"Retry-After": "5"}) from None
        except asyncio.TimeoutError:
            raise ApiError(504, f"request timed out after {cfg.request_timeout_s:g} s", type="server_error",
                           code="timeout") from None
        except Exception as e:  # the model call failed for the whole batch
            raise ApiError(500, f"model {served.name!r} failed: {e}", type="server_error", code="model_failed") from None
        route = result.get("trace", {}).get("route")
        if result.get("unavailable"):
            server.failures[result["unavailable"]] = result["error"]
            raise ApiError(503, result["error"], type="server_error", code="domain_unavailable",
                           headers={"Retry-After": "5"})
        if result.get("error"):
            raise ApiError(500, result["error"], type="server_error", code="route_failed")
        server.failures.pop(route or served.name[4:], None)

        pred = result["prediction"]
        text = pred[-1] if isinstance(pred, list) else str(pred)
        text, ids, finish = finish_answer(text, stops, max_tokens, served.tokenizer)
        trace = result.get("trace", {})
        prompt_tokens = trace.get("prompt_tokens") or n_q
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(ids), "total_tokens": prompt_tokens + len(ids)}
        info = _kinject_info(result, {**timings, "total_ms": (time.perf_counter() - t0) * 1000})
        if clipped:
            info["max_tokens_clipped_to"] = server.max_tokens_cap
        created = int(time.time())
        if not req.stream:
            return {"id": rid, "object": "chat.completion", "created": created, "model": served.name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": finish, "logprobs": None}],
                    "usage": usage, "kinject": info}

        def chunk(delta: dict, finish_reason=None, **extra) -> str:
            body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": served.name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **extra}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        async def events():
            yield chunk({"role": "assistant", "content": ""})
            for piece in WORD.findall(text):
                yield chunk({"content": piece})
            yield chunk({}, finish, kinject=info)
            if req.stream_options and req.stream_options.include_usage:
                body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": served.name,
                        "choices": [], "usage": usage}
                yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------ admin: hot-plug domains
    @app.get("/admin/domains")
    @guarded
    async def list_domains(request: Request):
        admin(request)
        return {"domains": models.domains(), "routes": list(models.pipeline.routes),
                "snapshot": models.pipeline.snapshot.version}

    @app.post("/admin/domains", status_code=201)
    @guarded
    async def add_domain(request: Request):
        admin(request)
        data = await read_json(request, cfg.max_body_bytes)
        try:
            req = AddDomainRequest.model_validate(data)
        except ValidationError as e:
            raise _validation_error(e) from None
        if req.name in models.pipeline.routes or req.name in server.adding:
            raise ApiError(409, f"domain {req.name!r} is already served; DELETE it first to replace it",
                           param="name", code="domain_exists")
        opts = DomainOptions(expert=req.expert, injector=req.injector, system=req.system,
                             instruction=req.instruction, max_background_tokens=req.max_background_tokens)
        pipe = models.pipeline

        def load(bank_dir: str):  # loads the expert/injector (slow): off the event loop, off the model thread
            from kinject.mixed import load_domain_bank

            bank = load_domain_bank(bank_dir, req.name, pipe.encoder)  # a built banks dir: no encoder call
            return bank, pipe.build_gag_route(req.name, opts)

        server.adding.add(req.name)
        try:
            for field in ("bank", "expert", "injector"):
                if not os.path.exists(getattr(req, field)):
                    raise UserError(f"{field}: {getattr(req, field)} does not exist")
            bank_dir = req.bank
            if os.path.isfile(req.bank):  # a JSONL of questions: its bank is built in a worker process
                out = server.registry.banks_dir / req.name
                if out.exists():
                    import shutil

                    shutil.rmtree(out)
                bank_dir = str(await server.builder.build(req.name, req.bank, pipe.options.banks, out))
            bank, route = await asyncio.to_thread(load, bank_dir)
            snap = pipe.add_domain(req.name, bank, route)
            server.registry.record_add(req.name, {**req.model_dump(), "bank": bank_dir})
        except UserError as e:
            status = 409 if "already served" in str(e) else 400
            raise ApiError(status, str(e), code="bad_domain") from None
        finally:
            server.adding.discard(req.name)
        server.failures.pop(req.name, None)
        log.info("added domain %s (snapshot %d)", req.name, snap.version)
        return {"domain": req.name, "model": f"gag-{req.name}", "bank": bank_dir, "routes": list(snap.routes),
                "snapshot": snap.version}

    @app.delete("/admin/domains/{name}")
    @guarded
    async def remove_domain(name: str, request: Request):
        admin(request)
        if name not in models.pipeline.routes and name not in models.pipeline.unavailable:
            raise ApiError(404, f"domain {name!r} is not served", param="name", code="domain_not_found")
        try:
            snap = models.pipeline.remove_domain(name)
        except UserError as e:
            raise ApiError(400, str(e), param="name", code="bad_domain") from None
        server.registry.record_remove(name, configured=name in models.configured)
        server.failures.pop(name, None)
        log.info("removed domain %s (snapshot %d)", name, snap.version)
        return {"removed": name, "routes": list(snap.routes), "snapshot": snap.version}

    return app
