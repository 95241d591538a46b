"""The world's guarantees as executable checks (used by `world stats` and by the tests).

Separation rule, exactly (names are made of *core words* unique in the world, see `names`):
- no core word of any private entity name, nor of any private `name`-kind value (e.g. a
  developing lab), occurs as a word in any text the base or the injector alignment is trained
  on (`general/pretrain.jsonl`, `general/align*.jsonl`, `general/reading_dev.jsonl`). Hence no
  private (entity, value) pair and no private statement sentence occurs there either.
- numeric values and generic categorical vocabularies (e.g. "titania", "TLR4") are shared with
  the fresh reading examples by design: such a string alone carries no private fact.
- long-tail public entities never occur in pretraining; popular ones occur >= `min_popular`
  times.
- held-out question wordings (`heldout_questions`) occur in no training text: not in
  pretraining, not in `qa_train`.
Split rules: dev (entity, attribute) pairs never occur in train; `qa_dev` uses training
wordings and `qa_dev_para` held-out ones; every dev fact is stated in the DAPT corpus;
2-hop answers follow from the entity table.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from kinject.io import iter_jsonl, read_jsonl, require_dir
from kinject.world.facts import statement
from kinject.world.spec import DomainSpec, load_domain

WORD = re.compile(r"[A-Za-z]+")
MIN_POPULAR = 20


def load_specs(world: Path) -> list[DomainSpec]:
    return [load_domain(p) for p in sorted((world / "specs").glob("*.yaml"))]


def _texts(path: Path, key: str = "text") -> list[str]:
    return [r[key] for r in iter_jsonl(path)]


def _words(texts) -> Counter:
    c: Counter = Counter()
    for t in texts:
        c.update(WORD.findall(t))
    return c


def _template_hits(templates: list[str], texts: list[str]) -> list[str]:
    """Texts in which any template occurs (placeholders match any short span). The longest
    literal piece of each template prefilters with a plain substring search (fast, in C)."""
    big = "\n".join(texts)
    hits = []
    for t in templates:
        pieces = re.split(r"\{[a-z_0-9]+\}", t)
        key = max(pieces, key=len)
        if key not in big:
            continue
        rx = re.compile(".{1,80}?".join(re.escape(p) for p in pieces))
        hits += [x for x in texts if key in x and rx.search(x)]
    return hits


def check(ok: bool, detail: str) -> dict:
    return {"ok": bool(ok), "detail": detail}


def run_checks(world: str | Path) -> dict[str, dict]:
    w = require_dir(world, "world directory", "build one with `kinject world build`")
    specs = load_specs(w)
    ents = read_jsonl(w / "entities.jsonl")
    private_words = {x for e in ents if e["private"] for x in e["words"]}
    longtail_words = {x for e in ents if not e["private"] and not e["popular"] for x in e["words"]}
    popular = [e for e in ents if not e["private"] and e["popular"]]
    out: dict[str, dict] = {}

    pre_texts = _texts(w / "general/pretrain.jsonl")
    pre_words = _words(pre_texts)
    hit = private_words & set(pre_words)
    out["no_private_names_in_pretrain"] = check(not hit, f"{len(private_words)} private name words; found {sorted(hit)[:5]}")
    other = _words(_texts(w / "general/align.jsonl", "background") + _texts(w / "general/align_dev.jsonl", "background")
                   + _texts(w / "general/align.jsonl", "question") + _texts(w / "general/reading_dev.jsonl", "knowledge"))
    hit = private_words & set(other)
    out["no_private_names_in_align_reading"] = check(not hit, f"found {sorted(hit)[:5]}")
    hit = longtail_words & set(pre_words)
    out["no_longtail_in_pretrain"] = check(not hit, f"{len(longtail_words)} long-tail words; found {sorted(hit)[:5]}")
    counts = [pre_words[e["words"][0]] for e in popular]
    out["popular_repeated"] = check(counts and min(counts) >= MIN_POPULAR,
                                    f"popular entity mentions: min {min(counts, default=0)}, need >= {MIN_POPULAR}")

    bad = _template_hits([q for d in specs for et in d.entity_types for a in et.attributes
                          for q in a.heldout_questions], pre_texts)
    out["heldout_wordings_not_in_pretrain"] = check(not bad, f"{len(bad)} pretraining rows use a held-out wording")

    by_name = {e["name"]: e for e in ents}
    split_problems: list[str] = []
    kb_min = None
    for d in specs:
        if not d.private:
            continue
        ddir = w / f"{d.name}_domain"
        train = read_jsonl(ddir / "qa_train.jsonl")
        dev = read_jsonl(ddir / "qa_dev.jsonl")
        para = read_jsonl(ddir / "qa_dev_para.jsonl")
        train_pairs = {(r["entity"], r["attribute"]) for r in train}
        leaked = [r["id"] for r in dev + para if (r["entity"], r["attribute"]) in train_pairs]
        if leaked:
            split_problems.append(f"{d.name}: dev pairs in train: {leaked[:3]}")
        if {(r["entity"], r["attribute"]) for r in dev} != {(r["entity"], r["attribute"]) for r in para}:
            split_problems.append(f"{d.name}: dev and dev_para ask different facts")
        attrs = {a.name: a for et in d.entity_types for a in et.attributes}
        for rows, want in ((train, "questions"), (dev, "questions"), (para, "heldout_questions")):
            for r in rows:
                a = attrs[r["attribute"]]
                allowed = {q.format(entity=r["entity"]) for q in getattr(a, want)}
                if r["input"] not in allowed:
                    split_problems.append(f"{d.name}: {r['id']} does not use a {want} wording")
        kb: dict[str, list[str]] = {}
        for r in iter_jsonl(ddir / "knowledge_base.jsonl"):
            kb.setdefault(r["entity"], []).append(r["text"])
        for r in dev:
            e = by_name[r["entity"]]
            a = attrs[r["attribute"]]
            sents = {statement(a, i, e["name"], e["facts"]) for i in range(len(a.statements))}
            n = sum(s in t for t in kb.get(e["name"], []) for s in sents)
            kb_min = n if kb_min is None else min(kb_min, n)
    out["splits_by_fact_and_wording"] = check(not split_problems, "; ".join(split_problems[:3]) or "all rows")
    out["dev_facts_in_kb"] = check(bool(kb_min), f"each dev fact stated >= {kb_min} times in the DAPT corpus")

    wrong = []
    n2 = 0
    for split in ("train", "test"):
        for r in iter_jsonl(w / f"wiki/qa_{split}.jsonl"):
            if r["hops"] != 2:
                continue
            n2 += 1
            (t1, a1), (t2, a2) = (x.split(".") for x in r["relations"])
            e = by_name[r["entity"]]
            mid = by_name.get(e["facts"][a1])
            if mid is None or mid["name"] != r["intermediate"] or mid["facts"][a2] != r["answer"][0]:
                wrong.append(r["question"])
    out["two_hop_correct"] = check(n2 > 0 and not wrong, f"{n2} two-hop questions, {len(wrong)} wrong")
    return out


def world_stats(world: str | Path) -> dict:
    w = require_dir(world, "world directory", "build one with `kinject world build`")
    files = {}
    for p in sorted(w.rglob("*")):
        if p.is_file() and p.suffix in (".jsonl", ".tsv"):
            with p.open(encoding="utf-8") as f:
                files[str(p.relative_to(w))] = sum(1 for line in f if line.strip()) - (p.suffix == ".tsv")
    kinds: Counter = Counter()
    chars: Counter = Counter()
    for r in iter_jsonl(w / "general/pretrain.jsonl"):
        kinds[r.get("kind", "text")] += 1
        chars[r.get("kind", "text")] += len(r["text"])
    total = sum(chars.values()) or 1
    ents = read_jsonl(w / "entities.jsonl")
    per_domain: Counter = Counter()
    for e in ents:
        per_domain[f"{e['domain']}/{e['type']}" + ("/popular" if e["popular"] else "")] += 1
    return {
        "files": files,
        "entities": dict(sorted(per_domain.items())),
        "pretrain_mix": {k: {"rows": kinds[k], "char_share": round(chars[k] / total, 3)} for k in sorted(kinds)},
        "checks": run_checks(w),
    }


def format_stats(stats: dict) -> str:
    lines = ["files:"]
    lines += [f"  {k:45s} {v:>8d}" for k, v in stats["files"].items()]
    lines.append("entities:")
    lines += [f"  {k:45s} {v:>8d}" for k, v in stats["entities"].items()]
    lines.append("pretraining mix:")
    lines += [f"  {k:45s} {v['rows']:>8d} rows  {v['char_share']:.1%} of chars" for k, v in stats["pretrain_mix"].items()]
    lines.append("checks:")
    lines += [f"  [{'ok' if c['ok'] else 'FAIL'}] {k}: {c['detail']}" for k, c in stats["checks"].items()]
    return "\n".join(lines)
