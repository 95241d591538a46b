"""Fresh random facts: reading-comprehension examples for the base's pretraining and the
alignment items for GAG's injector pretraining.

Every example invents a new entity (a fresh name from the same generator as the world's
entities, never using a world name word) with new random values from the same attribute
generators, so the only way to answer is to read the passage: it cannot be memorized
(measured: without fresh facts the tiny base memorizes instead of learning to read; see
docs/design.md).
Passages are the domains' own statement paraphrases plus 1-4 distractor sentences; questions
use only the *training* wordings (held-out wordings never reach any training text).
"""

from __future__ import annotations

import random

from kinject.world.facts import answers, question, statement, value_text
from kinject.world.names import fresh_names
from kinject.world.spec import AttributeSpec, DomainSpec, EntityTypeSpec, NameSpec


class FreshFactory:
    def __init__(self, domains: list[DomainSpec], avoid_words: set[str], rng: random.Random, pool_size: int):
        self.rng = rng
        self.types: dict[str, tuple[DomainSpec, EntityTypeSpec]] = {
            et.name: (d, et) for d in domains for et in d.entity_types
        }
        self._pools: dict[int, list[str]] = {}
        self._avoid = avoid_words
        self._pool_size = pool_size

    def _pool(self, spec: NameSpec) -> list[str]:
        key = id(spec)
        if key not in self._pools:
            self._pools[key] = fresh_names(spec, self.rng, self._avoid, self._pool_size)
        return self._pools[key]

    def entity(self, type_name: str) -> tuple[str, dict[str, str]]:
        _, et = self.types[type_name]
        name = self.rng.choice(self._pool(et.names))
        facts = {
            a.name: value_text(
                a, self.rng,
                relation_pick=lambda t: self.rng.choice(self._pool(self.types[t][1].names)),
                name_pick=lambda attr: self.rng.choice(self._pool(attr.names)),
            )
            for a in et.attributes
        }
        return name, facts

    def _sentence(self, a: AttributeSpec, name: str, facts: dict[str, str]) -> str:
        return statement(a, self.rng.randrange(len(a.statements)), name, facts)

    def reading(self, type_name: str, distractors: tuple[int, int], same_entity_share: float) -> dict:
        """One example: {question, knowledge, answer, output, type, attribute}."""
        rng = self.rng
        _, et = self.types[type_name]
        name, facts = self.entity(type_name)
        target = rng.choice(et.attributes)
        sents = [self._sentence(target, name, facts)]
        others = [a for a in et.attributes if a is not target]
        rng.shuffle(others)
        for _ in range(rng.randint(*distractors)):
            if others and rng.random() < same_entity_share:
                sents.append(self._sentence(others.pop(), name, facts))
            else:  # another fresh entity of the same type: the question's entity must be matched
                n2, f2 = self.entity(type_name)
                sents.append(self._sentence(rng.choice(et.attributes), n2, f2))
        rng.shuffle(sents)
        value = facts[target.name]
        return {
            "question": question(rng.choice(target.questions), name),
            "knowledge": " ".join(sents),
            "output": value,
            "answer": answers(value),
            "type": type_name,
            "attribute": target.name,
        }

    def align_item(self, type_name: str) -> dict:
        """{question, answer, background}: background = the canonical statement (as in the
        private QA rows' `background`)."""
        _, et = self.types[type_name]
        name, facts = self.entity(type_name)
        a = self.rng.choice(et.attributes)
        return {
            "question": question(self.rng.choice(a.questions), name),
            "answer": answers(facts[a.name]),
            "background": statement(a, 0, name, facts),
            "type": type_name,
            "attribute": a.name,
        }


def styles(domains: list[DomainSpec], private_share: float) -> tuple[list[str], list[float]]:
    """Entity types to draw fresh examples from, weighted: private styles share `private_share`."""
    priv = [et.name for d in domains if d.private for et in d.entity_types]
    pub = [et.name for d in domains if not d.private for et in d.entity_types]
    weights = [private_share / len(priv)] * len(priv) + [(1 - private_share) / len(pub)] * len(pub)
    return priv + pub, weights
