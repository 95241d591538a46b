"""Injector building blocks, losses and the injector's save/load and compatibility checks."""

import pytest
import torch
import torch.nn.functional as F

from kinject.errors import UserError
from kinject.gag.injector import Injector, InjectorConfig
from kinject.gag.losses import diversity_loss, masked_mean, nll_loss, semantic_loss
from kinject.gag.modules import (
    AttentionSlotPooler,
    GatedResidualProjector,
    LayerMixer,
    SemanticHead,
)
from kinject.memory.compress import stabilize
from kinject.memory.store import StoreMeta


def test_layer_mixer_zero_init_is_layer_mean_and_per_slot():
    mix = LayerMixer(num_layers=4, num_slots=3)
    m = torch.randn(2, 4, 3, 8)
    assert torch.count_nonzero(mix.logits) == 0
    torch.testing.assert_close(mix(m), m.mean(1))
    with torch.no_grad():
        mix.logits[1, 2] = 100.0  # slot 1 -> layer 2 only (clamped at 10: still ~all weight)
    w = mix.weights().detach()
    assert torch.allclose(w.sum(-1), torch.ones(3))
    assert w[1, 2] > 0.999 and abs(float(w[1, 2]) - float(torch.softmax(torch.tensor([0, 0, 10.0, 0]), 0)[2])) < 1e-6
    out = mix(m)
    torch.testing.assert_close(out[:, 1], (w[1][None, :, None] * m[:, :, 1]).sum(1))
    torch.testing.assert_close(out[:, 0], m[:, :, 0].mean(1))


def test_gated_residual_projector_is_exactly_b_plus_g_u_in_fp32():
    torch.manual_seed(0)
    p = GatedResidualProjector(8, 12)
    m = torch.randn(3, 4, 8).to(torch.bfloat16)
    z = p(m)
    assert z.dtype == torch.float32 and z.shape == (3, 4, 12)
    x = F.layer_norm(m.float(), (8,), p.in_norm.weight, p.in_norm.bias, p.in_norm.eps)
    b = x @ p.proj.weight.T + p.proj.bias
    n = F.layer_norm(b, (12,), p.norm.weight, p.norm.bias, p.norm.eps)
    u = F.gelu(n @ p.up[0].weight.T + p.up[0].bias) @ p.up[2].weight.T + p.up[2].bias
    g = torch.sigmoid(n @ p.gate.weight.T + p.gate.bias)
    torch.testing.assert_close(z, b + g * u)
    assert SemanticHead(12, 5)(z).shape == (3, 4, 5)


def test_losses():
    z = torch.zeros(1, 3, 4)
    z[0, 0, 0] = z[0, 1, 1] = z[0, 2, 2] = 1.0
    assert float(diversity_loss(z)) == 0.0  # orthogonal slots
    assert abs(float(diversity_loss(torch.ones(2, 3, 4))) - 1.0) < 1e-6  # identical slots
    assert float(diversity_loss(torch.randn(2, 1, 4))) == 0.0
    v = torch.randn(3, 6)
    assert abs(float(semantic_loss(v, 2 * v))) < 1e-6 and abs(float(semantic_loss(v, -v)) - 2.0) < 1e-6
    h = torch.arange(12.0).reshape(1, 4, 3)
    torch.testing.assert_close(masked_mean(h, torch.tensor([[False, True, True, False]])), h[:, 1:3].mean(1))


def test_nll_matches_transformers_loss(tiny_model_dir):
    from kinject.models import load_causal_lm

    model, _ = load_causal_lm(tiny_model_dir, device="cpu")
    ids = torch.randint(10, 500, (2, 9))
    labels = ids.clone()
    labels[:, :5] = -100
    out = model(ids, labels=labels)
    torch.testing.assert_close(nll_loss(out.logits, labels), out.loss)


