"""PPR configs: which encoder, how many prototypes, the margin rule."""

from __future__ import annotations

from pydantic import Field

from kinject.config import StageConfig, StrictModel, register_config


class EncoderConfig(StrictModel):
    kind: str = Field("sentence-transformers", description="registered encoder name (see kinject.ppr.encoders)")
    path: str | None = Field(None, description="local model directory; None = the kind's default model")
    batch_size: int = Field(64, ge=1)
    max_length: int = Field(256, ge=8, description="max tokens per query (longer ones are truncated)")
    device: str = "auto"
    dtype: str = Field("auto", description="hf-mean only: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16")


@register_config
class PPRConfig(StageConfig):
    kind: str = "ppr"
    encoder: EncoderConfig = EncoderConfig()
    k: int = Field(32, ge=1, description="prototypes per domain (capped by its number of distinct questions)")
    n_init: int = Field(10, ge=1, description="k-means restarts")
    max_questions: int = Field(10_000, ge=1, description="offline questions per domain (seeded sample above)")
    margin: float | None = Field(None, ge=0, description="fall back to `general` when best - second < margin")
