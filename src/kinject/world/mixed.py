"""Mixed-domain routing sets (`mixed_domain/`): what a router learns from, and what it is tested on.

- `offline/<domain>.jsonl`: a sample of the domain's training questions (private: `qa_train`;
  general: closed-book questions in seen wordings + wiki train) plus router-only *offline
  wordings* asked about the same training facts.
- `online/mixed.jsonl`: held-out questions (private: `qa_dev` + `qa_dev_para`; general:
  closed-book questions in held-out wordings + wiki test), never an offline string.

Why offline wordings: PPR builds each domain's prototypes from its offline questions (the paper:
up to 10k from a real query log, many phrasings per attribute). The QA specs have only three
training wordings per attribute, and half the online questions use held-out wordings, which
routed at 0.84-0.88 from spec wordings alone. The offline wordings live beside the specs
(`<domains_dir>/offline_wordings/<domain>.yaml`, optional per domain) and NOT in them: names
avoid only spec vocabulary, so adding wordings changes no world file outside `mixed_domain/`.
They are validated against the spec: `{entity}` is their only field, none equals a spec
wording, and none shares a 4-word run with a held-out wording (so the online set's held-out
wordings stay unseen by the router as well as by the QA models).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from kinject.config import StrictModel
from kinject.errors import UserError
from kinject.world.facts import question
from kinject.world.spec import DomainSpec, template_fields

NGRAM = 4  # an offline wording may share no run of this many words with a held-out wording
_TOKEN = re.compile(r"\{entity\}|[a-z0-9]+")


class OfflineWordings(StrictModel):
    domain: str
    attributes: dict[str, list[str]]  # "<entity type>.<attribute>" -> question templates


def _ngrams(template: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    toks = _TOKEN.findall(template.lower())
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def load_offline_wordings(path: Path, spec: DomainSpec) -> dict[str, list[str]]:
    """`{"type.attribute": [templates]}` of one domain's wordings file, checked against its spec."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        w = OfflineWordings.model_validate(data)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: invalid YAML ({getattr(e, 'problem', e)})") from None
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"{path}: key {'.'.join(map(str, err['loc']))!r}: {err['msg']} "
                        "(expected `domain: NAME` and `attributes: {type.attribute: [wordings]}`)") from None
    if w.domain != spec.name:
        raise UserError(f"{path}: key 'domain' is {w.domain!r} but the file is for domain {spec.name!r}")
    attrs = {f"{et.name}.{a.name}": a for et in spec.entity_types for a in et.attributes}
    spec_wordings = {t for a in attrs.values() for t in a.questions + a.heldout_questions}
    for key, templates in w.attributes.items():
        if key not in attrs:
            raise UserError(f"{path}: attributes.{key}: {spec.name!r} has no attribute {key!r} "
                            f"(known: {', '.join(sorted(attrs))})")
        heldout = {g: t for t in attrs[key].heldout_questions for g in _ngrams(t)}
        for i, t in enumerate(templates):
            where = f"{path}: attributes.{key}[{i}] {t!r}"
            if template_fields(t) != ["entity"]:
                raise UserError(f"{where}: a wording must contain {{entity}} once and no other field")
            if t in spec_wordings:
                raise UserError(f"{where}: already a wording of the spec {spec.source}; offline wordings add new ones")
            close = [heldout[g] for g in _ngrams(t) if g in heldout]
            if close:
                raise UserError(f"{where}: shares the words {' '.join(next(g for g in _ngrams(t) if g in heldout))!r} "
                                f"with the held-out wording {close[0]!r}; held-out wordings must stay unseen")
        if len(set(templates)) != len(templates):
            raise UserError(f"{path}: attributes.{key}: a wording is listed twice")
    return w.attributes


def wordings_paths(wordings_dir: Path | None, domains: list[DomainSpec]) -> dict[str, Path]:
    """The domains' offline wordings files that exist (a domain without one has none)."""
    if wordings_dir is None:
        return {}
    return {d.name: p for d in domains if (p := wordings_dir / f"{d.name}.yaml").is_file()}


def _extra_questions(templates: dict[str, list[str]], facts: list[tuple[str, str]]) -> list[str]:
    """Every offline wording of each training fact `(entity, "type.attribute")`."""
    return [question(t, e) for e, key in facts for t in templates.get(key, [])]


def mixed_files(domains: list[DomainSpec], files: dict[str, list[dict]], wiki: dict[str, list[dict]],
                wordings: dict[str, dict[str, list[str]]], offline_n: int, online_n: int,
                rng: random.Random, offline_rng: random.Random) -> dict[str, list[dict]]:
    """The `mixed_domain/` files, from the already generated QA files (see the module doc).

    `rng` shuffles the spec-wording pools and samples the online set exactly as it would without
    offline wordings (so they leave the online file unchanged); `offline_rng` mixes the offline
    wordings in."""
    types = {r["name"]: r["type"] for r in files["entities.jsonl"]}
    pub = next(d for d in domains if not d.private)
    priv = [d for d in domains if d.private]
    cb = files["general/qa_test.jsonl"]
    offline = {pub.name: [r["question"] for r in cb if r["wording"] == "seen"] + [r["question"] for r in wiki["train"]]}
    online = {pub.name: [r["question"] for r in cb if r["wording"] == "heldout"] + [r["question"] for r in wiki["test"]]}
    facts = {pub.name: [(r["entity"], f"{types[r['entity']]}.{r['attribute']}")
                        for r in cb + wiki["train"] if r.get("wording", "seen") == "seen" and "attribute" in r]}
    for d in priv:
        train = files[f"{d.name}_domain/qa_train.jsonl"]
        offline[d.name] = [r["input"] for r in train]
        online[d.name] = [r["input"] for k in ("dev", "dev_para") for r in files[f"{d.name}_domain/qa_{k}.jsonl"]]
        facts[d.name] = [(r["entity"], f"{types[r['entity']]}.{r['attribute']}") for r in train]

    out: dict[str, list[dict]] = {}
    mixed: list[dict] = []
    for name in offline:
        qs = sorted(set(offline[name]))
        rng.shuffle(qs)
        extra = sorted(set(_extra_questions(wordings.get(name, {}), sorted(set(facts[name])))) - set(qs))
        pool = qs + extra
        if extra:
            offline_rng.shuffle(pool)
        out[f"mixed_domain/offline/{name}.jsonl"] = [{"question": q, "domain": name} for q in pool[:offline_n]]
        held = sorted(set(online[name]) - set(pool))
        rng.shuffle(held)
        mixed += [{"question": q, "domain": name} for q in held[:online_n]]
    rng.shuffle(mixed)
    out["mixed_domain/online/mixed.jsonl"] = mixed
    return out
