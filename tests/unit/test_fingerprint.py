"""The fingerprint policy (kinject.runs): content-based, cheap for large weights, stable under
copies; fingerprints of another format never refuse an artifact."""

import hashlib
import json
import shutil
import time

import pytest
import torch
from safetensors.torch import save_file

from kinject import runs
from kinject.encoders import same_encoder
from kinject.runs import fingerprint, fingerprints_conflict, inputs_hash, model_fingerprint


def write_model(d, seed: int, extra_config: dict | None = None):
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    save_file({"embed": torch.randn(300, 64, generator=g), "layer.weight": torch.randn(64, 64, generator=g)},
              str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"hidden_size": 64, **(extra_config or {})}))
    return d


@pytest.fixture
def sampled(monkeypatch):
    """Every file counts as large, so the sampled path runs on small test files."""
    monkeypatch.setattr(runs, "WHOLE_FILE_BYTES", 0)


def test_copy_is_same_and_any_change_differs(tmp_path):
    a = write_model(tmp_path / "a", seed=0)
    time.sleep(0.01)
    b = shutil.copytree(a, tmp_path / "b")  # new mtimes, other parent dir
    assert fingerprint(a) == fingerprint(b) and fingerprint(a).startswith("fp1-")
    (b / ".cache").mkdir()
    (b / ".cache" / "download.metadata").write_text(str(time.time()))  # hidden: not the model
    assert fingerprint(b) == fingerprint(a)
    (b / "config.json").write_text(json.dumps({"hidden_size": 64, "note": 1}))
    assert fingerprint(b) != fingerprint(a)
    assert fingerprint(tmp_path / "missing") == ""


def test_large_weights_are_sampled_and_a_retrain_changes_them(tmp_path, sampled):
    a = write_model(tmp_path / "a", seed=0)
    before = fingerprint(a)
    assert fingerprint(shutil.copytree(a, tmp_path / "copy")) == before
    write_model(tmp_path / "a", seed=1)  # retrained: same architecture, same sizes, other values
    assert fingerprint(a) != before
    raw = bytearray((a / "model.safetensors").read_bytes())
    fp = fingerprint(a)
    raw[-1] ^= 0xFF  # the last byte of the last tensor is sampled
    (a / "model.safetensors").write_bytes(bytes(raw))
    assert fingerprint(a) != fp


def test_large_file_without_tensor_layout_is_sampled(tmp_path, sampled):
    f = tmp_path / "weights.bin"
    f.write_bytes(bytes(range(256)) * 1024)
    fp = fingerprint(f)
    f.write_bytes(bytes(range(256)) * 1024 + b"x")  # resized
    assert fingerprint(f) != fp


def test_inputs_hash_of_small_files_is_their_bytes(tmp_path):
    f = write_model(tmp_path / "m", seed=0) / "config.json"
    h = hashlib.sha256(json.dumps({"a": 1}, sort_keys=True).encode())
    h.update(f.read_bytes())
    assert inputs_hash({"a": 1}, f, tmp_path / "missing") == h.hexdigest()[:16]


def test_model_fingerprint_is_its_directory(tiny_model_dir, tiny_tokenizer):
    from kinject.models import TinySpec, load_causal_lm, make_tiny_model

    model, _ = load_causal_lm(tiny_model_dir, device="cpu", dtype="float32")
    assert model_fingerprint(model) == fingerprint(tiny_model_dir) != ""
    bf16, _ = load_causal_lm(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert model_fingerprint(bf16) == model_fingerprint(model)
    in_memory = make_tiny_model(TinySpec(vocab=600, hidden=64, layers=2, heads=4), tokenizer=tiny_tokenizer)
    assert model_fingerprint(in_memory) == ""  # no directory: nothing to compare


def test_only_same_format_fingerprints_conflict():
    new, other = "fp1-0123456789abcdef", "fp1-fedcba9876543210"
    legacy = "0123456789abcdef"  # written by an older version (weights hashed differently)
    assert fingerprints_conflict(new, other) and fingerprints_conflict("abc", "xyz")
    assert not fingerprints_conflict(new, new)
    assert not fingerprints_conflict(new, legacy) and not fingerprints_conflict(legacy, new)
    assert not fingerprints_conflict(new, "") and not fingerprints_conflict("", new)
    # PPR encoder ids: an older bank stays readable, another model or other weights do not
    st = "sentence-transformers:all-MiniLM-L6-v2@"
    assert same_encoder(st + "0123456789ab", st + new)
    assert not same_encoder(st + new, st + other)
    assert not same_encoder("hf-mean:tiny@" + new, st + new)


def test_older_fingerprints_in_artifacts_are_read_not_refused():
    from kinject.gag.injector import Injector, InjectorConfig
    from kinject.memory.store import StoreMeta, _mismatch

    new, legacy = "fp1-0123456789abcdef", "0123456789abcdef"
    inj = Injector(InjectorConfig(expert_hidden=8, base_hidden=16, layers=["last"], slots=2, expert_fingerprint=legacy,
                                  base={"hidden_size": 16, "fingerprint": legacy}))
    inj.check_base({"hidden_size": 16, "fingerprint": new})
    inj.check_store(StoreMeta(expert_hidden=8, layers=["last"], slots=2, expert_fingerprint=new))
    meta = StoreMeta(expert_hidden=8, layers=["last"], slots=2, expert_fingerprint=new)
    assert _mismatch(meta.signature(), meta.model_copy(update={"expert_fingerprint": legacy}).signature(), "a", "b") is None
    assert "expert_fingerprint" in _mismatch(
        meta.signature(), meta.model_copy(update={"expert_fingerprint": "fp1-fedcba9876543210"}).signature(), "a", "b")