def test_attention_pooler_ignores_padding_and_handles_empty():
    torch.manual_seed(0)
    pool = AttentionSlotPooler(expert_dim=8, num_slots=2, key_dim=4)
    traj = torch.randn(3, 2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    out = pool(traj, mask)
    noisy = traj.clone()
    noisy[0, :, 3:] = 1e3  # changing padded positions changes nothing
    torch.testing.assert_close(pool(noisy, mask)[0], out[0])
    assert torch.count_nonzero(out[2]) == 0  # no tokens -> zero slots
    w = pool.attention(traj, mask)
    assert torch.allclose(w[:2].sum(-1), torch.ones(2, 2, 2)) and torch.count_nonzero(w[0, ..., 3:]) == 0
    traj.requires_grad_(True)
    pool(traj, mask).sum().backward()
    assert torch.isfinite(traj.grad).all() and all(torch.isfinite(p.grad).all() for p in pool.parameters())


def test_attention_pooler_heads():
    torch.manual_seed(0)
    pool = AttentionSlotPooler(expert_dim=8, num_slots=2, key_dim=4, heads=2)
    traj = torch.randn(2, 3, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    out = pool(traj, mask)
    assert out.shape == (2, 3, 2, 8)
    noisy = traj.clone()
    noisy[0, :, 4:] = 1e3  # padding still changes nothing with heads
    torch.testing.assert_close(pool(noisy, mask)[0], out[0])
    w = pool.attention(traj, mask)  # [B, L, S*H, T]: each head of each slot is its own distribution
    assert w.shape == (2, 3, 4, 6) and torch.allclose(w.sum(-1), torch.ones(2, 3, 4))
    with torch.no_grad():  # a slot is its heads' value projections side by side: head h fills dims h*4:(h+1)*4
        pool.value.weight.zero_()
        pool.value.bias.copy_(torch.arange(8.0))
    torch.testing.assert_close(pool(traj, mask), stabilize(torch.arange(8.0).expand(2, 3, 2, 8)))
    with pytest.raises(ValueError, match="divide"):
        AttentionSlotPooler(expert_dim=8, num_slots=2, heads=3)
    with pytest.raises(UserError, match="attention_heads 3 must divide the expert width 8"):
        Injector(cfg(pooling="attention", attention_heads=3))


def test_attention_pooler_residual_mix():
    torch.manual_seed(0)
    pool = AttentionSlotPooler(expert_dim=8, num_slots=2, key_dim=4, heads=2, residual_mix=True)
    traj = torch.randn(2, 3, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    noisy = traj.clone()
    noisy[0, :, 4:] = 1e3  # padding changes nothing on either path
    torch.testing.assert_close(pool(noisy, mask)[0], pool(traj, mask)[0])
    with torch.no_grad():  # heads' values silenced: the slot is the whole-state mix alone
        pool.value.weight.zero_()
        pool.value.bias.zero_()
        pool.whole_queries.zero_()  # uniform over the real tokens
    torch.testing.assert_close(pool(traj, mask)[0], stabilize(traj[0, :, :4].mean(1, keepdim=True).expand(3, 2, 8)))
    pool(traj, mask).sum().backward()
    assert pool.whole_queries.grad is not None and pool.queries.grad is not None
    with pytest.raises(ValueError, match="heads > 1"):
        AttentionSlotPooler(expert_dim=8, num_slots=2, residual_mix=True)
    with pytest.raises(UserError, match="residual_mix .*attention_heads > 1"):
        Injector(cfg(pooling="attention", residual_mix=True))
    inj = Injector(cfg(pooling="attention", attention_heads=2, residual_mix=True))
    assert inj.pooler.whole_queries.shape == (3, 64)  # cfg(): 3 slots, default attention_dim 64


def cfg(**kw):
    base = dict(expert_hidden=8, base_hidden=16, layers=["last", "minus2"], slots=3, semantic_dim=5)
    return InjectorConfig(**{**base, **kw})


def test_injector_forward_save_load(tmp_path):
    inj = Injector(cfg(base={"hidden_size": 16, "fingerprint": "abc"}))
    slots = torch.randn(2, 2, 3, 8)
    z = inj(slots=slots)
    assert z.shape == (2, 3, 16) and z.dtype == torch.float32
    inj.save(tmp_path / "inj")
    back = Injector.load(tmp_path / "inj")
    torch.testing.assert_close(back(slots=slots), z, rtol=0, atol=0)
    assert back.config == inj.config
    att = Injector(cfg(pooling="attention"))
    traj, mask = torch.randn(2, 2, 7, 8), torch.ones(2, 7, dtype=torch.bool)
    assert att(traj=traj, traj_mask=mask).shape == (2, 3, 16)
    att.save(tmp_path / "att")
    torch.testing.assert_close(Injector.load(tmp_path / "att")(traj=traj, traj_mask=mask), att(traj=traj, traj_mask=mask))


def test_injector_mismatches_name_both_sides(tmp_path):
    inj = Injector(cfg(base={"hidden_size": 16, "fingerprint": "abc"}))
    ok = StoreMeta(expert_hidden=8, layers=["last", "minus2"], slots=3)
    inj.check_store(ok)
    with pytest.raises(UserError, match=r"expert_hidden 8 \(injector\) vs 12 \(memory store\)"):
        inj.check_store(ok.model_copy(update={"expert_hidden": 12}))
    with pytest.raises(UserError, match=r"layers \['last', 'minus2'\] \(injector\) vs \['last'\]"):
        inj.check_store(ok.model_copy(update={"layers": ["last"]}))
    with pytest.raises(UserError, match="keeps none"):
        Injector(cfg(pooling="attention")).check_store(ok)
    with pytest.raises(UserError, match=r"trained for another base: fingerprint 'abc' \(injector\) vs 'xyz' \(base\)"):
        inj.check_base({"hidden_size": 16, "fingerprint": "xyz"})
    (tmp_path / "bad").mkdir()
    with pytest.raises(UserError, match="not an injector directory"):
        Injector.load(tmp_path / "bad")


def test_injector_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = Injector(cfg(), seed=4)
    assert torch.equal(torch.rand(3), expected)
    b = Injector(cfg(), seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = Injector(cfg(), seed=5)
    assert not torch.equal(a.projector.proj.weight, c.projector.proj.weight)


def test_semantic_encoder_encodes_each_distinct_text_once(monkeypatch):
    from kinject.gag.trainer import semantic_encoder

    enc = semantic_encoder(None)  # the shared sentence encoder (kinject.encoders), shipped MiniLM
    calls = []
    real = enc.model.encode
    monkeypatch.setattr(enc.model, "encode", lambda texts, **kw: calls.append(list(texts)) or real(texts, **kw))
    texts = ["1973", "TLR4", "1973", "970 K", "TLR4"]
    got = torch.from_numpy(enc.encode(texts))
    assert calls == [["1973", "TLR4", "970 K"]] and got.shape == (5, enc.dim)
    torch.testing.assert_close(got[0], got[2])
    want = real(texts, convert_to_tensor=True, normalize_embeddings=True).float()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
