"""`memory_build` config: which expert, which questions, which layers/slots, where to store."""

from __future__ import annotations

from typing import Literal

from kinject.config import StageConfig, register_config
from kinject.memory.spec import DEFAULT_MAX_NEW_TOKENS, BackgroundSpec


@register_config
class MemoryBuildConfig(StageConfig):
    kind: str = "memory_build"
    expert: str
    questions: list[str]
    out: str
    # generate: the expert writes the background (the paper); given: read the rows' `background`
    # field as the expert's answer (alignment items whose knowledge statement is supplied);
    # prefill: no background, the expert's states over the question and `answer_prefix` in one
    # forward pass (memories without decoding: the expert's cost is one short prefill)
    source: Literal["generate", "given", "prefill"] = "generate"
    answer_prefix: str = ""  # source: prefill: fixed text read after the question (e.g. "The answer is")
    system: str = ""  # the expert's system prompt (recorded with `max_new_tokens` in the store's background spec)
    layers: list[str] = ["last", "minus2", "minus4", "minus6"]
    slots: int = 4
    pooling: Literal["segment_softmax", "adaptive_avg"] = "segment_softmax"
    tau: float = 1.0
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    batch_size: int = 16
    shard_size: int = 256
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    keep_trajectories: bool = False
    device: str = "auto"
    model_dtype: str = "auto"
    limit: int | None = None
    threads: int | None = None  # torch CPU threads (None: leave as is)

    def background_spec(self) -> BackgroundSpec:
        """What decides the backgrounds (recorded in the store): the length cap only when they are generated."""
        return BackgroundSpec(system=self.system, max_new_tokens=self.max_new_tokens if self.source == "generate" else None,
                              prefill_prefix=self.answer_prefix if self.source == "prefill" else None)
