"""kinject's messages go through `logging` (loggers under `kinject`), never `print`.

Library code calls `get_logger(__name__).info(...)`. Importing kinject configures nothing (the
`kinject` logger has only a `NullHandler`: a host program decides where messages go). The
command line installs one handler on stderr (rich on a terminal) (`setup_logging`, called by `kinject.cli.main`
and in the demo's worker processes); progress bars stay rich progress bars.
"""

from __future__ import annotations

import logging
import sys

ROOT = "kinject"
logging.getLogger(ROOT).addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at each message (a redirected or captured stderr
    included), not the one that was current when logging was set up."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """One handler on stderr for the `kinject` loggers (idempotent): rich on a terminal, plain
    lines otherwise (a rich handler pads every line to the console's width, which bloats logs
    and captured output)."""
    root = logging.getLogger(ROOT)
    if any(getattr(h, "_kinject", False) for h in root.handlers):
        return
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=Console(stderr=True), show_time=False, show_level=False,
                                               show_path=False, markup=False, rich_tracebacks=False)
    else:
        handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._kinject = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
