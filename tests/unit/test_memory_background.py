"""Background generation and multi-layer states: batched == one at a time, layer keys vs hooks."""

import pytest
import torch

from kinject.errors import UserError
from kinject.memory.background import (
    background_prompts,
    continuation_states,
    encode_backgrounds,
    generate_backgrounds,
)
from kinject.memory.layers import check_layer_keys, layer_offset

QUESTIONS = ["What is the capital of Norland?", "Who?", "Which catalyst reaches 93.5 % at 450 kelvin?"]


@pytest.fixture(scope="module")
def deep_model(tiny_tokenizer):
    """6 decoder layers so minus2/minus4/minus6 are distinct decoder layers."""
    from kinject.models import TinySpec, make_tiny_model, set_generation_stops

    m = make_tiny_model(TinySpec(vocab=600, hidden=32, layers=6, heads=4), tokenizer=tiny_tokenizer, seed=3)
    set_generation_stops(m, tiny_tokenizer)
    return m.eval()


def test_layer_keys():
    assert layer_offset("last") == -1 and layer_offset("minus4") == -4
    assert check_layer_keys(["last", "minus2", "minus6"], 6) == [-1, -2, -6]
    for bad, msg in [("minus1", "K must be >= 2"), ("top", "unknown layer key"), ("minus7", "only 6 decoder")]:
        with pytest.raises(UserError, match=msg):
            check_layer_keys([bad], 6)


def test_last_is_final_norm_output_and_minusk_is_decoder_layer(deep_model, tiny_tokenizer):
    caps = {}
    hooks = [deep_model.model.norm.register_forward_hook(lambda m, i, o: caps.__setitem__("norm", o))]
    for j, layer in enumerate(deep_model.model.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, j=j: caps.__setitem__(j, o[0] if isinstance(o, tuple) else o)))
    try:
        prompt = background_prompts(tiny_tokenizer, ["Who?"])
        cont = tiny_tokenizer("The catalyst Ferovia-7", add_special_tokens=False)["input_ids"]
        (states,) = continuation_states(deep_model, tiny_tokenizer, prompt, [cont],
                                        ["last", "minus2", "minus4", "minus6"])
    finally:
        for h in hooks:
            h.remove()
    T = len(cont)
    assert states.shape == (4, T, 32)
    assert torch.equal(states[0], caps["norm"][0, -T:])
    assert torch.equal(states[1], caps[4][0, -T:])  # hidden_states[-2] = output of layer n-2
    assert torch.equal(states[2], caps[2][0, -T:])
    assert torch.equal(states[3], caps[0][0, -T:])
    assert not torch.equal(states[0], caps[5][0, -T:])  # `last` is after the final norm


def test_batched_generation_equals_one_at_a_time_including_states(deep_model, tiny_tokenizer):
    keys = ["last", "minus2", "minus4"]
    batched = generate_backgrounds(deep_model, tiny_tokenizer, QUESTIONS, keys, system="You are an expert.",
                                   max_new_tokens=10, batch_size=3)
    single = [generate_backgrounds(deep_model, tiny_tokenizer, [q], keys, system="You are an expert.",
                                   max_new_tokens=10, batch_size=1)[0] for q in QUESTIONS]
    for b, s in zip(batched, single):
        assert b.token_ids == s.token_ids and b.text == s.text
        assert 0 < b.n_tokens <= 10
        assert b.states.shape == (3, b.n_tokens, 32)
        torch.testing.assert_close(b.states, s.states, rtol=1e-4, atol=1e-5)
    # prompts of different lengths really were left padded in the batch
    lens = [len(tiny_tokenizer(p)["input_ids"]) for p in background_prompts(tiny_tokenizer, QUESTIONS, "x")]
    assert len(set(lens)) > 1


def test_states_exclude_eos_and_equal_kv_cached_generation(deep_model, tiny_tokenizer):
    """The teacher-forced states equal those the model computed while generating with its cache."""
    from kinject.tokenizer import stop_token_ids

    (tr,) = generate_backgrounds(deep_model, tiny_tokenizer, ["Who?"], ["last"], max_new_tokens=8, batch_size=1)
    stops = stop_token_ids(tiny_tokenizer)
    assert not set(tr.token_ids) & set(stops)
    prompt = background_prompts(tiny_tokenizer, ["Who?"])[0]
    enc = tiny_tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = deep_model.generate(**enc, max_new_tokens=tr.n_tokens + 1, do_sample=False, eos_token_id=stops,
                              pad_token_id=tiny_tokenizer.pad_token_id, output_hidden_states=True,
                              return_dict_in_generate=True)
    # generation step k (k >= 1) computes the state at generated position k - 1
    cached = torch.stack([out.hidden_states[k][-1][0, -1] for k in range(1, tr.n_tokens + 1)])
    torch.testing.assert_close(tr.states[0], cached, rtol=1e-4, atol=1e-5)


def test_encode_given_background(deep_model, tiny_tokenizer):
    traces = encode_backgrounds(deep_model, tiny_tokenizer, ["Who?", "What?"],
                                ["Velmora is the capital.", ""], ["last", "minus2"], batch_size=2)
    assert traces[0].n_tokens == len(tiny_tokenizer("Velmora is the capital.", add_special_tokens=False)["input_ids"])
    assert traces[0].states.shape == (2, traces[0].n_tokens, 32)
    assert traces[1].n_tokens == 0 and traces[1].states.shape == (2, 0, 32)
