"""`kinject grip sft`: supervised fine-tuning on synthesized turns, loss on the target turn only.

TRL's SFTTrainer with prompt-completion data: the prompt is the chat-rendered round
(`format.round_messages` -> `prompts.render`, generation prompt included), the completion is
the target turn plus the end-of-turn token; `completion_only_loss` masks the prompt. Devices
and DDP come from `kinject.distributed.trainer_device_kwargs()` (torchrun / accelerate work as
for every other stage).

Control tokens: by default they must be single special tokens (clean parsing, stop on
`[SOLVED]`). A tokenizer without them gets them added and the embeddings resized (said on
stderr and in the manifest); `control_tokens: text` keeps them as plain sub-word text.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kinject.errors import UserError
from kinject.grip.format import CONTROL_TOKENS
from kinject.log import get_logger

log = get_logger(__name__)


def ensure_control_tokens(model, tok, mode: str = "special") -> list[str]:
    """Add the GRIP control tokens as special tokens (and resize) when missing; returns the
    tokens added. `text` mode adds nothing (the tokens stay sub-word text)."""
    if mode == "text":
        return []
    from kinject.models import add_special_tokens

    missing = add_special_tokens(model, tok, CONTROL_TOKENS)
    if missing:
        log.info(f"grip sft: tokenizer lacked {', '.join(missing)}; added them as special tokens and "
                 f"resized the embeddings to {len(tok)}")
    for t in CONTROL_TOKENS:
        if len(tok(t, add_special_tokens=False).input_ids) != 1:
            raise UserError(f"grip sft: {t} is not a single token after adding it; check the tokenizer")
    return missing


CONTROL_WORDS = {"[ANSWER]": " answer", "[SOLVED]": " solved", "[INTERMEDIARY]": " intermediary",
                 "[RETRIEVE]": " retrieve"}


def init_control_embeddings(model, tok) -> dict[str, float]:
    """Set each control token's embedding (input and, when untied, output) to the mean embedding
    of its word's pieces (`[ANSWER]` <- " answer"); returns the norms before, for the manifest.

    Why: a base pretrained without GRIP turns never saw these ids, so pretraining drove their
    logits far down (measured on the tiny base: loss 18-24 on `[ANSWER]` / `[SOLVED]` at the start
    of SFT, vs ~3 on the answer words). Those gradients rewrite the whole network (the tiny base
    lost 0.84 -> 0.30 closed-book EM on popular facts in one SFT). Initializing new tokens from
    a description of their meaning is the usual remedy; a word-mean start costs no training."""
    import torch

    emb_in = model.get_input_embeddings().weight
    emb_out = model.get_output_embeddings().weight if model.get_output_embeddings() is not None else None
    before = {}
    with torch.no_grad():
        for tok_str, word in CONTROL_WORDS.items():
            tid = tok.convert_tokens_to_ids(tok_str)
            pieces = tok(word, add_special_tokens=False).input_ids
            before[tok_str] = round(float(emb_in[tid].norm()), 4)
            emb_in[tid] = emb_in[pieces].mean(0)
            if emb_out is not None and emb_out.data_ptr() != emb_in.data_ptr():
                emb_out[tid] = emb_out[pieces].mean(0)
    return before


def lora_wrap(model, tok, cfg):
    """PEFT LoRA on every linear layer, plus trainable embedding rows for the control tokens only:
    the base's weights, hence its closed-book facts, stay untouched while training; the adapters
    are merged into the saved model (`merge_and_unload`)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                             target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM"))
    if cfg.control_tokens == "special":
        # By hand, not PEFT's `trainable_token_indices`: its wrapper of the tied LM head breaks TRL's
        # fused LM-head loss (AttributeError: 'TrainableTokensWrapper' object has no attribute
        # 'bias', trl 1.16 / peft 0.21). A gradient mask keeps every other row frozen (Adam moves a
        # row only where it had gradient; weight decay is off for LoRA runs, see train_sft).
        import torch

        emb = model.get_input_embeddings().weight
        rows = torch.zeros(emb.shape[0], 1, dtype=emb.dtype)
        rows[[tok.convert_tokens_to_ids(t) for t in CONTROL_TOKENS]] = 1.0
        emb.requires_grad_(True)
        emb.register_hook(lambda g: g * rows.to(g.device))
    return model


def sft_records(rows: list[dict], tok) -> list[dict]:
    """Prompt-completion records: the rendered round and `target + eos` (end of turn)."""
    from kinject.grip.synth import example_messages
    from kinject.prompts import render

    eos = tok.eos_token or ""
    recs = []
    for r in rows:
        recs.append({"prompt": render(tok, example_messages(r)), "completion": r["target"] + eos})
    return recs


