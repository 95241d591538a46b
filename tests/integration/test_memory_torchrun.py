"""`kinject memory build` under torchrun: rank::world_size sharding + merge == one process."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from kinject.memory.store import MemoryStore


@pytest.mark.slow
def test_two_ranks_merge_to_the_single_process_store(tmp_path, tiny_model_dir):
    qs = tmp_path / "q.jsonl"
    qs.write_text("".join(json.dumps({"id": f"m-{i}", "input": f"What is property {i} of Ferovia-{i}?",
                                      "output": "x", "answer": ["x"]}) + "\n" for i in range(7)))

    def cfg(name):
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump({"kind": "memory_build", "expert": str(tiny_model_dir), "questions": [str(qs)],
                                     "out": str(tmp_path / name), "layers": ["last", "minus2"], "slots": 4,
                                     "max_new_tokens": 5, "batch_size": 3, "shard_size": 2, "device": "cpu",
                                     "dtype": "float32", "keep_trajectories": True}))
        return str(p)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "kinject.cli", "memory", "build", "--config", cfg("ddp")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([sys.executable, "-m", "kinject.cli", "memory", "build", "--config", cfg("one")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp, one = MemoryStore(tmp_path / "ddp"), MemoryStore(tmp_path / "one")
    ddp.verify()
    assert ddp.ids == one.ids == [f"m-{i}" for i in range(7)]  # merged back into file order
    assert not (tmp_path / ".ddp.parts").exists()
    for i in ddp.ids:
        assert ddp.record(i)["background"] == one.record(i)["background"]
        torch.testing.assert_close(ddp.get(i), one.get(i), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ddp.trajectory(i), one.trajectory(i), rtol=1e-4, atol=1e-5)
