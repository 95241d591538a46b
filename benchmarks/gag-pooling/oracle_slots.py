"""Oracle checks of the GAG channel's capacity (docs/gag-ablations.md, "What the slots carry").

No injector is involved; the base answers through the GAG prompt with oracle slots:
- `tokens` (default): the 4 slots are the frozen base's own token embeddings of the first 4
  tokens of the gold answer (as the chat template writes it; shorter answers repeat their last
  token). This bounds what 4 *token-like* vectors pass to this base.
- `--free STEPS`: 4 unconstrained vectors per question, optimized with Adam against the frozen
  base to maximize log p(gold answer). What any injector could at best write into 4 slots.
Run after `make demo`:

    .venv/bin/python benchmarks/gag-pooling/oracle_slots.py [--world outputs/demo/world/world] [--free 300]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from kinject.eval.metrics import exact_match
from kinject.gag.base import InjectedBase
from kinject.io import read_jsonl
from kinject.tokenizer import answer_lead


def oracle_em(ib: InjectedBase, rows: list[dict]) -> tuple[float, float]:
    """(EM, mean answer tokens) with the gold answer's first 4 token embeddings in the slots."""
    emb = ib.model.get_input_embeddings().weight.detach()
    slots, lengths = [], []
    for r in rows:
        ids = ib.tokenizer(answer_lead(r["answer"][0]), add_special_tokens=False)["input_ids"]
        lengths.append(len(ids))
        slots.append(emb[(ids + [ids[-1]] * ib.num_slots)[: ib.num_slots]])
    ib.instruction = rows[0].get("instruction", "")
    gens = ib.generate([r["input"] for r in rows], torch.stack(slots), max_new_tokens=16, batch_size=32)
    return sum(exact_match(g.text, r["answer"]) for g, r in zip(gens, rows)) / len(rows), sum(lengths) / len(rows)


def free_slots(ib: InjectedBase, rows: list[dict], steps: int, lr: float = 0.05) -> torch.Tensor:
    """Per-question slot vectors optimized on the gold answer's NLL (the base stays frozen)."""
    for p in ib.model.parameters():
        p.requires_grad_(False)
    emb = ib.model.get_input_embeddings().weight.detach()
    batch = ib.encode_train([r["input"] for r in rows], [r["answer"][0] for r in rows],
                            instructions=[r.get("instruction") for r in rows])
    g = torch.Generator().manual_seed(0)
    z = (emb.mean(0) + 0.01 * torch.randn(len(rows), ib.num_slots, emb.shape[1], generator=g)).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        logits, targets = ib.answer_logits(ib.final_states(z, batch), batch.labels)
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return z.detach()


def free_em(ib: InjectedBase, rows: list[dict], steps: int) -> float:
    ib.instruction = rows[0].get("instruction", "")
    gens = ib.generate([r["input"] for r in rows], free_slots(ib, rows, steps), max_new_tokens=16, batch_size=32)
    return sum(exact_match(g.text, r["answer"]) for g, r in zip(gens, rows)) / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", default="outputs/demo/world/world")
    ap.add_argument("--base", default="assets/foundation/tiny/base")
    ap.add_argument("--domain", default="materials")
    ap.add_argument("--free", type=int, default=0, help="optimize free slot vectors for this many steps")
    args = ap.parse_args()
    torch.manual_seed(0)
    ib = InjectedBase.load(args.base, num_slots=4, device="cpu")
    rows = read_jsonl(Path(args.world) / f"{args.domain}_domain" / "qa_dev.jsonl")
    out = {}
    for attr in sorted({r["attribute"] for r in rows}):
        part = [r for r in rows if r["attribute"] == attr]
        if args.free:
            out[attr] = {"free_em": round(free_em(ib, part, args.free), 3), "n": len(part)}
            continue
        em, n_tok = oracle_em(ib, part)
        out[attr] = {"em": round(em, 3), "mean_answer_tokens": round(n_tok, 2)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
