"""Realistic mixed-domain questions for PPR tests (small and fast, besides the synthetic world):
fictional catalysts, vaccine adjuvants and public facts, in several question wordings."""

from __future__ import annotations

import json
import random
from pathlib import Path

SYLLABLES = ["fe", "ro", "vi", "ta", "mo", "lu", "zan", "qu", "ter", "bel", "cor", "dra", "nix", "pal", "sen", "tor"]

TEMPLATES = {
    "general": [
        "What is the capital of {e}?", "Who wrote the novel {e}?", "In which year was {e} founded?",
        "Which river flows through {e}?", "Who was the first president of {e}?",
        "What language is spoken in {e}?", "On which continent is {e} located?",
    ],
    "materials": [
        "What is the Faradaic efficiency of {e}-{n}?", "What is the BET surface area of the catalyst {e}-{n}?",
        "Which support material is {e}-{n} deposited on?",
        "At what temperature does {e}-{n} reach peak turnover frequency?",
        "What is the onset potential of {e}-{n} for CO2 reduction?",
        "How stable is the {e}-{n} catalyst over 100 hours of electrolysis?",
    ],
    "adjuvant": [
        "Which receptor does the adjuvant {e}-{n} activate?",
        "What antigen was {e}-{n} co-formulated with in the phase I trial?",
        "What is the recommended dose of the adjuvant {e}-{n} per injection?",
        "Which cytokine response does {e}-{n} induce in mice?",
        "Is {e}-{n} an emulsion or a saponin-based adjuvant?",
        "What immune cells take up {e}-{n} after intramuscular injection?",
    ],
}


def questions(domain: str, n: int, seed: int) -> list[str]:
    rng = random.Random(f"{domain}-{seed}")

    def name() -> str:
        return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()

    return [rng.choice(TEMPLATES[domain]).format(e=name(), n=rng.randint(1, 99)) for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_world_like(root: Path, n_offline: int = 80, n_online: int = 30) -> Path:
    """root/mixed_domain/{offline/<domain>.jsonl, online/mixed.jsonl} as the world lays them out."""
    online = []
    for d in TEMPLATES:
        write_jsonl(root / "mixed_domain" / "offline" / f"{d}.jsonl",
                    [{"question": q, "domain": d} for q in questions(d, n_offline, seed=1)])
        online += [{"question": q, "domain": d} for q in questions(d, n_online, seed=2)]
    random.Random(0).shuffle(online)
    write_jsonl(root / "mixed_domain" / "online" / "mixed.jsonl", online)
    return root


def test_questions_are_deterministic_and_distinct_per_seed():
    assert questions("materials", 20, seed=1) == questions("materials", 20, seed=1)
    assert questions("materials", 20, seed=1) != questions("materials", 20, seed=2)
    assert all(q.endswith("?") for d in TEMPLATES for q in questions(d, 10, seed=0))
