"""`gag_stage3` config: Stage III injector training on a frozen base (the GAG paper), optionally
preceded by an alignment phase on general-domain items (not in the paper; see docs/design.md:
the largest measured lever, so the shipped presets turn it on)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kinject.config import StageConfig, StrictModel, register_config


class PhaseConfig(StrictModel):
    """One training phase: JSONL rows `{question, answer, [id], [background]}` + their memories."""

    renamed = {"steps": "max_steps", "lr": "learning_rate"}

    data: str
    memory: str
    max_steps: int = Field(100, ge=0)
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(16, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    limit: int | None = None


class InjectorSettings(StrictModel):
    pooling: Literal["stored", "attention"] = "stored"
    mixer_clamp: float | None = 10.0
    attention_dim: int = 64
    attention_heads: int = Field(1, ge=1)  # heads per slot (pooling: attention); must divide the expert width
    residual_mix: bool = False  # heads > 1: also add a one-head mix of whole token states to each slot


@register_config
class Stage3Config(StageConfig):
    kind: str = "gag_stage3"
    base: str
    out: str
    instruction: str = ""
    answer_format: str = ""  # answer-format help line in the base prompt (prompts.py); recorded in the injector
    injector: InjectorSettings = InjectorSettings()
    init_injector: str | None = None  # start from a saved injector (e.g. an alignment-only run)
    alignment: PhaseConfig | None = None
    domain: PhaseConfig | None = None
    w_sem: float = Field(0.01, ge=0)
    w_div: float = Field(0.001, ge=0)
    encoder: str | None = None  # frozen sentence encoder for L_sem; None = shipped MiniLM
    weight_decay: float = 0.0
    clip: float = 1.0
    max_length: int = 512
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    device: str = "auto"
    base_dtype: str = "auto"
    threads: int | None = None  # torch CPU threads (None: leave as is)


@register_config
class GagAnswerConfig(StageConfig):
    """Online GAG answering: expert -> background -> slots -> injector -> frozen base."""

    kind: str = "gag_answer"
    expert: str
    base: str
    injector: str
    # the expert's background settings: None = the injector's recorded background spec (as its
    # memories were written; `kinject.memory.spec`); a value that contradicts it is refused
    system: str | None = None
    instruction: str = ""
    max_background_tokens: int | None = Field(None, ge=1)
    memory: str | None = None  # the store the injector was trained on (its spec, for an injector that records none)
    max_new_tokens: int = 32
    batch_size: int = 16
    device: str = "auto"
    dtype: str = "auto"
