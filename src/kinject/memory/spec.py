"""The background spec: everything that decides the text the expert writes for a question.

The expert writes a background greedily from `background_messages(question, system, request)`,
stopping at its end of turn or after `max_new_tokens`; with the expert itself (recorded apart,
by fingerprint) these settings fix the text, and so the memory. One home for them:

- `kinject memory build` records the spec in the store (`store.json`: `background_spec`);
- Stage III copies the spec of the store it finishes on (the domain phase's) into the injector
  (`injector.json`: `background_spec`);
- a store of memories without decoding (`source: prefill`) records its answer prefix
  (`prefill_prefix`): online memories are then the expert's states over the question and that
  prefix, one forward pass, no background written;
- every path that writes backgrounds online (`GagPipeline` and the mixed pipeline / `kinject
  serve` built on it, the `gag` and `text_injection` eval methods, `kinject gag answer`) writes
  them with the injector's recorded spec, or the store's when it is given one (`memory`). An
  explicit setting may restate a recorded value; one that contradicts it is a `UserError`.

Artifacts made before specs were recorded carry none: then the explicit settings apply over the
defaults below (a store reads its own build manifest first, `MemoryStore.background_spec`).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ConfigDict, Field

from kinject.config import StrictModel
from kinject.errors import UserError

DEFAULT_MAX_NEW_TOKENS = 128


def _default_request() -> str:
    # imported when a spec is made, not with this module: kinject.prompts loads transformers
    from kinject.prompts import BACKGROUND_REQUEST

    return BACKGROUND_REQUEST


class BackgroundSpec(StrictModel):
    """How the expert was asked for a background (frozen: a cache key, compared whole)."""

    model_config = ConfigDict(frozen=True)

    system: str = ""  # the expert's system prompt ("" = none)
    request: str = Field(default_factory=_default_request)  # the request line before the question
    # greedy decoding cap; None: the store's texts were not generated (memory build source given or prefill)
    max_new_tokens: int | None = Field(DEFAULT_MAX_NEW_TOKENS, ge=1)
    # memories without decoding (memory build source: prefill): the text read after the question in
    # the expert's one forward pass; online memories are then read the same way, nothing generated.
    # None: memories of written backgrounds
    prefill_prefix: str | None = None


# the online options' names for the spec's fields (what a user sets and an error names)
SETTINGS = {"system": "system", "max_new_tokens": "max_background_tokens"}


def resolve_background(recorded: Sequence[tuple[str, BackgroundSpec | None]], system: str | None = None,
                       max_background_tokens: int | None = None) -> BackgroundSpec:
    """The spec online backgrounds are written with. `recorded`: (where, spec) of the artifacts the
    memories come from (an injector, its memory store), None where one records no spec; those
    that record one must agree. `system`, `max_background_tokens`: explicit settings (None: not
    set), refused when they contradict the recorded spec. Nothing recorded: the explicit settings
    over the defaults."""
    given = {"system": system, "max_new_tokens": max_background_tokens}
    given = {k: v for k, v in given.items() if v is not None}
    known = [(w, s) for w, s in recorded if s is not None]
    if not known:
        return BackgroundSpec(**given)
    where, spec = known[0]
    for other, s in known[1:]:
        if s != spec:
            diff = "; ".join(f"{k} {getattr(spec, k)!r} vs {getattr(s, k)!r}" for k in BackgroundSpec.model_fields
                             if getattr(spec, k) != getattr(s, k))
            raise UserError(f"{where} and {other} record different background specs ({diff}): name the memory "
                            "store the injector was trained on last (its domain phase)")
    clash = [k for k, v in given.items() if getattr(spec, k) is not None and getattr(spec, k) != v]
    if clash:
        diff = "; ".join(f"{SETTINGS[k]} {getattr(spec, k)!r} (recorded) vs {given[k]!r} (set)" for k in clash)
        raise UserError(f"background settings contradict the spec {where} recorded: {diff}; leave "
                        f"{' and '.join(SETTINGS[k] for k in clash)} unset to write backgrounds as its memories were")
    if spec.max_new_tokens is None:  # memories that were not generated: any cap, the default unless set
        return spec.model_copy(update={"max_new_tokens": given.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)})
    return spec
