"""`kinject memory bench`: memory-construction throughput and storage on a tiny expert.

Builds a store for synthetic questions with a given (or a fresh tiny random) expert and writes
`bench.json`: samples/s, generated tokens/s, bytes per sample on disk, and the bytes a full
trajectory would take (T x d x layers, as the public release pickles it: 5 layers, fp32) with
the ratio. `source: prefill` times memories without decoding (tokens are then the ones read,
not generated). Numbers are measured on whatever machine runs it; it says which.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from kinject.io import write_json_atomic, write_jsonl_atomic
from kinject.memory.config import MemoryBuildConfig
from kinject.resources import shipped

RELEASE_LAYERS, RELEASE_BYTES = 5, 4  # the public release: 5 layers of float32 per token
SPEC_LAYERS = ["last", "minus2", "minus4", "minus6"]
TINY_PRESET = shipped("configs/gag/materials_memory_tiny.yaml")


def bench_layers(expert: str) -> list[str]:
    """The GAG paper's 4 layers, or for an expert too shallow for them (the shipped tiny expert has 3
    decoder layers) the tiny memory preset's layers: the ones the demo stores."""
    from kinject.config import load_config
    from kinject.models import check_model_dir

    depth = json.loads((check_model_dir(expert) / "config.json").read_text()).get("num_hidden_layers", 0)
    if depth >= 6:
        return SPEC_LAYERS
    return list(load_config(TINY_PRESET, [], expect=MemoryBuildConfig).layers)


def run_bench(out: Path, expert: str | None = None, n: int = 64, max_new_tokens: int = 64, batch_size: int = 16,
              hidden: int = 128, layers: int = 6, dtype: str = "float16", threads: int | None = 1,
              source: str = "generate", answer_prefix: str = "") -> dict:
    from kinject.memory.build import build_memory
    from kinject.memory.store import MemoryStore
    from kinject.models import TinySpec, count_parameters, make_tiny_model, save_model
    from kinject.tokenizer import BUILTIN_SAMPLE, train_tokenizer

    if threads:  # on a shared, oversubscribed CPU one thread measured several times faster than two
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    if expert is None:
        tok = train_tokenizer(BUILTIN_SAMPLE * 4, vocab_size=1000, min_frequency=1)
        model = make_tiny_model(TinySpec(vocab=1000, hidden=hidden, layers=layers, heads=4), tokenizer=tok)
        expert = str(save_model(model, tok, out / "expert"))
    qs = [{"id": f"b{i}", "question": f"What is the Faradaic efficiency of Ferovia-{i} at {400 + i} kelvin?"}
          for i in range(n)]
    write_jsonl_atomic(out / "questions.jsonl", qs)
    store_dir = out / "store"
    if store_dir.exists():
        import shutil

        shutil.rmtree(store_dir)
    cfg = MemoryBuildConfig(expert=expert, questions=[str(out / "questions.jsonl")], out=str(store_dir),
                            max_new_tokens=max_new_tokens, batch_size=batch_size, dtype=dtype, device="cpu",
                            layers=bench_layers(expert), shard_size=n, source=source, answer_prefix=answer_prefix)
    speed = build_memory(cfg, progress=False)
    store = MemoryStore(store_dir)
    st = store.stats()
    from kinject.models import load_causal_lm

    m, _ = load_causal_lm(expert, device="cpu")
    release = st["mean_tokens"] * st["expert_hidden"] * RELEASE_LAYERS * RELEASE_BYTES
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, torch threads {torch.get_num_threads()}",
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "expert": expert, "expert_parameters": count_parameters(m), "expert_hidden": m.config.hidden_size,
        "expert_layers": m.config.num_hidden_layers, "source": source, "samples": speed["samples"],
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens, "samples_per_s": speed["samples_per_s"],
        "generated_tokens_per_s": speed["tokens_per_s"], "mean_generated_tokens": st["mean_tokens"],
        "store_dtype": dtype, "bytes_per_sample_on_disk": st["bytes_per_sample"],
        "slot_bytes_per_sample": st["slot_bytes_per_sample"],
        "full_trajectory_bytes_same_layers_dtype": st["full_trajectory_bytes_per_sample"],
        "ratio_same_layers_dtype": st["full_over_slots_ratio"],
        "release_trajectory_bytes_5_layers_fp32": round(release, 1),
        "ratio_release_over_store": round(release / st["bytes_per_sample"], 1) if st["bytes_per_sample"] else 0.0,
    }
    write_json_atomic(out / "bench.json", result)
    return result


def print_result(result: dict) -> str:
    return json.dumps(result, indent=2)
