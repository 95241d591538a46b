"""Command-line pieces every `kinject` command shares: the one override syntax.

Every command that reads a YAML config takes overrides as positional `key.sub=value` arguments
after its options (`kinject eval run --config F --out D limit=20 methods.0.options.k=5`). The
commands whose positional arguments are free text (the questions of `gag answer`, `grip answer`,
`ppr route`) take them the same way: an argument that starts with a dotted key and `=` (no space
before the `=`) is an override, anything else is text.
"""

from __future__ import annotations

import re
from typing import Annotated

import typer

Overrides = Annotated[list[str] | None, typer.Argument(help="key.sub=value config overrides", show_default=False)]

OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*=")


def split_overrides(args: list[str] | None) -> tuple[list[str], list[str]]:
    """(free-text arguments, `key.sub=value` overrides), each in the order given."""
    texts, overrides = [], []
    for a in args or []:
        (overrides if OVERRIDE.match(a) else texts).append(a)
    return texts, overrides
