"""GAG expert stages (the GAG paper's Stage I and II).

- `dapt.py`: Stage I, domain-adaptive pretraining on the private corpus (packed blocks).
- `sft.py`: Stage II, QA-SFT with loss on the assistant turn only (TRL `SFTTrainer`).
- `data.py`: corpus packing, document hold-out, chat examples for SFT / QA mixing.
- `training.py`: what both stages share (Trainer arguments, resume, best checkpoint, curves,
  manifest).
- `evaluate.py`: `expert ask` and EM / has_answer on QA files (`results.jsonl`).
"""
