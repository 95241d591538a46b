"""Eval method `lora`: the base with a domain's LoRA adapter merged in, asked closed-book
(`general_messages`, the prompt it was fine-tuned with). One adapter per private domain under
`options.domains`; each question uses the adapter of its row's `domain`."""

from __future__ import annotations

from pathlib import Path

from kinject.config import StrictModel
from kinject.eval.method import MethodContext, answer_by_domain, register_method


class LoraOptions(StrictModel):
    base: Path  # the base the adapters were trained on
    domains: dict[str, Path]  # domain -> adapter dir (`kinject baselines lora`)
    max_new_tokens: int | None = None


def check_answer_format(domain: str, adapter: Path, answer_format: str) -> None:
    """An adapter fine-tuned with one answer-format line and asked with another answers off its
    training distribution: refuse the mismatch (adapters without a record were trained without one)."""
    import json

    from kinject.errors import UserError

    manifest = Path(adapter) / "manifest.json"
    if not manifest.is_file():
        return  # load_lora_model says what is missing
    trained = (json.loads(manifest.read_text()).get("config") or {}).get("answer_format", "")
    if trained != answer_format:
        raise UserError(f"method 'lora': the {domain} adapter was trained with answer_format {trained!r} but this "
                        f"evaluation gives {answer_format!r}; set the eval config's answer_format to the adapter's")


class LoraMethod:
    name = "lora"

    def __init__(self, options: LoraOptions, ctx: MethodContext):
        from kinject.baselines.lora import load_lora_model
        from kinject.errors import UserError

        if not options.domains:
            raise UserError("method 'lora': options.domains is empty (give each domain's adapter dir)")
        for domain, adapter in options.domains.items():
            check_answer_format(domain, adapter, ctx.answer_format)
        self.models = {d: load_lora_model(options.base, a, ctx.device, ctx.dtype) for d, a in options.domains.items()}
        self.max_new_tokens = options.max_new_tokens or ctx.max_new_tokens
        self.batch_size = ctx.batch_size
        self.answer_format = ctx.answer_format

    def _answer(self, domain: str, rows: list[dict]) -> list[dict]:
        from kinject.generation import generate_texts
        from kinject.prompts import general_messages, render

        model, tok = self.models[domain]
        prompts = [render(tok, general_messages(r["question"], self.answer_format)) for r in rows]
        gens = generate_texts(model, tok, prompts, self.max_new_tokens, self.batch_size)
        return [{"prediction": g.text,
                 "trace": {"prompt_tokens": g.n_prompt_tokens, "new_tokens": g.n_new_tokens, "added_prompt_tokens": 0}}
                for g in gens]

    def answer(self, batch: list[dict]) -> list[dict]:
        return answer_by_domain(self.name, batch, {d: (lambda rows, d=d: self._answer(d, rows)) for d in self.models})


@register_method("lora", options=LoraOptions)
def make_lora(options: LoraOptions, ctx: MethodContext) -> LoraMethod:
    """LoRA baseline: base + the domain's merged adapter, closed-book prompt."""
    return LoraMethod(options, ctx)
