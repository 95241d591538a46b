"""Eval method `rag_k{k}`: top-k passages from an index in the base's knowledge prompt
(`kinject.retrieval.rag.rag_answer`). `added_prompt_tokens` = prompt tokens over the
closed-book prompt of the same question (the passages plus the knowledge request)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from kinject.config import StrictModel
from kinject.eval.method import MethodContext, register_method


class RagOptions(StrictModel):
    model: Path  # the base causal LM directory
    index: Path  # an index built by `kinject index build`
    k: int = Field(ge=1)  # taken from the name: rag_k3 -> 3
    backend: str | None = None  # must match the index's when given
    passage_format: Literal["numbered", "plain"] = "plain"  # plain: what the tiny base was pretrained to read
    instruction: str = ""
    max_new_tokens: int | None = None  # None = the eval config's


class RagMethod:
    name = "rag"

    def __init__(self, options: RagOptions, ctx: MethodContext):
        from kinject.models import load_causal_lm
        from kinject.retrieval.base import open_index

        self.retriever = open_index(options.index, options.backend)
        self.model, self.tokenizer = load_causal_lm(options.model, device=ctx.device, dtype=ctx.dtype)
        self.options = options
        self.max_new_tokens = options.max_new_tokens or ctx.max_new_tokens
        self.batch_size = ctx.batch_size
        self.answer_format = ctx.answer_format

    def answer(self, batch: list[dict]) -> list[dict]:
        from kinject.eval.methods.closed_book import closed_book_tokens
        from kinject.retrieval.rag import rag_answer

        qs = [row["question"] for row in batch]
        o = self.options
        outs = rag_answer(self.model, self.tokenizer, self.retriever, qs, o.k, self.max_new_tokens,
                          self.batch_size, o.instruction, style=o.passage_format,
                          answer_format=self.answer_format)
        closed = closed_book_tokens(self.tokenizer, qs, self.answer_format)
        return [{"prediction": out.answer,
                 "trace": {"hits": [h.id for h in out.hits], "n_retrievals": 1, "prompt_tokens": out.n_prompt_tokens,
                           "new_tokens": out.n_new_tokens, "added_prompt_tokens": out.n_prompt_tokens - c}}
                for out, c in zip(outs, closed, strict=True)]


@register_method("rag_k{k}", options=RagOptions)
def make_rag(options: RagOptions, ctx: MethodContext) -> RagMethod:
    """RAG: the base answers from the top-k retrieved passages (knowledge prompt)."""
    return RagMethod(options, ctx)
