"""`base`: the frozen base LM answering closed-book (the `general` route; the GAG paper's "base only")."""

from __future__ import annotations

from pathlib import Path

from kinject.config import StrictModel
from kinject.eval.method import MethodContext, register_method


class ClosedBookOptions(StrictModel):
    model: Path  # local causal LM directory
    max_new_tokens: int | None = None  # None = the eval config's max_new_tokens


class ClosedBook:
    name = "base"

    def __init__(self, options: ClosedBookOptions, ctx: MethodContext):
        from kinject.models import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(options.model, device=ctx.device, dtype=ctx.dtype)
        self.max_new_tokens = options.max_new_tokens or ctx.max_new_tokens
        self.batch_size = ctx.batch_size
        self.answer_format = ctx.answer_format

    def answer(self, batch: list[dict]) -> list[dict]:
        from kinject.generation import generate_texts
        from kinject.prompts import general_messages, render

        prompts = [render(self.tokenizer, general_messages(row["question"], self.answer_format)) for row in batch]
        gens = generate_texts(self.model, self.tokenizer, prompts, self.max_new_tokens, self.batch_size)
        return [
            {"prediction": g.text,
             "trace": {"prompt_tokens": g.n_prompt_tokens, "new_tokens": g.n_new_tokens, "added_prompt_tokens": 0,
                       "n_retrievals": 0}}
            for g in gens
        ]


@register_method("base", options=ClosedBookOptions)
def make_closed_book(options: ClosedBookOptions, ctx: MethodContext) -> ClosedBook:
    """Closed-book answers from a local causal LM (general_messages, greedy, left padding)."""
    return ClosedBook(options, ctx)


def closed_book_tokens(tokenizer, questions: list[str], answer_format: str = "") -> list[int]:
    """Prompt tokens of the closed-book prompt per question: the zero point of `added_prompt_tokens`."""
    from kinject.prompts import general_messages, render

    return [len(tokenizer(render(tokenizer, general_messages(q, answer_format)), add_special_tokens=False)["input_ids"])
            for q in questions]
