"""The FastAPI app: OpenAI-compatible chat completions over the served models.

Errors follow OpenAI's shape `{"error": {"message", "type", "param", "code"}}`, unknown paths
included: invalid JSON (or nested too deeply, or text that is not valid Unicode) 400, schema
422 naming the field, unsupported `response_format` or a bad `stop` 400, unknown model 404,
body over `max_body_bytes` 413, missing/wrong bearer key 401, queue full 503 + Retry-After,
a domain that is down 503, timeout 504, a route that failed unexpectedly 500 (only the
requests routed there). `max_tokens` above the cap is clipped to it (said in the response).
Each error is an `ApiError` subclass that carries its status and code.

Requests that do not stream are batched (one model call answers many). A streaming request
gets its tokens as they are generated where its model can (see `streaming.py`); otherwise its
answer comes as SSE chunks once its batch is done.
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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from kinject.errors import UserError
from kinject.mixed import DomainOptions, DomainUnavailable
from kinject.serve.batcher import Draining, MicroBatcher, Overloaded
from kinject.serve.config import ServeConfig
from kinject.serve.domains import BankBuilder, Registry, replay
from kinject.serve.models import ServedModel, ServedModels
from kinject.serve.streaming import StreamedText, TokenSink, finish_answer

__all__ = ["create_app", "finish_answer"]

log = logging.getLogger("kinject.serve")


# ---------------------------------------------------------------- errors


class ApiError(Exception):
    """An HTTP error answered with OpenAI's error object; each subclass carries its status and code."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] | None = None

    def __init__(self, message: str, param: str | None = None, *, status: int | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param or self.param
        self.status, self.code, self.headers = status or self.status, code or self.code, headers or self.headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class InvalidJson(ApiError):
    code = "invalid_json"


class InvalidText(ApiError):
    code = "invalid_text"


class BodyTooLarge(ApiError):
    status, code = 413, "body_too_large"


class InvalidField(ApiError):
    status, code = 422, "invalid_field"


class InvalidStop(ApiError):
    code, param = "invalid_stop", "stop"


class UnsupportedResponseFormat(ApiError):
    code, param = "unsupported_response_format", "response_format"


class QuestionTooLong(ApiError):
    code, param = "question_too_long", "messages"


class BadDomain(ApiError):
    code = "bad_domain"


class Unauthorized(ApiError):
    status, type, code = 401, "authentication_error", "invalid_api_key"
    headers = {"WWW-Authenticate": "Bearer"}


class AdminDisabled(ApiError):
    status, type, code = 403, "permission_error", "admin_disabled"


class ModelNotFound(ApiError):
    status, code, param = 404, "model_not_found", "model"


class DomainNotFound(ApiError):
    status, code, param = 404, "domain_not_found", "name"


class DomainExists(ApiError):
    status, code, param = 409, "domain_exists", "name"


class ServerError(ApiError):
    status, type = 500, "server_error"


class InternalError(ServerError):
    code = "internal_error"


class ModelFailed(ServerError):
    code = "model_failed"


class RouteFailed(ServerError):
    code = "route_failed"


class QueueFull(ServerError):
    status, code, headers = 503, "overloaded", {"Retry-After": "1"}


class ShuttingDown(ServerError):
    status, code, headers = 503, "draining", {"Retry-After": "1"}


class DomainDown(ServerError):
    status, code, headers = 503, "domain_unavailable", {"Retry-After": "5"}


class RequestTimeout(ServerError):
    status, code = 504, "timeout"


# the body models' own error types (PydanticCustomError) -> their API error; any other is a 422
BODY_ERRORS: dict[str, type[ApiError]] = {c.code: c for c in (InvalidStop, UnsupportedResponseFormat)}


def validation_error(errors: Sequence[dict]) -> ApiError:
    first = errors[0]
    loc = first["loc"][1:] if first["loc"][:1] == ("body",) else first["loc"]
    field = ".".join(str(x) for x in loc) or "body"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return BODY_ERRORS.get(first["type"], InvalidField)(f"{field}: {first['msg']}{more}", param=field)


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


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str | None = None


MAX_STOP = 4  # as OpenAI


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
    # the answer is cut before the first occurrence (a list after validation)
    stop: str | list[str] | None = Field(None, validate_default=True)
    response_format: ResponseFormat | None = None  # only {"type": "text"}: nothing here can promise JSON

    @field_validator("messages")
    @classmethod
    def _has_question(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        users = [m for m in messages if m.role == "user"]
        if not users or not users[-1].text().strip():
            raise PydanticCustomError("missing_question", "needs a user message with non-empty text (the question)")
        return messages

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOP or any(not x for x in stops):
            raise PydanticCustomError(InvalidStop.code, f"up to {MAX_STOP} non-empty strings")
        return stops

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, fmt: ResponseFormat | None) -> ResponseFormat | None:
        if fmt is not None and fmt.type != "text":
            raise PydanticCustomError(UnsupportedResponseFormat.code,
                                      f"{fmt.type!r} is not supported: answers are free text "
                                      '(use {"type": "text"} or leave it out)')
        return fmt

    def question(self) -> str:
        """The last user message's text: what is answered."""
        return [m for m in self.messages if m.role == "user"][-1].text().strip()


class AddDomainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    bank: str  # a banks dir holding `name`, or a JSONL of its offline questions
    expert: str
    injector: str
    # the expert's background settings: unset = the injector's recorded background spec
    system: str | None = None
    instruction: str = ""
    max_background_tokens: int | None = Field(None, ge=1)
    memory: str | None = None  # the store the injector was trained on (for an injector that records no spec)


# ---------------------------------------------------------------- reading bodies


def parse_json(body: bytes):
    """Strict JSON: 400 for invalid JSON, nesting too deep, or text that is not valid Unicode."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidJson(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidJson("request body is nested too deeply") from None
    try:  # a lone surrogate ("\ud800") parses, but no tokenizer can take it
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidText(f"request body has text that is not valid Unicode ({e.reason} at {e.start})") from None
    except RecursionError:
        raise InvalidJson("request body is nested too deeply") from None
    return data


class JsonRequest(Request):
    """A request whose body is read up to the server's `max_body_bytes` (413 past it) and parsed
    with `parse_json` (FastAPI's documented way to change how a body is read: a Request subclass)."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            limit = self.app.state.server.cfg.max_body_bytes
            length = self.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise BodyTooLarge(f"request body of {length} bytes is over the limit of {limit}")
            body = bytearray()
            async for chunk in self.stream():
                body += chunk
                if len(body) > limit:
                    raise BodyTooLarge(f"request body is over the limit of {limit} bytes")
            self._body = bytes(body)
        return self._body

    async def json(self):
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class JsonRoute(APIRoute):
    """A route with a body model reads its body as a `JsonRequest` before FastAPI validates it,
    so that size and JSON errors are ours (413, 400), and as JSON whatever its Content-Type
    (`curl -d` sends a form type)."""

    def get_route_handler(self):
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def route(request: Request) -> Response:
            scope = request.scope
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            request = JsonRequest({**scope, "headers": [*headers, (b"content-type", b"application/json")]},
                                  request.receive)
            await request.json()
            return await handler(request)

        return route


bearer = HTTPBearer(auto_error=False)
BearerKey = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def check_key(creds: HTTPAuthorizationCredentials | None, key: str, realm: str) -> None:
    if creds is None or not hmac.compare_digest(creds.credentials.encode(), key.encode()):
        raise Unauthorized(f"missing or wrong bearer key for the {realm} endpoints")


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

    def stream_batcher(self, served: ServedModel) -> MicroBatcher:
        """Token-streaming requests: one per model call (see streaming.py), queued like the batches."""
        name = f"{served.name}:stream"
        if name not in self.batchers:
            self.batchers[name] = MicroBatcher(name, lambda rows: [served.stream(r) for r in rows], self.executor,
                                               1, 0, self.cfg.batching.max_queue)
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


def _prediction(result: dict) -> str:
    pred = result["prediction"]
    return pred[-1] if isinstance(pred, list) else str(pred)


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
            raise InternalError(f"internal error: {type(e).__name__}: {e}") from None

    return wrapper


def create_app(cfg: ServeConfig, models: ServedModels) -> FastAPI:
    server = Server(cfg, models)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kinject-model")
        yield
        await server.shutdown()

    app = FastAPI(title="kinject", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.router.route_class = JsonRoute
    app.state.server = server

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(request: Request, e: RequestValidationError):
        return validation_error(e.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):  # unknown path, wrong method
        code = {404: "unknown_url", 405: "method_not_allowed"}.get(e.status_code)
        msg = (f"unknown path {request.method} {request.url.path}" if e.status_code == 404
               else f"{request.method} is not allowed on {request.url.path}" if e.status_code == 405 else str(e.detail))
        return ApiError(msg, status=e.status_code, code=code, headers=getattr(e, "headers", None)).response()

    @app.middleware("http")
    async def _count(request: Request, call_next):
        probe = request.url.path in ("/health", "/ready")
        server.active += 0 if probe else 1
        try:
            return await call_next(request)
        finally:
            server.active -= 0 if probe else 1

    async def public(creds: BearerKey) -> None:
        if server.api_key:
            check_key(creds, server.api_key, "public")

    async def admin(creds: BearerKey) -> None:
        if not server.admin_key:
            raise AdminDisabled("admin endpoints are disabled: set KINJECT_ADMIN_KEY (or admin_key in the config)")
        check_key(creds, server.admin_key, "admin")

    def served_model(name: str) -> ServedModel:
        served = models.get(name)
        if served is None:
            raise ModelNotFound(f"model {name!r} does not exist; available: {', '.join(models.names())}")
        return served

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

    @app.get("/v1/models", dependencies=[Depends(public)])
    @guarded
    async def list_models():
        return {"object": "list", "data": [model_object(n) for n in models.names()]}

    @app.get("/v1/models/{model_id}", dependencies=[Depends(public)])
    @guarded
    async def get_model(model_id: str):
        return model_object(served_model(model_id).name)

    def outcome(served: ServedModel, job: asyncio.Future) -> tuple[dict, dict]:
        """A finished request's (result, timings), or the ApiError its failure is."""
        try:
            result, timings = job.result()
        except Overloaded as e:
            raise QueueFull(f"{e}; retry later") from None
        except Draining as e:
            raise ShuttingDown(str(e)) from None
        except DomainUnavailable as e:  # a gag-<domain> request whose domain went away while it was queued
            if models.get(served.name) is None:
                raise ModelNotFound(f"model {served.name!r} was removed while the request waited") from None
            server.failures[served.name[4:]] = str(e)
            raise DomainDown(str(e)) from None
        except Exception as e:  # the model call failed for the whole batch
            raise ModelFailed(f"model {served.name!r} failed: {e}") from None
        if result.get("unavailable"):
            server.failures[result["unavailable"]] = result["error"]
            raise DomainDown(result["error"])
        if result.get("error"):
            raise RouteFailed(result["error"])
        server.failures.pop(result.get("trace", {}).get("route") or served.name[4:], None)
        return result, timings

    @app.post("/v1/chat/completions", dependencies=[Depends(public)])
    @guarded
    async def chat(req: ChatRequest):
        t0 = time.perf_counter()
        served = served_model(req.model)
        asked = req.max_completion_tokens or req.max_tokens
        clipped = asked is not None and asked > server.max_tokens_cap
        max_tokens = min(asked or server.max_tokens_cap, server.max_tokens_cap)  # clients send 256-4096 by default
        question = req.question()
        n_q = len(_tokens(served.tokenizer, question))
        if n_q > cfg.max_question_tokens:
            raise QuestionTooLong(f"the question has {n_q} tokens, over this server's limit of {cfg.max_question_tokens}")
        if server.draining:
            raise ShuttingDown("server is shutting down")
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        row = {"id": rid, "question": question}
        # the request's text pieces (token streaming), then the finished request itself, in one queue
        sink = TokenSink() if req.stream and served.stream is not None else None
        queue: asyncio.Queue = sink.queue if sink is not None else asyncio.Queue()
        if sink is not None:
            job = asyncio.ensure_future(server.stream_batcher(served).submit({**row, "sink": sink}))
        else:
            job = asyncio.ensure_future(server.batcher(served.name, served.answer).submit(row))
        job.add_done_callback(queue.put_nowait)

        def drop() -> None:  # dropped from its batch if not started; a streaming generation stops
            job.cancel()
            if sink is not None:
                sink.stop.set()

        try:
            first = await asyncio.wait_for(queue.get(), cfg.request_timeout_s)
        except asyncio.TimeoutError:
            drop()
            raise RequestTimeout(f"request timed out after {cfg.request_timeout_s:g} s") from None
        except asyncio.CancelledError:  # the client went away
            drop()
            raise
        first_ms = (time.perf_counter() - t0) * 1000
        finished = outcome(served, job) if first is job else None  # failed before any text: its own status
        text = StreamedText(req.stop, max_tokens, served.tokenizer)
        created = int(time.time())

        def info(result: dict, timings: dict) -> dict:
            extra = {} if first is job else {"first_token_ms": first_ms}
            out = _kinject_info(result, {**timings, **extra, "total_ms": (time.perf_counter() - t0) * 1000})
            if clipped:
                out["max_tokens_clipped_to"] = server.max_tokens_cap
            return out

        def usage(result: dict, ids: list[int]) -> dict:
            prompt_tokens = result.get("trace", {}).get("prompt_tokens") or n_q
            return {"prompt_tokens": prompt_tokens, "completion_tokens": len(ids), "total_tokens": prompt_tokens + len(ids)}

        if not req.stream:
            result, timings = finished
            (answer, ids, finish), _ = text.finish(_prediction(result))
            return {"id": rid, "object": "chat.completion", "created": created, "model": served.name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                 "finish_reason": finish, "logprobs": None}],
                    "usage": usage(result, ids), "kinject": info(result, timings)}

        def data(body: dict) -> str:
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        def chunk(delta: dict, finish_reason=None, **extra) -> str:
            return data({"id": rid, "object": "chat.completion.chunk", "created": created, "model": served.name,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
                         **extra})

        async def events():
            try:
                yield chunk({"role": "assistant", "content": ""})
                item = first
                while item is not job:  # text as it is generated, as far as the answer keeps it
                    piece = text.feed(item)
                    if text.final is not None:  # a stop string or the budget: the rest is not needed
                        sink.stop.set()
                    if piece:
                        yield chunk({"content": piece})
                    item = await queue.get()
                try:
                    result, timings = finished or outcome(served, job)
                except ApiError as e:  # the status is sent already: the error goes in the stream
                    yield data(e.body())
                    return
                (_, ids, finish), rest = text.finish(_prediction(result))
                for piece in WORD.findall(rest):
                    yield chunk({"content": piece})
                yield chunk({}, finish, kinject=info(result, timings))
                if req.stream_options and req.stream_options.include_usage:
                    yield data({"id": rid, "object": "chat.completion.chunk", "created": created,
                                "model": served.name, "choices": [], "usage": usage(result, ids)})
                yield "data: [DONE]\n\n"
            except Exception as e:
                log.exception("streaming %s failed", rid)
                yield data(InternalError(f"internal error: {type(e).__name__}: {e}").body())
            finally:
                drop()  # a no-op once finished; stops the generation of a client that went away

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------ admin: hot-plug domains
    @app.get("/admin/domains", dependencies=[Depends(admin)])
    @guarded
    async def list_domains():
        return {"domains": models.domains(), "routes": list(models.pipeline.routes),
                "snapshot": models.pipeline.snapshot.version}

    @app.post("/admin/domains", status_code=201, dependencies=[Depends(admin)])
    @guarded
    async def add_domain(req: AddDomainRequest):
        def exists() -> None:
            if req.name in models.pipeline.routes:
                raise DomainExists(f"domain {req.name!r} is already served; DELETE it first to replace it")

        exists()
        if req.name in server.adding:
            raise DomainExists(f"domain {req.name!r} is being added")
        opts = DomainOptions(expert=req.expert, injector=req.injector, system=req.system,
                             instruction=req.instruction, max_background_tokens=req.max_background_tokens,
                             memory=req.memory)
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
            exists()  # checked again with no await before the swap: add_domain cannot find it served
            snap = pipe.add_domain(req.name, bank, route)
            server.registry.record_add(req.name, {**req.model_dump(exclude_none=True), "bank": bank_dir})
        except UserError as e:
            raise BadDomain(str(e)) from None
        finally:
            server.adding.discard(req.name)
        server.failures.pop(req.name, None)
        log.info("added domain %s (snapshot %d)", req.name, snap.version)
        return {"domain": req.name, "model": f"gag-{req.name}", "bank": bank_dir, "routes": list(snap.routes),
                "snapshot": snap.version}

    @app.delete("/admin/domains/{name}", dependencies=[Depends(admin)])
    @guarded
    async def remove_domain(name: str):
        if name not in models.pipeline.routes and name not in models.pipeline.unavailable:
            raise DomainNotFound(f"domain {name!r} is not served")
        try:
            snap = models.pipeline.remove_domain(name)
        except UserError as e:
            raise BadDomain(str(e), param="name") from None
        server.registry.record_remove(name, configured=name in models.configured)
        server.failures.pop(name, None)
        log.info("removed domain %s (snapshot %d)", name, snap.version)
        return {"removed": name, "routes": list(snap.routes), "snapshot": snap.version}

    return app
