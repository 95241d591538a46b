"""C-class rewriters: given a question the model got wrong and its retrieved passages, write a
corrected fact and a NEW search query (the GRIP paper's pattern C). A rewriter is a callable
`(items) -> [(fact, query) | None]`; None means it could not write one (the row is skipped and
counted). Registry by name: `world` (programmatic, the synthetic world's hops), `supporting` (programmatic,
a real QA set's gold paragraphs: `supporting_pids`) and `openai` (any OpenAI-compatible server).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kinject.errors import UserError
from kinject.grip.format import format_references, parse_turn, strip_control


@dataclass
class RewriteItem:
    question: str
    answers: list[str]
    prediction: str
    passages: list[str]
    row: dict = field(default_factory=dict)


Rewriter = Callable[[Sequence[RewriteItem]], list[tuple[str, str] | None]]
REWRITERS: dict[str, Callable[..., Rewriter]] = {}


def register_rewriter(name: str):
    def deco(factory):
        REWRITERS[name] = factory
        return factory
    return deco


def make_rewriter(cfg) -> Rewriter:
    if cfg.kind not in REWRITERS:
        raise UserError(f"unknown rewriter {cfg.kind!r}; known: {', '.join(sorted(REWRITERS))}")
    return REWRITERS[cfg.kind](cfg)


_SENT = re.compile(r"(?<=[.!?])\s+")


def world_rewrite(item: RewriteItem) -> tuple[str, str] | None:
    """From the world's hop decomposition: the fact states the first hop's answer (the passage
    sentence that says it when one is retrieved, else `<sub-question 1> <answer>`), the new
    query is the second sub-question. A 1-hop question has no next hop: None."""
    mid, subs = item.row.get("intermediate"), item.row.get("sub_questions")
    if not isinstance(mid, str) or not mid or not isinstance(subs, list) or len(subs) < 2:
        return None
    entity = item.row.get("entity", "")
    sentences = [s.strip() for p in item.passages for s in _SENT.split(p) if s.strip()]
    fact = next((s for s in sentences if mid in s and entity and entity in s), None)
    if fact is None:
        fact = f"{subs[0].rstrip('?').strip()}: {mid}"
    return fact.rstrip("."), subs[1]


@register_rewriter("world")
def _world_factory(cfg) -> Rewriter:
    return lambda items: [world_rewrite(it) for it in items]


def first_sentence(text: str) -> str:
    return next((s.strip() for s in _SENT.split(" ".join(text.split())) if s.strip()), "")


def supporting_rewrite(item: RewriteItem, passages: dict[str, tuple[str, str]]) -> tuple[str, str] | None:
    """From a real QA row's gold paragraphs (`supporting_pids` -> (title, text)): the fact is the
    first sentence of a gold paragraph the retrieval found (else of the first gold one), the new
    query the title of the first gold paragraph it missed (the bridge entity of a HotpotQA-style
    question, or the other entity of a comparison). Every gold already retrieved, or no golds: None."""
    golds = [passages[str(p)] for p in item.row.get("supporting_pids") or [] if str(p) in passages]
    if not golds:
        return None
    seen = {" ".join(t.split()) for t in item.passages}
    found = [g for g in golds if " ".join(g[1].split()) in seen]
    missing = [g for g in golds if g not in found]
    if not missing or not missing[0][0].strip():
        return None
    fact = first_sentence((found or golds)[0][1])
    return (fact, missing[0][0].strip()) if fact else None


@register_rewriter("supporting")
def _supporting_factory(cfg) -> Rewriter:
    if not cfg.passages:
        raise UserError("rewriter 'supporting' needs rewriter.passages (the passages file the questions' "
                        "supporting_pids point into)")
    from kinject.retrieval.ingest import read_passages

    passages = {d.id: (d.title, d.text) for d in read_passages(cfg.passages)}
    return lambda items: [supporting_rewrite(it, passages) for it in items]


REWRITE_SYSTEM = "You repair failed steps of a retrieval-augmented question-answering agent."
REWRITE_USER = (
    "Question: {question}\n"
    "The agent's answer so far (wrong or incomplete): {prediction}\n"
    "Passages retrieved for the question:\n{passages}\n\n"
    "Write one short fact that is correct and helps answer the question (use the passages), and "
    "a NEW search query for the information still missing. Reply in exactly two lines:\n"
    "Fact: <fact>\nQuery: <new query>"
)
_FACT = re.compile(r"^\s*fact\s*:\s*(.+)$", re.I | re.M)
_QUERY = re.compile(r"^\s*query\s*:\s*(.+)$", re.I | re.M)


def rewrite_messages(item: RewriteItem) -> list[dict]:
    return [
        {"role": "system", "content": REWRITE_SYSTEM},
        {"role": "user", "content": REWRITE_USER.format(
            question=item.question, prediction=item.prediction or "(none)",
            passages=format_references(item.passages) or "(none)")},
    ]


def parse_rewrite(text: str) -> tuple[str, str] | None:
    """`Fact: ..` / `Query: ..` lines, or a GRIP plan turn; None when neither is there."""
    f, q = _FACT.search(text), _QUERY.search(text)
    if f and q and strip_control(f.group(1)) and strip_control(q.group(1)):
        return strip_control(f.group(1)), strip_control(q.group(1))
    turn = parse_turn(text)
    if turn.kind == "plan" and turn.intermediary and turn.query:
        return turn.intermediary, turn.query
    return None


class OpenAIRewriter:
    """Calls `/chat/completions` of any OpenAI-compatible endpoint through the `openai` client."""

    def __init__(self, cfg):
        if not cfg.url or not cfg.model:
            raise UserError("rewriter 'openai' needs rewriter.url (e.g. http://127.0.0.1:8000/v1) "
                            "and rewriter.model")
        from openai import OpenAI

        self.cfg = cfg
        self.client = OpenAI(base_url=cfg.url, api_key=os.environ.get(cfg.api_key_env) or "EMPTY",
                             timeout=cfg.timeout_s, max_retries=2)
        self.raw: list[str] = []  # the last batch's replies, for inspection and tests

    def complete(self, item: RewriteItem) -> str:
        import openai

        try:
            resp = self.client.chat.completions.create(
                model=self.cfg.model, messages=rewrite_messages(item),
                temperature=self.cfg.temperature, max_tokens=self.cfg.max_tokens)
        except openai.APIConnectionError:
            raise UserError(f"rewriter: cannot reach {self.cfg.url}; start the server or fix rewriter.url") from None
        except openai.APIStatusError as e:
            raise UserError(f"rewriter: {self.cfg.url} answered HTTP {e.status_code}: {str(e.message)[:200]}") from None
        return resp.choices[0].message.content or ""

    def __call__(self, items: Sequence[RewriteItem]) -> list[tuple[str, str] | None]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max(1, self.cfg.concurrency)) as pool:
            self.raw = list(pool.map(self.complete, items))
        return [parse_rewrite(t) for t in self.raw]


@register_rewriter("openai")
def _openai_factory(cfg) -> Rewriter:
    return OpenAIRewriter(cfg)
