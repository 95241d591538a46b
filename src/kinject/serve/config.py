"""`kinject serve` config: the mixed pipeline's paths, the extra models, batching and limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from kinject.config import StageConfig, StrictModel, register_config
from kinject.mixed import MixedOptions


class BatchingConfig(StrictModel):
    max_batch_size: int = Field(16, ge=1, description="requests per model call (1 = unbatched)")
    max_wait_ms: float = Field(10.0, ge=0, description="how long a batch waits to fill after its first request")
    max_queue: int = Field(256, ge=1, description="queued requests per model; above it -> 503 + Retry-After")


class RagServeOptions(StrictModel):
    """The `rag` model: top-k passages from an index in the base's knowledge prompt."""

    index: Path
    k: int = Field(3, ge=1)
    passage_format: Literal["numbered", "plain"] = "plain"
    instruction: str = ""


class ExtraModel(StrictModel):
    """Any registered eval method served under its own model name (its own model copy)."""

    method: str  # e.g. "text_injection", "lora", "rag_k5" (see `kinject eval methods`)
    options: dict[str, Any] = {}


@register_config
class ServeConfig(StageConfig):
    kind: str = "serve"
    pipeline: MixedOptions
    rag: RagServeOptions | None = None
    extra_models: dict[str, ExtraModel] = {}
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    batching: BatchingConfig = BatchingConfig()
    request_timeout_s: float = Field(120.0, gt=0, description="per request, queue wait included -> 504")
    max_body_bytes: int = Field(65536, ge=256, description="larger request bodies -> 413")
    max_question_tokens: int = Field(256, ge=1, description="longer questions -> 400 (they would fail their "
                                                            "whole batch in a model with a short context)")
    max_tokens_cap: int | None = Field(None, ge=1, description="max_tokens above it is clipped to it (default: "
                                                              "pipeline.max_new_tokens)")
    api_key: str | None = None  # bearer key for /v1/* (env KINJECT_API_KEY wins); None = open
    admin_key: str | None = None  # bearer key for /admin/* (env KINJECT_ADMIN_KEY wins); None = disabled
    threads: int = Field(1, ge=1, description="torch threads (1 was fastest for tiny models on a shared CPU)")
    graceful_timeout_s: float = Field(30.0, ge=0, description="shutdown waits this long for in-flight requests")
    missing_hint: str = "; run `make demo` first"  # ends each missing-path error
    on_domain_error: Literal["fail", "isolate"] = Field(
        "fail", description="a domain whose artifacts fail at start: fail = exit 2 with the reason, isolate = "
                            "serve the rest and mark it unavailable (/ready)")
    registry: Path | None = Field(None, description="hot-plugged domains are persisted here and replayed on start "
                                                    "(`kinject serve` default: <config>.domains.json beside the "
                                                    "config)")
