"""Configs of the retrieval package (registered kinds: `rag_eval`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from kinject.config import StageConfig, register_config


@register_config
class RagEvalConfig(StageConfig):
    """`kinject rag eval`: RAG baseline (top-k passages in the base model's knowledge prompt)."""

    kind: str = "rag_eval"
    questions: str = Field(description="JSONL of {question, answer} (answer: a string or a list of strings)")
    index: str = Field(description="index directory built by `kinject index build`")
    model: str = Field(description="local base model directory")
    backend: str | None = None  # when set, must match the index's backend
    ks: list[int] = [1, 3, 5]
    dataset: str = ""  # default: the questions file's stem
    split: str = "test"
    instruction: str = ""
    # plain = passage bodies joined, exactly the knowledge format the world's base read in pretraining
    # (numbered `[i] title: text` lines suit instruction-tuned real models)
    passage_format: Literal["numbered", "plain"] = "plain"
    max_new_tokens: int = 32
    batch_size: int = 16
    limit: int | None = None  # first N questions only
    where: dict[str, Any] = {}  # keep matching rows: {hops: 1}, {type: [bridge, inference]}, {id: {prefix: "x:"}}
    gold_field: str = "gold_passage_ids"  # when rows have it: recall@k of the retriever too
    device: str = "auto"
    dtype: str = "auto"

    @field_validator("ks")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(k <= 0 for k in v):
            raise ValueError("ks must be a non-empty list of positive integers")
        return v
