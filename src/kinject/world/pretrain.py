"""`kinject world pretrain`: the world tokenizer and the two "public" foundation models.

1. Tokenizer: byte-level BPE with single-digit tokens (`kinject.tokenizer.train_tokenizer`),
   trained on the base's pretraining text only, so private names and values are spelled with
   sub-words the models have seen (and no private name gets a token of its own).
2. Base and expert init: Qwen3-architecture models trained from scratch on
   `general/pretrain.jsonl` (popular public facts, closed-book QA, fresh-fact reading
   comprehension; never a private fact). The expert init is smaller; it learns facts later
   (DAPT).

The training loop is a plain torch loop rather than `transformers.Trainer`: for 1-3M-parameter
models on a shared 2-core CPU the Trainer's per-step overhead and data collation cost a
noticeable share of the budget, and we need control the Trainer does not give cheaply:
greedy packing of whole documents into fixed-length rows, answer-only loss on chat rows and a
schedule that ends at a wall-clock budget (the CPU is shared, so tokens/s vary).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch

from kinject.errors import UserError
from kinject.io import iter_jsonl, require_dir, require_file, write_json_atomic
from kinject.log import get_logger
from kinject.runs import RunRecorder, inputs_hash, is_complete
from kinject.world.config import FoundationConfig, ModelShape, TrainSettings
from kinject.world.render import split_prompt

log = get_logger(__name__)

IGNORE = -100


def corpus_rows(world: Path) -> list[dict]:
    return list(iter_jsonl(require_file(world / "general/pretrain.jsonl", "pretraining corpus"), ["text"]))


def train_world_tokenizer(rows: list[dict], vocab_size: int):
    from kinject.tokenizer import train_tokenizer

    return train_tokenizer((r["text"] for r in rows), vocab_size=vocab_size, min_frequency=2)


def encode_corpus(tok, rows: list[dict], answer_only: bool) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per document. Chat rows: the prompt is context (labels ignored) when
    `answer_only`; the passages of reading examples are random fresh facts, unpredictable by
    design, and their loss would drown the answer signal."""
    prompts, answers = zip(*(split_prompt(r["text"]) for r in rows))
    enc_p = tok(list(prompts), add_special_tokens=False)["input_ids"]
    enc_a = tok(list(answers), add_special_tokens=False)["input_ids"]
    docs = []
    for p, a in zip(enc_p, enc_a):
        if a:
            labels = ([IGNORE] * len(p) if answer_only else list(p)) + list(a)
        else:
            labels = list(p)
        docs.append((list(p) + list(a), labels))
    return docs


