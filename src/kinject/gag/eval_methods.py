"""Eval methods `gag` and `text_injection` (the GAG paper's method and its text baseline).

Both start the same way: the domain's expert writes a background for the question exactly as
the memory store was built: with the background spec (system prompt, request, length cap) the
domain's injector recorded, else its memory store's (`options.domains.<name>.memory`), else the
defaults (`kinject.memory.spec`); `system` / `max_background_tokens` may restate the recorded
values and are refused when they contradict them. `gag` turns its states into slots and
injects them into the frozen base (`kinject.gag.pipeline.GagPipeline`): `added_prompt_tokens` =
the number of slots.
`text_injection` puts the background *text* in the base's knowledge prompt
(`knowledge_messages`): `added_prompt_tokens` = prompt tokens over the closed-book prompt.
Both trace `background` and `expert_tokens` (tokens the expert generated).

One method covers several private domains: `options.domains.<name>` holds that domain's
expert (and injector); each question goes to the domain named by its row's `domain` field
(oracle routing; the `mixed` method routes with PPR instead). The instruction in the base
prompt is the row's own `instruction` when it has one, else `options.instruction`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from kinject.config import StrictModel
from kinject.eval.method import MethodContext, answer_by_domain, register_method


class GagDomain(StrictModel):
    expert: Path  # the domain's SFT expert
    injector: Path | None = None  # `<stage3 out>/injector` (gag: required; text_injection: its background spec)
    memory: Path | None = None  # the memory store the injector was trained on (its background spec)
    system: str | None = None  # background system prompt; None: the recorded one
    max_background_tokens: int | None = Field(None, ge=1)  # None: the recorded length cap


class GagOptions(StrictModel):
    base: Path  # the frozen base
    domains: dict[str, GagDomain]
    instruction: str = ""  # base prompt instruction for rows without their own
    max_new_tokens: int | None = None


def _spec(d: GagDomain):
    """The background spec text_injection writes with (gag's GagPipeline resolves it the same way)."""
    from kinject.gag.injector import read_config
    from kinject.gag.pipeline import background_spec

    return background_spec(read_config(d.injector) if d.injector is not None else None, str(d.injector), d.system,
                           d.max_background_tokens, d.memory)


def _check(method: str, options: GagOptions, need_injector: bool) -> None:
    from kinject.errors import UserError

    if not options.domains:
        raise UserError(f"method {method!r}: options.domains is empty (give each private domain's expert)")
    for name, d in options.domains.items():
        if need_injector and d.injector is None:
            raise UserError(f"method {method!r}: options.domains.{name}.injector is missing "
                            "(the `injector` dir that `kinject gag train` writes)")


class GagMethod:
    name = "gag"

    def __init__(self, options: GagOptions, ctx: MethodContext):
        from kinject.gag.pipeline import GagPipeline

        _check("gag", options, need_injector=True)
        self.pipes = {name: GagPipeline.from_pretrained(str(d.expert), str(options.base), str(d.injector), d.system,
                                        options.instruction, d.max_background_tokens, ctx.device, ctx.dtype,
                                        ctx.batch_size, memory=d.memory and str(d.memory))
                      for name, d in options.domains.items()}
        for name, pipe in self.pipes.items():  # a fair comparison: every method gets the same help
            if pipe.base.answer_format != ctx.answer_format:
                from kinject.errors import UserError

                raise UserError(f"method 'gag': the {name} injector was trained with answer_format "
                                f"{pipe.base.answer_format!r} but this evaluation gives {ctx.answer_format!r}; "
                                "set the eval config's answer_format to the injector's")
        self.max_new_tokens = options.max_new_tokens or ctx.max_new_tokens

    def _answer(self, domain: str, rows: list[dict]) -> list[dict]:
        pipe = self.pipes[domain]
        got = pipe.answer([r["question"] for r in rows], [r.get("instruction") for r in rows], self.max_new_tokens)
        slots = pipe.injector.config.slots
        return [{"prediction": a.answer,
                 "trace": {"background": a.background, "expert_tokens": a.background_tokens,
                           "added_prompt_tokens": slots}}
                for a in got]

    def answer(self, batch: list[dict]) -> list[dict]:
        return answer_by_domain(self.name, batch, {d: (lambda rows, d=d: self._answer(d, rows)) for d in self.pipes})


class TextInjection:
    name = "text_injection"

    def __init__(self, options: GagOptions, ctx: MethodContext):
        from kinject.models import load_causal_lm

        _check("text_injection", options, need_injector=False)
        self.model, self.tokenizer = load_causal_lm(options.base, device=ctx.device, dtype=ctx.dtype)
        specs = {name: _spec(d) for name, d in options.domains.items()}  # checked before any model loads
        self.experts = {name: (*load_causal_lm(d.expert, device=ctx.device, dtype=ctx.dtype), specs[name])
                        for name, d in options.domains.items()}
        self.instruction = options.instruction
        self.max_new_tokens = options.max_new_tokens or ctx.max_new_tokens
        self.batch_size = ctx.batch_size
        self.answer_format = ctx.answer_format

    def _answer(self, domain: str, rows: list[dict]) -> list[dict]:
        from kinject.eval.methods.closed_book import closed_book_tokens
        from kinject.generation import generate_texts
        from kinject.memory.background import background_prompts
        from kinject.prompts import knowledge_messages, render

        expert, etok, spec = self.experts[domain]
        qs = [r["question"] for r in rows]
        bgs = generate_texts(expert, etok, background_prompts(etok, qs, spec.system, spec.request),
                             spec.max_new_tokens, self.batch_size)
        prompts = [render(self.tokenizer, knowledge_messages(q, bg.text, r.get("instruction") or self.instruction,
                                                              self.answer_format))
                   for q, bg, r in zip(qs, bgs, rows, strict=True)]
        gens = generate_texts(self.model, self.tokenizer, prompts, self.max_new_tokens, self.batch_size)
        closed = closed_book_tokens(self.tokenizer, qs, self.answer_format)
        return [{"prediction": g.text,
                 "trace": {"background": bg.text, "expert_tokens": len(bg.token_ids), "prompt_tokens": g.n_prompt_tokens,
                           "added_prompt_tokens": g.n_prompt_tokens - c}}
                for g, bg, c in zip(gens, bgs, closed, strict=True)]

    def answer(self, batch: list[dict]) -> list[dict]:
        return answer_by_domain(self.name, batch, {d: (lambda rows, d=d: self._answer(d, rows)) for d in self.experts})


@register_method("gag", options=GagOptions)
def make_gag(options: GagOptions, ctx: MethodContext) -> GagMethod:
    """GAG: the expert's background states injected as slots into the frozen base."""
    return GagMethod(options, ctx)


@register_method("text_injection", options=GagOptions)
def make_text_injection(options: GagOptions, ctx: MethodContext) -> TextInjection:
    """Text injection: the expert's background text in the base's knowledge prompt."""
    return TextInjection(options, ctx)
