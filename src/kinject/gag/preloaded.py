"""A `GagPipeline` over models that are already loaded (several GAG domains, one base).

`GagPipeline(...)` loads its expert and base from paths; a mixed-domain deployment serves
several domains over ONE frozen base (and an expert may serve more than one domain), so this
builds the same pipeline from a loaded expert, an `InjectedBase` wrapping the shared base
model, and an `Injector`, with the same compatibility checks. Its `memories`/`answer` are
GagPipeline's own.
"""

from __future__ import annotations

from kinject.errors import UserError
from kinject.gag import pipeline as _pipeline
from kinject.gag.base import InjectedBase
from kinject.gag.injector import Injector
from kinject.gag.pipeline import GagPipeline, background_spec


def check_injector(injector: Injector, expert_model, base: InjectedBase, where: str) -> None:
    """The checks GagPipeline makes at load time: expert dims and layers, expert fingerprint, base."""
    from kinject.memory.layers import check_layer_keys
    from kinject.runs import fingerprints_conflict, model_fingerprint

    ecfg = expert_model.config
    if ecfg.hidden_size != injector.config.expert_hidden:
        raise UserError(f"expert hidden size {ecfg.hidden_size} vs {injector.config.expert_hidden} (injector {where})")
    check_layer_keys(injector.config.layers, ecfg.num_hidden_layers)
    want, have = injector.config.expert_fingerprint, model_fingerprint(expert_model)
    if fingerprints_conflict(have, want):
        raise UserError(f"the expert is not the one whose memories trained injector {where}: fingerprint "
                        f"{have!r} (expert) vs {want!r} (injector)")
    if injector.config.slots != base.num_slots:
        raise UserError(f"injector {where} has {injector.config.slots} slots, the base prompt {base.num_slots}")
    injector.check_base(base.identity(), "the shared base")
    if injector.config.answer_format != base.answer_format:
        raise UserError(f"injector {where} was trained with answer_format {injector.config.answer_format!r}, "
                        f"the base prompt has {base.answer_format!r}")


class PreloadedGagPipeline(GagPipeline):
    """GagPipeline whose expert, base and injector are given, not loaded (nothing is copied)."""

    def __init__(self, expert_model, expert_tokenizer, base: InjectedBase, injector: Injector,
                 system: str | None = None, max_background_tokens: int | None = None, batch_size: int = 16,
                 where: str = "(preloaded)", cache_size: int = 256, memory: str | None = None):
        from kinject.runs import model_fingerprint

        # GagPipeline.__init__ loads from paths; this sets the same attributes from loaded objects
        check_injector(injector, expert_model, base, where)
        self.background = background_spec(injector.config, where, system, max_background_tokens, memory)
        self.injector = injector.to(base.device).eval()
        self.expert, self.expert_tok = expert_model, expert_tokenizer
        self.expert_fingerprint = model_fingerprint(expert_model)
        self.base = base
        self.batch_size = batch_size
        # the per-question memory cache of GagPipeline (`MemoryCache`), when the pipeline module has one
        cache = getattr(_pipeline, "MemoryCache", None)
        if cache is not None:
            self.cache = cache(cache_size)
