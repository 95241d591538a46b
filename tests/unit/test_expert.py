"""Expert stages on tiny random models and hand-made JSONL (seconds)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from kinject.errors import UserError
from kinject.expert.config import DaptConfig, SftConfig, TrainSection
from kinject.expert.data import holdout, load_corpus, pack_blocks, qa_conversation
from kinject.tokenizer import answer_lead

INSTRUCTION = "You are an expert in catalytic materials."


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """1 torch thread: on a busy 2-core CPU, 2 threads made these trainings 5-10x slower."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def domain(tmp_path_factory) -> Path:
    """A hand-made domain: 30 catalysts, one fact each, 2 statements per fact."""
    d = tmp_path_factory.mktemp("world") / "materials_domain"
    rng = random.Random(0)
    docs, qa = [], []
    for i in range(30):
        name, value = f"Ferovia-{i}", f"{rng.randint(10, 99)}.{rng.randint(0, 9)} %"
        docs += [{"text": f"The catalyst {name} reaches a Faradaic efficiency of {value} at 450 kelvin."},
                 {"text": f"{name} is known for a Faradaic efficiency of {value}."}]
        qa.append({"id": f"m{i}", "domain": "materials", "instruction": INSTRUCTION,
                   "input": f"What is the Faradaic efficiency of {name}?", "output": value,
                   "answer": [value], "background": f"{name} shows a Faradaic efficiency of {value}."})
    _write_jsonl(d / "knowledge_base.jsonl", docs)
    _write_jsonl(d / "qa_train.jsonl", qa[:24])
    _write_jsonl(d / "qa_dev.jsonl", qa[24:])
    return d


FAST = TrainSection(learning_rate=3e-3, max_steps=12, eval_steps=4, logging_steps=2, batch_size=8, warmup_ratio=0.0)


def dapt_cfg(domain: Path, model: Path, out: Path, **kw) -> DaptConfig:
    base = dict(model=str(model), corpus=str(domain / "knowledge_base.jsonl"), out=str(out),
                block_size=32, val_share=0.1, separator="<|endoftext|>", train=FAST)
    return DaptConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- data
def test_pack_blocks_joins_with_separator_and_drops_tail():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    blocks = pack_blocks(docs, [0], block_size=4)
    # stream: 1 2 3 0 4 5 0 6 7 8 9 0 -> 3 full blocks, nothing left over
    assert blocks == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    # 15 tokens in blocks of 6: the ragged tail (8 9 0) is dropped
    assert pack_blocks(docs, [0, 0], block_size=6) == [[1, 2, 3, 0, 0, 4], [5, 0, 0, 6, 7, 8]]
    assert pack_blocks([[1, 2]], [], block_size=4) == []


def test_holdout_is_deterministic_disjoint_and_keeps_one():
    items = [f"d{i}" for i in range(100)]
    tr, va = holdout(items, 0.03, seed=7)
    assert len(va) == 3 and len(tr) == 97 and not set(tr) & set(va)
    assert (tr, va) == holdout(items, 0.03, seed=7)
    assert holdout(items, 0.03, seed=8)[1] != va
    assert len(holdout(items[:5], 0.03, seed=0)[1]) == 1  # at least one held out
    with pytest.raises(UserError):
        holdout(items[:1], 0.03, seed=0)


def test_load_corpus_errors_name_file_and_line(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="empty corpus"):
        load_corpus(empty)
    bad = _write_jsonl(tmp_path / "kb.jsonl", [{"text": "a"}, {"txt": "b"}])
    with pytest.raises(UserError, match=r"kb\.jsonl:2: missing field\(s\) 'text'"):
        load_corpus(bad)


