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
