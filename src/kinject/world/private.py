"""Private-domain files: the DAPT knowledge base and the QA splits (split by fact)."""

from __future__ import annotations

import random

from kinject.world.facts import World, answers, question, statement
from kinject.world.spec import DomainSpec


def knowledge_base(world: World, d: DomainSpec, n_para: int, rng: random.Random) -> list[dict]:
    """n_para documents per entity, each stating every fact; attribute order shuffled and the
    statement paraphrase rotated so every paraphrase of every fact is used."""
    rows = []
    for et in d.entity_types:
        for e in world.of_type(et.name):
            offset = rng.randrange(len(et.attributes[0].statements))
            for p in range(n_para):
                attrs = list(et.attributes)
                rng.shuffle(attrs)
                text = " ".join(statement(a, p + offset, e.name, e.facts) for a in attrs)
                rows.append({"text": text, "entity": e.name, "domain": d.name})
    rng.shuffle(rows)
    return rows


def qa_splits(world: World, d: DomainSpec, dev_fraction: float, rng: random.Random) -> dict[str, list[dict]]:
    """train: every seen wording of every train fact; dev: held-out facts with a seen wording;
    dev_para: the same held-out facts with a held-out wording."""
    facts = [(e, a) for et in d.entity_types for e in world.of_type(et.name) for a in et.attributes]
    rng.shuffle(facts)
    n_dev = round(len(facts) * dev_fraction)
    dev, train = facts[:n_dev], facts[n_dev:]

    def row(split: str, i: int, e, a, template: str) -> dict:
        value = e.facts[a.name]
        return {
            "id": f"{d.name}-{split}-{i:05d}",
            "domain": d.name,
            "entity": e.name,
            "attribute": a.name,
            "instruction": d.instruction,
            "input": question(template, e.name),
            "output": value,
            "answer": answers(value),
            "background": statement(a, 0, e.name, e.facts),
        }

    out: dict[str, list[dict]] = {"train": [], "dev": [], "dev_para": []}
    for e, a in train:
        for t in a.questions:
            out["train"].append(row("train", len(out["train"]), e, a, t))
    rng.shuffle(out["train"])
    for i, r in enumerate(out["train"]):
        r["id"] = f"{d.name}-train-{i:05d}"
    for e, a in dev:
        out["dev"].append(row("dev", len(out["dev"]), e, a, rng.choice(a.questions)))
        out["dev_para"].append(row("dev_para", len(out["dev_para"]), e, a, rng.choice(a.heldout_questions)))
    return out


def knowledge_passages(world_dir, domains, chunk_words: int = 32, chunk_overlap: int = 8) -> list[dict]:
    """The private domains' knowledge bases as a retrieval corpus (`{id, title, text}` rows, the
    RAG baseline's "own corpus"): each document cut into word windows, id
    `<domain>:<entity>:<n>#<chunk>`, titled by its entity."""
    from pathlib import Path

    from kinject.io import iter_jsonl
    from kinject.retrieval.base import Doc
    from kinject.retrieval.ingest import chunk_doc

    rows = []
    for d in domains:
        seen: dict[str, int] = {}
        for r in iter_jsonl(Path(world_dir) / f"{d}_domain" / "knowledge_base.jsonl"):
            n = seen[r["entity"]] = seen.get(r["entity"], -1) + 1
            doc = Doc(id=f"{d}:{r['entity']}:{n}", text=r["text"], title=r["entity"])
            rows += [{"id": c.id, "title": c.title, "text": c.text} for c in chunk_doc(doc, chunk_words, chunk_overlap)]
    return rows
