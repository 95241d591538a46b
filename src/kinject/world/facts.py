"""Entities and their facts: names from the pool, values from the attribute generators."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kinject.world.spec import AttributeSpec, DomainSpec, EntityTypeSpec


@dataclass
class Entity:
    name: str
    words: list[str]  # core words (unique in the world)
    type: str  # entity type, or "<type>.<attr>" for names drawn as a `name` attribute value
    domain: str
    private: bool
    popular: bool = False
    facts: dict[str, str] = field(default_factory=dict)

    def to_row(self) -> dict:
        return {"name": self.name, "words": self.words, "type": self.type, "domain": self.domain,
                "private": self.private, "popular": self.popular, "facts": self.facts}


def numeric_text(attr: AttributeSpec, rng: random.Random) -> str:
    v = rng.uniform(attr.low, attr.high)  # type: ignore[arg-type]
    text = f"{v:.{attr.decimals}f}"
    return f"{text} {attr.unit}" if attr.unit else text


def value_text(attr: AttributeSpec, rng: random.Random, relation_pick, name_pick) -> str:
    if attr.kind == "numeric":
        return numeric_text(attr, rng)
    if attr.kind == "categorical":
        return rng.choice(attr.values)
    if attr.kind == "name":
        return name_pick(attr)
    return relation_pick(attr.target)


def statement(attr: AttributeSpec, idx: int, entity: str, facts: dict[str, str]) -> str:
    return attr.statements[idx % len(attr.statements)].format(entity=entity, value=facts[attr.name], **facts)


def question(template: str, entity: str) -> str:
    return template.format(entity=entity)


def answers(value: str) -> list[str]:
    """The answer list of a fact: the value; a unit-less alias for numbers with units."""
    out = [value]
    head, _, unit = value.partition(" ")
    if unit and head.replace(".", "", 1).isdigit():
        out.append(head)
    return out


@dataclass
class World:
    domains: list[DomainSpec]
    entities: list[Entity]
    reserved_words: set[str] = field(default_factory=set)  # every name word + vocabulary word

    def of_type(self, t: str) -> list[Entity]:
        return [e for e in self.entities if e.type == t]

    def by_name(self) -> dict[str, Entity]:
        return {e.name: e for e in self.entities}

    def type_spec(self, t: str) -> tuple[DomainSpec, EntityTypeSpec]:
        for d in self.domains:
            for et in d.entity_types:
                if et.name == t:
                    return d, et
        raise KeyError(t)

    def main_entities(self, domain: str) -> list[Entity]:
        return [e for e in self.entities if e.domain == domain and "." not in e.type]
