"""Domain specs: one YAML file per domain, no code. Validated here; errors name file and key.

A spec has entity types; each has a name generator and attributes. An attribute is
`numeric` (low/high/decimals/unit), `categorical` (a vocabulary), `name` (a fresh fictional
name from its own generator, e.g. a developing lab) or `relation` (an entity of another
entity type of this or another domain). Each attribute has >= 3 statement paraphrases,
>= 3 question wordings used in training and >= 2 held-out question wordings (the `*_para`
splits). Templates use `{entity}`, `{value}` and any attribute name of the same entity type.
"""

from __future__ import annotations

import string
from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from kinject.config import StrictModel
from kinject.errors import UserError

ATTRIBUTE_KINDS = ("numeric", "categorical", "name", "relation")


class NameSpec(StrictModel):
    generator: str = "syllables"
    syllables: tuple[int, int] = (2, 3)
    format: str = "{core}"
    suffixes: list[str] = Field(default_factory=list)


class AttributeSpec(StrictModel):
    name: str
    kind: str
    statements: list[str] = Field(min_length=3)
    questions: list[str] = Field(min_length=3)
    heldout_questions: list[str] = Field(min_length=2)
    # numeric
    low: float | None = None
    high: float | None = None
    decimals: int = 0
    unit: str = ""
    # categorical
    values: list[str] = Field(default_factory=list)
    # name
    names: NameSpec | None = None
    # relation
    target: str | None = None


class EntityTypeSpec(StrictModel):
    name: str
    names: NameSpec
    attributes: list[AttributeSpec] = Field(min_length=1)

    def attribute(self, name: str) -> AttributeSpec:
        for a in self.attributes:
            if a.name == name:
                return a
        raise KeyError(name)


class CompositionSpec(StrictModel):
    first: str  # "<entity type>.<relation attribute>"
    second: str  # "<entity type>.<attribute>"
    questions: list[str] = Field(min_length=1)


class DomainSpec(StrictModel):
    name: str
    private: bool
    instruction: str = ""
    entity_types: list[EntityTypeSpec] = Field(min_length=1)
    compositions: list[CompositionSpec] = Field(default_factory=list)
    source: str = ""  # the file it came from (set by the loader, used in error messages)


def template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]


def _validate(spec: DomainSpec, src: str) -> None:
    from kinject.world.names import GENERATORS

    def name_check(ns: NameSpec, key: str) -> None:
        if ns.generator not in GENERATORS:
            raise UserError(f"{src}: {key}.generator: unknown generator {ns.generator!r} "
                            f"(known: {', '.join(sorted(GENERATORS))})")
        for f in template_fields(ns.format):
            if f not in ("core", "core2", "digit", "suffix"):
                raise UserError(f"{src}: {key}.format names unknown field {{{f}}} "
                                "(use core, core2, digit, suffix)")
        if "{suffix}" in ns.format and not ns.suffixes:
            raise UserError(f"{src}: {key}.format uses {{suffix}} but {key}.suffixes is empty")
        lo, hi = ns.syllables
        if not 1 <= lo <= hi:
            raise UserError(f"{src}: {key}.syllables must be [min, max] with 1 <= min <= max")

    for ti, et in enumerate(spec.entity_types):
        tkey = f"entity_types[{ti}]"
        name_check(et.names, f"{tkey}.names")
        attr_names = {a.name for a in et.attributes}
        for ai, a in enumerate(et.attributes):
            akey = f"{tkey}.attributes[{ai}] ({a.name})"
            if a.kind not in ATTRIBUTE_KINDS:
                raise UserError(f"{src}: {akey}.kind: unknown generator {a.kind!r} "
                                f"(known: {', '.join(ATTRIBUTE_KINDS)})")
            if a.kind == "numeric" and (a.low is None or a.high is None or a.low > a.high):
                raise UserError(f"{src}: {akey}: numeric attributes need low <= high")
            if a.kind == "categorical" and len(set(a.values)) < 2:
                raise UserError(f"{src}: {akey}.values: a categorical attribute needs >= 2 distinct values")
            if a.kind == "name":
                if a.names is None:
                    raise UserError(f"{src}: {akey}.names: a name attribute needs a name generator")
                name_check(a.names, f"{akey}.names")
            if a.kind == "relation" and not a.target:
                raise UserError(f"{src}: {akey}.target: a relation attribute needs a target entity type")
            for field in ("statements", "questions", "heldout_questions"):
                for i, t in enumerate(getattr(a, field)):
                    names = template_fields(t)
                    if "entity" not in names:
                        raise UserError(f"{src}: {akey}.{field}[{i}]: template must contain {{entity}}")
                    if field == "statements" and "value" not in names:
                        raise UserError(f"{src}: {akey}.{field}[{i}]: statement must contain {{value}}")
                    for f in names:
                        if f not in ("entity", "value") and f not in attr_names:
                            raise UserError(f"{src}: {akey}.{field}[{i}]: template names missing "
                                            f"attribute {{{f}}} (attributes: {', '.join(sorted(attr_names))})")
            if set(a.questions) & set(a.heldout_questions):
                raise UserError(f"{src}: {akey}: a wording is both a training and a held-out question")


