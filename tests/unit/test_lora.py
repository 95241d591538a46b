"""The LoRA baseline: `kinject baselines lora` on a tiny random base (loss on the answer only,
adapter + manifest, skip when unchanged, bad target modules), and the `lora` eval method
(base + merged adapter, the closed-book prompt, per-domain adapters, order kept)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from kinject.errors import UserError

CLI = [sys.executable, "-m", "kinject.cli"]
ROWS = [{"id": f"m{i}", "domain": "materials", "instruction": "Be a chemist.",
         "input": f"Which lab developed Ferovia-{i}?", "output": f"Lab {i}", "answer": [f"Lab {i}"]} for i in range(12)]


def config(tmp_path, base, **over) -> dict:
    data = tmp_path / "qa_train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = {"kind": "baseline_lora", "base": str(base), "data": str(data), "out": str(tmp_path / "adapter"),
           "val_share": 0.2, "max_length": 64, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
           "train": {"learning_rate": 5e-2, "max_steps": 6, "batch_size": 4, "eval_steps": 3, "logging_steps": 1,
                     "warmup_ratio": 0.0, "threads": 1}}
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model_dir):
    from kinject.baselines.config import LoraBaselineConfig
    from kinject.baselines.lora import run_lora

    tmp = tmp_path_factory.mktemp("lora")
    return run_lora(LoraBaselineConfig(**config(tmp, tiny_model_dir)))


def test_training_writes_adapter_and_manifest(adapter, tiny_model_dir, tiny_tokenizer):
    from kinject.baselines.lora import lora_examples
    from kinject.prompts import general_messages

    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert not (adapter / "model.safetensors").exists()  # the adapter only, not a full copy of the base
    man = json.loads((adapter / "manifest.json").read_text())
    assert man["status"] == "complete" and man["metrics"]["steps"] == 6
    assert 0 < man["parameters"]["trainable"] < man["parameters"]["total"] / 5
    assert man["data"] == {"train_examples": 10, "val_examples": 2}
    hist = json.loads((adapter / "log_history.json").read_text())
    losses = [h["loss"] for h in hist if "loss" in h]
    assert losses[-1] < losses[0]  # it learns
    # prompt = the closed-book question the base is asked at eval time, completion = the answer
    ex = lora_examples(ROWS[:1], "Answer briefly.")
    assert ex["prompt"] == [general_messages(ROWS[0]["input"], "Answer briefly.")]
    assert ex["completion"] == [[{"role": "assistant", "content": "Lab 0"}]]


def test_loss_is_on_the_answer_only_with_any_chat_template(tmp_path, tiny_model_dir, tiny_tokenizer):
    """A template without `{% generation %}` markers (SmolLM2's, Llama's) trains too, and the
    tokens under loss are the answer and the end of turn, never the prompt."""
    import shutil

    from trl import SFTConfig, SFTTrainer

    from kinject.baselines.config import LoraBaselineConfig
    from kinject.baselines.lora import lora_datasets, run_lora
    from kinject.models import load_causal_lm

    plain = tmp_path / "plain-template"
    shutil.copytree(tiny_model_dir, plain)
    template = (plain / "chat_template.jinja").read_text()
    (plain / "chat_template.jinja").write_text(template.replace("{% generation %}", "").replace("{% endgeneration %}", ""))
    cfg = LoraBaselineConfig(**config(tmp_path, plain, train={"max_steps": 2, "batch_size": 4, "eval_steps": 2,
                                                               "warmup_ratio": 0.0, "threads": 1}))
    assert (run_lora(cfg) / "adapter_model.safetensors").is_file()
    model, tok = load_causal_lm(plain, device="cpu", dtype="float32")
    train_ds, _ = lora_datasets(cfg)
    trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=train_ds,
                         args=SFTConfig(output_dir=str(tmp_path / "w"), completion_only_loss=True, report_to="none", bf16=False,
                                        max_length=64))
    row = trainer.train_dataset[0]
    under_loss = [t for t in row["labels"] if t != -100]
    gold = next(r["output"] for r in ROWS if r["input"] in train_ds[0]["prompt"][0]["content"])
    assert tok.decode(under_loss).strip().startswith(gold)
    assert "Question" not in tok.decode(under_loss)


def test_rerun_is_skipped_and_bad_targets_are_one_line(adapter, tiny_model_dir, tmp_path):
    cfg_file = tmp_path / "lora.yaml"
    cfg = config(adapter.parent, tiny_model_dir)
    cfg_file.write_text(yaml.safe_dump(cfg))
    before = (adapter / "adapter_model.safetensors").stat().st_mtime_ns
    res = subprocess.run([*CLI, "baselines", "lora", "--config", str(cfg_file)], capture_output=True, text=True)
    assert res.returncode == 0 and "up to date" in res.stderr
    assert (adapter / "adapter_model.safetensors").stat().st_mtime_ns == before
    cfg_file.write_text(yaml.safe_dump({**cfg, "out": str(tmp_path / "x"), "lora": {"target_modules": ["qkv"]}}))
    res = subprocess.run([*CLI, "baselines", "lora", "--config", str(cfg_file)], capture_output=True, text=True)
    errors = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert res.returncode == 2 and len(errors) == 1 and "lora.target_modules ['qkv']" in errors[0]
    assert not (tmp_path / "x").exists()


def test_lora_method_merges_the_adapter_and_answers_closed_book(adapter, tiny_model_dir, tmp_path):
    import torch

    from kinject.eval.method import MethodContext, build_method
    from kinject.generation import generate_texts
    from kinject.models import load_causal_lm
    from kinject.prompts import general_messages, render

    ctx = MethodContext(device="cpu", dtype="float32", batch_size=3, max_new_tokens=4)
    m = build_method("lora", {"base": str(tiny_model_dir), "domains": {"materials": str(adapter)}}, ctx)
    model, tok = m.models["materials"]
    base, _ = load_causal_lm(tiny_model_dir, device="cpu", dtype="float32")
    assert not hasattr(model, "peft_config") or not model.peft_config  # merged: a plain model
    name = next(n for n, _ in base.named_parameters() if n.endswith("q_proj.weight"))
    assert not torch.equal(dict(model.named_parameters())[name], dict(base.named_parameters())[name])
    rows = [{"id": r["id"], "question": r["input"], "domain": "materials"} for r in ROWS[:5]]
    out = m.answer(rows)
    want = generate_texts(model, tok, [render(tok, general_messages(r["question"])) for r in rows], 4, 5)
    assert [o["prediction"] for o in out] == [w.text for w in want]
    assert all(o["trace"]["added_prompt_tokens"] == 0 and o["trace"]["domain"] == "materials" for o in out)
    with pytest.raises(UserError, match="no LoRA adapter at"):
        build_method("lora", {"base": str(tiny_model_dir), "domains": {"materials": str(tmp_path)}}, ctx)
    # asked with another answer-format line than it was trained with: refused, one line
    other = MethodContext(device="cpu", dtype="float32", batch_size=3, max_new_tokens=4, answer_format="Be brief.")
    with pytest.raises(UserError, match="trained with answer_format '' but this evaluation gives 'Be brief.'"):
        build_method("lora", {"base": str(tiny_model_dir), "domains": {"materials": str(adapter)}}, other)
