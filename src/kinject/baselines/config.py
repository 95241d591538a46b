"""`kind: baseline_lora`: a PEFT LoRA fine-tune of the base on a domain's QA train split."""

from __future__ import annotations

from pydantic import Field

from kinject.config import LoraSection, StageConfig, register_config
from kinject.expert.config import TrainSection


@register_config
class LoraBaselineConfig(StageConfig):
    kind: str = "baseline_lora"
    base: str = Field(description="the frozen base model directory (the model answering closed-book)")
    data: str = Field(description="the domain's qa_train.jsonl (instruction, input, output)")
    val_data: str | None = Field(None, description="validation QA JSONL; default: hold out val_share of data")
    out: str = Field(description="adapter output directory")
    val_share: float = Field(0.03, gt=0.0, lt=0.5)
    answer_format: str = Field("", description="the answer-format line of the closed-book prompt; the eval "
                               "config's `answer_format` (the lora method checks they match)")
    max_length: int = Field(256, ge=8)
    limit: int | None = Field(None, ge=2, description="first N training rows (quick runs)")
    lora: LoraSection = LoraSection()
    dtype: str = "auto"
    train: TrainSection = TrainSection(learning_rate=1e-3, epochs=3.0, warmup_ratio=0.05)
