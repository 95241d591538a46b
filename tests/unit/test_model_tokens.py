"""Adding kinject's tokens to a pretrained-style tokenizer: the base's original rows stay
bit-identical, the new rows start at zero, and the base's logits over its own vocabulary do not
move (tied and untied heads)."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from kinject.gag.base import ensure_gag_token
from kinject.models import TinySpec, add_special_tokens, make_tiny_model
from kinject.tokenizer import BUILTIN_SAMPLE, GAG_TOKEN, GRIP_TOKENS

KINJECT_TOKENS = [GAG_TOKEN, *GRIP_TOKENS]


def foreign_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE that knows none of kinject's tokens (like a public checkpoint's)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(BUILTIN_SAMPLE * 4, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|im_end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>")


@pytest.mark.parametrize("tied", [True, False])
def test_added_tokens_leave_the_base_untouched(tied):
    tok = foreign_tokenizer()
    n = len(tok)
    model = make_tiny_model(TinySpec(arch="llama", vocab=n, hidden=32, layers=2, heads=4,
                                     tie_embeddings=tied), seed=1).eval()
    assert model.get_input_embeddings().weight.shape[0] == n  # no spare rows: a resize is needed
    ids = tok("The catalyst reaches 93.5 percent.", return_tensors="pt").input_ids
    emb_in = model.get_input_embeddings().weight.detach().clone()
    emb_out = model.get_output_embeddings().weight.detach().clone()
    with torch.no_grad():
        before = model(ids).logits

    assert add_special_tokens(model, tok, KINJECT_TOKENS) == KINJECT_TOKENS
    new_in, new_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert new_in.shape[0] == n + len(KINJECT_TOKENS)
    assert torch.equal(new_in[:n], emb_in) and torch.equal(new_out[:n], emb_out)
    assert not new_in[n:].any() and not new_out[n:].any()
    with torch.no_grad():
        after = model(ids).logits
    assert torch.equal(after[..., :n], before)
    assert not after[..., n:].any()  # zero rows: the new tokens score exactly 0
    for t in KINJECT_TOKENS:
        assert len(tok(t, add_special_tokens=False).input_ids) == 1

    assert add_special_tokens(model, tok, KINJECT_TOKENS) == []  # idempotent: no second resize
    assert model.get_input_embeddings().weight.shape[0] == n + len(KINJECT_TOKENS)


def test_gag_token_added_once_with_a_message(kinject_logs):
    tok = foreign_tokenizer()
    model = make_tiny_model(TinySpec(arch="llama", vocab=len(tok), hidden=32, layers=2, heads=4))
    assert ensure_gag_token(model, tok)
    assert not ensure_gag_token(model, tok)
    said = [r.getMessage() for r in kinject_logs if r.name == "kinject.gag.base"]
    assert len(said) == 1 and "resized the base's embeddings" in said[0]
