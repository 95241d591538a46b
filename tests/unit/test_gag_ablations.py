"""`kinject gag ablate`: one injector per (domain, variant) on a tiny random world, results rows
named after the variant, a Markdown table, skip-if-complete on a rerun."""

import json

import pytest
import torch
import yaml

from kinject.eval.results import ResultRow
from kinject.gag.ablations import GagAblationConfig, markdown_table, run_ablations
from kinject.gag.injector import Injector
from kinject.memory.store import MemoryStore, StoreMeta

ANSWERS = ["Velmora", "Quillex", "Ferovia", "Norland"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tiny_tokenizer):
    from kinject.models import TinySpec, make_tiny_model, save_model

    m = make_tiny_model(TinySpec(vocab=600, hidden=32, layers=2, heads=2, tie_embeddings=False),
                        tokenizer=tiny_tokenizer, seed=1)
    out = tmp_path_factory.mktemp("ablbase") / "base"
    save_model(m, tiny_tokenizer, out)
    return out


def write_rows(path, prefix, n):
    rows = [{"id": f"{prefix}{k}", "question": f"What is value {k % 3}?", "answer": [ANSWERS[k % 4]]} for k in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def make_store(path, rows, seed):
    """4 stored slots + per-token trajectories (the tiny presets pool them with attention)."""
    st = MemoryStore.create(path, StoreMeta(expert_hidden=16, layers=["last", "minus2"], slots=4, dtype="float32",
                                            trajectories=True))
    g = torch.Generator().manual_seed(seed)
    st.add([{"id": r["id"], "question": r["question"]} for r in rows], torch.randn(len(rows), 2, 4, 16, generator=g),
           trajectories=[torch.randn(2, 3 + k % 3, 16, generator=g) for k in range(len(rows))])


def test_ablate_writes_variant_rows_and_table_and_skips_when_complete(tmp_path, base_dir):
    world, mem = tmp_path / "world", tmp_path / "mem"
    align = write_rows(world / "general" / "align.jsonl", "g", 8)
    train = write_rows(world / "materials_domain" / "qa_train.jsonl", "t", 8)
    dev = write_rows(world / "materials_domain" / "qa_dev.jsonl", "d", 4)
    make_store(mem / "materials_align", align, 0)
    make_store(mem / "materials", train + dev, 1)
    cfg = {"world": str(world), "base": str(base_dir), "experts": str(tmp_path / "unused"), "memory_root": str(mem),
           "stores_root": str(tmp_path / "stores"), "out": str(tmp_path / "abl"), "domains": ["materials"],
           "variants": {"gag": {}, "gag_nll_only": {"overrides": ["w_sem=0", "w_div=0"]}},
           "stage3_overrides": ["alignment.max_steps=2", "domain.max_steps=2", "alignment.batch_size=4",
                                "domain.batch_size=4", "device=cpu"]}
    path = tmp_path / "abl.yaml"
    path.write_text(yaml.safe_dump(cfg))
    from typer.testing import CliRunner

    from kinject.cli import app

    res = CliRunner().invoke(app, ["gag", "ablate", "--config", str(path)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "abl" / "results.jsonl").read_text().splitlines()]
    methods = {f"{v}{c}" for v in ("gag", "gag_nll_only") for c in ("", "_zero_memory", "_foreign_memory")}
    assert {r["method"] for r in rows} == methods and len(rows) == len(methods) * 3
    assert all(set(r) == {"method", "dataset", "split", "metric", "value", "n"} for r in rows)
    assert {(r["dataset"], r["split"], r["n"]) for r in rows} == {("materials", "dev", 4)}
    # the variant's overrides reached its run: no semantic head without L_sem
    assert Injector.load(tmp_path / "abl" / "materials" / "gag_nll_only" / "injector").config.semantic_dim == 0
    assert Injector.load(tmp_path / "abl" / "materials" / "gag" / "injector").config.semantic_dim == 384
    table = (tmp_path / "abl" / "table.md").read_text()
    em = {r["method"]: r["value"] for r in rows if r["metric"] == "em"}
    assert f"| gag_nll_only | {em['gag_nll_only']:.3f} |" in table and "EM (n = 4 per dataset)" in table
    manifests = sorted((tmp_path / "abl").glob("materials/*/manifest.json"))
    stamps = {p: p.stat().st_mtime_ns for p in manifests}
    assert len(stamps) == 2
    run_ablations(GagAblationConfig.model_validate(cfg))
    assert {p: p.stat().st_mtime_ns for p in manifests} == stamps


def test_markdown_table_methods_by_dataset():
    rows = [ResultRow(method=m, dataset=d, split="dev", metric="em", value=v, n=180)
            for m, d, v in [("gag", "materials", 0.5), ("gag", "adjuvant", 0.25), ("gag_slots1", "materials", 0.125)]]
    t = markdown_table(rows)
    assert "| method | materials | adjuvant |" in t
    assert "| gag | 0.500 | 0.250 |" in t and "| gag_slots1 | 0.125 | - |" in t
