"""`kind: eval` configs: which methods run on which datasets, scored with which metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from kinject.config import StageConfig, StrictModel, register_config


class MethodEntry(StrictModel):
    name: str  # a registered method name, e.g. base, rag_k3, gag
    options: dict[str, Any] = Field(default_factory=dict)  # validated by the method's options model
    datasets: list[str] | None = None  # run only on these datasets (names); None: all of them
    # the method's row in the report and its prediction files (default: `name`): one method
    # several times on the same datasets, e.g. two training seeds (grip_s0, grip_s1)
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.+-]+$")

    @property
    def row(self) -> str:
        return self.label or self.name


class DatasetEntry(StrictModel):
    name: str  # column name in the report, e.g. materials, wiki_2hop
    path: Path  # JSONL with question/input + answer; relative paths resolve under data_root
    split: str = "test"
    # keep rows whose fields match: a value (hops: 2), a list of values, or {prefix: "hotpotqa:"}
    where: dict[str, Any] = Field(default_factory=dict)
    # also score each value of this row field as its own column `<name>/<value>` (e.g. type: the
    # real QA sets' bridge / comparison...), from the same answers
    by: str | None = None
    limit: int | None = None  # first N questions (after `where`)
    # N questions drawn at random (seeded by the config's seed; file order kept), after `where`:
    # for files sorted by type, where the first N would all be of one type
    sample: int | None = Field(None, ge=1)
    metrics: list[str] | None = None  # overrides the config's metrics for this dataset
    # files to look missing answers up in by question text (mixed_domain/online has none);
    # relative paths resolve under data_root
    answers_from: list[Path] = Field(default_factory=list)


class EvalConfig(StageConfig):
    kind: str = "eval"
    data_root: Path | None = None
    methods: list[MethodEntry]
    datasets: list[DatasetEntry]
    metrics: list[str] = Field(default_factory=lambda: ["em", "f1", "has_answer"])
    metric_options: dict[str, dict[str, Any]] = Field(default_factory=dict)  # bertscore_f1: {num_layers: 8}
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 16
    max_new_tokens: int = 32
    # answer-format help every method gets alike, a line in each prompt (prompts.py); GAG must have
    # been trained with the same line (its injector records it)
    answer_format: str = ""
    limit: int | None = None  # cap on questions per dataset (quick runs)
    num_threads: int | None = None  # torch intra-op threads while methods answer (None: unchanged)
    plots: bool = True
    # label -> a training run's curve PNG or trainer log (JSON list / JSONL of {step, loss}), collected
    # into the report (curves/ + training_curves.png)
    training_curves: dict[str, Path] = Field(default_factory=dict)

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() or self.data_root is None else self.data_root / path

    def dataset_path(self, d: DatasetEntry) -> Path:
        return self.resolve(d.path)


register_config(EvalConfig)
