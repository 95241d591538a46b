"""The LoRA baseline (parametric knowledge injection): a PEFT LoRA fine-tune of the base on a
domain's QA train split, asked at eval time exactly like the closed-book base.

Each example is a prompt-completion pair: the prompt is `general_messages(input, answer_format)`
(what the base is asked at eval time), the completion the assistant answer `output`; TRL's
`SFTTrainer` renders both with the base's own chat template and puts the loss on the completion
only (so any template works, with or without `{% generation %}` markers: SmolLM2's has none),
and `peft_config` wraps the frozen base with LoRA adapters. The
run layout, resume, best-checkpoint selection, curves and manifest are the expert stages'
(`kinject.expert.training`); what is saved is the adapter (`adapter_model.safetensors`,
`adapter_config.json`) plus the tokenizer. The `lora` eval method loads base + adapter and
merges them.
"""

from __future__ import annotations

from pathlib import Path

from kinject.baselines.config import LoraBaselineConfig
from kinject.errors import UserError
from kinject.runs import RunRecorder, inputs_hash


def lora_examples(rows: list[dict], answer_format: str = "") -> dict[str, list]:
    """Columns `prompt` (the closed-book question the base is asked at eval time) and
    `completion` (the gold answer as the assistant turn)."""
    from kinject.prompts import general_messages

    return {"prompt": [general_messages(r["input"], answer_format) for r in rows],
            "completion": [[{"role": "assistant", "content": str(r["output"])}] for r in rows]}


def lora_datasets(cfg: LoraBaselineConfig):
    from datasets import Dataset

    from kinject.expert.data import holdout, load_qa

    rows = load_qa(cfg.data)
    if cfg.limit:
        rows = rows[: cfg.limit]
    if cfg.val_data:
        train_rows, val_rows = rows, load_qa(cfg.val_data)
    else:
        train_rows, val_rows = holdout(rows, cfg.val_share, cfg.seed, "QA records")
    return (Dataset.from_dict(lora_examples(train_rows, cfg.answer_format)),
            Dataset.from_dict(lora_examples(val_rows, cfg.answer_format)))


def lora_inputs_hash(cfg: LoraBaselineConfig) -> str:
    files = [cfg.data, cfg.base, *([cfg.val_data] if cfg.val_data else [])]
    return inputs_hash(cfg.model_dump(exclude={"out"}), *files)


def peft_config(cfg: LoraBaselineConfig, model):
    from peft import LoraConfig

    if cfg.lora.r < 1:
        raise UserError("lora.r must be >= 1 for the LoRA baseline (it trains adapters only)")
    targets = cfg.lora.target_modules
    if isinstance(targets, str):  # "all-linear": PEFT resolves it
        return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=targets, task_type="CAUSAL_LM")
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise UserError(f"lora.target_modules {missing} are not modules of {cfg.base} "
                        f"(it has e.g. {', '.join(sorted(n for n in names if n.endswith('proj'))[:8])})")
    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")


def run_lora(cfg: LoraBaselineConfig, force: bool = False) -> Path:
    """Train (or skip when complete with the same inputs, or resume) -> the adapter directory."""
    from trl import SFTConfig, SFTTrainer

    from kinject.expert.training import (
        checked_model_dir,
        finish_run,
        make_progress_callback,
        open_run,
        training_kwargs,
        up_to_date,
    )
    from kinject.io import require_file

    out = Path(cfg.out)
    base = checked_model_dir(cfg.base, cfg.max_length, "max_length")
    require_file(cfg.data, "QA train file (build the world with `kinject world build`)")
    h = lora_inputs_hash(cfg)
    if up_to_date(out, h, force, "baselines lora"):
        return out
    train_ds, val_ds = lora_datasets(cfg)
    rec = RunRecorder(out, "baselines lora", cfg, seed=cfg.seed)
    rec.extra["data"] = {"train_examples": len(train_ds), "val_examples": len(val_ds)}
    work, resume, model, tok = open_run(out, h, cfg.train, str(base), cfg.dtype, rec, "baselines lora")
    args = SFTConfig(**training_kwargs(cfg.train, work, cfg.seed), max_length=cfg.max_length, packing=False,
                     completion_only_loss=True, dataset_num_proc=None)
    span = make_progress_callback()
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tok,
                         peft_config=peft_config(cfg, model), callbacks=[span])
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    rec.extra["parameters"] = {"trainable": trainable, "total": total}
    with rec.timer("train"):
        trainer.train(resume_from_checkpoint=resume)
    finish_run(trainer, tok, out, rec, span, h, cfg.train, f"LoRA baseline {Path(cfg.data).parent.name}", resume)
    return out


def load_lora_model(base: str | Path, adapter: str | Path, device: str = "auto", dtype: str = "auto"):
    """(base with the adapter merged in, tokenizer) for fast greedy decoding."""
    from peft import PeftModel

    from kinject.models import load_causal_lm

    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"no LoRA adapter at {adapter} (train one with `kinject baselines lora --config ...`)")
    model, tok = load_causal_lm(base, device=device, dtype=dtype)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.eval()
    return merged, tok
