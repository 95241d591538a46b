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


# ------------------------------------------------------------------ memories without decoding
def test_prefill_split_reads_from_the_question_on(tiny_tokenizer):
    from kinject.memory.background import prefill_split

    h1, ids1 = prefill_split(tiny_tokenizer, QUESTIONS[0], "You are an expert.", " The answer is")
    h2, ids2 = prefill_split(tiny_tokenizer, QUESTIONS[2], "You are an expert.", " The answer is")
    assert h1 == h2 and h1.endswith("Question: ")  # the shared head carries nothing about the question
    text = tiny_tokenizer.decode(ids1)
    assert text.replace(" ", "").startswith(QUESTIONS[0].replace(" ", ""))
    assert text.replace(" ", "").endswith("Theansweris")
    # without a prefix, the ids read are the rest of the prompt (question, end of turn, assistant header)
    prompt = background_prompts(tiny_tokenizer, [QUESTIONS[0]], "You are an expert.")[0]
    _, ids = prefill_split(tiny_tokenizer, QUESTIONS[0], "You are an expert.")
    assert ids == tuple(tiny_tokenizer(prompt[len(h1):], add_special_tokens=False)["input_ids"])


def test_prefill_states_in_one_forward_without_generating(deep_model, tiny_tokenizer, monkeypatch):
    import kinject.generation as generation
    from kinject.memory.background import prefill_split, prefill_traces

    def no_generation(*a, **k):
        raise AssertionError("memories without decoding generated text")

    monkeypatch.setattr(generation, "generate_texts", no_generation)
    monkeypatch.setattr(deep_model, "generate", no_generation)
    calls = []
    hook = deep_model.register_forward_hook(lambda m, i, o: calls.append(1))
    keys = ["last", "minus2", "minus4"]
    try:
        batched = prefill_traces(deep_model, tiny_tokenizer, QUESTIONS, keys, "You are an expert.", " The answer is",
                                 batch_size=3)
    finally:
        hook.remove()
    assert len(calls) == 1  # one forward pass for the batch
    for q, tr in zip(QUESTIONS, batched):
        head, ids = prefill_split(tiny_tokenizer, q, "You are an expert.", " The answer is")
        assert tr.token_ids == ids and tr.text == " The answer is" and tr.states.shape == (3, len(ids), 32)
        # the same states as an unpadded forward over the whole prompt, read at the question's positions
        full = torch.tensor([tiny_tokenizer(head, add_special_tokens=False)["input_ids"] + list(ids)])
        with torch.no_grad():
            hs = deep_model(input_ids=full, output_hidden_states=True).hidden_states
        for j, off in enumerate((-1, -2, -4)):
            torch.testing.assert_close(tr.states[j], hs[off][0, -len(ids):], rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="minus7"):
        prefill_traces(deep_model, tiny_tokenizer, QUESTIONS, ["minus7"])


def test_build_memory_source_prefill(tmp_path, tiny_model_dir, tiny_tokenizer):
    import json

    from kinject.memory.background import prefill_split
    from kinject.memory.build import build_memory
    from kinject.memory.config import MemoryBuildConfig
    from kinject.memory.store import MemoryStore

    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"id": f"q{i}", "question": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    base = dict(expert=str(tiny_model_dir), questions=[str(qfile)], out=str(tmp_path / "mem"), layers=["last", "minus2"],
                device="cpu", keep_trajectories=True, system="You are an expert.")
    assert MemoryBuildConfig(**base).source == "generate"  # the default stays generated backgrounds
    stats = build_memory(MemoryBuildConfig(**base, source="prefill", answer_prefix=" The answer is"), progress=False)
    st = MemoryStore(tmp_path / "mem")
    assert stats["samples"] == 3 and len(st) == 3 and st.meta.prefill_prefix == " The answer is"
    for i, q in enumerate(QUESTIONS):
        n = len(prefill_split(tiny_tokenizer, q, "You are an expert.", " The answer is")[1])
        assert st.record(f"q{i}")["n_tokens"] == n and st.trajectory(f"q{i}").shape == (2, n, 64)
    # generated backgrounds are another kind of memory: resuming the store with them is refused
    with pytest.raises(UserError, match="prefill_prefix"):
        build_memory(MemoryBuildConfig(**base), progress=False)
