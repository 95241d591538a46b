"""The GRIP agent: the multi-round loop of the GRIP paper, batched across questions.

Round r renders one user message per active question (`format.round_messages`), generates one
turn for all of them in a single batched call, then either finishes a question (final turn) or
runs its query against the retriever (plan turn) and carries the passages and the partial
answer into the next round. The last round forces an answer (instruction + `[ANSWER]` prefill);
a question that never gave a final answer falls back to its last intermediary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kinject.errors import UserError
from kinject.grip.format import (
    CONTROL_TOKENS,
    SOLVED,
    assistant_prefill,
    clean_query,
    parse_turn,
    round_messages,
)


class SearchBackend(Protocol):
    def batch_search(self, queries: Sequence[str], k: int) -> list[list[Any]]: ...


@dataclass
class Step:
    round: int
    kind: str
    text: str
    answer: str = ""
    intermediary: str = ""
    query: str = ""
    retrieved_ids: list[str] = field(default_factory=list)
    empty_retrieval: bool = False


@dataclass
class Episode:
    question: str
    steps: list[Step] = field(default_factory=list)
    answer: str = ""
    done: bool = False
    intermediary: str = ""
    references: list[str] = field(default_factory=list)
    n_retrievals: int = 0

    @property
    def step_answers(self) -> list[str]:
        """All step answers (intermediaries) then the final one, as the release writes them."""
        return [s.intermediary for s in self.steps if s.kind == "plan"] + [self.answer]

    def to_json(self) -> dict:
        return {
            "question": self.question,
            "prediction": self.answer,
            "step_answers": self.step_answers,
            "n_retrievals": self.n_retrievals,
            "steps": [s.__dict__ for s in self.steps],
        }


@dataclass
class AgentSettings:
    max_rounds: int = 4
    top_k: int = 3
    max_new_tokens: int = 128
    batch_size: int = 32
    control_tokens: str = "special"  # "text": a model trained with plain-text markers (see from_model)
    # "question": a first-round plan searches the original question, which is what pattern B's
    # target query is by construction (the GRIP paper); for small models that garble the copy (the tiny
    # world's GRIP wrote "In which year was the city where Toum born?"). "model": its own query.
    first_query: str = "model"


def check_control_tokens(tokenizer) -> list[int]:
    """Control tokens must be single ids for clean parsing and stopping (the default mode)."""
    ids = []
    for tok in CONTROL_TOKENS:
        pieces = tokenizer(tok, add_special_tokens=False).input_ids
        if len(pieces) != 1:
            raise UserError(
                f"tokenizer has no single-token {tok} (the model was not trained for GRIP); "
                "train it with `kinject grip sft` (which adds the tokens) or use a GRIP checkpoint"
            )
        ids.append(pieces[0])
    return ids


class GripAgent:
    """Runs episodes; `generate_fn(prompts) -> texts` is the policy (a causal LM, see below)."""

    def __init__(self, generate_fn: Callable[[list[str]], list[str]],
                 render_fn: Callable[[list[dict]], str], retriever: SearchBackend,
                 settings: AgentSettings | None = None):
        self.generate_fn = generate_fn
        self.render_fn = render_fn
        self.retriever = retriever
        self.settings = settings or AgentSettings()
        if self.settings.max_rounds < 1:
            raise UserError("grip agent: max_rounds must be >= 1")
        self.cache: dict[str, list[Any]] = {}

    @classmethod
    def from_model(cls, model, tokenizer, retriever: SearchBackend,
                   settings: AgentSettings | None = None) -> GripAgent:
        from kinject.generation import generate_texts
        from kinject.prompts import render

        settings = settings or AgentSettings()
        if settings.control_tokens == "text":
            # plain-text markers (the release's way): no single `[SOLVED]` id to stop on, so a
            # turn ends at end of turn; `parse_turn` reads the same strings either way
            stops: list[int] = []
        else:
            check_control_tokens(tokenizer)
            stops = [tokenizer.convert_tokens_to_ids(SOLVED)]

        def generate(prompts: list[str]) -> list[str]:
            gens = generate_texts(model, tokenizer, prompts, max_new_tokens=settings.max_new_tokens,
                                  batch_size=settings.batch_size, skip_special_tokens=False,
                                  extra_stop_ids=stops)
            return [g.text for g in gens]

        return cls(generate, lambda msgs: render(tokenizer, msgs), retriever, settings)

    def prompt(self, ep: Episode, force: bool) -> str:
        msgs = round_messages(ep.question, ep.intermediary, ep.references, force_answer=force)
        return self.render_fn(msgs) + assistant_prefill(force)

    def search(self, queries: list[str]) -> list[list[Any]]:
        """Per-query cache (the release's): each distinct cleaned query is searched once."""
        todo = sorted({q for q in queries if q not in self.cache})
        if todo:
            for q, hits in zip(todo, self.retriever.batch_search(todo, self.settings.top_k), strict=True):
                self.cache[q] = list(hits)
        return [self.cache[q] for q in queries]

    def apply(self, episodes: list[Episode], texts: list[str], rnd: int, force: bool) -> None:
        """Advance each active episode with its generated turn text."""
        prefill = assistant_prefill(force)
        planned: list[tuple[Episode, Step, str]] = []
        for ep, text in zip(episodes, texts, strict=True):
            full = prefill + text
            turn = parse_turn(full)
            step = Step(rnd, turn.kind, full)
            ep.steps.append(step)
            if turn.kind == "plan" and not force:
                step.intermediary, step.query = turn.intermediary, turn.query
                query = ep.question if rnd == 0 and self.settings.first_query == "question" else turn.query
                planned.append((ep, step, clean_query(query) or clean_query(ep.question)))
            else:
                step.answer = turn.answer
                # an empty forced answer falls back to the last intermediary (the GRIP paper)
                ep.answer, ep.done = turn.answer or ep.intermediary, True
        if planned:
            results = self.search([q for _, _, q in planned])
            for (ep, step, _), hits in zip(planned, results, strict=True):
                ep.n_retrievals += 1
                ep.intermediary = step.intermediary
                ep.references = [h.text for h in hits]
                step.retrieved_ids = [str(h.id) for h in hits]
                step.empty_retrieval = not hits

    def run(self, questions: Sequence[str]) -> list[Episode]:
        episodes = [Episode(q) for q in questions]
        for rnd in range(self.settings.max_rounds):
            active = [ep for ep in episodes if not ep.done]
            if not active:
                break
            force = rnd == self.settings.max_rounds - 1
            texts = self.generate_fn([self.prompt(ep, force) for ep in active])
            self.apply(active, texts, rnd, force)
        for ep in episodes:
            if not ep.done:  # budget spent without a final turn: the last intermediary
                ep.answer, ep.done = ep.intermediary, True
        return episodes