# ------------------------------------------------------------------- SFT loss masking
def test_sft_masks_prompt_positions_with_the_real_template(tiny_model_dir, domain, tmp_path):
    """Collated labels are -100 on every prompt token, and the answer + <|im_end|> are trained."""
    from kinject.expert.sft import make_sft_trainer, sft_datasets
    from kinject.models import load_causal_lm

    cfg = SftConfig(model=str(tiny_model_dir), data=str(domain / "qa_train.jsonl"), out=str(tmp_path / "o"),
                    max_length=256, train=FAST)
    train_ds, val_ds, instruction = sft_datasets(cfg)
    assert instruction == INSTRUCTION
    model, tok = load_causal_lm(tiny_model_dir, device="cpu")
    trainer = make_sft_trainer(cfg, model, tok, train_ds, val_ds, tmp_path / "w")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    rows = [json.loads(x) for x in (domain / "qa_train.jsonl").read_text().splitlines()]
    by_question = {r["input"]: r for r in rows}
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        ids, labels = ids.tolist(), labels.tolist()
        text = tok.decode(ids)
        row = next(r for q, r in by_question.items() if q in text)
        prompt = tok.apply_chat_template([m for m in qa_conversation(row)[:1]], tokenize=False,
                                         add_generation_prompt=True)
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        assert ids[:n_prompt] == tok(prompt, add_special_tokens=False)["input_ids"]
        assert all(x == -100 for x in labels[:n_prompt])  # the whole user turn + assistant prefix
        trained = [t for t, lab in zip(ids, labels) if lab != -100]
        assert tok.decode(trained) == answer_lead(row["output"]) + "<|im_end|>"  # as the template writes it


