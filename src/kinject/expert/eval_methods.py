"""Eval method `expert`: the domain expert alone, asked as in Stage II SFT
(`kinject.expert.evaluate.expert_prompt`: `expert_messages(instruction, question)`, greedy).

The instruction is the row's own `instruction` field when it has one (the world's domain QA
rows do), else the `instruction` option, else the one the expert was fine-tuned with (its
manifest). The expert reads no passages: `added_prompt_tokens` is 0, as for the base."""

from __future__ import annotations

from pathlib import Path

from kinject.config import StrictModel
from kinject.eval.method import MethodContext, register_method


class ExpertOptions(StrictModel):
    model: Path  # the SFT expert directory (`kinject expert sft`)
    instruction: str | None = None  # None: the expert's recorded SFT instruction
    max_new_tokens: int | None = None  # None = the eval config's


class ExpertMethod:
    name = "expert"

    def __init__(self, options: ExpertOptions, ctx: MethodContext):
        from kinject.expert.evaluate import default_instruction
        from kinject.models import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(options.model, device=ctx.device, dtype=ctx.dtype)
        self.instruction = options.instruction if options.instruction is not None else default_instruction(options.model)
        self.max_new_tokens = options.max_new_tokens or ctx.max_new_tokens
        self.batch_size = ctx.batch_size

    def answer(self, batch: list[dict]) -> list[dict]:
        from kinject.expert.evaluate import expert_prompt
        from kinject.generation import generate_texts

        instructions = [row.get("instruction") or self.instruction for row in batch]
        prompts = [expert_prompt(self.tokenizer, ins, row["question"]) for ins, row in zip(instructions, batch)]
        gens = generate_texts(self.model, self.tokenizer, prompts, self.max_new_tokens, self.batch_size)
        return [{"prediction": g.text,
                 "trace": {"instruction": ins, "prompt_tokens": g.n_prompt_tokens, "new_tokens": g.n_new_tokens,
                           "added_prompt_tokens": 0}}
                for g, ins in zip(gens, instructions, strict=True)]


@register_method("expert", options=ExpertOptions)
def make_expert(options: ExpertOptions, ctx: MethodContext) -> ExpertMethod:
    """The domain expert alone (Stage II prompt), greedy."""
    return ExpertMethod(options, ctx)
