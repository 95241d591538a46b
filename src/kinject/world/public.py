"""Public (general) domain: wiki passages, 1-hop and 2-hop questions, closed-book tests, and the
public part of the base's pretraining corpus (popular entities only)."""

from __future__ import annotations

import random

from kinject.world.facts import Entity, World, answers, question, statement
from kinject.world.render import ChatRenderer
from kinject.world.spec import DomainSpec


def _passage(e: Entity, d: DomainSpec, rng: random.Random) -> str:
    et = next(t for t in d.entity_types if t.name == e.type)
    attrs = list(et.attributes)
    rng.shuffle(attrs)
    return " ".join(statement(a, rng.randrange(len(a.statements)), e.name, e.facts) for a in attrs)


def wiki_passages(world: World, d: DomainSpec, rng: random.Random) -> tuple[list[dict], dict[str, str]]:
    """One passage per public entity (popular and long-tail): all its facts, shuffled."""
    rows, pid = [], {}
    for e in world.main_entities(d.name):
        i = str(len(rows) + 1)
        pid[e.name] = i
        rows.append({"id": i, "text": _passage(e, d, rng), "title": e.name})
    return rows, pid


def _pop(*ents: Entity) -> str:
    return "popular" if all(e.popular for e in ents) else "longtail"


def wiki_qa(world: World, d: DomainSpec, pid: dict[str, str], n_two_hop: int, test_fraction: float,
            rng: random.Random) -> dict[str, list[dict]]:
    rows = []
    for e in world.main_entities(d.name):
        _, et = world.type_spec(e.type)
        for a in et.attributes:
            rows.append({
                "question": question(rng.choice(a.questions), e.name),
                "answer": answers(e.facts[a.name]),
                "hops": 1,
                "popularity": _pop(e),
                "entity": e.name,
                "attribute": a.name,
                "gold_passage_ids": [pid[e.name]],
            })
    by_name = world.by_name()
    two_hop = []
    comps = d.compositions
    candidates = []
    for c in comps:
        t1, a1 = c.first.split(".")
        for e in world.of_type(t1):
            candidates.append((c, e))
    rng.shuffle(candidates)
    for c, e in candidates[:n_two_hop]:
        t1, a1 = c.first.split(".")
        t2, a2 = c.second.split(".")
        mid = by_name[e.facts[a1]]
        _, et1 = world.type_spec(t1)
        _, et2 = world.type_spec(t2)
        two_hop.append({
            "question": question(rng.choice(c.questions), e.name),
            "answer": answers(mid.facts[a2]),
            "hops": 2,
            "popularity": _pop(e, mid),
            "entity": e.name,
            "relations": [c.first, c.second],
            "intermediate": mid.name,
            "sub_questions": [question(rng.choice(et1.attribute(a1).questions), e.name),
                              question(rng.choice(et2.attribute(a2).questions), mid.name)],
            "gold_passage_ids": [pid[e.name], pid[mid.name]],
        })
    out: dict[str, list[dict]] = {"train": [], "test": []}
    for group in (rows, two_hop):
        rng.shuffle(group)
        n_test = round(len(group) * test_fraction)
        out["test"] += group[:n_test]
        out["train"] += group[n_test:]
    rng.shuffle(out["train"])
    rng.shuffle(out["test"])
    return out


def closed_book_test(world: World, d: DomainSpec, rng: random.Random) -> list[dict]:
    """Popular public facts, each asked once with a wording seen in pretraining and once with a
    held-out wording (`wording`: seen / heldout)."""
    rows = []
    for e in world.main_entities(d.name):
        if not e.popular:
            continue
        _, et = world.type_spec(e.type)
        for a in et.attributes:
            for wording, pool in (("seen", a.questions), ("heldout", a.heldout_questions)):
                rows.append({"question": question(rng.choice(pool), e.name),
                             "answer": answers(e.facts[a.name]), "entity": e.name,
                             "attribute": a.name, "popularity": "popular", "wording": wording})
    return rows


def public_pretrain_rows(world: World, d: DomainSpec, passages: list[dict], sizes, chat: ChatRenderer,
                         rng: random.Random) -> list[dict]:
    """Popular entities, many times: paraphrased statement documents, their wiki passages, and
    closed-book QA in the `general_messages` chat format with every seen wording."""
    rows = []
    popular = [e for e in world.main_entities(d.name) if e.popular]
    names = {e.name for e in popular}
    for e in popular:
        for _ in range(sizes.statement_docs):
            rows.append({"text": _passage(e, d, rng), "kind": "statements"})
        _, et = world.type_spec(e.type)
        for a in et.attributes:
            for t in a.questions:
                for _ in range(sizes.closed_book_repeats):
                    rows.append({"text": chat.closed_book(question(t, e.name), e.facts[a.name]),
                                 "kind": "closed_book"})
    for p in passages:
        if p["title"] in names:
            rows += [{"text": p["text"], "kind": "passage"}] * sizes.passage_repeats
    return rows