def data_files(data: str | Path | list[str]) -> list[Path]:
    return [Path(data)] if isinstance(data, (str, Path)) else [Path(f) for f in data]


def read_sft_rows(data: str | Path | list[str], limit: int | None = None) -> list[dict]:
    """The rows of one sft.jsonl or of several (in the order given)."""
    from kinject.io import read_jsonl

    files = data_files(data)
    if not files:
        raise UserError("grip sft: `data` names no file")
    rows: list[dict] = []
    for p in files:
        mine = read_jsonl(p, required=["question", "intermediary", "references", "target"])
        for i, r in enumerate(mine, 1):
            if not isinstance(r["target"], str) or not r["target"].strip():
                raise UserError(f"{p}: record {i} has an empty 'target'")
            if not isinstance(r["references"], list):
                raise UserError(f"{p}: record {i}: 'references' must be a list of passage texts")
        rows += mine
    return rows[:limit] if limit else rows


def train_sft(cfg, out: str | Path | None = None) -> Path:
    import json

    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from kinject.distributed import rank_and_world, trainer_device_kwargs
    from kinject.io import atomic_dir
    from kinject.models import load_causal_lm, resolve_dtype, save_model
    from kinject.runs import RunRecorder, inputs_hash, is_complete

    out = Path(out or cfg.out)
    h = inputs_hash(cfg, *data_files(cfg.data), cfg.model)
    if is_complete(out, h):
        log.info(f"grip sft: {out} is complete for these inputs; skipping")
        return out
    torch.set_num_threads(cfg.threads)
    rows = read_sft_rows(cfg.data, cfg.limit)
    rec = RunRecorder(out, "grip sft", cfg, cfg.seed)
    model, tok = load_causal_lm(cfg.model, device="cpu", dtype="float32")
    rec.extra["control_tokens_added"] = ensure_control_tokens(model, tok, cfg.control_tokens)
    if cfg.control_tokens == "special" and cfg.control_init == "words":
        rec.extra["control_embedding_norms_before_init"] = init_control_embeddings(model, tok)
    recs = sft_records(rows, tok)
    # a row over max_length would lose its target turn to truncation: drop it and say so
    lengths = [len(ids) for ids in tok([r["prompt"] + r["completion"] for r in recs], add_special_tokens=False).input_ids]
    n_long = sum(n > cfg.max_length for n in lengths)
    recs = [r for r, n in zip(recs, lengths, strict=True) if n <= cfg.max_length]
    if n_long:
        log.warning(f"grip sft: dropped {n_long} rows longer than max_length={cfg.max_length}")
    if not recs:
        raise UserError(f"grip sft: no row fits max_length={cfg.max_length}; raise it")
    work = out.parent / f".{out.name}.work"
    device_kw = trainer_device_kwargs()
    # always passed: TRL's SFTConfig turns activation checkpointing on by default, which recomputes
    # every layer's forward in the backward pass (slower, for memory this stage rarely needs)
    device_kw["gradient_checkpointing"] = cfg.gradient_checkpointing
    if cfg.bf16 and torch.cuda.is_available():
        device_kw["bf16"] = True
    args = SFTConfig(
        output_dir=str(work), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio, adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2, weight_decay=0.0 if cfg.lora.r else cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length, completion_only_loss=True, logging_steps=cfg.logging_steps,
        save_strategy="no", report_to="none", seed=cfg.seed,
        dataloader_num_workers=0, disable_tqdm=False,
        **device_kw,
    )
    if cfg.lora.r:
        model = lora_wrap(model, tok, cfg)
        rec.extra["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(recs), processing_class=tok)
    with rec.timer("train"):
        result = trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    rec.metrics = {"rows": len(recs), "steps": trainer.state.global_step, "train_loss": result.training_loss,
                   "first_logged_loss": losses[0] if losses else None,
                   "last_logged_loss": losses[-1] if losses else None, "dropped_long_rows": n_long,
                   "max_row_tokens": max(lengths)}
    rank, _ = rank_and_world()
    if rank == 0:
        model = trainer.model
        if cfg.lora.r:
            model = model.merge_and_unload()  # a plain checkpoint: the agent and RL load it as is
        dtype = resolve_dtype(cfg.save_dtype) if cfg.save_dtype != "auto" else None
        with atomic_dir(out) as tmp:
            save_model(model, tok, tmp, dtype=dtype)
            (tmp / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
            rec.write(tmp, inputs_hash=h)
    shutil.rmtree(work, ignore_errors=True)
    return out