def pack(docs, seq_len: int, pad_id: int, sep_id: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy packing of whole documents (shuffled) into rows of seq_len, separated by the
    end-of-document token; a document never straddles two rows (a reading example cut from its
    passage would teach guessing)."""
    order = list(range(len(docs)))
    rng.shuffle(order)
    rows_x, rows_y = [], []
    cur_x: list[int] = []
    cur_y: list[int] = []
    for i in order:
        x, y = docs[i]
        x, y = x[: seq_len - 1], y[: seq_len - 1]
        if len(cur_x) + len(x) + 1 > seq_len:
            pad = seq_len - len(cur_x)
            rows_x.append(cur_x + [pad_id] * pad)
            rows_y.append(cur_y + [IGNORE] * pad)
            cur_x, cur_y = [], []
        cur_x += x + [sep_id]
        cur_y += y + [IGNORE]
    if cur_x:
        pad = seq_len - len(cur_x)
        rows_x.append(cur_x + [pad_id] * pad)
        rows_y.append(cur_y + [IGNORE] * pad)
    return torch.tensor(rows_x), torch.tensor(rows_y)


def lm_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token loss computing vocabulary logits only where a label exists. With answer-only
    loss most positions are context, and the output projection is a large share of a tiny
    model's compute; equals `model(input_ids=x, labels=y).loss` (a unit test checks it)."""
    h = model.model(input_ids=x).last_hidden_state[:, :-1]
    target = y[:, 1:]
    keep = target != IGNORE
    logits = model.lm_head(h[keep])
    return torch.nn.functional.cross_entropy(logits.float(), target[keep])


def lr_at(progress: float, step: int, ts: TrainSettings) -> float:
    if step < ts.warmup_steps:
        return ts.learning_rate * (step + 1) / ts.warmup_steps
    p = min(1.0, progress)
    return ts.learning_rate * (ts.min_lr_ratio + (1 - ts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def quick_eval(model, tok, items: list[tuple[str, list[str]]]) -> float:
    from kinject.eval.metrics import exact_match
    from kinject.generation import generate_texts

    model.eval()
    gens = generate_texts(model, tok, [p for p, _ in items], max_new_tokens=12, batch_size=64)
    model.train()
    return sum(exact_match(g.text, a) for g, (_, a) in zip(gens, items)) / max(1, len(items))


def eval_items(world: Path, tok, n: int) -> dict[str, list[tuple[str, list[str]]]]:
    from kinject.prompts import general_messages, knowledge_messages, render

    rd = list(iter_jsonl(world / "general/reading_dev.jsonl"))[:n]
    cb = [r for r in iter_jsonl(world / "general/qa_test.jsonl") if r["wording"] == "seen"][:n]
    return {
        "reading": [(render(tok, knowledge_messages(r["question"], r["knowledge"])), r["answer"]) for r in rd],
        "closed_book_seen": [(render(tok, general_messages(r["question"])), r["answer"]) for r in cb],
    }


def train_model(name: str, shape: ModelShape, ts: TrainSettings, tok, docs, cfg: FoundationConfig,
                evals: dict, log_path: Path, seed: int):
    from kinject.models import TinySpec, count_parameters, make_tiny_model, resolve_device

    device = resolve_device(cfg.device)
    spec = TinySpec(arch="qwen3", vocab=len(tok), hidden=shape.hidden, layers=shape.layers, heads=shape.heads,
                    kv_heads=shape.kv_heads, intermediate=shape.intermediate, max_positions=shape.max_positions)
    model = make_tiny_model(spec, tokenizer=tok, seed=seed).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=ts.learning_rate, betas=(0.9, 0.95), weight_decay=ts.weight_decay)
    rng = random.Random(seed)
    sep = tok.convert_tokens_to_ids("<|endoftext|>")
    xs, ys = pack(docs, ts.seq_len, tok.pad_token_id, sep, rng)
    pos, epoch = 0, 0
    t0 = time.time()
    tokens = 0
    curve = []
    step = 0
    log = log_path.open("a", encoding="utf-8")
    budget_s = ts.time_budget_min * 60
    loss_avg = None
    while True:
        progress = max(step / ts.max_steps, (time.time() - t0) / budget_s)
        if progress >= 1.0:
            break
        if pos + ts.batch_size > len(xs):
            epoch += 1
            xs, ys = pack(docs, ts.seq_len, tok.pad_token_id, sep, rng)
            pos = 0
        x = xs[pos : pos + ts.batch_size].to(device)
        y = ys[pos : pos + ts.batch_size].to(device)
        pos += ts.batch_size
        for g in opt.param_groups:
            g["lr"] = lr_at(progress, step, ts)
        loss = lm_loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), ts.grad_clip)
        opt.step()
        step += 1
        tokens += x.numel()
        loss_avg = loss.item() if loss_avg is None else 0.95 * loss_avg + 0.05 * loss.item()
        if step % ts.log_every == 0:
            el = time.time() - t0
            rec = {"model": name, "step": step, "epoch": epoch, "loss": round(loss_avg, 4),
                   "lr": round(g["lr"], 6), "tokens": tokens, "tokens_per_s": round(tokens / el), "elapsed_s": round(el)}
            if ts.eval_every and step % ts.eval_every == 0:
                rec.update({k: round(quick_eval(model, tok, v), 3) for k, v in evals.items()})
                curve.append(rec)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            log.info(json.dumps(rec))
    el = time.time() - t0
    final = {k: round(quick_eval(model, tok, v), 3) for k, v in evals.items()}
    stats = {"parameters": count_parameters(model), "steps": step, "epochs": epoch + pos / max(1, len(xs)),
             "tokens": tokens, "train_s": round(el, 1), "tokens_per_s": round(tokens / max(el, 1e-9)),
             "final_loss": round(loss_avg or 0.0, 4), "eval_final": final, "eval_curve": curve,
             "rows_per_epoch": len(xs)}
    log.write(json.dumps({"model": name, "done": stats}) + "\n")
    log.close()
    return model.eval(), stats


def _train_and_save(tok, docs, cfg, evals, log_path, dtype, out, name, shape, ts, seed, h) -> None:
    from kinject.models import save_model

    torch.set_num_threads(cfg.threads)
    sub = RunRecorder(out / name, f"world pretrain ({name})", cfg, seed)
    model, stats = train_model(name, shape, ts, tok, docs, cfg, evals, log_path, seed)
    save_model(model, tok, out / name, dtype=dtype)
    sub.metrics = stats
    sub.write(inputs_hash=h)


