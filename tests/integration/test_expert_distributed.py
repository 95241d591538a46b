"""The expert commands under `torchrun --nproc_per_node=2` on CPU (gloo): same command, 2 ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "kinject.cli", "expert", *args],
        capture_output=True, text=True, timeout=600, env=env,
    )


@pytest.mark.slow
def test_dapt_and_sft_under_torchrun_two_cpu_ranks(tiny_model_dir, tmp_path):
    d = tmp_path / "materials_domain"
    docs = [{"text": f"The catalyst Ferovia-{i} reaches a Faradaic efficiency of {50 + i}.5 % at 450 kelvin."}
            for i in range(40)]
    qa = [{"instruction": "You are an expert in catalytic materials.",
           "input": f"What is the Faradaic efficiency of Ferovia-{i}?", "output": f"{50 + i}.5 %"}
          for i in range(40)]
    corpus = _write_jsonl(d / "knowledge_base.jsonl", docs)
    data = _write_jsonl(d / "qa_train.jsonl", qa)

    dapt = tmp_path / "dapt"
    res = _torchrun("dapt", f"model={tiny_model_dir}", f"corpus={corpus}", f"out={dapt}", "block_size=32",
                    "val_share=0.1", "train.epochs=2", "train.batch_size=4", "train.eval_steps=5",
                    "train.learning_rate=1e-3")
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((dapt / "manifest.json").read_text())
    blocks = m["data"]["train_blocks"]
    per_epoch = -(-blocks // (2 * 4))  # each optimizer step consumes 4 blocks on each of 2 ranks
    assert m["metrics"]["world_size"] == 2
    assert m["metrics"]["steps"] == 2 * per_epoch
    assert m["metrics"]["train_tokens"] >= 2 * blocks * 32  # tokens counted over both ranks
    assert m["metrics"]["best_val_loss"] < 6.0  # random init: ln(600) = 6.4
    assert not (tmp_path / "dapt.checkpoints").exists()

    sft = tmp_path / "sft"
    res = _torchrun("sft", f"model={dapt}", f"data={data}", f"out={sft}", "max_length=128", "train.epochs=1",
                    "train.batch_size=4", "train.eval_steps=3", "train.learning_rate=1e-3")
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((sft / "manifest.json").read_text())
    assert m["metrics"]["world_size"] == 2 and m["data"]["train_examples"] == 39
    assert m["metrics"]["steps"] == -(-39 // 8)
