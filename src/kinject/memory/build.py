"""`kinject memory build`: questions -> expert backgrounds -> slots -> memory store
(`source: prefill`: questions -> the expert's states over them, no background generated).

Resumable (ids already in the store are skipped) and shardable: under `torchrun` each rank
takes `items[rank::world_size]`, writes its own part store next to the output, and rank 0
merges the parts (in question-file order) after a barrier.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from kinject.errors import UserError
from kinject.io import read_jsonl
from kinject.memory.compress import compress
from kinject.memory.config import MemoryBuildConfig
from kinject.memory.layers import check_layer_keys
from kinject.memory.store import MemoryStore, StoreMeta, item_id, merge_stores, row_question


def load_items(cfg: MemoryBuildConfig) -> list[dict]:
    """Rows with `question` or `input` (and `background` for source=given), unique by id, in file order."""
    if not cfg.questions:
        raise UserError("memory build: `questions` lists no files")
    required = ["background"] if cfg.source == "given" else []
    items, seen = [], set()
    for path in cfg.questions:
        for k, row in enumerate(read_jsonl(path, required=required), 1):
            q = row_question(row, f"{path}: record {k}")
            i = item_id(row)
            if i not in seen:
                seen.add(i)
                items.append({"id": i, "question": q, "background": row.get("background", "")})
    return items[: cfg.limit] if cfg.limit else items


def part_dir(out: Path, rank: int) -> Path:
    return out.parent / f".{out.name}.parts" / f"rank-{rank:05d}"


def build_memory(cfg: MemoryBuildConfig, progress: bool = True) -> dict:
    """Build (or resume) the store at `cfg.out`; return throughput numbers for this process."""
    from rich.progress import Progress

    from kinject.distributed import rank_and_world
    from kinject.memory.background import (
        encode_backgrounds,
        generate_backgrounds,
        prefill_traces,
    )
    from kinject.models import check_model_dir, load_causal_lm
    from kinject.runs import model_fingerprint

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.slots < 1:
        raise UserError(f"memory build: slots must be >= 1 (got {cfg.slots})")
    # fail fast, before any model loading: layer keys vs the expert's depth, tokenizer present
    expert_cfg = json.loads((check_model_dir(cfg.expert, need_tokenizer=True) / "config.json").read_text())
    check_layer_keys(cfg.layers, expert_cfg.get("num_hidden_layers"))
    items = load_items(cfg)
    model, tok = load_causal_lm(cfg.expert, device=cfg.device, dtype=cfg.model_dtype)
    check_layer_keys(cfg.layers, model.config.num_hidden_layers)
    spec = cfg.background_spec()
    meta = StoreMeta(expert=str(cfg.expert), expert_hidden=model.config.hidden_size,
                     expert_layers=model.config.num_hidden_layers, expert_fingerprint=model_fingerprint(model),
                     layers=list(cfg.layers),
                     slots=cfg.slots, pooling=cfg.pooling, tau=cfg.tau, dtype=cfg.dtype,
                     trajectories=cfg.keep_trajectories,
                     prefill_prefix=cfg.answer_prefix if cfg.source == "prefill" else None,
                     background_spec=spec)
    out = Path(cfg.out)
    rank, world = rank_and_world()
    done: set[str] = set()
    if world > 1:
        if (out / "store.json").is_file():
            done = set(MemoryStore(out).ids)
        mine = items[rank::world]
        store = MemoryStore.create(part_dir(out, rank), meta)
    else:
        mine = items
        store = MemoryStore.create(out, meta)
    done |= set(store.ids)
    todo = [it for it in mine if it["id"] not in done]

    t0, n_tokens = time.perf_counter(), 0
    with Progress(disable=not progress or rank != 0, transient=True) as bar:
        task = bar.add_task(f"memories (rank {rank}/{world})", total=len(todo))
        for i in range(0, len(todo), cfg.shard_size):
            chunk = todo[i:i + cfg.shard_size]
            qs = [c["question"] for c in chunk]
            if cfg.source == "generate":
                traces = generate_backgrounds(model, tok, qs, cfg.layers, spec.system,
                                              spec.max_new_tokens, cfg.batch_size, spec.request)
            elif cfg.source == "prefill":
                traces = prefill_traces(model, tok, qs, cfg.layers, spec.system, cfg.answer_prefix, cfg.batch_size,
                                        spec.request)
            else:
                traces = encode_backgrounds(model, tok, qs, [c["background"] for c in chunk],
                                            cfg.layers, spec.system, cfg.batch_size, spec.request)
            slots = torch.stack([compress(t.states, cfg.slots, cfg.pooling, cfg.tau) for t in traces])
            recs = [{"id": c["id"], "question": c["question"], "background": t.text, "n_tokens": t.n_tokens}
                    for c, t in zip(chunk, traces, strict=True)]
            store.add(recs, slots, [t.states for t in traces] if cfg.keep_trajectories else None)
            n_tokens += sum(t.n_tokens for t in traces)
            bar.advance(task, len(chunk))
    secs = time.perf_counter() - t0

    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()
        if rank == 0:
            merge_stores(out, [part_dir(out, r) for r in range(world)], order=[it["id"] for it in items],
                         remove_parts=True)
            part_dir(out, 0).parent.rmdir()
        dist.barrier()
    return {"samples": len(todo), "skipped": len(mine) - len(todo), "generated_tokens": n_tokens,
            "seconds": round(secs, 3),
            "samples_per_s": round(len(todo) / secs, 2) if todo and secs else 0.0,
            "tokens_per_s": round(n_tokens / secs, 1) if todo and secs else 0.0,
            "rank": rank, "world_size": world}
