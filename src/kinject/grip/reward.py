"""GRIP's RL rewards, selected by name (`reward: imitation | outcome` in the RL config).

- `imitation` (the release's, one step): 0.5 when the generated turn has the reference turn's
  form (final vs plan) + content in [0, 1] = BLEU-1 of the answer (final) or the mean BLEU-1 of
  the partial answer and the query (plan); a turn of another form gets no content score.
  Total in [0, 1.5]. No correctness term, no retrieval term.
- `outcome` (Search-R1 style, multi-round): correctness of the episode's final answer (EM or F1
  against the gold list, `kinject.eval.metrics`) + a format bonus when every turn of the episode
  parsed as final or plan - a cost per retrieval.

Both are TRL-style reward functions `f(prompts, completions, **columns) -> list[float]` (the
columns are the per-episode fields the rollout produces), so the trainer's logging names them
by `__name__`. Turns are parsed with `kinject.grip.format.parse_turn` only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import exp

from kinject.errors import UserError
from kinject.eval.metrics import exact_match, f1_score, normalize_answer
from kinject.grip.format import parse_turn

FORMAT_SCORE = 0.5
REWARD_NAMES = ("imitation", "outcome")


def bleu1(prediction: str, reference: str) -> float:
    """Sentence BLEU-1: clipped unigram precision x brevity penalty, on SQuAD-normalized tokens.

    Hand-written (six lines) because no BLEU package is in our dependency set (nltk/sacrebleu
    would be pulled in for one formula); matches nltk's `sentence_bleu(weights=(1,))` without
    smoothing on non-empty inputs.
    """
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(not pred and not ref)  # both empty: identical; one empty: nothing matches
    overlap = sum((Counter(pred) & Counter(ref)).values())
    bp = 1.0 if len(pred) > len(ref) else exp(1 - len(ref) / len(pred))
    return bp * overlap / len(pred)


def reference_is_valid(reference: str) -> bool:
    """A reference turn must parse as final or plan (others are skipped and counted by the loader)."""
    return parse_turn(reference).kind in ("final", "plan")


def imitation_score(prediction: str, reference: str) -> float:
    """Reward of one generated turn against the reference turn, in [0, 1.5]."""
    ref = parse_turn(reference)
    if ref.kind == "other":
        raise UserError(f"imitation reward: reference turn does not parse as final or plan: {reference!r}")
    pred = parse_turn(prediction)
    if pred.kind != ref.kind:
        return 0.0
    if ref.kind == "final":
        content = bleu1(pred.answer, ref.answer)
    else:
        content = (bleu1(pred.intermediary, ref.intermediary) + bleu1(pred.query, ref.query)) / 2
    return FORMAT_SCORE + content


@dataclass(frozen=True)
class OutcomeSettings:
    metric: str = "em"  # em | f1
    format_bonus: float = 0.1
    retrieval_cost: float = 0.05


def outcome_score(answer: str, golds: Sequence[str], n_retrievals: int, turn_kinds: Sequence[str],
                  settings: OutcomeSettings = OutcomeSettings()) -> float:
    """Correctness of the final answer + format bonus (all turns well-formed) - cost x retrievals."""
    correct = (exact_match if settings.metric == "em" else f1_score)(answer, list(golds))
    well_formed = bool(turn_kinds) and all(k in ("final", "plan") for k in turn_kinds)
    return correct + settings.format_bonus * well_formed - settings.retrieval_cost * n_retrievals


def make_reward_func(name: str, outcome: OutcomeSettings | None = None) -> Callable[..., list[float]]:
    """The reward function for `name`, with TRL's reward-function signature."""
    if name == "imitation":
        def imitation_reward(prompts, completions, reference, **_) -> list[float]:
            return [imitation_score(c, r) for c, r in zip(completions, reference, strict=True)]

        return imitation_reward
    if name == "outcome":
        settings = outcome or OutcomeSettings()

        def outcome_reward(prompts, completions, answer, golds, n_retrievals, turn_kinds, **_) -> list[float]:
            return [outcome_score(a, g, n, k, settings)
                    for a, g, n, k in zip(answer, golds, n_retrievals, turn_kinds, strict=True)]

        return outcome_reward
    raise UserError(f"unknown GRIP reward {name!r}; choose one of: {', '.join(REWARD_NAMES)}")
