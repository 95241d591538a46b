"""Config of `kinject grip rl` (kind `grip_rl`): DAPO on TRL's GRPOTrainer with retrieval in the loop.

Defaults mirror the GRIP paper's RL setting (DAPO: clip 0.2 / 0.28, no KL, token-mean loss, dynamic
sampling, 8 samples per prompt, overlong shaping, lr 1e-7); `configs/grip/rl_tiny.yaml` shrinks
them for the CPU, `configs/grip/rl_paper.yaml` keeps them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kinject.config import StageConfig, StrictModel, register_config


class RLData(StrictModel):
    # imitation: records {question, intermediary, references, target} (one round each, the
    # synthesis output); outcome: QA records {question, answer: [..]} (e.g. wiki/qa_train.jsonl)
    train: str
    max_examples: int | None = None


class RLRetrieval(StrictModel):
    index: str | None = None  # a `kinject index build` directory; needed by the outcome reward
    top_k: int = 3


class RLRollout(StrictModel):
    group_size: int = 8  # samples per prompt (DAPO needs >= 2)
    prompts_per_step: int = 4  # groups that reach the loss per optimizer step
    max_rounds: int = 4  # the GRIP paper's budget: 4 rounds, at most 3 retrievals
    max_new_tokens: int = 128  # per turn
    first_query: Literal["model", "question"] = "model"  # as the agent's (kinject.grip.agent.AgentSettings)
    temperature: float = 1.0
    top_p: float = 1.0
    dynamic_sampling: bool = True  # drop groups whose rewards are all equal
    max_resample_batches: int = 3  # extra batches of prompts drawn to refill dropped groups
    mask_truncated_completions: bool = True


class RLOverlong(StrictModel):
    enabled: bool = True
    # DAPO's soft punishment: 0 up to max_new_tokens - cache, linear to -1 at max_new_tokens
    cache: int = 16
    weight: float = 1.0


class RLOutcome(StrictModel):
    metric: Literal["em", "f1"] = "em"
    format_bonus: float = 0.1
    retrieval_cost: float = 0.05


class RLOptim(StrictModel):
    learning_rate: float = 1e-7
    max_steps: int = 100
    warmup_ratio: float = 0.0
    lr_scheduler_type: str = "constant"
    max_grad_norm: float = 1.0
    weight_decay: float = 0.01
    epsilon: float = 0.2
    epsilon_high: float = 0.28
    beta: float = 0.0  # no KL term


class RLEval(StrictModel):
    # after training: the SFT start and the RL model on these QA files (method grip / grip_rl)
    files: list[str] = Field(default_factory=list)
    max_examples: int | None = None
    batch_size: int = 32
    include_start: bool = True  # also evaluate the SFT start (method `grip`); off for extra seeds


@register_config
class GripRLConfig(StageConfig):
    kind: Literal["grip_rl"] = "grip_rl"
    model: str  # the GRIP SFT checkpoint (with single-token control tokens)
    reward: Literal["imitation", "outcome"] = "outcome"
    data: RLData
    retrieval: RLRetrieval = Field(default_factory=RLRetrieval)
    rollout: RLRollout = Field(default_factory=RLRollout)
    overlong: RLOverlong = Field(default_factory=RLOverlong)
    outcome: RLOutcome = Field(default_factory=RLOutcome)
    optim: RLOptim = Field(default_factory=RLOptim)
    eval: RLEval = Field(default_factory=RLEval)
    save_steps: int = 25
    save_total_limit: int = 2
    logging_steps: int = 1
    threads: int = 2
