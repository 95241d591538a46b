"""The injector's building blocks, each small and readable (the GAG paper's Stage III).

Shapes: B batch, L layers, S slots, T tokens, d_e expert hidden, d_b base hidden.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kinject.memory.compress import stabilize


class LayerMixer(nn.Module):
    """Per-slot cross-layer fusion: `m_s = sum_l softmax(W_s)_l * M[l, s]`, W zero-initialized."""

    def __init__(self, num_layers: int, num_slots: int, clamp: float | None = 10.0):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_slots, num_layers))
        self.clamp = clamp

    def weights(self) -> torch.Tensor:
        w = self.logits.clamp(-self.clamp, self.clamp) if self.clamp else self.logits
        return torch.softmax(w, dim=-1)  # [S, L]

    def forward(self, memory: torch.Tensor) -> torch.Tensor:  # [B, L, S, d_e] -> [B, S, d_e]
        return torch.einsum("sl,blsd->bsd", self.weights(), memory)


class GatedResidualProjector(nn.Module):
    """`x = LN(m); b = Linear(x); n = LN(b); u = Lin.GELU.Lin(n); g = sigmoid(Lin(n)); z = b + g*u`.

    Always computes in float32 (inputs are cast), whatever the base's dtype.
    """

    def __init__(self, expert_dim: int, base_dim: int):
        super().__init__()
        self.in_norm = nn.LayerNorm(expert_dim)
        self.proj = nn.Linear(expert_dim, base_dim)
        self.norm = nn.LayerNorm(base_dim)
        self.up = nn.Sequential(nn.Linear(base_dim, base_dim), nn.GELU(), nn.Linear(base_dim, base_dim))
        self.gate = nn.Linear(base_dim, base_dim)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        b = self.proj(self.in_norm(m.float()))
        n = self.norm(b)
        return b + torch.sigmoid(self.gate(n)) * self.up(n)


class SemanticHead(nn.Module):
    """Linear(d_b, d_b) . GELU . Linear(d_b, d_s): base answer states -> encoder space (L_sem)."""

    def __init__(self, base_dim: int, semantic_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(base_dim, base_dim), nn.GELU(), nn.Linear(base_dim, semantic_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h.float())


class AttentionSlotPooler(nn.Module):
    """Learned slot pooling: S learned queries attend over the expert's per-token states.

    Keys come from the stabilized token states (a shared Linear). With one head the values are
    the token states themselves, so a slot is a convex mix of tokens: enough for a one-concept
    value, not for a fresh multi-token name, whose token order an average loses. With H heads each
    slot asks H questions, each head with its own value projection into d_e/H dims, and the slot is
    their concatenation: one slot can then hold H tokens side by side. The slots are stabilized
    like the fixed poolers'. It never sees the gold answer: it learns *where* the informative
    tokens are from the training signal alone. `traj [B, L, T, d_e]`, `mask [B, T]` ->
    `[B, L, S, d_e]`. A sample with no token (T = 0) gives zero slots.

    `residual_mix=True` (H > 1 only) adds to the heads' output a one-head convex mix of whole
    token states, with its own S queries. Heads carry the digits of a 3-digit number; the whole-state
    mix keeps what one head did well (categories, 4-digit years). Measured in
    docs/gag-ablations.md ("Heads with a whole-state mix").
    """

    def __init__(self, expert_dim: int, num_slots: int, key_dim: int = 64, seed: int = 0, heads: int = 1,
                 residual_mix: bool = False):
        super().__init__()
        if heads < 1 or expert_dim % heads:
            raise ValueError(f"attention heads must divide the expert width {expert_dim} (got {heads})")
        if residual_mix and heads == 1:
            raise ValueError("residual_mix adds a one-head mix to several heads: it needs attention heads > 1")
        g = torch.Generator().manual_seed(seed)
        self.heads = heads
        self.queries = nn.Parameter(torch.randn(num_slots * heads, key_dim, generator=g) * key_dim ** -0.5)
        self.key = nn.Linear(expert_dim, key_dim)
        self.value = nn.Linear(expert_dim, expert_dim) if heads > 1 else None
        self.whole_queries = (nn.Parameter(torch.randn(num_slots, key_dim, generator=g) * key_dim ** -0.5)
                              if residual_mix else None)
        self.scale = key_dim ** -0.5

    def attention(self, traj: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooling weights of the heads `[B, L, S*H, T]` (query s*H + h; all-masked rows -> 0)."""
        return self._attend(self._keys(_clean(traj)), self.queries, mask)

    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        return self.key(F.layer_norm(x, (x.shape[-1],), eps=1e-6))  # [B, L, T, k]

    def _attend(self, k: torch.Tensor, queries: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("qk,bltk->blqt", queries, k) * self.scale
        m = mask[:, None, None, :].bool()
        # a finite fill + multiplying by the mask keeps all-masked rows at 0 without NaNs
        return torch.softmax(scores.masked_fill(~m, -1e9), dim=-1) * m

    def forward(self, traj: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = _clean(traj)
        k = self._keys(x)
        w = self._attend(k, self.queries, mask)
        if self.value is None:
            return stabilize(torch.einsum("blst,bltd->blsd", w, x))
        B, L, T, d = x.shape
        v = self.value(x).reshape(B, L, T, self.heads, d // self.heads)
        w = w.reshape(B, L, -1, self.heads, T)  # [B, L, S, H, T]
        out = torch.einsum("blsht,blthe->blshe", w, v).reshape(B, L, -1, d)
        if self.whole_queries is not None:
            out = out + torch.einsum("blst,bltd->blsd", self._attend(k, self.whole_queries, mask), x)
        return stabilize(out)


def _clean(x: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(x.float(), nan=0.0, posinf=0.0, neginf=0.0)
