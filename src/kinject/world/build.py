"""`kinject world build`: generate a whole world into one directory, deterministically.

Layout (field names as in the seeds):
  entities.jsonl                               every entity with its facts (ground truth)
  <domain>_domain/knowledge_base.jsonl         {text}: DAPT corpus (private domains)
  <domain>_domain/qa_{train,dev,dev_para}.jsonl {id, domain, entity, attribute, instruction,
                                                 input, output, answer, background}
  general/pretrain.jsonl                       {text, kind}: the base's pretraining corpus
  general/qa_test.jsonl                        {question, answer, wording, ...}: closed-book
  general/reading_dev.jsonl                    {question, knowledge, answer}: fresh reading test
  general/align.jsonl, align_dev.jsonl         {question, answer, background}: fresh facts
  wiki/passages.tsv                            id, text, title
  wiki/qa_{train,test}.jsonl                   {question, answer, hops, popularity, ...}
  mixed_domain/offline/{general,<private>}.jsonl, mixed_domain/online/mixed.jsonl
                                               {question, domain} (see `kinject.world.mixed`)
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

from kinject.errors import UserError
from kinject.io import atomic_dir, write_jsonl_atomic, write_text_atomic
from kinject.runs import RunRecorder, inputs_hash, is_complete
from kinject.world.config import WorldConfig
from kinject.world.facts import Entity, World, value_text
from kinject.world.fresh import FreshFactory, styles
from kinject.world.mixed import load_offline_wordings, mixed_files, wordings_paths
from kinject.world.names import NamePool
from kinject.world.private import knowledge_base, qa_splits
from kinject.world.public import closed_book_test, public_pretrain_rows, wiki_passages, wiki_qa
from kinject.world.render import ChatRenderer
from kinject.world.spec import DomainSpec, check_relations, load_domain, vocabulary_words


def domain_paths(cfg: WorldConfig, config_path: str | Path | None) -> list[Path]:
    base = Path(cfg.domains_dir)
    if not base.is_absolute():
        base = (Path(config_path).parent if config_path else Path.cwd()) / base
    names = [*cfg.private_domains, cfg.public_domain]
    if len(set(names)) != len(names):
        raise UserError(f"world config: a domain is listed twice in {names}")
    return [base / f"{n}.yaml" for n in names]


def offline_wordings_dir(cfg: WorldConfig, config_path: str | Path | None) -> Path | None:
    if cfg.mixed.offline_wordings is None:
        return None
    return domain_paths(cfg, config_path)[0].parent / cfg.mixed.offline_wordings


def load_domains(cfg: WorldConfig, config_path: str | Path | None) -> list[DomainSpec]:
    domains = [load_domain(p) for p in domain_paths(cfg, config_path)]
    for d, want in zip(domains, [*cfg.private_domains, cfg.public_domain]):
        if d.name != want:
            raise UserError(f"{d.source}: key 'name' is {d.name!r} but the file is listed as {want!r}")
        if d.private != (want != cfg.public_domain):
            raise UserError(f"{d.source}: key 'private' must be {want != cfg.public_domain} for this role")
    check_relations(domains)
    return domains


def _rng(seed: int, purpose: str) -> random.Random:
    return random.Random(f"{seed}:{purpose}")  # str seeds are hashed with sha512: stable


def make_world(cfg: WorldConfig, domains: list[DomainSpec]) -> World:
    """Names for every entity first (so relations can point anywhere), then values."""
    pool = NamePool(_rng(cfg.seed, "names"), vocabulary_words(domains))
    rng = _rng(cfg.seed, "values")
    entities: list[Entity] = []
    for d in domains:
        for ti, et in enumerate(d.entity_types):
            if d.private:
                n = cfg.private.entities
            else:
                if et.name not in cfg.public.entities:
                    raise UserError(f"world config: public.entities has no count for entity type {et.name!r} "
                                    f"(from {d.source})")
                n = cfg.public.entities[et.name]
            frac = cfg.public.popular_fraction.get(et.name, cfg.public.default_popular_fraction)
            n_pop = 0 if d.private else max(1, round(n * frac))
            for i, (name, cores) in enumerate(pool.draw(et.names, n, d.source, f"entity_types[{ti}].names")):
                entities.append(Entity(name, cores, et.name, d.name, d.private, popular=i < n_pop))
    world = World(domains, entities)
    by_type: dict[str, list[Entity]] = {}
    for e in entities:
        by_type.setdefault(e.type, []).append(e)
    for d in domains:
        for et in d.entity_types:
            for e in by_type.get(et.name, []):
                def relation(target: str, e=e) -> str:
                    cands = by_type[target]
                    if e.popular:  # popular facts are in pretraining: they may only name popular entities
                        cands = [c for c in cands if c.popular] or cands
                    return rng.choice(cands).name

                def name_value(attr, e=e, d=d, et=et) -> str:
                    (name, cores), = pool.draw(attr.names, 1, d.source, f"{et.name}.{attr.name}.names")
                    world.entities.append(Entity(name, cores, f"{et.name}.{attr.name}", d.name, d.private))
                    return name

                for a in et.attributes:
                    e.facts[a.name] = value_text(a, rng, relation, name_value)
    world.reserved_words = pool.taken
    return world


def _tsv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(["id", "text", "title"])
    for r in rows:
        w.writerow([r["id"], r["text"], r["title"]])
    return buf.getvalue()


def generate(cfg: WorldConfig, domains: list[DomainSpec], out: Path,
             offline_wordings: dict[str, dict[str, list[str]]] | None = None) -> dict[str, int]:
    """Write every file under `out` (an empty directory). Returns row counts per file.
    `offline_wordings`: domain -> router-only question wordings (`kinject.world.mixed`)."""
    world = make_world(cfg, domains)
    chat = ChatRenderer()
    files: dict[str, list[dict]] = {}
    counts: dict[str, int] = {}
    priv = [d for d in domains if d.private]
    pub = next(d for d in domains if not d.private)

    files["entities.jsonl"] = [e.to_row() for e in world.entities]
    for d in priv:
        files[f"{d.name}_domain/knowledge_base.jsonl"] = knowledge_base(
            world, d, cfg.private.dapt_paraphrases, _rng(cfg.seed, f"kb:{d.name}"))
        for split, rows in qa_splits(world, d, cfg.private.dev_fraction, _rng(cfg.seed, f"qa:{d.name}")).items():
            files[f"{d.name}_domain/qa_{split}.jsonl"] = rows

    passages, pid = wiki_passages(world, pub, _rng(cfg.seed, "passages"))
    wqa = wiki_qa(world, pub, pid, cfg.wiki.two_hop, cfg.wiki.test_fraction, _rng(cfg.seed, "wiki_qa"))
    files["wiki/qa_train.jsonl"], files["wiki/qa_test.jsonl"] = wqa["train"], wqa["test"]
    files["general/qa_test.jsonl"] = closed_book_test(world, pub, _rng(cfg.seed, "closed_book"))

    fr = cfg.fresh
    avoid = set(world.reserved_words)
    types, weights = styles(domains, fr.private_style_share)
    priv_types = [et.name for d in priv for et in d.entity_types]

    def reading_rows(purpose: str, n: int) -> list[dict]:
        f = FreshFactory(domains, avoid, _rng(cfg.seed, purpose), fr.pool_size)
        picks = f.rng.choices(types, weights=weights, k=n)
        return [f.reading(t, fr.distractors, fr.same_entity_distractor_share) for t in picks]

    def align_rows(purpose: str, n: int) -> list[dict]:
        f = FreshFactory(domains, avoid, _rng(cfg.seed, purpose), fr.pool_size)
        return [f.align_item(f.rng.choice(priv_types)) for _ in range(n)]

    reading = reading_rows("reading", fr.reading_examples)
    files["general/reading_dev.jsonl"] = reading_rows("reading_dev", fr.reading_dev)
    files["general/align.jsonl"] = align_rows("align", fr.align_train)
    files["general/align_dev.jsonl"] = align_rows("align_dev", fr.align_dev)

    prng = _rng(cfg.seed, "pretrain")
    pretrain = public_pretrain_rows(world, pub, passages, cfg.public, chat, prng)
    pretrain += [{"text": chat.reading(r["question"], r["knowledge"], r["output"]), "kind": "reading"}
                 for r in reading]
    prng.shuffle(pretrain)
    files["general/pretrain.jsonl"] = pretrain

    # mixed-domain routing sets: offline = questions a router may learn from; online = held out
    files.update(mixed_files(domains, files, wqa, offline_wordings or {}, cfg.mixed.offline_per_domain,
                             cfg.mixed.online_per_domain, _rng(cfg.seed, "mixed"),
                             _rng(cfg.seed, "mixed_offline_wordings")))

    for rel, rows in files.items():
        write_jsonl_atomic(out / rel, rows)
        counts[rel] = len(rows)
    write_text_atomic(out / "wiki/passages.tsv", _tsv(passages))
    for d in domains:  # the specs travel with the world (checks and later stages read them)
        write_text_atomic(out / "specs" / f"{d.name}.yaml", Path(d.source).read_text(encoding="utf-8"))
    counts["wiki/passages.tsv"] = len(passages)
    return counts


def tiny_world_config() -> Path:
    """The shipped tiny world's config (`configs/world/tiny.yaml`): the world `kinject demo` builds."""
    from kinject.resources import shipped

    return shipped("configs/world/tiny.yaml")


def build_world(config_path: str | Path | None, out: str | Path, overrides=(), force: bool = False) -> Path:
    from kinject.config import load_config

    cfg = load_config(config_path, overrides, expect=WorldConfig)
    domains = load_domains(cfg, config_path)
    spec = {d.name: d for d in domains}
    wpaths = wordings_paths(offline_wordings_dir(cfg, config_path), domains)
    wordings = {name: load_offline_wordings(p, spec[name]) for name, p in wpaths.items()}
    h = inputs_hash(cfg, *domain_paths(cfg, config_path), *wpaths.values())
    out = Path(out)
    if not force and is_complete(out, h):
        return out
    rec = RunRecorder(out, "world build", cfg, cfg.seed)
    with atomic_dir(out) as tmp:
        with rec.timer("build"):
            counts = generate(cfg, domains, tmp, wordings)
        rec.metrics["counts"] = counts
        rec.extra["domains"] = {d.name: d.source for d in domains}
        rec.extra["offline_wordings"] = {name: str(p) for name, p in wpaths.items()}
        rec.write(tmp, inputs_hash=h)
    return out
