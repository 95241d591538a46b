"""Slot compression and stabilization against a float64 reference written independently."""

import numpy as np
import pytest
import torch

from kinject.errors import UserError
from kinject.memory.compress import (
    adaptive_avg,
    compress,
    segment_bounds,
    segment_softmax,
    stabilize,
)


def ref_segment_softmax(h: np.ndarray, S: int, tau: float) -> np.ndarray:
    L, T, d = h.shape
    out = np.zeros((L, S, d))
    if T == 0:
        return out
    cuts = np.round(np.linspace(0, T, S + 1)).astype(int)
    for s in range(S):
        a, b = cuts[s], cuts[s + 1]
        if b <= a:
            a = min(a, T - 1)
            b = a + 1
        for layer in range(L):
            seg = h[layer, a:b]
            z = np.linalg.norm(seg, axis=-1) / tau
            w = np.exp(z - z.max())
            w /= w.sum()
            out[layer, s] = (w[:, None] * seg).sum(0)
    return out


def ref_adaptive_avg(h: np.ndarray, S: int) -> np.ndarray:
    L, T, d = h.shape
    out = np.zeros((L, S, d))
    if T == 0:
        return out
    for s in range(S):  # PyTorch's adaptive pooling bins: [floor(s*T/S), ceil((s+1)*T/S))
        a, b = (s * T) // S, -(-((s + 1) * T) // S)
        out[:, s] = h[:, a:b].mean(1)
    return out


def ref_stabilize(x: np.ndarray, eps=1e-6, clamp=10.0) -> np.ndarray:
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return np.clip((x - mu) / np.sqrt(var + eps), -clamp, clamp)


CASES = [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4), (5, 4), (17, 4), (64, 4), (9, 1), (7, 3), (3, 8)]


@pytest.mark.parametrize("T,S", CASES)
@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_segment_softmax_matches_float64_reference(T, S, tau):
    g = torch.Generator().manual_seed(T * 31 + S)
    h = torch.randn(3, T, 16, generator=g, dtype=torch.float64) * 3
    ref = ref_segment_softmax(h.numpy(), S, tau)
    got = segment_softmax(h.float(), S, tau)
    assert got.shape == (3, S, 16) and got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=1e-5, atol=1e-5)
    full = compress(h.float(), S, "segment_softmax", tau)
    np.testing.assert_allclose(full.double().numpy(), ref_stabilize(ref), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("T,S", CASES)
def test_adaptive_avg_matches_float64_reference(T, S):
    h = torch.randn(2, T, 8, generator=torch.Generator().manual_seed(T + 100 * S), dtype=torch.float64)
    np.testing.assert_allclose(adaptive_avg(h.float(), S).double().numpy(), ref_adaptive_avg(h.numpy(), S),
                               rtol=1e-5, atol=1e-6)


def test_segments_cover_positions_and_empty_segments_fall_back_to_one_token():
    assert segment_bounds(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    # T < S: round(linspace(0, 2, 5)) = [0, 0, 1, 2, 2] -> empty segments take one token
    assert segment_bounds(2, 4) == [(0, 1), (0, 1), (1, 2), (1, 2)]
    assert segment_bounds(1, 4) == [(0, 1)] * 4
    # a single token per segment: the slot *is* that token (softmax of one weight = 1)
    h = torch.randn(1, 4, 5)
    assert torch.allclose(segment_softmax(h, 4), h)


def test_softmax_weights_favor_large_norm_tokens():
    h = torch.zeros(1, 2, 3)
    h[0, 0] = torch.tensor([0.1, 0.0, 0.0])
    h[0, 1] = torch.tensor([0.0, 5.0, 0.0])
    slot = segment_softmax(h, 1, tau=0.1)[0, 0]
    assert slot[1] > 4.99 and slot[0] < 1e-6


def test_t_zero_gives_zero_slots():
    out = compress(torch.zeros(4, 0, 16), 4)
    assert out.shape == (4, 4, 16) and torch.count_nonzero(out) == 0


def test_stabilize_nan_layernorm_clamp():
    x = torch.randn(2, 3, 256)
    x[0, 0, 5] = float("nan")
    x[1, 2, :] *= 1000
    x[1, 1, 0] = 1e6  # one huge coordinate: normalized value ~sqrt(255) > 10 gets clamped
    y = stabilize(x)
    assert torch.isfinite(y).all()
    assert y.abs().max() <= 10.0
    assert y[1, 1, 0] == 10.0
    np.testing.assert_allclose(y.double().numpy(), ref_stabilize(x.double().numpy()), atol=1e-4)
    assert torch.allclose(y[0, 1].mean(), torch.tensor(0.0), atol=1e-5)
    assert torch.allclose(y[0, 1].std(unbiased=False), torch.tensor(1.0), atol=1e-3)


def test_bad_slots_and_pooling():
    with pytest.raises(UserError, match="slots must be >= 1"):
        compress(torch.zeros(1, 3, 4), 0)
    with pytest.raises(UserError, match="unknown slot pooling"):
        compress(torch.zeros(1, 3, 4), 2, pooling="max")
