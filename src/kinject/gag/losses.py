"""Stage III losses (the GAG paper's): `L = L_nll + w_sem * L_sem + w_div * L_div`."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nll_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on labelled positions (answer tokens + end of turn), token mean."""
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `h [B, T, d]` over positions where `mask [B, T]` is true."""
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def semantic_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - cos(pred, target), batch mean."""
    return 1.0 - F.cosine_similarity(pred.float(), target.to(pred.device).float(), dim=-1).mean()


def diversity_loss(z: torch.Tensor) -> torch.Tensor:
    """Mean over slot pairs i != j of cos(z_i, z_j)^2 (0 for a single slot)."""
    S = z.shape[1]
    if S < 2:
        return z.new_zeros(())
    zn = F.normalize(z.float(), dim=-1)
    cos = zn @ zn.transpose(1, 2)  # [B, S, S]
    off = ~torch.eye(S, dtype=torch.bool, device=z.device)
    return (cos[:, off] ** 2).mean()
