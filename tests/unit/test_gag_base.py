"""The injected base: <GAG> handling, training encoding, in-place injection, batched generation."""


import pytest
import torch

from kinject.gag.base import InjectedBase, ensure_gag_token
from kinject.gag.losses import masked_mean
from kinject.generation import generate_texts
from kinject.models import load_causal_lm
from kinject.tokenizer import GAG_TOKEN, answer_lead

QUESTIONS = ["What is the capital of Norland?", "Who?", "Which catalyst reaches 93.5 % at 450 kelvin?"]


@pytest.fixture()
def injected(tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir, device="cpu")
    return InjectedBase(model, tok, num_slots=4, instruction="You answer catalysis questions.")


def tokenizer_without_gag():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from kinject.tokenizer import BUILTIN_SAMPLE, CHAT_TEMPLATE, IM_END, IM_START, PAD_TOKEN

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.train_from_iterator(BUILTIN_SAMPLE, trainers.BpeTrainer(vocab_size=300, special_tokens=[PAD_TOKEN, IM_START, IM_END],
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                              show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token=PAD_TOKEN, eos_token=IM_END)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_gag_token_added_with_resize_and_said(kinject_logs):
    from kinject.models import TinySpec, make_tiny_model

    tok = tokenizer_without_gag()
    assert GAG_TOKEN not in tok.get_vocab()
    model = make_tiny_model(TinySpec(vocab=len(tok), hidden=32, layers=1, heads=2), tokenizer=tok)
    rows = model.get_input_embeddings().weight.shape[0]
    base = InjectedBase(model, tok, num_slots=2)
    assert base.added_gag and base.gag_id == rows and len(tok) == rows + 1
    assert model.get_input_embeddings().weight.shape[0] == rows + 1
    said = [r.getMessage() for r in kinject_logs if r.name == "kinject.gag.base"]
    assert len(said) == 1 and "added <GAG>" in said[0] and f"{rows} -> {rows + 1}" in said[0]
    ids = tok(base.prompt_text("Who?"), add_special_tokens=False)["input_ids"]
    assert ids.count(base.gag_id) == 2  # one token per placeholder
    assert not ensure_gag_token(model, tok)  # idempotent


def test_base_frozen_and_prompt_has_s_placeholders(injected):
    assert not any(p.requires_grad for p in injected.model.parameters())
    assert not injected.added_gag
    text = injected.prompt_text("Who?")
    assert "Knowledge: " + GAG_TOKEN * 4 + "\n" in text and text.endswith("<|im_start|>assistant\n")
    assert "You answer catalysis questions.\nPlease answer the following question based on the knowledge provided." in text


def test_encode_train_matches_chat_template_and_labels_answer_plus_eot(injected):
    tok = injected.tokenizer
    answers = ["Velmora.", "93.5 percent", "Ferovia-7"]
    tb = injected.encode_train(QUESTIONS, answers)
    for i, (q, a) in enumerate(zip(QUESTIONS, answers)):
        n = int(tb.attention_mask[i].sum())
        full = tok(injected.full_text(q, a), add_special_tokens=False)["input_ids"]
        assert tb.input_ids[i, :n].tolist() == full[:-1]  # everything but the template's trailing "\n"
        lab = tb.labels[i][tb.labels[i] != -100].tolist()
        # the template writes the answer as `answer_lead` does (a space before a word)
        assert lab == tok(answer_lead(a), add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
        assert (tb.input_ids[i] == injected.gag_id).sum() == 4
    assert int(tb.attention_mask[0].sum()) < tb.input_ids.shape[1] or int(tb.attention_mask[2].sum()) < tb.input_ids.shape[1]


def test_answer_only_logits_equal_the_full_forward(injected):
    """Training skips the LM head on prompt positions: same NLL, same final states as the full forward."""
    from kinject.gag.losses import nll_loss

    tb = injected.encode_train(QUESTIONS, ["Velmora.", "93.5 percent", "Ferovia-7"])
    z = torch.randn(3, 4, 64)
    full = injected.forward(z, tb, hidden=True)
    states = injected.final_states(z, tb)
    logits, gold = injected.answer_logits(states, tb.labels)
    torch.testing.assert_close(states, full.hidden_states[-1])
    assert logits.shape == (int(tb.answer_mask.sum()), full.logits.shape[-1])
    torch.testing.assert_close(torch.nn.functional.cross_entropy(logits.float(), gold), nll_loss(full.logits, tb.labels))
    assert injected.encode_train(QUESTIONS, ["Velmora.", "93.5 percent", "Ferovia-7"]).input_ids.equal(tb.input_ids)


def test_split_batch_prefix_cache_gives_the_same_loss_states_and_slot_gradients(injected):
    """Training runs the prompt before the first <GAG> without a graph (left padded, cached) and only
    the rest with gradients: the loss, the answer states and dL/dz equal the one-pass forward's."""
    answers = ["Velmora.", "93.5 percent", "Ferovia-7"]
    tb, sb = injected.encode_train(QUESTIONS, answers), injected.encode_train_split(QUESTIONS, answers)
    assert (sb.prefix_ids == injected.gag_id).sum() == 0 and (sb.input_ids[:, :4] == injected.gag_id).all()
    assert int(sb.prefix_mask.sum() + sb.attention_mask.sum()) == int(tb.attention_mask.sum())
    assert bool((sb.prefix_mask[:, -1] == 1).all()) and not bool((sb.prefix_mask[:, 0] == 1).all())  # left padded
    z = torch.randn(3, 4, 64, requires_grad=True)
    out = []
    for b in (tb, sb):
        states = injected.final_states(z, b)
        logits, gold = injected.answer_logits(states, b.labels)
        loss = torch.nn.functional.cross_entropy(logits.float(), gold)
        out.append((loss, masked_mean(states, b.answer_mask), torch.autograd.grad(loss, z)[0]))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_embed_overwrites_only_placeholders_in_slot_order(injected):
    tb = injected.encode_train(QUESTIONS[:2], ["a", "b"])
    z = torch.randn(2, 4, 64, requires_grad=True)
    emb = injected.embed(tb.input_ids, z)
    plain = injected.model.get_input_embeddings()(tb.input_ids)
    where = tb.input_ids == injected.gag_id
    assert torch.equal(emb[~where], plain[~where])
    for b in range(2):
        pos = where[b].nonzero().flatten()
        assert torch.equal(emb[b, pos], z[b].detach())
    emb.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # gradients reach z through the overwrite
    with pytest.raises(ValueError, match="z shape"):
        injected.embed(tb.input_ids, torch.randn(2, 3, 64))


def test_generate_with_embeds_equals_text_generation_when_z_is_a_token_embedding(injected):
    """Placing token X's embedding in every slot must decode exactly like the prompt spelled with X."""
    tok = injected.tokenizer
    x_id = tok.convert_tokens_to_ids("[ANSWER]")  # a special token: text replacement keeps it one token
    x_emb = injected.model.get_input_embeddings().weight[x_id].detach()
    z = x_emb.expand(len(QUESTIONS), 4, -1).clone()
    got = injected.generate(QUESTIONS, z, max_new_tokens=8, batch_size=3)
    x_text = tok.decode([x_id])
    prompts = [injected.prompt_text(q).replace(GAG_TOKEN, x_text) for q in QUESTIONS]
    assert all(tok(p, add_special_tokens=False)["input_ids"].count(x_id) == 4 for p in prompts)
    want = generate_texts(injected.model, tok, prompts, max_new_tokens=8, batch_size=3)
    assert [g.token_ids for g in got] == [g.token_ids for g in want]
    single = [injected.generate([q], z[i:i + 1], max_new_tokens=8)[0] for i, q in enumerate(QUESTIONS)]
    assert [g.token_ids for g in single] == [g.token_ids for g in got]
