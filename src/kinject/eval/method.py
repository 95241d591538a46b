"""The `Method` protocol and its registry: every system the harness compares is one.

A method answers a batch of questions: `answer(batch) -> [{"prediction": str, "trace": {...}}]`,
one dict per input row, in order. Each input row is the dataset row with normalized `id` and
`question` fields (so a method may read `instruction`, `domain`, ...) and without the gold
answer fields (`answer`, `answers`, `output`). A prediction may be a list (one answer per turn,
as GRIP writes it): the last element is scored. The trace is free-form; the harness aggregates
these keys when present:

- `added_prompt_tokens`: prompt tokens the method adds over the closed-book prompt
  (retrieved passages, injected text, GAG slots); reported as the mean per question.
- `n_retrievals`  -> `avg_retrievals`;  `expert_tokens` -> tokens the expert generated.
- `route` (a domain name) -> routing accuracy against the row's `domain` when it has one.

Adding a method = one small file with a factory decorated by `@register_method`:

    class RagOptions(StrictModel):
        model: Path
        index: Path

    @register_method("rag_k{k}", options=RagOptions)   # "rag_k3" -> options.k = 3
    def make_rag(options, ctx): return RagMethod(...)

Where it lives: `kinject/eval/methods/<name>.py`, or `kinject/<pkg>/eval_methods.py` in the
package that owns the method; both are discovered on first lookup.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from kinject.config import StrictModel, build_config
from kinject.errors import UserError


@runtime_checkable
class Method(Protocol):
    name: str

    def answer(self, batch: list[dict]) -> list[dict]: ...


@dataclass
class MethodContext:
    """Run-wide settings a method may use (the eval config's top-level values)."""

    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 16
    max_new_tokens: int = 32
    seed: int = 0
    answer_format: str = ""  # the same answer-format help line for every method (prompts.py)


class NoOptions(StrictModel):
    pass


Factory = Callable[[Any, MethodContext], Method]


@dataclass
class MethodSpec:
    template: str
    factory: Factory
    options: type[BaseModel]
    help: str
    pattern: re.Pattern


METHODS: dict[str, MethodSpec] = {}


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    rx = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>\\d+)" for i, p in enumerate(parts))
    return re.compile(rx + r"\Z")


def register_method(template: str, options: type[BaseModel] = NoOptions, help: str = ""):
    """Register a method factory under a name; `{field}` parts match digits into options."""

    def deco(factory: Factory) -> Factory:
        doc = help or ((factory.__doc__ or "").strip().splitlines() or [""])[0]
        METHODS[template] = MethodSpec(template, factory, options, doc, _template_regex(template))
        return factory

    return deco


_discovered = False


def discover_methods() -> dict[str, MethodSpec]:
    """Import `kinject.eval.methods.*` and every `kinject.<pkg>.eval_methods` module."""
    global _discovered
    if not _discovered:
        import kinject
        import kinject.eval.methods as builtin

        for mod in pkgutil.iter_modules(builtin.__path__):
            importlib.import_module(f"{builtin.__name__}.{mod.name}")
        for mod in pkgutil.iter_modules(kinject.__path__):
            name = f"kinject.{mod.name}.eval_methods"
            if mod.ispkg and importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
        _discovered = True
    return METHODS


def resolve_method(name: str) -> tuple[MethodSpec, dict[str, str]]:
    """(spec, values taken from the name) for a method name such as `base` or `rag_k3`."""
    specs = discover_methods()
    if name in specs:
        return specs[name], {}
    for spec in specs.values():
        m = spec.pattern.match(name)
        if m:
            return spec, m.groupdict()
    raise UserError(f"unknown method {name!r}; known methods: {', '.join(sorted(specs)) or '(none)'}")


def build_method(name: str, options: dict | None, ctx: MethodContext, where: str = "config") -> Method:
    spec, from_name = resolve_method(name)
    opts = dict(options or {})
    clash = [k for k in from_name if k in opts and str(opts[k]) != from_name[k]]
    if clash:
        raise UserError(f"method {name!r}: option {clash[0]!r} contradicts the name ({where})")
    opts.update(from_name)
    parsed = build_config(spec.options, opts, f"{where}: options of method {name!r}")
    method = spec.factory(parsed, ctx)
    method.name = name
    return method


def answer_by_domain(method: str, batch: list[dict], handlers: dict[str, Callable[[list[dict]], list[dict]]]) -> list[dict]:
    """Per-domain methods (expert, text_injection, gag, lora): each row goes to the handler of its
    `domain` field (the dataset's gold domain: oracle routing; `mixed` routes with PPR instead),
    one call per domain, answers back in input order, `domain` added to each trace."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(batch):
        d = row.get("domain")
        if d not in handlers:
            what = row.get("id") or row.get("question")
            raise UserError(f"method {method!r}: question {what!r} has domain {d!r} but the method has only "
                            f"{', '.join(sorted(handlers))} (add it under options.domains, or drop this dataset "
                            f"from the method with its `datasets` filter)")
        groups.setdefault(d, []).append(i)
    out: list[dict | None] = [None] * len(batch)
    for d, idx in groups.items():
        got = handlers[d]([batch[i] for i in idx])
        for i, a in zip(idx, got, strict=True):
            a["trace"] = {**(a.get("trace") or {}), "domain": d}
            out[i] = a
    return out  # type: ignore[return-value]
