"""Stage II: expert QA-SFT with TRL's `SFTTrainer`, loss on the assistant turn only.

Each example is a conversation: user = `expert_messages(instruction, input)`, assistant =
`output`, rendered by the tokenizer's chat template. `assistant_only_loss=True` masks every
position outside the template's `{% generation %}` span (TRL swaps in a training template with
those markers for templates that lack them, e.g. Qwen3's). `enable_thinking=False` is passed
to the template (Qwen3 non-thinking mode; ignored by templates that do not use it).
Optionally the background-writing task is mixed in (assistant = the row's `background`).
"""

from __future__ import annotations

from pathlib import Path

from kinject.expert.config import SftConfig
from kinject.expert.data import holdout, load_qa, sft_conversations
from kinject.expert.evaluate import most_common_instruction
from kinject.expert.training import (
    checked_model_dir,
    finish_run,
    make_probe_callback,
    make_progress_callback,
    open_run,
    training_kwargs,
    up_to_date,
)
from kinject.runs import RunRecorder, inputs_hash


def template_kwargs(cfg: SftConfig) -> dict:
    return {} if cfg.enable_thinking is None else {"enable_thinking": cfg.enable_thinking}


def sft_datasets(cfg: SftConfig):
    """(train, val) `datasets.Dataset`s of conversations (`messages`, optional template kwargs),
    and the instruction most used in training (the default of `expert ask`)."""
    from datasets import Dataset

    bg = cfg.background
    rows = load_qa(cfg.data, need_background=bg.enabled)
    if cfg.val_data:
        train_rows, val_rows = rows, load_qa(cfg.val_data, need_background=bg.enabled)
    else:
        train_rows, val_rows = holdout(rows, cfg.val_share, cfg.seed, "QA records")

    def to_ds(part: list[dict]) -> Dataset:
        convs = sft_conversations(part, background=bg.enabled, system=bg.system)
        cols: dict = {"messages": convs}
        if template_kwargs(cfg):
            cols["chat_template_kwargs"] = [template_kwargs(cfg)] * len(convs)
        return Dataset.from_dict(cols)

    return to_ds(train_rows), to_ds(val_rows), most_common_instruction(train_rows)


def sft_inputs_hash(cfg: SftConfig) -> str:
    files = [cfg.model, cfg.data] + ([cfg.val_data] if cfg.val_data else [])
    return inputs_hash(cfg.model_dump(exclude={"out"}), *files)


def make_sft_trainer(cfg: SftConfig, model, tok, train_ds, val_ds, work: Path, callbacks=()):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        **training_kwargs(cfg.train, work, cfg.seed),
        max_length=cfg.max_length,
        packing=False,
        assistant_only_loss=True,
        dataset_num_proc=None,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tok,
        callbacks=list(callbacks),
    )


def run_sft(cfg: SftConfig, force: bool = False, callbacks: list | None = None) -> Path:

    out = Path(cfg.out)
    h = sft_inputs_hash(cfg)
    if up_to_date(out, h, force, "expert sft"):
        return out

    model_dir = checked_model_dir(cfg.model, cfg.max_length, "max_length")
    train_ds, val_ds, instruction = sft_datasets(cfg)

    rec = RunRecorder(out, "expert sft", cfg, seed=cfg.seed)
    rec.extra["data"] = {"train_examples": len(train_ds), "val_examples": len(val_ds),
                         "background_task": cfg.background.enabled}
    rec.extra["instruction"] = instruction
    work, resume, model, tok = open_run(out, h, cfg.train, str(model_dir), cfg.dtype, rec, "expert sft")
    span = make_progress_callback()
    probe = make_probe_callback(cfg.probe, tok)
    trainer = make_sft_trainer(cfg, model, tok, train_ds, val_ds, work, [span, *filter(None, [probe]), *(callbacks or [])])
    with rec.timer("train"):
        trainer.train(resume_from_checkpoint=resume)
    finish_run(trainer, tok, out, rec, span, h, cfg.train, f"QA-SFT {Path(cfg.data).parent.name}", resume)
    return out
