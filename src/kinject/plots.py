"""Figures for reports and training curves: matplotlib's object API only.

A `Figure` made here never touches pyplot's global state or switches the process's backend
(`matplotlib.use`), so kinject can draw inside a host program (a notebook, a GUI) without
changing how that program plots; `Figure.savefig` renders PNG on its own canvas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] | None = None, **kw: Any):
    """(figure, axes) like `pyplot.subplots`, without pyplot."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def save_figure(fig, path: str | Path, dpi: int = 120, tight: bool = False) -> Path:
    """Write `fig` as a PNG atomically (no half-written image if interrupted); returns the path."""
    from kinject.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    return path
