"""GRIP's turn format: the ONE renderer and parser used by data synthesis, SFT, RL and inference.

The public release formatted references and the intermediary differently at training and at
inference; here every stage calls `round_messages` / `parse_turn`, so they cannot drift.

A model turn is one of
- final: `[ANSWER] <answer>[SOLVED]`
- plan:  `[INTERMEDIARY] <partial answer>[RETRIEVE] <new query>` (query runs to the end)
- other: anything else, treated as a final answer by the agent.
The text after a marker is written as the chat template writes an answer (see `final_turn`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

ANSWER, SOLVED, INTERMEDIARY, RETRIEVE = "[ANSWER]", "[SOLVED]", "[INTERMEDIARY]", "[RETRIEVE]"
CONTROL_TOKENS = (ANSWER, SOLVED, INTERMEDIARY, RETRIEVE)

# Short on purpose (it is in every SFT row and every agent round): the tiny tokenizer spent 140
# tokens on the first wording (60% of an SFT row), 53 on this one; the forced round adds 8.
# (A 32-token "Known: .. Unknown: .." wording trained 15% faster but scored wiki EM 0.408 vs 0.484.)
INSTRUCTION = (
    "If you know the answer, reply [ANSWER] the answer [SOLVED]. Otherwise reply [INTERMEDIARY] "
    "what you know [RETRIEVE] a search query for what is missing."
)
FORCE_INSTRUCTION = "You must answer now."

TurnKind = Literal["final", "plan", "other"]


@dataclass(frozen=True)
class Turn:
    kind: TurnKind
    answer: str = ""
    intermediary: str = ""
    query: str = ""
    raw: str = ""


def _squash(text: str) -> str:
    return " ".join(text.split())


def strip_control(text: str) -> str:
    """Remove control-token strings from free text (answers, passages, queries)."""
    for tok in CONTROL_TOKENS:
        text = text.replace(tok, " ")
    return _squash(text)


# The text after a marker is written exactly as the chat template writes an assistant answer
# (`kinject.tokenizer.answer_lead`: one space before a word, none before a digit), so GRIP's
# answers are spelled like the base's closed-book answers. A mismatch costs recall: a space the
# base's answers did not have made GRIP-SFT answer popular test questions at 0.547 EM vs 1.000.
def _after_marker(text: str) -> str:
    from kinject.tokenizer import answer_lead

    return answer_lead(strip_control(text))


def final_turn(answer: str) -> str:
    return f"{ANSWER}{_after_marker(answer)}{SOLVED}"


def plan_turn(intermediary: str, query: str) -> str:
    return f"{INTERMEDIARY}{_after_marker(intermediary)}{RETRIEVE}{_after_marker(query)}"


def format_references(passages: Sequence[str]) -> str:
    """`[i]. body` lines numbered by retrieval rank, the best passage LAST (nearest the answer).

    Best-last because a small model reads the passage next to its answer best: the tiny world's
    base answered 0.027 EM from 2 passages best-first vs 0.100 best-last (0.005 vs 0.035 at 3)."""
    lines = [f"[{i}]. {_squash(p)}" for i, p in enumerate(passages, 1)]
    return "\n".join(reversed(lines))


def round_content(query: str, intermediary: str = "", references: Sequence[str] = ()) -> str:
    """The user message of one round: the three slots of the GRIP paper in the base's own QA prompts.

    The `Original Query` slot is written `Question:` and a round with empty slots is exactly the
    closed-book prompt (`prompts.general_messages`); filled slots follow the RAG prompt's request
    (`prompts.KNOWLEDGE_REQUEST`) with `Intermediary:` / `Reference Text:` lines. Why: a small base
    recalls a fact only from the prompt it learned it under. Measured on the tiny world's base
    (popular wiki test, closed-book EM): closed-book prompt 1.000; the same prompt followed by empty
    `Intermediary:` / `Reference Text:` lines 0.019; the instruction before the question 0.802,
    after it 0.000, as a system message 1.000 (hence `round_messages`). Reading is label-blind
    (RAG top-1 on 1-hop: 0.576-0.584 for `Knowledge:` / `Reference Text:` / with an intermediary)."""
    from kinject.prompts import GENERAL_REQUEST, KNOWLEDGE_REQUEST

    intermediary = strip_control(intermediary)
    if not intermediary and not references:
        return f"{GENERAL_REQUEST}\nQuestion: {_squash(query)}"
    lines = [KNOWLEDGE_REQUEST, f"Question: {_squash(query)}"]
    if intermediary:
        lines.append(f"Intermediary: {intermediary}")
    if references:
        lines += ["Reference Text:", format_references([strip_control(p) for p in references])]
    return "\n".join(lines)


def round_messages(query: str, intermediary: str = "", references: Sequence[str] = (),
                   force_answer: bool = False) -> list[dict]:
    """System message = the fixed instruction (how to use the two turn forms; the forced last
    round adds that it must answer), user message = `round_content`."""
    system = f"{INSTRUCTION} {FORCE_INSTRUCTION}" if force_answer else INSTRUCTION
    return [{"role": "system", "content": system},
            {"role": "user", "content": round_content(query, intermediary, references)}]


def assistant_prefill(force_answer: bool) -> str:
    """The forced last round pre-fills the assistant turn with `[ANSWER]` (no trailing space: the
    answer's first token carries it, as in the training turns; see `final_turn`)."""
    return ANSWER if force_answer else ""


_FINAL = re.compile(re.escape(ANSWER) + r"(.*?)(?:" + re.escape(SOLVED) + r"|$)", re.S)
_PLAN = re.compile(re.escape(INTERMEDIARY) + r"(.*?)" + re.escape(RETRIEVE) + r"(.*)$", re.S)


def parse_turn(text: str) -> Turn:
    """Parse a generated turn. A plan needs both markers; `[ANSWER]` without `[SOLVED]` (the stop
    token cut off) is still final; anything else is `other` (the agent treats it as final)."""
    raw = text
    a = text.find(ANSWER)
    i = text.find(INTERMEDIARY)
    if i != -1 and (a == -1 or i < a):
        m = _PLAN.search(text, i)
        if m:
            return Turn("plan", intermediary=strip_control(m.group(1)),
                        query=strip_control(m.group(2)), raw=raw)
    if a != -1:
        m = _FINAL.search(text, a)
        if m:
            return Turn("final", answer=strip_control(m.group(1)), raw=raw)
    return Turn("other", answer=strip_control(text), raw=raw)


_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)


def clean_query(query: str) -> str:
    """Release behaviour: non-word characters -> spaces (safe for any search backend)."""
    return _squash(_NON_WORD.sub(" ", query))
