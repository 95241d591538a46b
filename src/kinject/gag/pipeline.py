"""GAG inference with online memories (SPEC-GAG "Inference" and the specialist route of the
mixed-domain flow): the expert writes a background for each question, its states become slots
exactly as in `kinject memory build`, the injector projects them and the frozen base answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kinject.errors import UserError
from kinject.gag.base import InjectedBase
from kinject.gag.injector import Injector


@dataclass
class GagAnswer:
    question: str
    answer: str
    background: str
    background_tokens: int


class GagPipeline:
    def __init__(self, expert: str, base: str, injector: str, system: str = "", instruction: str = "",
                 max_background_tokens: int = 128, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 16, say=None):
        from kinject.memory.layers import check_layer_keys
        from kinject.models import load_causal_lm

        self.injector = Injector.load(injector)
        self.expert, self.expert_tok = load_causal_lm(expert, device=device, dtype=dtype)
        ecfg = self.expert.config
        if ecfg.hidden_size != self.injector.config.expert_hidden:
            raise UserError(f"expert hidden size {ecfg.hidden_size} ({expert}) vs "
                            f"{self.injector.config.expert_hidden} (injector {injector})")
        check_layer_keys(self.injector.config.layers, ecfg.num_hidden_layers)
        from kinject.memory.background import model_fingerprint

        want = self.injector.config.expert_fingerprint
        if want and model_fingerprint(self.expert) != want:
            raise UserError(f"expert {expert} is not the one whose memories trained the injector: fingerprint "
                            f"{model_fingerprint(self.expert)!r} (expert) vs {want!r} (injector {injector})")
        self.base = InjectedBase.load(base, self.injector.config.slots, device, dtype, instruction, say)
        self.injector.check_base(self.base.identity(), f"base {base}")
        self.injector.to(self.base.device).eval()
        self.system, self.max_background_tokens, self.batch_size = system, max_background_tokens, batch_size

    @torch.no_grad()
    def memories(self, questions: Sequence[str]) -> tuple[list, dict[str, torch.Tensor]]:
        """Expert backgrounds and the injector's inputs for them (same path as the memory store)."""
        from kinject.memory.background import generate_backgrounds
        from kinject.memory.compress import compress

        cfg = self.injector.config
        traces = generate_backgrounds(self.expert, self.expert_tok, questions, cfg.layers, self.system,
                                      self.max_background_tokens, self.batch_size)
        if self.injector.needs_trajectories:
            tmax = max([t.n_tokens for t in traces] + [1])
            traj = torch.zeros(len(traces), len(cfg.layers), tmax, cfg.expert_hidden)
            mask = torch.zeros(len(traces), tmax, dtype=torch.bool)
            for i, t in enumerate(traces):
                traj[i, :, :t.n_tokens] = t.states
                mask[i, :t.n_tokens] = True
            return traces, {"traj": traj, "traj_mask": mask}
        slots = torch.stack([compress(t.states, cfg.slots, cfg.store_pooling, cfg.tau) for t in traces])
        return traces, {"slots": slots}

    @torch.no_grad()
    def answer(self, questions: Sequence[str], instructions: Sequence[str | None] | None = None,
               max_new_tokens: int = 32) -> list[GagAnswer]:
        traces, inputs = self.memories(questions)
        z = self.injector(**inputs)
        gens = self.base.generate(list(questions), z, max_new_tokens, self.batch_size, instructions)
        return [GagAnswer(q, g.text, t.text, t.n_tokens) for q, g, t in zip(questions, gens, traces, strict=True)]
