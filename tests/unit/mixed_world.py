"""A tiny mixed-domain deployment for the mixed/serve tests: real tiny random models (one base,
one expert), two injectors, and real MiniLM PPR banks over general / materials / adjuvant."""

from __future__ import annotations

from pathlib import Path

from .test_ppr_data import TEMPLATES, questions, write_jsonl

SLOTS = 4


def write_injector(out: Path, expert_hidden: int, base_hidden: int, seed: int) -> Path:
    from kinject.gag.injector import Injector, InjectorConfig

    cfg = InjectorConfig(expert_hidden=expert_hidden, base_hidden=base_hidden, layers=["last", "minus2"], slots=SLOTS)
    return Injector(cfg, seed=seed).save(out)


def build_mixed_world(root: Path, tokenizer, expert_dir: Path, domains=("materials", "adjuvant")) -> dict:
    """Files for a MixedOptions: base, banks (general + `domains`), one injector per domain,
    plus the offline questions of every template domain (to add one later)."""
    from kinject.encoders import EncoderConfig
    from kinject.models import TinySpec, make_tiny_model, save_model
    from kinject.ppr.banks import build_banks
    from kinject.ppr.config import PPRConfig
    from kinject.ppr.encoders import load_encoder

    root.mkdir(parents=True, exist_ok=True)
    base = make_tiny_model(TinySpec(vocab=600, hidden=32, layers=2, heads=2), tokenizer=tokenizer, seed=3)
    save_model(base, tokenizer, root / "base")
    offline = {d: write_jsonl(root / "offline" / f"{d}.jsonl",
                              [{"question": q} for q in questions(d, 40, seed=1)]) for d in TEMPLATES}
    build_banks([(d, offline[d]) for d in ("general", *domains)], root / "banks", PPRConfig(k=4, n_init=2),
                load_encoder(EncoderConfig()), progress=False)
    doms = {}
    for i, d in enumerate(TEMPLATES):
        if d == "general":
            continue
        write_injector(root / f"injector_{d}", 64, 32, seed=i)
        doms[d] = {"expert": str(expert_dir), "injector": str(root / f"injector_{d}"),
                   "system": f"You are an expert in {d}.", "instruction": f"Answer about {d}.",
                   "max_background_tokens": 4}
    return {"banks": str(root / "banks"), "base": str(root / "base"), "device": "cpu", "dtype": "float32",
            "batch_size": 8, "max_new_tokens": 4, "offline": {d: str(p) for d, p in offline.items()},
            "domains": {d: doms[d] for d in domains}, "all_domains": doms}


def options_of(world: dict):
    from kinject.mixed import MixedOptions

    return MixedOptions(**{k: v for k, v in world.items() if k in MixedOptions.model_fields})