def load_domain(path: str | Path) -> DomainSpec:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"domain spec not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{p}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: a domain spec must be a YAML mapping")
    try:
        spec = DomainSpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        raise UserError(f"{p}: key {key!r}: {err['msg']}") from None
    spec.source = str(p)
    _validate(spec, str(p))
    return spec


def check_relations(domains: list[DomainSpec]) -> None:
    """Relation targets and compositions must name entity types that exist."""
    types = {et.name: (d, et) for d in domains for et in d.entity_types}
    for d in domains:
        for ti, et in enumerate(d.entity_types):
            for ai, a in enumerate(et.attributes):
                if a.kind == "relation" and a.target not in types:
                    raise UserError(f"{d.source}: entity_types[{ti}].attributes[{ai}] ({a.name}).target: "
                                    f"unknown entity type {a.target!r} (known: {', '.join(sorted(types))})")
                if a.kind == "relation" and d.private != types[a.target][0].private and not d.private:
                    raise UserError(f"{d.source}: {a.name}.target: a public entity cannot relate to private {a.target!r}")
        for ci, c in enumerate(d.compositions):
            for part in ("first", "second"):
                ref = getattr(c, part)
                tname, _, aname = ref.partition(".")
                if tname not in types:
                    raise UserError(f"{d.source}: compositions[{ci}].{part}: unknown entity type {tname!r}")
                try:
                    attr = types[tname][1].attribute(aname)
                except KeyError:
                    raise UserError(f"{d.source}: compositions[{ci}].{part}: {tname!r} has no attribute {aname!r}") from None
                if part == "first" and attr.kind != "relation":
                    raise UserError(f"{d.source}: compositions[{ci}].first: {ref} must be a relation")
            first_attr = types[c.first.split(".")[0]][1].attribute(c.first.split(".")[1])
            if first_attr.target != c.second.split(".")[0]:
                raise UserError(f"{d.source}: compositions[{ci}]: {c.first} points to {first_attr.target!r}, "
                                f"not to {c.second.split('.')[0]!r}")


def vocabulary_words(domains: list[DomainSpec]) -> set[str]:
    """Every lower-cased word of the specs' templates and vocabularies (names must avoid them)."""
    import re

    words: set[str] = set()
    for d in domains:
        texts = [d.instruction]
        for et in d.entity_types:
            texts += et.names.suffixes
            for a in et.attributes:
                texts += a.statements + a.questions + a.heldout_questions + a.values + [a.unit]
                if a.names:
                    texts += a.names.suffixes
        for c in d.compositions:
            texts += c.questions
        for t in texts:
            words.update(w.lower() for w in re.findall(r"[A-Za-z]+", t))
    return words
