"""What Stage I and Stage II share: Trainer arguments, resume, best checkpoint, curves, manifest.

Layout of a run with output `<out>`:
- `<out>.checkpoints/`: the Trainer's checkpoints while training (resume state). A re-run with
  the same inputs resumes from the last one; a re-run with different inputs is refused rather
  than silently mixing two trainings. Removed after success unless `keep_checkpoints`.
- `<out>/`: written only on success, atomically: the best model by validation loss, its
  tokenizer, `loss_curves.png`, `log_history.json`, `manifest.json`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from kinject.distributed import trainer_device_kwargs
from kinject.errors import UserError
from kinject.expert.config import TrainSection
from kinject.io import atomic_dir, write_text_atomic
from kinject.log import get_logger
from kinject.runs import RunRecorder

log = get_logger(__name__)

HASH_FILE = "kinject_inputs_hash"


def work_dir_for(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".checkpoints")


def training_kwargs(train: TrainSection, work_dir: Path, seed: int, count_tokens: str = "non_padding") -> dict[str, Any]:
    """`TrainingArguments` fields (also valid for TRL's `SFTConfig`) for one config section.

    `count_tokens`: "all" for packed blocks (no padding; the separator may be the pad token),
    "non_padding" for padded SFT batches."""
    kw: dict[str, Any] = dict(
        output_dir=str(work_dir),
        learning_rate=train.learning_rate,
        weight_decay=train.weight_decay,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        warmup_steps=train.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=train.lr_scheduler,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        max_grad_norm=train.max_grad_norm,
        eval_strategy="steps",
        eval_steps=train.eval_steps,
        save_strategy="steps",
        save_steps=train.eval_steps,  # load_best_model_at_end needs saves on eval steps
        save_total_limit=train.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=train.logging_steps,
        logging_first_step=True,
        report_to="none",
        seed=seed,
        data_seed=seed,
        activation_checkpointing=train.gradient_checkpointing,
        dataloader_num_workers=train.dataloader_workers,
        include_num_input_tokens_seen=count_tokens,
    )
    kw.update(trainer_device_kwargs())
    if train.bf16 and torch.cuda.is_available():
        kw.update(bf16=True, fp16=False)
    return kw


def prepare_work_dir(work_dir: Path, inputs_hash: str) -> str | None:
    """Create the checkpoint dir (or check it belongs to these inputs); return the checkpoint to resume."""
    from transformers.trainer_utils import get_last_checkpoint

    marker = work_dir / HASH_FILE
    if work_dir.is_dir() and marker.is_file():
        if marker.read_text().strip() != inputs_hash:
            raise UserError(
                f"{work_dir} holds checkpoints of a run with other inputs or config; "
                "remove it to start over, or restore that config to resume"
            )
        return get_last_checkpoint(str(work_dir))
    work_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(marker, inputs_hash + "\n")
    return None


def make_progress_callback():
    """Records where this invocation started (step, tokens, time) for honest throughput."""
    from transformers import TrainerCallback

    class RunSpan(TrainerCallback):
        def __init__(self) -> None:
            self.start_step = 0
            self.start_tokens = 0
            self.t0 = time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_step = state.global_step
            self.start_tokens = int(state.num_input_tokens_seen or 0)
            self.t0 = time.perf_counter()

    return RunSpan()


def make_probe_callback(probe, tokenizer):
    """A `QaProbe` as a TrainerCallback: adds `eval_qa_em` to the evaluation metrics (logged,
    plotted, kept in log_history). None when no probe is configured."""
    if probe is None:
        return None
    from transformers import TrainerCallback

    from kinject.eval.metrics import exact_match
    from kinject.io import read_jsonl

    rows = read_jsonl(probe.path, required=["instruction", "input", "answer"])[: probe.limit]

    class QaProbeCallback(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            from kinject.expert.evaluate import answer

            if model is None or metrics is None or not rows:
                return
            was_training = model.training
            model.eval()
            preds = answer(model, tokenizer, [(r["instruction"], r["input"]) for r in rows], probe.max_new_tokens)
            model.train(was_training)
            metrics["eval_qa_em"] = round(sum(exact_match(p, r["answer"]) for p, r in zip(preds, rows)) / len(rows), 4)
            state.log_history.append({"step": state.global_step, "eval_qa_em": metrics["eval_qa_em"]})

    return QaProbeCallback()


def plot_loss_curves(log_history: list[dict], path: Path, title: str) -> None:
    from kinject.plots import save_figure, subplots

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    val = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig, ax = subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", lw=1.5, ms=3)
        best = min(val, key=lambda p: p[1])
        ax.axvline(best[0], color="grey", ls=":", lw=1, label=f"best val {best[1]:.3f} @ {best[0]}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(loc="upper left")
    probe = [(h["step"], h["eval_qa_em"]) for h in log_history if "eval_qa_em" in h]
    if probe:
        ax2 = ax.twinx()
        ax2.plot(*zip(*probe), "s--", color="tab:green", lw=1, ms=3, label="QA probe EM")
        ax2.set_ylabel("QA probe EM")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def finish_run(
    trainer,
    tokenizer,
    out: Path,
    rec: RunRecorder,
    span,
    inputs_hash: str,
    train: TrainSection,
    title: str,
    resumed_from: str | None,
) -> Path | None:
    """Save the best model, curves, history and manifest atomically (main process only)."""
    from kinject.models import set_generation_stops

    state = trainer.state
    run_s = time.perf_counter() - span.t0
    tokens = int(state.num_input_tokens_seen or 0)
    evals = [h["eval_loss"] for h in state.log_history if "eval_loss" in h]
    rec.metrics.update(
        steps=state.global_step,
        epochs=round(state.epoch or 0.0, 4),
        train_tokens=tokens,
        tokens_per_s=round((tokens - span.start_tokens) / run_s, 1) if run_s > 0 else None,
        steps_this_run=state.global_step - span.start_step,
        train_wall_time_s=round(run_s, 2),
        best_val_loss=state.best_metric,
        best_checkpoint_step=_step_of(state.best_model_checkpoint),
        final_val_loss=evals[-1] if evals else None,
        qa_probe_em=[(h["step"], h["eval_qa_em"]) for h in state.log_history if "eval_qa_em" in h] or None,
        world_size=trainer.args.world_size,
    )
    rec.extra["resumed_from"] = resumed_from
    if not trainer.is_world_process_zero():
        return None
    model = trainer.model
    with atomic_dir(out) as tmp:
        set_generation_stops(model, tokenizer)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "log_history.json").write_text(json.dumps(state.log_history, indent=1))
        plot_loss_curves(state.log_history, tmp / "loss_curves.png", title)
        rec.write(tmp, inputs_hash=inputs_hash)
    if not train.keep_checkpoints:
        shutil.rmtree(work_dir_for(out), ignore_errors=True)
    return out


def _step_of(checkpoint: str | None) -> int | None:
    if not checkpoint:
        return None
    try:
        return int(Path(checkpoint).name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def up_to_date(out: Path, inputs_hash: str, force: bool, label: str) -> bool:
    """True (and says so) when `out` is complete for these inputs and no rerun is forced."""
    from kinject.runs import is_complete

    if force or not is_complete(out, inputs_hash):
        return False
    log.info(f"{label}: {out} is up to date (inputs unchanged), skipping")
    return True


def checked_model_dir(path: str, length: int, what: str) -> Path:
    """A local model dir with a tokenizer whose context holds `length` tokens (else UserError)."""
    from transformers import AutoConfig

    from kinject.models import check_model_dir

    model_dir = check_model_dir(path, need_tokenizer=True)
    check_context(AutoConfig.from_pretrained(str(model_dir), local_files_only=True), length, what)
    return model_dir


def check_context(model_config, length: int, what: str) -> None:
    ctx = getattr(model_config, "max_position_embeddings", None)
    if ctx is not None and length > ctx:
        raise UserError(f"{what}={length} is larger than the model's context ({ctx} positions); use {what}<={ctx}")


def set_threads(train: TrainSection) -> None:
    # Measured here: on a 2-core CPU shared with other jobs, 2 torch threads ran a training
    # step 5-10x slower than 1 thread (OpenMP threads wait on each other under contention).
    if train.threads and not torch.cuda.is_available():
        torch.set_num_threads(train.threads)


def load_trainable(path: str, dtype: str, gradient_checkpointing: bool):
    """(model in train mode, tokenizer) from a local directory."""
    from kinject.models import load_causal_lm

    model, tok = load_causal_lm(path, device="cpu", dtype=_train_dtype(dtype))
    model.train()
    if gradient_checkpointing:
        model.config.use_cache = False
    return model, tok


def _train_dtype(dtype: str) -> str:
    # Weights stay fp32 for training (mixed precision is the Trainer's bf16 flag); the Trainer
    # moves the model to the right device itself.
    return "float32" if dtype == "auto" else dtype


def open_run(out: Path, inputs_hash: str, train: TrainSection, model_path: str, dtype: str, rec: RunRecorder,
             label: str):
    """The start every trainer shares: checkpoint dir (and what to resume from), threads, model.

    -> (work_dir, resume checkpoint or None, model, tokenizer)."""

    work = work_dir_for(out)
    resume = prepare_work_dir(work, inputs_hash)
    if resume:
        log.info(f"{label}: resuming from {resume}")
    set_threads(train)
    with rec.timer("load_model"):
        model, tok = load_trainable(model_path, dtype, train.gradient_checkpointing)
    return work, resume, model, tok
