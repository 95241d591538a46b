"""Slot compression: T per-token states of L layers -> S slots, then stabilization.

Input per sample: `states [L, T, d]` (T may be 0). Output: `[L, S, d]`.

- `segment_softmax` (the paper's): cut the T positions into S contiguous segments at
  `round(linspace(0, T, S + 1))`; slot s = sum over its segment of `softmax_t(||h_t|| / tau) h_t`.
  An empty segment (T < S) falls back to one token: position `min(start, T - 1)`.
- `adaptive_avg`: `adaptive_avg_pool1d` over T (PyTorch's bins; T < S repeats tokens).
- T = 0 (the expert said nothing before EOS): every slot is zero for both poolers.

`stabilize`: NaN (and +-inf) -> 0, LayerNorm over d without affine (eps 1e-6), clamp +-10.
Computation is in float32 whatever the input dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kinject.errors import UserError

LN_EPS = 1e-6
CLAMP = 10.0


def segment_bounds(T: int, S: int) -> list[tuple[int, int]]:
    """[start, end) per slot; an empty segment becomes the single token min(start, T-1)."""
    # torch.round rounds half to even, like numpy.round (the reference's linspace/round)
    cuts = torch.round(torch.linspace(0, T, S + 1, dtype=torch.float64)).long().tolist()
    bounds = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        if b <= a:
            a = min(a, T - 1)
            b = a + 1
        bounds.append((a, b))
    return bounds


def segment_softmax(states: torch.Tensor, slots: int, tau: float = 1.0) -> torch.Tensor:
    L, T, d = states.shape
    x = states.float()
    if T == 0:
        return x.new_zeros(L, slots, d)
    out = []
    for a, b in segment_bounds(T, slots):
        seg = x[:, a:b]  # [L, t, d]
        w = torch.softmax(seg.norm(dim=-1) / tau, dim=-1)  # [L, t]
        out.append(torch.einsum("lt,ltd->ld", w, seg))
    return torch.stack(out, dim=1)


def adaptive_avg(states: torch.Tensor, slots: int, tau: float = 1.0) -> torch.Tensor:
    L, T, d = states.shape
    x = states.float()
    if T == 0:
        return x.new_zeros(L, slots, d)
    # [L, T, d] -> [L, d, T] -> pool over T -> [L, d, S] -> [L, S, d]
    return F.adaptive_avg_pool1d(x.transpose(1, 2), slots).transpose(1, 2)


POOLERS: dict[str, Callable[[torch.Tensor, int, float], torch.Tensor]] = {
    "segment_softmax": segment_softmax,
    "adaptive_avg": adaptive_avg,
}


def stabilize(x: torch.Tensor, eps: float = LN_EPS, clamp: float = CLAMP) -> torch.Tensor:
    x = torch.nan_to_num(x.float(), nan=0.0, posinf=0.0, neginf=0.0)
    return F.layer_norm(x, (x.shape[-1],), eps=eps).clamp(-clamp, clamp)


def compress(states: torch.Tensor, slots: int, pooling: str = "segment_softmax", tau: float = 1.0) -> torch.Tensor:
    """[L, T, d] -> stabilized [L, S, d] (float32)."""
    if slots < 1:
        raise UserError(f"number of slots must be >= 1 (got {slots})")
    if pooling not in POOLERS:
        raise UserError(f"unknown slot pooling {pooling!r}; use one of {', '.join(POOLERS)}")
    if tau <= 0:
        raise UserError(f"tau must be > 0 (got {tau})")
    return stabilize(POOLERS[pooling](states, slots, tau))
