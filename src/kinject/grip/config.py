"""Configs of the GRIP stages (kinds `grip_synth`, `grip_sft`, `grip_eval`).

RL (`grip_rl`) lives in its own module of this package (`kinject.grip.rl_config`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from kinject.config import LoraSection, StageConfig, StrictModel, register_config


class RewriterConfig(StrictModel):
    """The C-class rewriter: writes a corrected fact and a NEW query for a wrong prediction.

    `world`: programmatic, from the world's hop decomposition (`intermediate`, `sub_questions`).
    `supporting`: programmatic, from a real QA row's gold paragraphs (`supporting_pids` into
    `passages`): fact = a gold sentence, new query = the title of the gold paragraph not retrieved.
    `openai`: any OpenAI-compatible chat endpoint (`url`, `model`); the key is read from the
    environment variable named by `api_key_env` (a local server accepts any key)."""

    kind: Literal["world", "supporting", "openai"] = "world"
    passages: str = ""  # `supporting`: the passages TSV/JSONL the rows' supporting_pids point into
    url: str = ""
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 1.0  # release: gpt-4o-mini, temperature 1.0, 80 tokens
    max_tokens: int = 80
    timeout_s: float = 60.0
    concurrency: int = 4


class AgentConfig(StrictModel):
    """The agent loop of the GRIP paper (release: 4 rounds, top-3, 128 new tokens per turn)."""

    max_rounds: int = Field(4, ge=1)
    top_k: int = Field(3, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(32, ge=1)
    control_tokens: Literal["special", "text"] = "special"  # as the model was trained (grip sft)
    first_query: Literal["model", "question"] = "model"  # see agent.AgentSettings.first_query


@register_config
class GripSynthConfig(StageConfig):
    """`kinject grip synth`: pattern A-D training turns from `{question, answer}` files."""

    kind: str = "grip_synth"
    questions: list[str] = Field(description="JSONL files of {question, answer: [..]} (world rows add hops etc.)")
    model: str = Field(description="closed-book reference model (the base) directory")
    index: str = Field(description="passage index directory (`kinject index build`)")
    backend: str | None = None
    out: str = "outputs/grip/synth"
    # eval configs (`kind: eval`) whose datasets hold the test questions: any question of
    # `questions` that one of their datasets evaluates (same `id`, else same text) is left out,
    # so a dev file can feed training and a seeded test sample at once without overlap
    exclude_eval: list[str] = Field(default_factory=list)
    rewriter: RewriterConfig = RewriterConfig()
    top_k: int = Field(3, ge=1)
    max_new_tokens: int = Field(32, ge=1)  # closed-book pass (release: 32 greedy tokens)
    batch_size: int = Field(32, ge=1)
    rl_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # release: 1,250 of 11,250 per class to RL
    max_per_class: int | None = None  # cap per class before the split (release: 11,250)
    wrong_as_b: bool = True  # round-0 plan turn for wrong predictions too (see synth.py)
    limit: int | None = None
    threads: int = 1  # torch threads (1 measured 3x faster than 2 for tiny models on the shared CPU)
    device: str = "auto"
    dtype: str = "auto"


@register_config
class GripSftConfig(StageConfig):
    """`kinject grip sft`: loss on the target turn only (TRL SFTTrainer, prompt-completion)."""

    kind: str = "grip_sft"
    renamed = {"lr": "learning_rate", "scheduler": "lr_scheduler", "per_device_batch_size": "batch_size",
               "lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout"}
    model: str = Field(description="model to fine-tune (release: the base, not instruct)")
    data: str | list[str] = Field(description="sft.jsonl written by `kinject grip synth` (a list: their union, "
                                              "e.g. one synth run per corpus)")
    out: str = "outputs/grip/sft"
    control_tokens: Literal["special", "text"] = "special"  # single ids (default) or plain text
    # `words`: start the control tokens' embeddings at their words' mean (sft.init_control_embeddings;
    # for a base that never trained them); `keep`: as loaded (continuing from a GRIP checkpoint)
    control_init: Literal["words", "keep"] = "words"
    # LoRA (PEFT) instead of a full fine-tune: `lora.r` > 0 trains rank-r adapters on every linear
    # layer plus the control tokens' embedding rows only, then merges them into the saved model
    lora: LoraSection = LoraSection(r=0, dropout=0.0, target_modules="all-linear")
    epochs: float = 8.0
    max_steps: int = -1  # > 0: stop after this many optimizer steps (overrides epochs)
    learning_rate: float = 1e-6
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    batch_size: int = Field(8, ge=1, description="per device")
    grad_accum: int = 1
    max_length: int = 8192
    bf16: bool = False
    gradient_checkpointing: bool = False
    threads: int = 1
    logging_steps: int = 10
    save_dtype: str = "auto"
    limit: int | None = None


@register_config
class GripEvalConfig(StageConfig):
    """`kinject grip eval` / `answer` / `bench`: the agent over a question file.

    `base_model` (optional) adds the closed-book base and RAG k=`rag_k` on the same questions
    and splits, so one run compares the three."""

    kind: str = "grip_eval"
    model: str = Field(description="GRIP model directory (from `kinject grip sft`)")
    index: str = Field(description="passage index directory")
    backend: str | None = None
    data: str = ""  # questions file; `--data` on the command line
    dataset: str = "wiki"  # subsets <dataset>_popular / _longtail / _2hop when rows say so
    split: str = "test"
    agent: AgentConfig = AgentConfig()
    base_model: str | None = None
    rag_k: list[int] = [3]
    baseline_max_new_tokens: int = 32
    limit: int | None = None
    threads: int = 1
    device: str = "auto"
    dtype: str = "auto"

    @field_validator("rag_k")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(k <= 0 for k in v):
            raise ValueError("rag_k must hold positive integers")
        return v


# the RL stage's config kind (`grip_rl`) lives next to its trainer; import it so
# `kinject config show` finds every grip kind through this module
from kinject.grip import rl_config as _rl_config  # noqa: E402,F401
