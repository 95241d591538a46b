"""Layer keys name depths of a causal LM's `hidden_states` tuple (the GAG paper's multi-layer states).

`last` is `hidden_states[-1]`: the final decoder output *after* the final norm (transformers
puts the normed output last). `minusK` is `hidden_states[-K]`: the output of decoder layer
`num_layers - K` (0-based), for K in 2..num_layers. A unit test checks both against hooks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kinject.errors import UserError

_MINUS = re.compile(r"minus(\d+)")


def layer_offset(key: str, num_layers: int | None = None) -> int:
    """Negative index into `hidden_states` for a layer key (`last` -> -1, `minus4` -> -4)."""
    if key == "last":
        return -1
    m = _MINUS.fullmatch(key)
    if m is None:
        raise UserError(f"unknown layer key {key!r}; use 'last' or 'minusK' (K >= 2), e.g. minus2, minus4")
    k = int(m.group(1))
    if k < 2:
        raise UserError(f"layer key {key!r}: K must be >= 2 (use 'last' for the final normed output)")
    if num_layers is not None and k > num_layers:
        raise UserError(
            f"layer key {key!r} asks for hidden_states[-{k}] but the model has only {num_layers} decoder layers"
        )
    return -k


def check_layer_keys(keys: Sequence[str], num_layers: int | None = None) -> list[int]:
    if not keys:
        raise UserError("no layer keys given; use e.g. [last, minus2, minus4, minus6]")
    if len(set(keys)) != len(keys):
        raise UserError(f"duplicate layer keys in {list(keys)}")
    return [layer_offset(k, num_layers) for k in keys]
