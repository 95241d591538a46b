"""Eval method `expert`: each private domain's expert alone, asked as in Stage II SFT
(`kinject.expert.evaluate.expert_prompt`: `expert_messages(instruction, question)`, greedy).

`options.domains.<name>` is that domain's SFT expert; each question goes to the expert of its
row's `domain`. The instruction is the row's own `instruction` field when it has one (the
world's domain QA rows do), else the `instruction` option, else the one the expert was
fine-tuned with (its manifest). The expert reads no passages: `added_prompt_tokens` is 0."""

from __future__ import annotations

from pathlib import Path

from kinject.config import StrictModel
from kinject.eval.method import MethodContext, answer_by_domain, register_method


class ExpertOptions(StrictModel):
    domains: dict[str, Path]  # domain -> SFT expert directory (`kinject expert sft`)
    instruction: str | None = None  # None: each expert's recorded SFT instruction
    max_new_tokens: int | None = None  # None = the eval config's


class ExpertMethod:
    name = "expert"

    def __init__(self, options: ExpertOptions, ctx: MethodContext):
        from kinject.errors import UserError
        from kinject.expert.evaluate import default_instruction
        from kinject.models import load_causal_lm

        if not options.domains:
            raise UserError("method 'expert': options.domains is empty (give each domain's expert dir)")
        self.experts = {
            d: (*load_causal_lm(p, device=ctx.device, dtype=ctx.dtype),
                options.instruction if options.instruction is not None else default_instruction(p))
            for d, p in options.domains.items()}
        self.max_new_tokens = options.max_new_tokens or ctx.max_new_tokens
        self.batch_size = ctx.batch_size

    def _answer(self, domain: str, rows: list[dict]) -> list[dict]:
        from kinject.expert.evaluate import expert_prompt
        from kinject.generation import generate_texts

        model, tok, default = self.experts[domain]
        instructions = [row.get("instruction") or default for row in rows]
        prompts = [expert_prompt(tok, ins, row["question"]) for ins, row in zip(instructions, rows, strict=True)]
        gens = generate_texts(model, tok, prompts, self.max_new_tokens, self.batch_size)
        return [{"prediction": g.text,
                 "trace": {"instruction": ins, "prompt_tokens": g.n_prompt_tokens, "new_tokens": g.n_new_tokens,
                           "added_prompt_tokens": 0}}
                for g, ins in zip(gens, instructions, strict=True)]

    def answer(self, batch: list[dict]) -> list[dict]:
        return answer_by_domain(self.name, batch, {d: (lambda rows, d=d: self._answer(d, rows)) for d in self.experts})


@register_method("expert", options=ExpertOptions)
def make_expert(options: ExpertOptions, ctx: MethodContext) -> ExpertMethod:
    """The domain's expert alone (Stage II prompt), greedy."""
    return ExpertMethod(options, ctx)