def model_inputs_hash(cfg: FoundationConfig, name: str, world_hash: str | None, tok_dir: Path) -> str:
    """What one model depends on: the shared settings, its own shape and schedule, the world and
    the tokenizer (so changing the expert's shape does not retrain the base, and vice versa)."""
    own = {"base": ("base", "base_train"), "expert_init": ("expert", "expert_train")}
    full = cfg.hash_dump()
    shared = {k: v for k, v in full.items() if k not in {"base", "base_train", "expert", "expert_train", "parallel"}}
    mine = {k: full[k] for k in own[name]}
    return inputs_hash({"shared": shared, "own": mine, "model": name, "world": world_hash}, tok_dir / "tokenizer.json")


def pretrain_foundation(world: str | Path, config_path: str | Path | None, out: str | Path, overrides=()) -> Path:
    from kinject.config import load_config
    from kinject.models import load_tokenizer, resolve_dtype

    cfg = load_config(config_path, overrides, expect=FoundationConfig)
    w = require_dir(world, "world directory", "build one with `kinject world build`")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    rec = RunRecorder(out, "world pretrain", cfg, cfg.seed)
    world_hash = (json.loads((w / "manifest.json").read_text()).get("inputs_hash")
                  if (w / "manifest.json").is_file() else None)
    rec.extra["world"] = {"path": str(w), "inputs_hash": world_hash}
    rows = corpus_rows(w)
    tok_dir = out / "tokenizer"
    with rec.timer("tokenizer"):
        if (tok_dir / "tokenizer.json").is_file():
            tok = load_tokenizer(tok_dir)  # resume: keep the tokenizer the models were trained with
        else:
            tok = train_world_tokenizer(rows, cfg.vocab_size)
            from kinject.io import atomic_dir

            with atomic_dir(tok_dir) as tmp:
                tok.save_pretrained(str(tmp))
    with rec.timer("encode"):
        docs = encode_corpus(tok, rows, cfg.answer_only_loss)
    n_tok = sum(len(x) for x, _ in docs)
    n_lab = sum(sum(1 for t in y if t != IGNORE) for _, y in docs)
    rec.metrics["corpus"] = {"documents": len(docs), "tokens": n_tok, "loss_tokens": n_lab, "vocab": len(tok)}
    evals = eval_items(w, tok, cfg.eval_sample)
    log_path = out / "train_log.jsonl"
    dtype = resolve_dtype(cfg.save_dtype)
    jobs = []
    for i, (name, shape, ts) in enumerate((("base", cfg.base, cfg.base_train),
                                          ("expert_init", cfg.expert, cfg.expert_train))):
        h = model_inputs_hash(cfg, name, world_hash, tok_dir)
        if not is_complete(out / name, h):  # resumable: a finished model is kept
            jobs.append((name, shape, ts, cfg.seed + i, h))
    args = [(tok, docs, cfg, evals, log_path, dtype, out, *job) for job in jobs]
    with rec.timer("train"):
        if cfg.parallel and len(args) > 1:
            # one process per model, `threads` torch threads each: for 1-3M-parameter models two
            # single-threaded processes use two cores better than one two-threaded process
            import multiprocessing as mp

            ctx = mp.get_context("fork")
            procs = [ctx.Process(target=_train_and_save, args=a) for a in args]
            for pr in procs:
                pr.start()
            for pr in procs:
                pr.join()
            if any(pr.exitcode for pr in procs):
                raise RuntimeError(f"a pretraining process failed (exit codes {[pr.exitcode for pr in procs]}); see {log_path}")
        else:
            for a in args:
                _train_and_save(*a)
    for name in ("base", "expert_init"):
        m = json.loads((out / name / "manifest.json").read_text())
        rec.metrics[name] = m["metrics"]
    if not rec.metrics.get("base"):
        raise UserError("pretraining produced no base model")
    rec.write(inputs_hash=inputs_hash(cfg.hash_dump(), w / "general/pretrain.jsonl"))
    write_json_atomic(out / "benchmark.json", {
        "command": "kinject world pretrain", "threads": cfg.threads,
        "timings_s": rec.timings,
        **{k: {m: rec.metrics[k][m] for m in ("parameters", "steps", "tokens", "train_s", "tokens_per_s")}
           for k in ("base", "expert_init")},
    })
    return out
