"""Eval method `grip`: the GRIP agent (`kinject.grip.agent.GripAgent`) over an index.

The prediction is the list of step answers (every intermediary, then the final answer), as
GRIP's release writes it; the harness scores the last. The trace holds `n_retrievals`, the
queries issued, and `added_prompt_tokens`: the prompt tokens of all the agent's rounds for
the question minus its closed-book prompt (a multi-round agent re-reads its context each
round; that is the honest cost next to RAG's one prompt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from kinject.config import StrictModel
from kinject.eval.method import MethodContext, register_method


class GripOptions(StrictModel):
    model: Path  # a GRIP model (`kinject grip sft` / `grip rl`)
    index: Path  # passage index
    backend: str | None = None
    max_rounds: int = Field(4, ge=1)
    top_k: int = Field(3, ge=1)
    max_new_tokens: int = Field(64, ge=1)  # per turn
    control_tokens: Literal["special", "text"] = "special"
    first_query: Literal["model", "question"] = "model"  # see kinject.grip.agent.AgentSettings


class GripMethod:
    name = "grip"

    def __init__(self, options: GripOptions, ctx: MethodContext):
        from kinject.grip.agent import AgentSettings, GripAgent, check_control_tokens
        from kinject.models import check_model_dir, load_causal_lm, load_tokenizer
        from kinject.retrieval.base import open_index

        check_model_dir(options.model, need_tokenizer=True)
        if options.control_tokens == "special":
            check_control_tokens(load_tokenizer(options.model))  # a non-GRIP model fails before loading weights
        self.retriever = open_index(options.index, options.backend)
        model, self.tokenizer = load_causal_lm(options.model, device=ctx.device, dtype=ctx.dtype)
        settings = AgentSettings(options.max_rounds, options.top_k, options.max_new_tokens, ctx.batch_size,
                                 options.control_tokens, options.first_query)
        self.agent = GripAgent.from_model(model, self.tokenizer, self.retriever, settings)
        self.prompt_tokens: dict[int, int] = {}
        inner = self.agent.prompt

        def counted_prompt(ep, force):  # count every round's prompt tokens per episode
            text = inner(ep, force)
            n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            self.prompt_tokens[id(ep)] = self.prompt_tokens.get(id(ep), 0) + n
            return text

        self.agent.prompt = counted_prompt

    def answer(self, batch: list[dict]) -> list[dict]:
        from kinject.eval.methods.closed_book import closed_book_tokens

        qs = [row["question"] for row in batch]
        self.prompt_tokens.clear()
        episodes = self.agent.run(qs)
        closed = closed_book_tokens(self.tokenizer, qs)
        out = []
        for ep, c in zip(episodes, closed, strict=True):
            total = self.prompt_tokens.get(id(ep), 0)
            out.append({"prediction": ep.step_answers,
                        "trace": {"n_retrievals": ep.n_retrievals, "rounds": len(ep.steps),
                                  "queries": [s.query for s in ep.steps if s.query],
                                  "prompt_tokens": total, "added_prompt_tokens": total - c}})
        return out


@register_method("grip", options=GripOptions)
def make_grip(options: GripOptions, ctx: MethodContext) -> GripMethod:
    """GRIP: self-triggered retrieval rounds with the GRIP model, answer per step."""
    return GripMethod(options, ctx)
