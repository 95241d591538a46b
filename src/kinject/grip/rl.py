"""GRIP RL: DAPO on TRL's `GRPOTrainer`, with the retriever inside the rollout.

Which TRL hook, and why. TRL 1.16 offers three ways to put an environment into GRPO rollouts:
`tools` / `environment_factory` (the model emits chat-template tool calls; results are appended
to the same conversation and masked with `tool_mask`) and `rollout_func` (a custom generator
returning one `prompt_ids` / `completion_ids` row per sample, with an optional `env_mask`).
Both treat an episode as ONE growing sequence. GRIP's loop does not: every round renders a
fresh user message (instruction + original query + intermediary + reference text,
`format.round_messages`) and the model never sees earlier rounds. Packing the rounds into one
sequence (rollout_func + env_mask) would train each later turn under a context it was not
sampled in (the earlier rounds stay visible to attention), i.e. on a different conditional
than the one inference uses. GRIP's turn syntax is also not a chat-template tool call.

So this module subclasses `GRPOTrainer` and overrides only the rollout-and-scoring step,
`_generate_and_score_completions`: it runs the GRIP agent loop with a sampling policy
(`rl_rollout`), scores each episode (`reward`), applies DAPO's dynamic sampling, computes
group-normalised advantages per episode, and emits ONE ROW PER TURN (the round's prompt as
`prompt_ids`, the sampled turn as `completion_ids`, the episode's advantage). Everything
downstream is TRL's: the DAPO loss (`loss_type="dapo"`: token-mean over all turns of the batch,
clip 0.2 / 0.28, `beta=0` so no reference model), optimizer, scheduler, checkpointing, resume,
logging (incl. per-token entropy). Retrieved passages only appear in prompts, so they are never
in the loss (a unit test checks that no completion token is passage text).

Dynamic sampling (not in TRL): a group whose episodes all got the same reward has zero
advantage and only dilutes the token-mean; such groups are dropped and replaced by groups of
freshly drawn prompts (up to `max_resample_batches` extra rollout batches), and whatever is
still all-equal is never emitted with a non-zero loss mask. Truncated episodes (a turn hit the
token limit) are masked out (`mask_truncated_completions`); DAPO's soft overlong punishment is
an extra reward term on the longest turn.

Multi-process: each process rolls out whole groups for its own (deduplicated) prompts, so the
group statistics never need a cross-process gather; the loss normalizer is TRL's.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from trl import GRPOTrainer
from trl.trainer.utils import pad

from kinject.grip.agent import AgentSettings
from kinject.grip.rl_rollout import (
    Rollout,
    TurnSampler,
    reward_columns,
    run_imitation_episodes,
    run_outcome_episodes,
)

ALL_EQUAL_TOL = 1e-6


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(groups, G) rewards -> GRPO advantages: (r - mean) / (std + 1e-4) within each group."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + 1e-4)


def all_equal(rewards: Sequence[float]) -> bool:
    return max(rewards) - min(rewards) <= ALL_EQUAL_TOL


class GripDAPOTrainer(GRPOTrainer):
    """`GRPOTrainer` whose rollouts are GRIP episodes (see the module docstring)."""

    def __init__(self, *args, records: list[dict], reward_mode: str, group_size: int,
                 agent_settings: AgentSettings, retriever=None, sample_kwargs: dict | None = None,
                 dynamic_sampling: bool = True, max_resample_batches: int = 3,
                 mask_truncated: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.records = records
        self.reward_mode = reward_mode
        self.group_size = group_size
        self.agent_settings = agent_settings
        self.retriever = retriever
        self.sample_kwargs = sample_kwargs or {}
        self.dynamic_sampling = dynamic_sampling
        self.max_resample_batches = max_resample_batches
        self.mask_truncated = mask_truncated
        self._resample_rng = random.Random(self.args.seed + 1000 * self.accelerator.process_index)
        self._sampler: TurnSampler | None = None
        # Counters over the whole run (the logs hold per-step values)
        self.totals = {"groups": 0, "filtered": 0, "episodes": 0, "retrievals": 0}

    # --- rollouts --------------------------------------------------------------------------
    def sampler(self) -> TurnSampler:
        if self._sampler is None:
            model = self.accelerator.unwrap_model(self.model)
            self._sampler = TurnSampler(model, self.processing_class, self.agent_settings.max_new_tokens,
                                        **self.sample_kwargs)
        return self._sampler

    def rollout_groups(self, prompt_records: Sequence[dict]) -> list[list[Rollout]]:
        """G episodes per record, all in one batched agent run; returned grouped per record."""
        G = self.group_size
        flat = [rec for rec in prompt_records for _ in range(G)]
        if self.reward_mode == "imitation":
            rollouts = run_imitation_episodes(self.sampler(), flat)
        else:
            rollouts = run_outcome_episodes(self.sampler(), self.retriever, flat, self.agent_settings)
        return [rollouts[i * G : (i + 1) * G] for i in range(len(prompt_records))]

    def score(self, rollouts: Sequence[Rollout]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, n_funcs) rewards per function and their weighted sum (N,)."""
        cols = reward_columns(rollouts)
        completions = [r.completion for r in rollouts]
        prompts = [r.record["question"] for r in rollouts]
        per_func = [list(map(float, f(prompts=prompts, completions=completions, **cols)))
                    for f in self.reward_funcs]
        per_func_t = torch.tensor(per_func, dtype=torch.float32).T  # (N, n_funcs)
        total = (per_func_t * self.reward_weights.cpu().unsqueeze(0)).sum(dim=1)
        return per_func_t, total

    def collect(self, first_records: Sequence[dict]) -> dict[str, Any]:
        """Roll out, score, and (dynamic sampling) refill groups whose rewards are all equal."""
        target = len(first_records)
        kept: list[tuple[list[Rollout], torch.Tensor]] = []
        dropped: list[list[Rollout]] = []
        seen: list[Rollout] = []
        seen_rewards, seen_per_func = [], []
        n_groups = n_filtered = batches = 0
        pending = list(first_records)
        while pending:
            batches += 1
            for group in self.rollout_groups(pending):
                per_func, total = self.score(group)
                seen += group
                seen_rewards.append(total)
                seen_per_func.append(per_func)
                n_groups += 1
                if self.dynamic_sampling and all_equal(total.tolist()):
                    n_filtered += 1
                    dropped.append(group)
                elif len(kept) < target:
                    kept.append((group, total))
            missing = target - len(kept)
            if not self.dynamic_sampling or missing <= 0 or batches > self.max_resample_batches:
                break
            pending = [self.records[self._resample_rng.randrange(len(self.records))] for _ in range(missing)]
        return {"kept": kept, "dropped": dropped, "seen": seen, "rewards": torch.cat(seen_rewards),
                "per_func": torch.cat(seen_per_func), "n_groups": n_groups, "n_filtered": n_filtered,
                "batches": batches}

    # --- the TRL hook ----------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        device = self.accelerator.device
        mode = "train" if self.model.training else "eval"
        # TRL's sampler repeats each prompt G times; take each prompt once (we roll out G ourselves)
        idxs = list(dict.fromkeys(int(x["idx"]) for x in inputs))
        got = self.collect([self.records[i] for i in idxs])
        rows = self.build_rows(got)
        self.log_rollout_metrics(mode, got)
        return self.to_batch(rows, device)

    def build_rows(self, got: dict[str, Any]) -> list[tuple[list[int], list[int], float, bool]]:
        """One (prompt_ids, completion_ids, advantage, in_loss) row per turn of every episode."""
        rows = []
        for group, total in got["kept"]:
            adv = group_advantages(total.unsqueeze(0))[0].tolist()
            for ro, a in zip(group, adv, strict=True):
                in_loss = not (self.mask_truncated and ro.truncated)
                rows += [(t.prompt_ids, t.completion_ids, a, in_loss) for t in ro.turns]
        if not rows:  # every group was all-equal: a zero-mask batch (no gradient), never their loss
            for group in got["dropped"][:1]:
                rows += [(t.prompt_ids, t.completion_ids, 0.0, False) for ro in group for t in ro.turns]
        return rows

    def to_batch(self, rows: list[tuple[list[int], list[int], float, bool]], device) -> dict[str, Any]:
        pad_id = self.processing_class.pad_token_id
        prompt = [torch.tensor(p) for p, _, _, _ in rows]
        completion = [torch.tensor(c if c else [pad_id]) for _, c, _, _ in rows]
        prompt_ids = pad(prompt, padding_value=pad_id, padding_side="left").to(device)
        prompt_mask = pad([torch.ones_like(p) for p in prompt], padding_value=0, padding_side="left").to(device)
        completion_ids = pad(completion, padding_value=pad_id, padding_side="right").to(device)
        completion_mask = pad([torch.full_like(c, int(keep and len(rows[i][1]) > 0))
                               for i, (c, (_, _, _, keep)) in enumerate(zip(completion, rows, strict=True))],
                              padding_value=0, padding_side="right").to(device)
        advantages = torch.tensor([a for _, _, a, _ in rows], dtype=torch.float32, device=device)
        num_items = self.accelerator.gather(completion_mask.sum()).sum()
        return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
                "completion_mask": completion_mask, "advantages": advantages, "num_items_in_batch": num_items}

    def log_rollout_metrics(self, mode: str, got: dict[str, Any]) -> None:
        seen: list[Rollout] = got["seen"]
        m = self._metrics[mode]
        m["reward"].append(got["rewards"].mean().item())
        m["reward_std"].append(got["rewards"].std().item() if len(seen) > 1 else 0.0)
        for i, name in enumerate(self.reward_func_names):
            m[f"rewards/{name}/mean"].append(got["per_func"][:, i].mean().item())
        m["groups_filtered_share"].append(got["n_filtered"] / max(1, got["n_groups"]))
        m["groups_kept"].append(float(len(got["kept"])))
        m["rollout_batches"].append(float(got["batches"]))
        m["retrievals_per_episode"].append(sum(r.n_retrievals for r in seen) / len(seen))
        m["turns_per_episode"].append(sum(len(r.turns) for r in seen) / len(seen))
        m["completions/mean_length"].append(sum(r.n_tokens for r in seen) / len(seen))
        m["completions/clipped_ratio"].append(sum(r.truncated for r in seen) / len(seen))
        if self.reward_mode == "outcome":
            from kinject.eval.metrics import exact_match

            m["answer_em"].append(sum(exact_match(r.answer, r.record["golds"]) for r in seen) / len(seen))
        self.totals["groups"] += got["n_groups"]
        self.totals["filtered"] += got["n_filtered"]
        self.totals["episodes"] += len(seen)
        self.totals["retrievals"] += sum(r.n_retrievals for r in seen)


def make_reward_funcs(reward: str, outcome_settings, overlong_max: int, overlong_cache: int,
                      overlong_enabled: bool, overlong_weight: float) -> tuple[list[Callable], list[float]]:
    from trl.rewards import get_soft_overlong_punishment

    from kinject.grip.reward import make_reward_func

    funcs: list[Callable] = [make_reward_func(reward, outcome_settings)]
    weights = [1.0]
    if overlong_enabled:
        punish = get_soft_overlong_punishment(overlong_max, overlong_cache)

        def overlong_reward(prompts, completions, completion_ids, **_) -> list[float]:
            return punish(completion_ids)

        funcs.append(overlong_reward)
        weights.append(overlong_weight)
    return funcs, weights
