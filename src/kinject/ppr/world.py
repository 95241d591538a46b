"""PPR on the synthetic world: its mixed-domain files and banks built from them."""

from __future__ import annotations

from pathlib import Path

from kinject.errors import UserError
from kinject.io import require_dir, require_file

ORDER = ("general", "materials", "adjuvant")


def offline_files(world: str | Path) -> list[tuple[str, Path]]:
    """[(domain, mixed_domain/offline/<domain>.jsonl)], `general` first, then the others by name."""
    d = require_dir(Path(world) / "mixed_domain" / "offline", "world offline questions dir",
                    hint="build the world with `kinject world build`")
    files = sorted(d.glob("*.jsonl"), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.stem))
    if not files:
        raise UserError(f"no <domain>.jsonl files in {d}")
    return [(f.stem, f) for f in files]


def online_file(world: str | Path) -> Path:
    return require_file(Path(world) / "mixed_domain" / "online" / "mixed.jsonl", "world online questions")


def banks_from_world(world: str | Path | None, out: str | Path, cfg) -> tuple[Path, Path]:
    """Banks for every offline domain of a world, under `out/banks` (skipped when unchanged).
    Without a world dir, the tiny world is built under `out/world` first."""
    from kinject.encoders import encoder_dir
    from kinject.ppr.banks import build_banks
    from kinject.runs import RunRecorder, inputs_hash, is_complete

    out = Path(out)
    if world is None:
        try:
            from kinject.world.build import build_world, tiny_world_config
        except ImportError:
            raise UserError("no world package here: pass --world DIR, or --banks and --data") from None
        world = build_world(tiny_world_config(), out / "world")  # skips itself when unchanged
    world = Path(world)
    files = offline_files(world)
    banks = out / "banks"
    h = inputs_hash(cfg, *[f for _, f in files], encoder_dir(cfg.encoder))
    if not is_complete(banks, h):
        rec = RunRecorder(banks, "ppr build (world)", cfg, cfg.seed)
        with rec.timer("build"):
            built = build_banks(files, banks, cfg)
        rec.metrics = {b.domain: {"k": b.k, "n_questions": b.meta["n_questions"]} for b in built}
        rec.write(inputs_hash=h)
    return banks, world