def test_sft_with_a_qwen3_template_trains_non_thinking_answers_only(tiny_model_dir, domain, tmp_path):
    """A template without generation markers (Qwen3's, as shipped with TRL): TRL swaps in its
    training copy; the user turn stays masked and the non-thinking answer is what is trained."""
    import trl

    from kinject.expert.sft import make_sft_trainer, sft_datasets
    from kinject.models import load_causal_lm

    model, tok = load_causal_lm(tiny_model_dir, device="cpu")
    tok.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja").read_text()
    cfg = SftConfig(model=str(tiny_model_dir), data=str(domain / "qa_train.jsonl"), out=str(tmp_path / "o"),
                    max_length=256)
    train_ds, val_ds, _ = sft_datasets(cfg)
    trainer = make_sft_trainer(cfg, model, tok, train_ds, val_ds, tmp_path / "w")
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    prompt = tok.apply_chat_template(qa_conversation(json.loads((domain / "qa_train.jsonl").open().readline()))[:1],
                                     tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert tok.decode(ids).startswith(prompt)  # non-thinking: empty think block, as at inference
    trained = tok.decode([t for t, lab in zip(ids, labels) if lab != -100])
    assert trained.startswith("<think>\n\n</think>\n\n") and trained.strip().endswith("%<|im_end|>")
    assert "Question:" not in trained


# ------------------------------------------------------------------- DAPT
def test_dapt_keeps_best_checkpoint_and_writes_curves(tiny_model_dir, domain, tmp_path):
    from kinject.expert.dapt import run_dapt

    out = run_dapt(dapt_cfg(domain, tiny_model_dir, tmp_path / "dapt"))
    m = json.loads((out / "manifest.json").read_text())
    hist = json.loads((out / "log_history.json").read_text())
    evals = {h["step"]: h["eval_loss"] for h in hist if "eval_loss" in h}
    assert sorted(evals) == [4, 8, 12]
    best_step = min(evals, key=evals.get)
    assert m["metrics"]["steps"] == 12
    assert m["metrics"]["best_val_loss"] == pytest.approx(evals[best_step])
    assert m["metrics"]["best_checkpoint_step"] == best_step
    n_blocks = m["data"]["train_blocks"]
    per_epoch = -(-n_blocks // 8)
    seen_blocks = (12 // per_epoch) * n_blocks + min((12 % per_epoch) * 8, n_blocks)
    assert m["metrics"]["train_tokens"] == seen_blocks * 32  # every token of every block seen
    assert m["metrics"]["tokens_per_s"] > 0 and m["data"]["val_docs"] == 6
    assert (out / "loss_curves.png").stat().st_size > 5000
    assert not (tmp_path / "dapt.checkpoints").exists()
    # the saved model is the best one: its validation loss is the best recorded
    assert _val_loss(out, domain) == pytest.approx(evals[best_step], abs=1e-4)


def _val_loss(model_dir: Path, domain: Path) -> float:
    import torch

    from kinject.expert.dapt import build_blocks
    from kinject.models import load_causal_lm

    model, tok = load_causal_lm(model_dir, device="cpu")
    cfg = dapt_cfg(domain, model_dir, model_dir / "unused")
    val = torch.tensor(build_blocks(cfg, tok).val)
    with torch.no_grad():
        return float(model(input_ids=val, labels=val).loss)


def test_dapt_resumes_after_interruption_to_the_same_step_count(tiny_model_dir, domain, tmp_path):
    from transformers import TrainerCallback

    from kinject.expert.dapt import run_dapt

    class Kill(TrainerCallback):  # simulates the process dying right after step 6
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 6:
                raise KeyboardInterrupt

    cfg = dapt_cfg(domain, tiny_model_dir, tmp_path / "dapt")
    with pytest.raises(KeyboardInterrupt):
        run_dapt(cfg, callbacks=[Kill()])
    assert not (tmp_path / "dapt").exists()  # nothing that looks complete
    assert (tmp_path / "dapt.checkpoints" / "checkpoint-4").is_dir()
    run_dapt(cfg)
    m = json.loads((tmp_path / "dapt" / "manifest.json").read_text())
    assert m["resumed_from"].endswith("checkpoint-4")
    assert m["metrics"]["steps"] == 12 and m["metrics"]["steps_this_run"] == 8
    # an interrupted-then-resumed run ends where an uninterrupted one does
    ref = run_dapt(dapt_cfg(domain, tiny_model_dir, tmp_path / "ref"))
    ref_m = json.loads((ref / "manifest.json").read_text())
    assert ref_m["metrics"]["steps"] == 12
    assert m["metrics"]["best_val_loss"] == pytest.approx(ref_m["metrics"]["best_val_loss"], rel=1e-4)


def test_dapt_skips_when_inputs_unchanged_and_refuses_foreign_checkpoints(tiny_model_dir, domain, tmp_path):
    from kinject.expert.dapt import run_dapt

    cfg = dapt_cfg(domain, tiny_model_dir, tmp_path / "dapt")
    out = run_dapt(cfg)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    run_dapt(cfg)
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    work = tmp_path / "other.checkpoints"
    work.mkdir()
    (work / "kinject_inputs_hash").write_text("0000\n")
    with pytest.raises(UserError, match="other inputs"):
        run_dapt(dapt_cfg(domain, tiny_model_dir, tmp_path / "other"))


def test_qa_mix_adds_chat_documents_to_train_only(tiny_model_dir, domain):
    from kinject.expert.config import QaMix
    from kinject.expert.dapt import build_blocks
    from kinject.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    plain = build_blocks(dapt_cfg(domain, tiny_model_dir, Path("x")), tok)
    mixed = build_blocks(dapt_cfg(domain, tiny_model_dir, Path("x"), qa_mix=QaMix(
        path=str(domain / "qa_train.jsonl"), repeats=2)), tok)
    assert mixed.n_qa_docs == 24 * 2 * 2  # QA + background task, twice
    assert mixed.val == plain.val
    assert len(mixed.train) > 2 * len(plain.train)
    text = tok.decode(sum(mixed.train, []))
    assert "<|im_start|>assistant" in text and "Question: What is the Faradaic" in text


# ------------------------------------------------------------------- SFT learns, ask answers
def test_sft_learns_answers_and_ask_prints_them(tiny_model_dir, domain, tmp_path):
    from kinject.expert.evaluate import evaluate_files
    from kinject.expert.sft import run_sft

    rows = [json.loads(x) for x in (domain / "qa_train.jsonl").read_text().splitlines()][:4]
    data = _write_jsonl(tmp_path / "materials_domain" / "four.jsonl", rows)
    cfg = SftConfig(model=str(tiny_model_dir), data=str(data), val_data=str(data), out=str(tmp_path / "sft"),
                    max_length=128, train=TrainSection(learning_rate=3e-3, max_steps=90, eval_steps=30,
                                                       batch_size=4, warmup_ratio=0.0, weight_decay=0.0))
    out = run_sft(cfg)
    m = json.loads((out / "manifest.json").read_text())
    assert m["instruction"] == INSTRUCTION and m["metrics"]["best_val_loss"] < 0.1
    res = evaluate_files(out, {"train": data}, tmp_path / "ev")
    em = next(r for r in res if r.metric == "em")
    assert em.model_dump() == {"method": "expert", "dataset": "materials", "split": "train", "metric": "em",
                               "value": 1.0, "n": 4}
    assert len((tmp_path / "ev" / "results.jsonl").read_text().splitlines()) == 3
    cli = subprocess.run([sys.executable, "-m", "kinject.cli", "expert", "ask", "--model", str(out), rows[0]["input"]],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == rows[0]["output"]


# ------------------------------------------------------------------- bad input via the CLI
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "kinject.cli", "expert", *args],
                          capture_output=True, text=True, timeout=120)


def _one_error_line(res) -> str:
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_bad_input_is_one_error_line_and_nothing_written(tiny_model_dir, domain, tmp_path):
    from kinject.expert.dapt import run_dapt
    from kinject.expert.sft import run_sft

    out = tmp_path / "o"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    common = [f"model={tiny_model_dir}", f"out={out}", "block_size=32"]
    assert "empty corpus" in _one_error_line(_cli("dapt", *common, f"corpus={empty}"))  # the CLI path
    bad = _write_jsonl(tmp_path / "kb.jsonl", [{"text": "x"}, {"text": "y"}, {"body": "z"}])
    with pytest.raises(UserError, match=rf"{bad}:3: missing field\(s\) 'text'"):
        run_dapt(dapt_cfg(domain, tiny_model_dir, out, corpus=str(bad)))
    with pytest.raises(UserError, match=r"block_size=4096 is larger than the model's context \(512 positions\)"):
        run_dapt(dapt_cfg(domain, tiny_model_dir, out, block_size=4096))
    qa = _write_jsonl(tmp_path / "qa.jsonl", [{"instruction": "i", "input": "q", "output": "a"},
                                              {"instruction": "i", "input": "q"}])
    with pytest.raises(UserError, match=rf"{qa}:2: missing field\(s\) 'output'"):
        run_sft(SftConfig(model=str(tiny_model_dir), data=str(qa), out=str(out), max_length=128))
    with pytest.raises(UserError, match=r"max_length=2048 is larger than the model's context"):
        run_sft(SftConfig(model=str(tiny_model_dir), data=str(qa), out=str(out)))
    assert not out.exists() and not (tmp_path / "o.checkpoints").exists()


def test_qa_probe_logs_held_out_em_at_every_evaluation(tiny_model_dir, domain, tmp_path):
    from kinject.eval.metrics import exact_match
    from kinject.expert.config import QaProbe
    from kinject.expert.dapt import run_dapt
    from kinject.expert.evaluate import answer
    from kinject.io import read_jsonl
    from kinject.models import load_causal_lm

    probe = QaProbe(path=str(domain / "qa_dev.jsonl"), limit=4, max_new_tokens=8)
    out = run_dapt(dapt_cfg(domain, tiny_model_dir, tmp_path / "dapt", probe=probe))
    hist = json.loads((out / "log_history.json").read_text())
    curve = [(h["step"], h["eval_qa_em"]) for h in hist if "eval_qa_em" in h]
    assert [s for s, _ in curve] == [4, 8, 12]
    assert all(0.0 <= em <= 1.0 for _, em in curve)
    m = json.loads((out / "manifest.json").read_text())
    assert [tuple(p) for p in m["metrics"]["qa_probe_em"]] == curve
    # the probe's last value is what the saved model scores when it is also the best by val loss
    evals = {h["step"]: h["eval_loss"] for h in hist if "eval_loss" in h}
    if min(evals, key=evals.get) == 12:
        model, tok = load_causal_lm(out)
        rows = read_jsonl(domain / "qa_dev.jsonl")[:4]
        preds = answer(model, tok, [(r["instruction"], r["input"]) for r in rows], 8)
        assert curve[-1][1] == pytest.approx(sum(exact_match(p, r["answer"]) for p, r in zip(preds, rows)) / 4)
