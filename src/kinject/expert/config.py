"""Configs of the expert stages: `expert_dapt` (Stage I) and `expert_sft` (Stage II).

Defaults are the GAG paper's values; the tiny presets in `configs/gag/*_tiny.yaml`
override what a 2M-parameter model on a CPU needs.
"""

from __future__ import annotations

from pydantic import Field

from kinject.config import StageConfig, StrictModel, register_config


class TrainSection(StrictModel):
    """Optimizer, schedule and checkpointing shared by both stages (HF `TrainingArguments`)."""

    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    epochs: float = 2.0
    max_steps: int = Field(-1, description="> 0 overrides epochs")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    lr_scheduler: str = "linear"
    batch_size: int = Field(8, ge=1, description="per device")
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float = 1.0
    eval_steps: int = Field(100, ge=1, description="evaluate (and checkpoint) every N steps")
    logging_steps: int = Field(10, ge=1)
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept for resuming (the best is always kept)")
    bf16: bool = Field(False, description="bf16 mixed precision (GPU only; ignored on CPU)")
    gradient_checkpointing: bool = False
    dataloader_workers: int = 0
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads (null: torch default); 1 is fastest on a busy shared CPU"
    )
    keep_checkpoints: bool = Field(False, description="keep <out>.checkpoints after success")


class QaMix(StrictModel):
    """QA examples mixed into DAPT as extra training documents (chat-rendered, full loss).

    Measured on tiny models (docs/design.md): facts learned in pretraining become extractable
    when QA about other facts of the same kind is seen during pretraining. Off (null) = the
    paper's strict two-stage order.
    """

    path: str
    repeats: int = Field(1, ge=1, description="times each QA example is added")
    background: bool = Field(True, description="also add the background-writing task")


class QaProbe(StrictModel):
    """Greedy QA on a sample of held-out questions at every evaluation, logged as `eval_qa_em`
    (a learning curve of knowledge extraction; monitoring only, the checkpoint is still chosen
    by validation loss so the reported dev numbers are not selected on dev)."""

    path: str = Field(description="JSONL with instruction, input, answer (e.g. qa_dev.jsonl)")
    limit: int = Field(64, ge=1, description="questions per probe")
    max_new_tokens: int = Field(16, ge=1)


class BackgroundTask(StrictModel):
    """Mix the background-writing task into SFT: user = `background_messages(q, system)`,
    assistant = the row's `background` (one fixed-format fact sentence)."""

    enabled: bool = False
    system: str = ""


@register_config
class DaptConfig(StageConfig):
    kind: str = "expert_dapt"
    model: str = Field(description="expert init: local HF model directory")
    corpus: str = Field(description="JSONL with field `text` (knowledge_base.jsonl)")
    out: str = Field(description="output model directory")
    block_size: int = Field(1024, ge=8)
    separator: str = "\n\n"
    val_share: float = Field(0.03, gt=0.0, lt=0.5, description="share of documents held out")
    qa_mix: QaMix | None = None
    probe: QaProbe | None = None
    dtype: str = "auto"
    train: TrainSection = TrainSection()


@register_config
class SftConfig(StageConfig):
    kind: str = "expert_sft"
    model: str = Field(description="DAPT output (or the init, for the no-DAPT ablation)")
    data: str = Field(description="JSONL with instruction, input, output (qa_train.jsonl)")
    val_data: str | None = Field(None, description="validation JSONL; default: hold out val_share of data")
    out: str
    val_share: float = Field(0.03, gt=0.0, lt=0.5)
    max_length: int = Field(2048, ge=8)
    enable_thinking: bool | None = Field(
        False, description="chat template kwarg (Qwen3: False = non-thinking mode); null = not passed"
    )
    background: BackgroundTask = BackgroundTask()
    probe: QaProbe | None = None
    dtype: str = "auto"
    train: TrainSection = TrainSection(learning_rate=5e-6, epochs=3.0, warmup_ratio=0.05)
