"""Stage I: domain-adaptive pretraining (DAPT) of the expert with the transformers `Trainer`.

Documents are tokenized, each followed by the separator, packed into fixed blocks with the
ragged tail dropped; a share of whole documents is held out for validation. Full-parameter
causal-LM training, evaluation every `eval_steps`, the best checkpoint by validation loss is
the output. Optionally QA examples are mixed into the training documents (`qa_mix`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from kinject.errors import UserError
from kinject.expert.config import DaptConfig
from kinject.expert.data import (
    holdout,
    load_corpus,
    load_qa,
    pack_blocks,
    render_conversations,
    sft_conversations,
    tokenize_documents,
)
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


@dataclass
class PackedCorpus:
    train: list[list[int]]
    val: list[list[int]]
    n_train_docs: int
    n_val_docs: int
    n_qa_docs: int


def build_blocks(cfg: DaptConfig, tokenizer) -> PackedCorpus:
    """Train/val blocks from the corpus (+ QA mix in train only); errors name the fix."""
    docs = load_corpus(cfg.corpus)
    train_docs, val_docs = holdout(docs, cfg.val_share, cfg.seed, "documents")
    n_corpus_train = len(train_docs)
    n_qa = 0
    if cfg.qa_mix is not None:
        rows = load_qa(cfg.qa_mix.path, need_background=cfg.qa_mix.background)
        qa_docs = render_conversations(tokenizer, sft_conversations(rows, cfg.qa_mix.background))
        qa_docs = qa_docs * cfg.qa_mix.repeats
        n_qa = len(qa_docs)
        train_docs = train_docs + qa_docs
    if cfg.qa_mix is not None:
        # interleave corpus and QA so every block mixes both kinds of text
        random.Random(cfg.seed + 1).shuffle(train_docs)
    sep = tokenizer(cfg.separator, add_special_tokens=False)["input_ids"] if cfg.separator else []
    train = pack_blocks(tokenize_documents(tokenizer, train_docs), sep, cfg.block_size)
    val = pack_blocks(tokenize_documents(tokenizer, val_docs), sep, cfg.block_size)
    if not train:
        raise UserError(
            f"{cfg.corpus}: the training documents give no full block of {cfg.block_size} tokens; "
            "lower block_size or add documents"
        )
    if not val:
        raise UserError(
            f"{cfg.corpus}: the {len(val_docs)} held-out document(s) give no full block of "
            f"{cfg.block_size} tokens; raise val_share or lower block_size"
        )
    return PackedCorpus(train, val, n_corpus_train, len(val_docs), n_qa)


def dapt_inputs_hash(cfg: DaptConfig) -> str:
    files = [cfg.model, cfg.corpus] + ([cfg.qa_mix.path] if cfg.qa_mix else [])
    return inputs_hash(cfg.model_dump(exclude={"out"}), *files)


def run_dapt(cfg: DaptConfig, force: bool = False, callbacks: list | None = None) -> Path:
    """Train; return the output directory. Skips when `<out>` is complete for the same inputs."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    out = Path(cfg.out)
    h = dapt_inputs_hash(cfg)
    if up_to_date(out, h, force, "expert dapt"):
        return out

    # validate everything before anything is written
    model_dir = checked_model_dir(cfg.model, cfg.block_size, "block_size")
    from kinject.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    packed = build_blocks(cfg, tok)

    rec = RunRecorder(out, "expert dapt", cfg, seed=cfg.seed)
    rec.extra["data"] = {
        "train_docs": packed.n_train_docs, "val_docs": packed.n_val_docs, "qa_mix_docs": packed.n_qa_docs,
        "train_blocks": len(packed.train), "val_blocks": len(packed.val), "block_size": cfg.block_size,
        "train_tokens_per_epoch": len(packed.train) * cfg.block_size,
    }
    work, resume, model, tok = open_run(out, h, cfg.train, str(model_dir), cfg.dtype, rec, "expert dapt")
    train_ds = Dataset.from_dict({"input_ids": packed.train, "labels": packed.train})
    val_ds = Dataset.from_dict({"input_ids": packed.val, "labels": packed.val})
    span = make_progress_callback()
    probe = make_probe_callback(cfg.probe, tok)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**training_kwargs(cfg.train, work, cfg.seed, count_tokens="all")),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=default_data_collator,  # blocks are full: no padding, labels = inputs
        processing_class=tok,
        callbacks=[span, *filter(None, [probe]), *(callbacks or [])],
    )
    with rec.timer("train"):
        trainer.train(resume_from_checkpoint=resume)
    finish_run(trainer, tok, out, rec, span, h, cfg.train, f"DAPT {Path(cfg.corpus).parent.name}", resume)
    return out
