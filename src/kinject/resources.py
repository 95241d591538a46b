"""The files kinject ships beside its code: the preset configs, the tiny world's pretrained
foundation, the real QA dev sets.

This is the one place that knows where they are. In a source checkout (and an editable
install) they are the repository's `configs/`, `assets/` and `data/`; a built wheel carries a
copy of them inside the package (`kinject/_shipped/`, written by `setup.py`), so `pip install .`
followed by `kinject demo` works from any directory.
"""

from __future__ import annotations

from pathlib import Path

from kinject.errors import UserError

SHIPPED_DIRS = ("configs", "assets", "data")
_PACKAGE = Path(__file__).resolve().parent
_BUNDLED = _PACKAGE / "_shipped"
_CHECKOUT = _PACKAGE.parents[1]  # src/kinject -> the repository root


def shipped_root() -> Path:
    """The folder holding `configs/`, `assets/` and `data/`: the wheel's copy when there is one."""
    if (_BUNDLED / "configs").is_dir():
        return _BUNDLED
    if (_CHECKOUT / "configs").is_dir() and (_CHECKOUT / "pyproject.toml").is_file():
        return _CHECKOUT
    raise UserError(f"kinject's shipped configs are missing (neither {_BUNDLED} nor {_CHECKOUT / 'configs'}): "
                    "reinstall kinject")


def shipped(relative: str | Path) -> Path:
    """A shipped file or folder by its repository-relative path, e.g. `configs/eval/tiny.yaml`."""
    relative = Path(relative)
    if relative.is_absolute() or not relative.parts or relative.parts[0] not in SHIPPED_DIRS:
        raise ValueError(f"not a shipped path (must start with one of {SHIPPED_DIRS}): {relative}")
    return shipped_root() / relative
