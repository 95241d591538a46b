"""The FastAPI app: OpenAI-compatible chat completions over the served models.

Errors follow OpenAI's shape `{"error": {"message", "type", "param", "code"}}`: invalid JSON
400, schema 422 naming the field, unknown model 404, body over `max_body_bytes` 413,
`max_tokens` over the cap 400, missing/wrong bearer key 401, queue full 503 + Retry-After,
timeout 504, a route that failed 500 (only the requests routed there).

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

from kinject.errors import UserError
from kinject.mixed import DomainOptions
from kinject.serve.batcher import Draining, MicroBatcher, Overloaded
from kinject.serve.config import ServeConfig
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
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None


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

    @app.get("/v1/models")
    @guarded
    async def list_models(request: Request):
        public(request)
        created = int(server.started)
        return {"object": "list",
                "data": [{"id": n, "object": "model", "created": created, "owned_by": "kinject"} for n in models.names()]}

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
        max_tokens = req.max_completion_tokens or req.max_tokens
        if max_tokens is not None and max_tokens > server.max_tokens_cap:
            raise ApiError(400, f"max_tokens {max_tokens} is over this server's cap of {server.max_tokens_cap}",
                           param="max_tokens", code="max_tokens_too_large")
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
        except asyncio.TimeoutError:
            raise ApiError(504, f"request timed out after {cfg.request_timeout_s:g} s", type="server_error",
                           code="timeout") from None
        except Exception as e:  # the model call failed for the whole batch
            raise ApiError(500, f"model {served.name!r} failed: {e}", type="server_error", code="model_failed") from None
        if result.get("error"):
            raise ApiError(500, result["error"], type="server_error", code="route_failed")

        pred = result["prediction"]
        text = pred[-1] if isinstance(pred, list) else str(pred)
        ids = _tokens(served.tokenizer, text)
        finish = "stop"
        if max_tokens is not None and len(ids) > max_tokens:  # generation ran to the server's budget; cut here
            text, ids, finish = served.tokenizer.decode(ids[:max_tokens]), ids[:max_tokens], "length"
        trace = result.get("trace", {})
        prompt_tokens = trace.get("prompt_tokens") or n_q
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(ids), "total_tokens": prompt_tokens + len(ids)}
        info = _kinject_info(result, {**timings, "total_ms": (time.perf_counter() - t0) * 1000})
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
        if req.name in models.pipeline.routes:
            raise ApiError(409, f"domain {req.name!r} is already served; DELETE it first to replace it",
                           param="name", code="domain_exists")
        opts = DomainOptions(expert=req.expert, injector=req.injector, system=req.system,
                             instruction=req.instruction, max_background_tokens=req.max_background_tokens)

        def build():  # loads the expert/injector (slow): off the event loop, off the model thread
            for field in ("bank", "expert", "injector"):
                if not os.path.exists(getattr(req, field)):
                    raise UserError(f"{field}: {getattr(req, field)} does not exist")
            route = models.pipeline.build_gag_route(req.name, opts)
            return models.pipeline.add_domain(req.name, req.bank, route)

        try:
            snap = await asyncio.to_thread(build)
        except UserError as e:
            status = 409 if "already served" in str(e) else 400
            raise ApiError(status, str(e), code="bad_domain") from None
        log.info("added domain %s (snapshot %d)", req.name, snap.version)
        return {"domain": req.name, "model": f"gag-{req.name}", "routes": list(snap.routes), "snapshot": snap.version}

    @app.delete("/admin/domains/{name}")
    @guarded
    async def remove_domain(name: str, request: Request):
        admin(request)
        if name not in models.pipeline.routes:
            raise ApiError(404, f"domain {name!r} is not served", param="name", code="domain_not_found")
        try:
            snap = models.pipeline.remove_domain(name)
        except UserError as e:
            raise ApiError(400, str(e), param="name", code="bad_domain") from None
        log.info("removed domain %s (snapshot %d)", name, snap.version)
        return {"removed": name, "routes": list(snap.routes), "snapshot": snap.version}

    return app
