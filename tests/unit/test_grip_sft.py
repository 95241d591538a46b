"""GRIP SFT: control tokens added with a resize when missing, the prompt masked (loss on the
target turn only, checked on TRL's own tokenization), and a short run that fits the targets."""

import json

import pytest

from kinject.errors import UserError
from kinject.grip.format import CONTROL_TOKENS, final_turn, plan_turn
from kinject.grip.sft import ensure_control_tokens, read_sft_rows, sft_records

ROWS = [
    {"question": "Where was Arno Betz born?", "intermediary": "", "references": [], "target": final_turn("Velmora")},
    {"question": "Where was Dana Frey born?", "intermediary": "", "references": [],
     "target": plan_turn("Tarsk", "Where was Dana Frey born?")},
    {"question": "Where was Dana Frey born?", "intermediary": "Tarsk",
     "references": ["Dana Frey was born in Tarsk."], "target": final_turn("Tarsk")},
    {"question": "Which country is Velmora in?", "intermediary": "", "references": [], "target": final_turn("Norland")},
]


def tokenizer_without_control_tokens():
    """A real BPE tokenizer with the chat tokens but none of GRIP's (as a generic model has)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from kinject.tokenizer import BUILTIN_SAMPLE, CHAT_TEMPLATE, IM_END, IM_START, PAD_TOKEN

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(BUILTIN_SAMPLE * 4, trainers.BpeTrainer(
        vocab_size=500, min_frequency=1, special_tokens=[PAD_TOKEN, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=IM_END,
                                      additional_special_tokens=[IM_START], clean_up_tokenization_spaces=False)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def test_missing_control_tokens_are_added_with_resize():
    from kinject.models import TinySpec, make_tiny_model

    tok = tokenizer_without_control_tokens()
    assert len(tok("[ANSWER]", add_special_tokens=False).input_ids) > 1
    model = make_tiny_model(TinySpec(vocab=len(tok), hidden=32, layers=1, heads=2), tokenizer=tok)
    n0 = len(tok)
    assert ensure_control_tokens(model, tok) == list(CONTROL_TOKENS)
    assert len(tok) == n0 + 4 and model.get_input_embeddings().weight.shape[0] >= n0 + 4
    assert all(len(tok(t, add_special_tokens=False).input_ids) == 1 for t in CONTROL_TOKENS)
    assert ensure_control_tokens(model, tok) == []  # idempotent
    # plain-text mode leaves the tokenizer alone
    tok2 = tokenizer_without_control_tokens()
    assert ensure_control_tokens(model, tok2, "text") == [] and len(tok2) == n0


def test_prompt_is_masked_on_trl_tokenization(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from kinject.models import load_causal_lm

    model, tok = load_causal_lm(tiny_model_dir, device="cpu")
    recs = sft_records(ROWS, tok)
    assert recs[0]["prompt"].endswith("<|im_start|>assistant\n") and recs[0]["completion"] == final_turn("Velmora") + "<|im_end|>"
    args = SFTConfig(output_dir=str(tmp_path / "w"), completion_only_loss=True, report_to="none", use_cpu=True,
                     max_length=512, per_device_train_batch_size=2)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(recs), processing_class=tok)
    for rec, ex in zip(recs, trainer.train_dataset, strict=True):
        target_ids = tok(rec["completion"], add_special_tokens=False).input_ids
        labels = ex["labels"]  # TRL's: -100 where no loss
        assert [t for t in labels if t != -100] == target_ids  # only the target turn (+ end of turn)
        n_prompt = len(labels) - len(target_ids)
        assert labels[:n_prompt] == [-100] * n_prompt and ex["input_ids"][n_prompt:] == target_ids


def test_short_sft_fits_the_targets(tiny_model_dir, tmp_path):
    from kinject.config import load_config
    from kinject.grip.config import GripSftConfig
    from kinject.grip.sft import train_sft
    from kinject.models import load_causal_lm

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = load_config(None, [f"model={tiny_model_dir}", f"data={data}", f"out={tmp_path / 'm'}", "epochs=30",
                             "learning_rate=3e-3", "batch_size=4", "warmup_ratio=0", "logging_steps=1",
                             "max_length=512", "lr_scheduler=constant", "weight_decay=0"], expect=GripSftConfig)
    out = train_sft(cfg)
    man = json.loads((out / "manifest.json").read_text())["metrics"]
    assert man["rows"] == 4 and man["steps"] == 30
    assert man["last_logged_loss"] < 0.25 * man["first_logged_loss"]
    assert not (tmp_path / ".m.work").exists()
    model, tok = load_causal_lm(out, device="cpu")
    from kinject.generation import generate_texts

    gens = generate_texts(model, tok, [r["prompt"] for r in sft_records(ROWS, tok)], max_new_tokens=24,
                          skip_special_tokens=False)
    assert sum(g.text == r["target"] for g, r in zip(gens, ROWS)) >= 3, [g.text for g in gens]


def test_bad_sft_rows(tmp_path):
    p = tmp_path / "sft.jsonl"
    p.write_text(json.dumps({"question": "q", "intermediary": "", "references": [], "target": " "}) + "\n")
    with pytest.raises(UserError, match="record 1 has an empty 'target'"):
        read_sft_rows(p)
    p.write_text(json.dumps({"question": "q", "target": "t"}) + "\n")
    with pytest.raises(UserError, match=r"sft.jsonl:1: missing field"):
        read_sft_rows(p)
    with pytest.raises(UserError, match="names no file"):
        read_sft_rows([])


def test_sft_data_is_the_union_of_its_files(tmp_path):
    files = []
    for name in ("a", "b"):
        p = tmp_path / f"{name}.jsonl"
        p.write_text(json.dumps({"question": name, "intermediary": "", "references": [], "target": "t"}) + "\n")
        files.append(str(p))
    assert [r["question"] for r in read_sft_rows(files)] == ["a", "b"]
    assert [r["question"] for r in read_sft_rows(files[1])] == ["b"]


def test_control_embeddings_start_at_their_words(tiny_model_dir):
    """`control_init: words`: each control token's embedding becomes its word's mean embedding."""
    from kinject.grip.sft import CONTROL_WORDS, init_control_embeddings
    from kinject.models import load_causal_lm

    model, tok = load_causal_lm(tiny_model_dir, device="cpu", dtype="float32")
    before = init_control_embeddings(model, tok)
    emb = model.get_input_embeddings().weight
    assert set(before) == set(CONTROL_TOKENS)
    for t, word in CONTROL_WORDS.items():
        pieces = tok(word, add_special_tokens=False).input_ids
        assert emb[tok.convert_tokens_to_ids(t)].detach().allclose(emb[pieces].mean(0).detach())


def test_turns_have_no_lone_space_token_before_a_marker(tiny_tokenizer):
    """A space before `[SOLVED]` / `[RETRIEVE]` would be a lone " " token the base never saw."""
    for turn in (final_turn("Velmora"), plan_turn("Arno Betz was born in Velmora", "Where is Velmora?")):
        pieces = tiny_tokenizer.convert_ids_to_tokens(tiny_tokenizer(turn, add_special_tokens=False).input_ids)
        for a, b in zip(pieces, pieces[1:], strict=False):
            if b in ("[SOLVED]", "[RETRIEVE]"):
                assert a.strip("Ġ "), f"lone space before {b} in {pieces}"


def test_turn_text_tokenizes_as_a_closed_book_answer(tiny_tokenizer):
    """After a marker the answer / query tokenizes exactly as the chat template writes an
    assistant answer, i.e. as the base's closed-book answers (` Quasto` -> `ĠQuasto`)."""
    from kinject.grip.format import ANSWER, INTERMEDIARY, RETRIEVE, SOLVED
    from kinject.prompts import assistant_text
    from kinject.tokenizer import answer_lead

    def ids(text):
        return tiny_tokenizer(text, add_special_tokens=False).input_ids

    marker = {t: ids(t)[0] for t in (ANSWER, SOLVED, INTERMEDIARY, RETRIEVE)}
    for answer in ("Quasto", "1998", "the eastern continent"):
        assert assistant_text(tiny_tokenizer, answer) == answer_lead(answer)
        assert ids(final_turn(answer)) == [marker[ANSWER], *ids(assistant_text(tiny_tokenizer, answer)),
                                           marker[SOLVED]]
    assert ids(plan_turn("1546", "Where is Velmora?")) == [
        marker[INTERMEDIARY], *ids("1546"), marker[RETRIEVE], *ids(" Where is Velmora?")]
    assert plan_turn("", "q") == f"{INTERMEDIARY}{RETRIEVE} q"


