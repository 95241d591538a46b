"""Oracle check of the GAG channel's capacity (docs/gag-ablations.md, "What the slots carry").

The 4 slots are set to the frozen base's own token embeddings of the first 4 tokens of the gold
answer (as the chat template writes it; shorter answers repeat their last token), and the base
answers through the GAG prompt. No injector is involved: this bounds what 4 token-like vectors
can pass to this base. Run after `make demo`:

    .venv/bin/python benchmarks/gag-pooling/oracle_slots.py [--world outputs/demo/world/world]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", default="outputs/demo/world/world")
    ap.add_argument("--base", default="assets/foundation/tiny/base")
    ap.add_argument("--domain", default="materials")
    args = ap.parse_args()
    ib = InjectedBase.load(args.base, num_slots=4, device="cpu")
    rows = read_jsonl(Path(args.world) / f"{args.domain}_domain" / "qa_dev.jsonl")
    out = {}
    for attr in sorted({r["attribute"] for r in rows}):
        em, n_tok = oracle_em(ib, [r for r in rows if r["attribute"] == attr])
        out[attr] = {"em": round(em, 3), "mean_answer_tokens": round(n_tok, 2)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
