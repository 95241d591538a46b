"""Rollouts for GRIP RL: sampled turns with their exact token ids, episodes with retrieval in the loop.

One episode = the rounds of `GripAgent` (the same loop as inference) run with a *sampling*
policy; every round keeps the token ids it was sampled from (`TurnSample`), so the trainer
scores each turn in exactly the context it was generated in: the round's own prompt (the
instruction, the original query, the intermediary and the retrieved passages) followed by the
turn. Retrieved text therefore only ever sits in prompts, never in a completion, and is never
in the loss.

Imitation episodes are one round from a synthesis record's slots (no retrieval: the release's
one-step reward); outcome episodes run the full multi-round loop against the retriever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from kinject.errors import UserError
from kinject.grip.agent import (
    AgentSettings,
    Episode,
    GripAgent,
    SearchBackend,
    check_control_tokens,
)
from kinject.grip.format import SOLVED, parse_turn, round_messages
from kinject.io import iter_jsonl_numbered
from kinject.prompts import render
from kinject.tokenizer import stop_token_ids


@dataclass
class TurnSample:
    prompt_ids: list[int]
    completion_ids: list[int]  # ends with the stop token unless truncated
    text: str  # the turn text the agent saw (stop token removed, control tokens kept)
    truncated: bool


@dataclass
class Rollout:
    """One sampled episode and the per-episode fields the reward functions read."""

    record: dict
    turns: list[TurnSample] = field(default_factory=list)
    answer: str = ""
    n_retrievals: int = 0
    turn_kinds: list[str] = field(default_factory=list)
    completion: str = ""  # the text of the first turn (what the imitation reward scores)

    @property
    def truncated(self) -> bool:
        return any(t.truncated for t in self.turns)

    @property
    def n_tokens(self) -> int:
        return sum(len(t.completion_ids) for t in self.turns)

    @property
    def longest_turn_ids(self) -> list[int]:
        return max((t.completion_ids for t in self.turns), key=len, default=[])


class TurnSampler:
    """Samples one turn per prompt (temperature / top-p) and keeps the sampled ids.

    Not `kinject.generation.generate_texts`: that one decodes greedily and returns text, while
    the policy gradient needs the sampled ids themselves (re-tokenizing the text can give other
    ids than the ones the policy chose).
    """

    def __init__(self, model, tokenizer, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, batch_size: int = 64):
        check_control_tokens(tokenizer)
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.batch_size = batch_size
        base_stops = stop_token_ids(tokenizer)
        solved = tokenizer.convert_tokens_to_ids(SOLVED)
        self.stops = base_stops + ([solved] if solved not in base_stops else [])

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> list[TurnSample]:
        tok, model = self.tokenizer, self.model
        was_training = model.training
        model.eval()
        old_side, tok.padding_side = tok.padding_side, "left"
        out: list[TurnSample] = []
        try:
            for start in range(0, len(prompts), self.batch_size):
                chunk = list(prompts[start : start + self.batch_size])
                enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
                seqs = model.generate(
                    **enc, max_new_tokens=self.max_new_tokens, do_sample=True, temperature=self.temperature,
                    top_p=self.top_p, top_k=0, eos_token_id=self.stops, pad_token_id=tok.pad_token_id,
                )
                new = seqs[:, enc["input_ids"].shape[1] :].tolist()
                for ids, row, mask in zip(new, enc["input_ids"], enc["attention_mask"], strict=True):
                    n = next((i for i, t in enumerate(ids) if t in self.stops), None)
                    truncated = n is None
                    kept = ids if truncated else ids[: n + 1]
                    text = tok.decode(ids[: len(ids) if truncated else n], skip_special_tokens=False)
                    out.append(TurnSample(row[mask.bool()].tolist(), kept, text.strip(), truncated))
        finally:
            tok.padding_side = old_side
            model.train(was_training)
        return out


class _RecordingPolicy:
    """`GripAgent`'s `generate_fn` that samples and remembers every round's `TurnSample`s."""

    def __init__(self, sampler: TurnSampler):
        self.sampler = sampler
        self.rounds: list[list[TurnSample]] = []

    def __call__(self, prompts: list[str]) -> list[str]:
        samples = self.sampler(prompts)
        self.rounds.append(samples)
        return [s.text for s in samples]


def run_outcome_episodes(sampler: TurnSampler, retriever: SearchBackend, records: Sequence[dict],
                         settings: AgentSettings) -> list[Rollout]:
    """Multi-round episodes with the retriever in the loop (the inference loop, sampled)."""
    policy = _RecordingPolicy(sampler)
    agent = GripAgent(policy, lambda msgs: render(sampler.tokenizer, msgs), retriever, settings)
    episodes: list[Episode] = agent.run([r["question"] for r in records])
    rollouts = [Rollout(r) for r in records]
    # round r was generated for the episodes still active then, in order: those with > r steps
    for rnd, samples in enumerate(policy.rounds):
        active = [ro for ro, ep in zip(rollouts, episodes, strict=True) if len(ep.steps) > rnd]
        for ro, sample in zip(active, samples, strict=True):
            ro.turns.append(sample)
    for ro, ep in zip(rollouts, episodes, strict=True):
        ro.answer, ro.n_retrievals = ep.answer, ep.n_retrievals
        ro.turn_kinds = [s.kind for s in ep.steps]
        ro.completion = ep.steps[0].text if ep.steps else ""
    return rollouts


def run_imitation_episodes(sampler: TurnSampler, records: Sequence[dict]) -> list[Rollout]:
    """One round per record, from its slots (no retrieval: the release's one-step imitation)."""
    prompts = [render(sampler.tokenizer, round_messages(r["question"], r.get("intermediary", ""),
                                                        r.get("references", []))) for r in records]
    rollouts = []
    for rec, sample in zip(records, sampler(prompts), strict=True):
        turn = parse_turn(sample.text)
        rollouts.append(Rollout(rec, [sample], answer=turn.answer, turn_kinds=[turn.kind],
                                completion=sample.text))
    return rollouts


# --- data -------------------------------------------------------------------------------------
@dataclass
class RLData:
    records: list[dict]
    skipped: int = 0  # imitation records whose reference turn did not parse (counted, not fatal)


def load_rl_records(path: str, reward: str, max_examples: int | None = None) -> RLData:
    """Imitation: {question, target|reference|output, intermediary?, references?}; outcome:
    {question, answer: [..] | str}. Unparseable reference turns are skipped and counted."""
    from kinject.eval.data import gold_answers
    from kinject.grip.reward import reference_is_valid

    # outcome: `answer` is required, so a synthesized file's `output` turn is never read as gold
    required = ["question"] if reward == "imitation" else ["question", "answer"]
    records, skipped = [], 0
    for lineno, rec in iter_jsonl_numbered(path, required=required):
        if reward == "imitation":
            ref = next((rec[k] for k in ("target", "reference", "output") if k in rec), None)
            if not isinstance(ref, str) or not reference_is_valid(ref):
                skipped += 1
                continue
            refs = rec.get("references") or []
            records.append({"question": rec["question"], "reference": ref,
                            "intermediary": rec.get("intermediary") or "",
                            "references": [refs] if isinstance(refs, str) else list(refs)})
        else:
            records.append({"question": rec["question"], "golds": gold_answers(rec, f"{path}:{lineno}")})
        if max_examples and len(records) >= max_examples:
            break
    if not records:
        raise UserError(f"{path}: no usable RL records ({skipped} skipped with an unparseable reference turn)")
    return RLData(records, skipped)


def reward_columns(rollouts: Sequence[Rollout]) -> dict[str, list[Any]]:
    """The per-episode columns the reward functions take (TRL's `**kwargs` convention)."""
    return {
        "reference": [r.record.get("reference", "") for r in rollouts],
        "golds": [r.record.get("golds", []) for r in rollouts],
        "answer": [r.answer for r in rollouts],
        "n_retrievals": [r.n_retrievals for r in rollouts],
        "turn_kinds": [r.turn_kinds for r in rollouts],
        "completion_ids": [r.longest_turn_ids for r in rollouts],
    }
