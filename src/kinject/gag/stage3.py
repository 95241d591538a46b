"""Stage III and GAG scoring as one resumable run: train the injector with a `gag_stage3` config,
then score it on eval sets with their stored memories, into one run dir whose manifest carries
the inputs hash (`kinject.runs`), so an unchanged run is a skip."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def domain_paths(world: Path, domain: str, base: Path, mem: Path, amem: Path, out: Path) -> list[str]:
    """Overrides pointing a `gag_stage3` preset at one private domain of a world: the frozen
    `base`, `<out>/<domain>`, the world's alignment items with their memories `amem`, then the
    domain's QA train split with its memories `mem`."""
    return [f"base={base}", f"out={out / domain}",
            f"alignment.data={world / 'general' / 'align.jsonl'}", f"alignment.memory={amem}",
            f"domain.data={world / f'{domain}_domain' / 'qa_train.jsonl'}", f"domain.memory={mem}"]


@dataclass
class EvalSet:
    """Questions GAG is scored on after training, with the memory store holding their memories;
    `key` names its predictions file and its foreign-value metric."""

    store: Path
    rows: list
    dataset: str
    split: str
    key: str
    controls: bool = True  # also the zeroed and foreign-memory controls


def train_and_score(cfg, inputs_hash: str, command: str, eval_sets: Callable[[], list[EvalSet]],
                    batch_size: int = 32) -> Path:
    """Stage III with `cfg` (a skip when complete with the same inputs hash; resumed from its
    checkpoints otherwise, restarted when its inputs changed), then GAG on each eval set:
    `<out>/eval/results.jsonl` and predictions. Returns the run dir."""
    import torch

    from kinject.eval.results import write_results
    from kinject.gag.evaluate import evaluate_gag
    from kinject.gag.trainer import Stage3Trainer
    from kinject.io import write_jsonl_atomic
    from kinject.memory.store import MemoryStore
    from kinject.runs import RunRecorder, fresh_or_resume, is_complete

    run_dir = Path(cfg.out)
    if is_complete(run_dir, inputs_hash):
        return run_dir
    fresh_or_resume(run_dir, inputs_hash)
    rec = RunRecorder(run_dir, command, cfg, cfg.seed)
    trainer = Stage3Trainer(cfg)
    with rec.timer("train"):
        rec.metrics.update(trainer.train())
    rows = []
    with rec.timer("eval"), torch.no_grad():
        for es in eval_sets():
            res = evaluate_gag(trainer.injector.eval(), trainer.base, MemoryStore(es.store), es.rows, es.dataset,
                               es.split, controls=es.controls, batch_size=batch_size)
            rows += res["results"]
            write_jsonl_atomic(run_dir / "eval" / f"predictions_{es.key}.jsonl", res["predictions"])
            if res["foreign_value_rate"] is not None:
                rec.metrics[f"{es.key}/foreign_value_rate"] = res["foreign_value_rate"]
    write_results(run_dir / "eval" / "results.jsonl", rows, append=False)
    rec.metrics.update({f"{r.dataset}/{r.split}/{r.method}/{r.metric}": r.value for r in rows})
    rec.write(inputs_hash=inputs_hash)
    return run_dir
