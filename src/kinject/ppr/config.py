"""PPR configs: which encoder, how many prototypes, the margin rule."""

from __future__ import annotations

from pydantic import Field

from kinject.config import StageConfig, register_config
from kinject.encoders import EncoderConfig


@register_config
class PPRConfig(StageConfig):
    kind: str = "ppr"
    encoder: EncoderConfig = EncoderConfig()
    k: int = Field(32, ge=1, description="prototypes per domain (capped by its number of distinct questions)")
    n_init: int = Field(10, ge=1, description="k-means restarts")
    max_questions: int = Field(10_000, ge=1, description="offline questions per domain (seeded sample above)")
    margin: float | None = Field(None, ge=0, description="fall back to `general` when best - second < margin")