def test_lora_sft_touches_only_adapters_and_control_rows(tiny_model_dir, tmp_path):
    """`lora.r`: the saved model is a plain merged checkpoint; of the embedding (tied with the LM
    head) only the control tokens' rows moved, the linear layers moved (merged adapters)."""
    import torch

    from kinject.config import load_config
    from kinject.grip.config import GripSftConfig
    from kinject.grip.sft import train_sft
    from kinject.models import load_causal_lm

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = load_config(None, [f"model={tiny_model_dir}", f"data={data}", f"out={tmp_path / 'm'}", "max_steps=4",
                             "learning_rate=1e-2", "batch_size=4", "lora.r=4", "control_init=keep",
                             "max_length=512"], expect=GripSftConfig)
    out = train_sft(cfg)
    base, tok = load_causal_lm(tiny_model_dir, device="cpu", dtype="float32")
    tuned, _ = load_causal_lm(out, device="cpu", dtype="float32")
    assert type(tuned) is type(base) and sum(p.numel() for p in tuned.parameters()) == sum(
        p.numel() for p in base.parameters())
    moved = (base.get_input_embeddings().weight - tuned.get_input_embeddings().weight).abs().sum(1).nonzero()
    assert sorted(moved.flatten().tolist()) == sorted(tok.convert_tokens_to_ids(list(CONTROL_TOKENS)))
    lin = [n for n, _ in base.named_parameters() if n.endswith("q_proj.weight")][0]
    assert not torch.equal(dict(base.named_parameters())[lin], dict(tuned.named_parameters())[lin])
