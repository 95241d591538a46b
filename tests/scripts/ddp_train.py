"""Launched by tests/integration/test_distributed.py under `torchrun --nproc_per_node=2`.

Each rank trains the same tiny model on DIFFERENT data for a few steps; if gradients are
all-reduced (a real process group formed), both ranks end with identical parameters.
"""

import sys
from pathlib import Path

import torch

from kinject.distributed import make_accelerator
from kinject.models import TinySpec, make_tiny_model

out = Path(sys.argv[1])
acc = make_accelerator()
model = make_tiny_model(TinySpec(vocab=200, hidden=32, layers=1, heads=2), seed=0)
init = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
model, opt = acc.prepare(model, opt)
gen = torch.Generator().manual_seed(100 + acc.process_index)  # different data per rank
for _ in range(3):
    ids = torch.randint(0, 200, (4, 16), generator=gen)
    loss = model(input_ids=ids, labels=ids).loss
    acc.backward(loss)
    opt.step()
    opt.zero_grad()
flat = torch.cat([p.detach().flatten() for p in acc.unwrap_model(model).parameters()])
torch.save({"world": acc.num_processes, "params": flat, "moved": float((flat - init).abs().max())},
           out / f"rank{acc.process_index}.pt")
