"""GAG inference with online memories (the GAG paper's inference and the specialist route of the
mixed-domain flow): the expert writes a background for each question, its states become slots
exactly as in `kinject memory build`, the injector projects them and the frozen base answers.
The background is written with the spec the injector recorded (`kinject.memory.spec`): its
training memories' system prompt, request and length cap.
A repeated question reuses its memory (`MemoryCache`, `cache_size`; `kinject bench levers`
measures it), and backgrounds are generated in batches of `batch_size`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kinject.errors import UserError
from kinject.gag.base import InjectedBase
from kinject.gag.injector import Injector, InjectorConfig
from kinject.memory.spec import BackgroundSpec


@dataclass
class GagAnswer:
    question: str
    answer: str
    background: str
    background_tokens: int


class MemoryCache:
    """LRU of per-question memories (the expert's trace and its compressed slots), keyed by the
    question text, the expert's fingerprint and what else changes the background (its spec). A
    repeated question skips the expert's generation entirely. Hand-written: a dozen lines over
    OrderedDict; functools.lru_cache cannot batch the misses of one call."""

    def __init__(self, size: int):
        self.size = max(0, int(size))
        self.items: OrderedDict[tuple, tuple] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: tuple):
        if key in self.items:
            self.items.move_to_end(key)
            self.hits += 1
            return self.items[key]
        self.misses += 1
        return None

    def put(self, key: tuple, value: tuple) -> None:
        if self.size == 0:
            return
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)

    def clear(self) -> None:
        self.items.clear()
        self.hits = self.misses = 0

    def stats(self) -> dict:
        return {"size": self.size, "entries": len(self.items), "hits": self.hits, "misses": self.misses}


def background_spec(injector: InjectorConfig | None, where: str, system: str | None = None,
                    max_background_tokens: int | None = None, memory: str | Path | None = None) -> BackgroundSpec:
    """The spec online backgrounds are written with for an injector (its config; None: none used):
    the one it recorded, else that of `memory` (the store it was trained on), else the defaults;
    `system` / `max_background_tokens` (None: unset) must not contradict a recorded one
    (`kinject.memory.spec.resolve_background`)."""
    from kinject.memory.spec import resolve_background

    recorded = [(f"injector {where}", injector.background_spec if injector is not None else None)]
    if memory is not None:
        from kinject.memory.store import store_background_spec

        recorded.append((f"memory store {memory}", store_background_spec(memory)))
    return resolve_background(recorded, system, max_background_tokens)


def check_injector(injector: Injector, expert_model, base: InjectedBase, where: str) -> None:
    """The one compatibility check of an expert, a base and an injector: the expert's width,
    layers and fingerprint are the ones the injector was trained on, the base is its base, and
    the base prompt has its slots and answer-format line."""
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
    injector.check_base(base.identity(), "the base")
    if injector.config.answer_format != base.answer_format:
        raise UserError(f"injector {where} was trained with answer_format {injector.config.answer_format!r}, "
                        f"the base prompt has {base.answer_format!r}")


class GagPipeline:
    """The GAG answerer: an expert writes a background per question, its states become slots, the
    injector carries them into the frozen base. An injector trained on memories without decoding
    (its spec records a `prefill_prefix`) gets them the same way: the expert's states over the
    question and the prefix, one forward pass, nothing written.

    The constructor takes loaded objects (a mixed deployment shares one base between domains);
    `GagPipeline.from_pretrained(expert, base, injector)` loads them from directories. `system` and
    `max_background_tokens` (None: unset) restate the injector's recorded background spec or are
    refused; `memory` names the store it was trained on (its spec is checked against the
    injector's, and used for an injector that records none)."""

    def __init__(self, expert_model, expert_tokenizer, base: InjectedBase, injector: Injector,
                 system: str | None = None, max_background_tokens: int | None = None, batch_size: int = 16,
                 cache_size: int = 256, memory: str | None = None, where: str = "(loaded)"):
        from kinject.runs import model_fingerprint

        check_injector(injector, expert_model, base, where)
        self.background = background_spec(injector.config, where, system, max_background_tokens, memory)
        self.injector = injector.to(base.device).eval()
        self.expert, self.expert_tok = expert_model, expert_tokenizer
        self.expert_fingerprint = model_fingerprint(expert_model)
        self.base = base
        self.batch_size = batch_size
        # memories per question (0 disables); each entry holds the trace's states [L, T, d] in fp32
        self.cache = MemoryCache(cache_size)

    @classmethod
    def from_pretrained(cls, expert: str, base: str, injector: str, system: str | None = None, instruction: str = "",
                        max_background_tokens: int | None = None, device: str = "auto", dtype: str = "auto",
                        batch_size: int = 16, cache_size: int = 256, memory: str | None = None) -> GagPipeline:
        """Load the expert, the base (its GAG prompt with `instruction`) and the injector from
        their directories."""
        from kinject.models import load_causal_lm

        inj = Injector.load(injector)
        expert_model, expert_tok = load_causal_lm(expert, device=device, dtype=dtype)
        injected = InjectedBase.load(base, inj.config.slots, device, dtype, instruction,
                                     answer_format=inj.config.answer_format)
        return cls(expert_model, expert_tok, injected, inj, system, max_background_tokens, batch_size, cache_size,
                   memory, where=str(injector))

    def _key(self, question: str) -> tuple:
        return (question, self.expert_fingerprint, self.background)

    @torch.no_grad()
    def memories(self, questions: Sequence[str]) -> tuple[list, dict[str, torch.Tensor]]:
        """Expert backgrounds and the injector's inputs for them (same path as the memory store).
        Questions already in the cache are not regenerated; the misses go to the expert in batches."""
        from kinject.memory.background import generate_backgrounds, prefill_traces
        from kinject.memory.compress import compress

        cfg, spec = self.injector.config, self.background
        found = {q: self.cache.get(self._key(q)) for q in dict.fromkeys(questions)}
        todo = [q for q, v in found.items() if v is None]
        if todo:
            if spec.prefill_prefix is not None:  # memories without decoding, as the injector's were made
                traces = prefill_traces(self.expert, self.expert_tok, todo, cfg.layers, spec.system,
                                        spec.prefill_prefix, self.batch_size, spec.request)
            else:
                traces = generate_backgrounds(self.expert, self.expert_tok, todo, cfg.layers, spec.system,
                                              spec.max_new_tokens, self.batch_size, spec.request)
            for q, t in zip(todo, traces, strict=True):
                slots = None if self.injector.needs_trajectories else compress(t.states, cfg.slots, cfg.store_pooling,
                                                                                 cfg.tau)
                found[q] = (t, slots)
                self.cache.put(self._key(q), found[q])
        traces = [found[q][0] for q in questions]
        if self.injector.needs_trajectories:
            tmax = max([t.n_tokens for t in traces] + [1])
            traj = torch.zeros(len(traces), len(cfg.layers), tmax, cfg.expert_hidden)
            mask = torch.zeros(len(traces), tmax, dtype=torch.bool)
            for i, t in enumerate(traces):
                traj[i, :, :t.n_tokens] = t.states
                mask[i, :t.n_tokens] = True
            return traces, {"traj": traj, "traj_mask": mask}
        return traces, {"slots": torch.stack([found[q][1] for q in questions])}

    @torch.no_grad()
    def answer(self, questions: Sequence[str], instructions: Sequence[str | None] | None = None,
               max_new_tokens: int = 32) -> list[GagAnswer]:
        traces, inputs = self.memories(questions)
        z = self.injector(**inputs)
        gens = self.base.generate(list(questions), z, max_new_tokens, self.batch_size, instructions)
        return [GagAnswer(q, g.text, t.text, t.n_tokens) for q, g, t in zip(questions, gens, traces, strict=True)]
