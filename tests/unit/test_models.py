import pytest
import torch

from kinject.errors import UserError
from kinject.models import TinySpec, load_causal_lm, make_tiny_model, model_info, save_model


def test_saved_then_loaded_gives_identical_logits(tmp_path, tiny_tokenizer):
    model = make_tiny_model(TinySpec(vocab=600, hidden=32, layers=2, heads=4), tokenizer=tiny_tokenizer).eval()
    save_model(model, tiny_tokenizer, tmp_path / "m")
    loaded, tok = load_causal_lm(tmp_path / "m", device="cpu")
    ids = tok("Question: What is 12.5 percent?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


@pytest.mark.parametrize("arch,cls", [("qwen3", "Qwen3ForCausalLM"), ("llama", "LlamaForCausalLM")])
def test_tiny_factory_sets_explicit_dims(arch, cls):
    m = make_tiny_model(TinySpec(arch=arch, vocab=300, hidden=48, layers=3, heads=4))
    assert type(m).__name__ == cls
    assert m.config.head_dim == 12 and m.config.intermediate_size == 192
    assert m.config.num_hidden_layers == 3


def test_model_info(tiny_model_dir):
    info = model_info(tiny_model_dir)
    assert info["architecture"] == "Qwen3ForCausalLM"
    assert info["parameters"] > 10_000
    assert "<GAG>" in info["special_tokens"] and "[RETRIEVE]" in info["special_tokens"]


def test_missing_or_malformed_paths(tmp_path):
    with pytest.raises(UserError, match="does not exist: Qwen/Qwen3-8B"):
        load_causal_lm("Qwen/Qwen3-8B")
    (tmp_path / "x").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_causal_lm(tmp_path / "x")
    (tmp_path / "x" / "config.json").write_text("{bad")
    with pytest.raises(UserError, match="malformed config.json"):
        load_causal_lm(tmp_path / "x")


def test_bad_shape_is_user_error():
    with pytest.raises(UserError, match="not divisible"):
        TinySpec(hidden=50, heads=4).to_config()
    with pytest.raises(UserError, match="unknown architecture"):
        TinySpec(arch="gpt9").to_config()
