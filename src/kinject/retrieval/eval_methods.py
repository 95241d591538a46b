"""Eval method `rag_k{k}`: top-k passages from an index (a private domain's own one for its
questions, `domain_indexes`) in the base's knowledge prompt
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
    index: Path | None = None  # an index built by `kinject index build`
    # a private domain's own corpus: rows whose `domain` is a key retrieve from that index instead
    domain_indexes: dict[str, Path] = Field(default_factory=dict)
    k: int = Field(ge=1)  # taken from the name: rag_k3 -> 3
    backend: str | None = None  # must match the index's when given
    passage_format: Literal["numbered", "plain"] = "plain"  # plain: what the tiny base was pretrained to read
    instruction: str = ""
    max_new_tokens: int | None = None  # None = the eval config's


class RagMethod:
    name = "rag"

    def __init__(self, options: RagOptions, ctx: MethodContext):
        from kinject.errors import UserError
        from kinject.models import load_causal_lm
        from kinject.retrieval.base import open_index

        if options.index is None and not options.domain_indexes:
            raise UserError("method 'rag_k': give options.index (or options.domain_indexes for private domains)")
        self.retrievers = {d: open_index(p, options.backend) for d, p in options.domain_indexes.items()}
        self.retriever = open_index(options.index, options.backend) if options.index is not None else None
        self.model, self.tokenizer = load_causal_lm(options.model, device=ctx.device, dtype=ctx.dtype)
        self.options = options
        self.max_new_tokens = options.max_new_tokens or ctx.max_new_tokens
        self.batch_size = ctx.batch_size
        self.answer_format = ctx.answer_format

    def answer(self, batch: list[dict]) -> list[dict]:
        """Rows go to their domain's index (`domain_indexes`), the rest to `index`; order kept."""
        groups: dict[str | None, list[int]] = {}
        for i, row in enumerate(batch):
            d = row.get("domain")
            groups.setdefault(d if d in self.retrievers else None, []).append(i)
        out: list[dict | None] = [None] * len(batch)
        for d, idx in groups.items():
            retriever = self.retrievers[d] if d is not None else self.retriever
            if retriever is None:
                from kinject.errors import UserError

                domains = sorted({batch[i].get("domain") for i in idx}, key=str)
                raise UserError(f"method {self.name!r}: questions of domain {domains[0]!r} have no index (add "
                                "options.index or an entry under options.domain_indexes)")
            for i, a in zip(idx, self._answer(retriever, [batch[i] for i in idx]), strict=True):
                out[i] = a
        return out  # type: ignore[return-value]

    def _answer(self, retriever, batch: list[dict]) -> list[dict]:
        return answer_from_passages(self, retriever, [row["question"] for row in batch], self.options.k,
                                    n_retrievals=1)


def answer_from_passages(method, retriever, questions: list[str], k: int, hits=None, n_retrievals: int = 1) -> list[dict]:
    """The base's answers from passages in its knowledge prompt (`retriever`'s top k, or the given
    `hits`), with the trace every retrieval-side method reports: added tokens are counted over the
    closed-book prompt of the same question."""
    from kinject.eval.methods.closed_book import closed_book_tokens
    from kinject.retrieval.rag import rag_answer

    o = method.options
    outs = rag_answer(method.model, method.tokenizer, retriever, questions, k, method.max_new_tokens,
                      method.batch_size, o.instruction, hits=hits, style=o.passage_format,
                      answer_format=method.answer_format)
    closed = closed_book_tokens(method.tokenizer, questions, method.answer_format)
    return [{"prediction": out.answer,
             "trace": {"hits": [h.id for h in out.hits], "n_retrievals": n_retrievals,
                       "prompt_tokens": out.n_prompt_tokens, "new_tokens": out.n_new_tokens,
                       "added_prompt_tokens": out.n_prompt_tokens - c}}
            for out, c in zip(outs, closed, strict=True)]


@register_method("rag_k{k}", options=RagOptions)
def make_rag(options: RagOptions, ctx: MethodContext) -> RagMethod:
    """RAG: the base answers from the top-k retrieved passages (knowledge prompt)."""
    return RagMethod(options, ctx)


class OracleOptions(StrictModel):
    model: Path  # the base causal LM directory
    passages: Path  # the passages file (TSV or JSONL) the rows' `supporting_pids` point into
    passage_format: Literal["numbered", "plain"] = "plain"
    instruction: str = ""
    max_new_tokens: int | None = None  # None = the eval config's


class OracleMethod:
    """The reading ceiling of RAG: each question's own gold passages (`supporting_pids`, in the
    order given) in the same knowledge prompt `rag_k{k}` uses, so the gap to a RAG row is what
    retrieval loses and the gap to 1.0 what the reader loses."""

    name = "oracle"

    def __init__(self, options: OracleOptions, ctx: MethodContext):
        from kinject.models import load_causal_lm
        from kinject.retrieval.base import Hit
        from kinject.retrieval.ingest import read_passages

        self.passages = {d.id: Hit(d.id, d.title, d.text, 1.0) for d in read_passages(options.passages)}
        self.model, self.tokenizer = load_causal_lm(options.model, device=ctx.device, dtype=ctx.dtype)
        self.options = options
        self.max_new_tokens = options.max_new_tokens or ctx.max_new_tokens
        self.batch_size = ctx.batch_size
        self.answer_format = ctx.answer_format

    def gold_hits(self, row: dict) -> list:
        from kinject.errors import UserError

        pids = row.get("supporting_pids")
        if not pids:
            raise UserError(f"method 'oracle': question {row.get('id')!r} has no supporting_pids (the oracle "
                            "needs each question's gold passage ids)")
        missing = [p for p in pids if str(p) not in self.passages]
        if missing:
            raise UserError(f"method 'oracle': question {row.get('id')!r} names passages absent from "
                            f"{self.options.passages}: {', '.join(map(str, missing[:3]))}")
        return [self.passages[str(p)] for p in pids]

    def answer(self, batch: list[dict]) -> list[dict]:
        hits = [self.gold_hits(row) for row in batch]
        return answer_from_passages(self, None, [row["question"] for row in batch], max(map(len, hits)), hits,
                                    n_retrievals=0)


@register_method("oracle", options=OracleOptions)
def make_oracle(options: OracleOptions, ctx: MethodContext) -> OracleMethod:
    """Oracle reading: the base answers from each question's gold passages (the RAG ceiling)."""
    return OracleMethod(options, ctx)
