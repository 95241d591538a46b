"""kinject's messages go through `logging` (loggers under `kinject`), never `print`.

Library code calls `get_logger(__name__).info(...)`. Importing kinject configures nothing (the
`kinject` logger has only a `NullHandler`: a host program decides where messages go). The
command line installs one rich handler on stderr (`setup_logging`, called by `kinject.cli.main`
and in the demo's worker processes); progress bars stay rich progress bars.
"""

from __future__ import annotations

import logging
import sys

ROOT = "kinject"
logging.getLogger(ROOT).addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")


def setup_logging(level: int = logging.INFO) -> None:
    """One rich handler on stderr for the `kinject` loggers (idempotent)."""
    from rich.console import Console
    from rich.logging import RichHandler

    root = logging.getLogger(ROOT)
    if any(getattr(h, "_kinject", False) for h in root.handlers):
        return
    # a wide console off a terminal: a message stays one line in logs and captured output
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 10_000)
    handler = RichHandler(console=console, show_time=False, show_level=False, show_path=False, markup=False,
                          rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._kinject = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
