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
from kinject.tokenizer import answer_lead

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
    from kinject.baselines.lora import lora_conversations
    from kinject.prompts import general_messages, render

    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert not (adapter / "model.safetensors").exists()  # the adapter only, not a full copy of the base
    man = json.loads((adapter / "manifest.json").read_text())
    assert man["status"] == "complete" and man["metrics"]["steps"] == 6
    assert 0 < man["parameters"]["trainable"] < man["parameters"]["total"] / 5
    assert man["data"] == {"train_examples": 10, "val_examples": 2}
    hist = json.loads((adapter / "log_history.json").read_text())
    losses = [h["loss"] for h in hist if "loss" in h]
    assert losses[-1] < losses[0]  # it learns
    # the training text is the closed-book prompt the base answers with, then the answer
    conv = lora_conversations(ROWS[:1])[0]
    assert conv[:-1] == general_messages(ROWS[0]["input"]) and conv[-1] == {"role": "assistant", "content": "Lab 0"}
    full = render(tiny_tokenizer, conv, add_generation_prompt=False)
    assert full.startswith(render(tiny_tokenizer, general_messages(ROWS[0]["input"])))
    # loss on the answer only: the assistant mask covers the answer (and end of turn), not the prompt
    enc = tiny_tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tiny_tokenizer.decode(masked).startswith(answer_lead("Lab 0"))  # as the template writes it


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
