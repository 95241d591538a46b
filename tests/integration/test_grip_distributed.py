"""`kinject grip sft` under `torchrun --nproc_per_node=2` on CPU (gloo): the same command, 2 ranks,
one checkpoint written by rank 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        if i % 2:
            rows.append({"id": str(i), "class": "A", "round": 0, "question": f"Where was Samun-{i} born?",
                         "answer": ["Quasto"], "intermediary": "", "references": [], "target": "[ANSWER] Quasto[SOLVED]"})
        else:
            rows.append({"id": str(i), "class": "D", "round": 1, "question": f"Where was Brigrin-{i} born?",
                         "answer": ["Horku"], "intermediary": "",
                         "references": [f"The birthplace of Brigrin-{i} is Horku."],
                         "target": "[ANSWER] Horku[SOLVED]"})
    return rows


@pytest.mark.slow
def test_grip_sft_under_torchrun_two_cpu_ranks(tiny_model_dir, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(16)))
    out = tmp_path / "model"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "kinject.cli", "grip", "sft", "--config", str(REPO / "configs/grip/sft_tiny.yaml"),
         f"model={tiny_model_dir}", f"data={data}", f"out={out}", "epochs=1", "max_steps=-1",
         "batch_size=4", "grad_accum=1", "max_length=512"],
        capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["metrics"]["rows"] == 16
    assert m["metrics"]["steps"] == 2  # 16 rows / (4 per rank x 2 ranks): one rank alone would take 4 steps
    assert (out / "config.json").is_file() and not (tmp_path / ".model.work").exists()
