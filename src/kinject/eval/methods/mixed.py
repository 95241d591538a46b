"""`mixed`: the mixed-domain flow (`kinject.mixed.MixedPipeline`): PPR routes each question to
`general` -> the base closed-book, a private domain -> that domain's GAG, optionally `wiki` ->
GRIP. The trace carries `route`, so the harness reports routing accuracy against the rows'
`domain` and draws the confusion matrix. Options are `kinject.mixed.MixedOptions`; its
device, dtype, batch_size and max_new_tokens default to the eval config's. Evaluation is strict:
a route that fails fails the run (the server, not the harness, answers around a broken route)."""

from __future__ import annotations

from kinject.eval.method import MethodContext, register_method
from kinject.mixed import MixedOptions, MixedPipeline


@register_method("mixed", options=MixedOptions)
def make_mixed(options: MixedOptions, ctx: MethodContext) -> MixedPipeline:
    """Mixed domains: PPR routing to base / per-domain GAG / optional GRIP."""
    given = options.model_fields_set
    defaults = {"device": ctx.device, "dtype": ctx.dtype, "batch_size": ctx.batch_size,
                "max_new_tokens": ctx.max_new_tokens, "answer_format": ctx.answer_format}
    opts = options.model_copy(update={k: v for k, v in defaults.items() if k not in given})
    return MixedPipeline.from_config(opts, strict=True)
