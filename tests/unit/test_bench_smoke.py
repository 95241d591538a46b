"""Every bench suite through its own command, on its shipped preset (configs/bench/*.yaml, the
tiny GRIP and PPR presets) with a small `n` on tiny inputs: a suite that raises, or writes no
JSON, fails here. A user error stays one `error:` line with exit 2.

The suites' numbers are checked in test_bench_suites.py; here only that each runs end to end
and that what it wrote is the JSON its command promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "configs" / "bench"
pytestmark = pytest.mark.bench_smoke


def kinject(capsys, *args) -> str:
    """`kinject ARGS` in this process (no interpreter start-up per suite); returns stdout.
    Fails on a non-zero exit (a user error included) and on any exception."""
    from kinject.cli import main

    old = sys.argv
    sys.argv = ["kinject", *map(str, args)]
    try:
        main()
    except SystemExit as e:
        out, err = capsys.readouterr()
        assert e.code in (0, None), f"exit {e.code}: {err[-2000:]}"
        return out
    finally:
        sys.argv = old
    return capsys.readouterr().out


def bench_json(out: Path) -> dict:
    return json.loads((out / "bench.json").read_text())


# shrink a preset's work, nothing else: the preset's other settings are what is exercised
METHODS_SMALL = ["source=random", "n_questions=2", "n_throughput=2", "batch_size=2", "ks=[1,3]",
                 "max_new_tokens=3", "max_background_tokens=4", "prefill_repeats=1", "grip_max_rounds=2",
                 "grip_max_new_tokens=4"]


@pytest.mark.filterwarnings("ignore")
def test_methods_preset(capsys, tmp_path):
    out = tmp_path / "methods"
    stdout = kinject(capsys, "bench", "methods", "--config", BENCH / "methods_tiny.yaml", "--out", out, *METHODS_SMALL)
    data = bench_json(out)
    assert f"wrote {out}/bench.json" in stdout
    assert data["gag_injector"]["pooling"] == "attention" and "gag" in data["summary"]
    assert data["config"]["methods"] == ["base", "rag", "text_injection", "gag", "grip"]


def test_levers_preset(capsys, tmp_path):
    out = tmp_path / "levers"
    kinject(capsys, "bench", "levers", "--config", BENCH / "levers_tiny.yaml", "--out", out, "source=random",
            "n_repeat=2", "caps=[2]", "n_cap=2", "batch_sizes=[1,2]", "max_new_tokens=3", "max_background_tokens=4",
            "decode_tokens=2", "compile=false", "n_prefill=2")
    data = bench_json(out)
    assert data["cache"]["questions"] == 2 and data["setup"]["source"] == "random"
    assert data["prefill_memories"]["questions"] == 2


@pytest.mark.filterwarnings("ignore")
def test_stages_preset(capsys, tmp_path):
    out = tmp_path / "stages"
    kinject(capsys, "bench", "stages", "--config", BENCH / "stages_tiny.yaml", "--out", out, "source=random",
            "steps=1", "warmup_steps=0", "only=[dapt,sft,stage3,memory,grip_sft,routing]")
    st = bench_json(out)["stages"]
    assert st["stage3"]["timed_steps"] == 1 and st["sft"]["timed_steps"] == 1
    assert "skipped" in st["routing"] and "skipped" in st["grip_sft"]


def test_arch_preset_cpu_path(capsys, tmp_path):
    """The shipped arch preset's settings with its shapes cut to a few units wide (the real shapes
    take minutes on CPU); CUDA is left to the machine (skipped without one)."""
    out = tmp_path / "arch"
    cfg = tmp_path / "arch.yaml"
    shapes = ("[{name: q, arch: qwen3, hidden: 32, layers: 4, heads: 2, kv_heads: 1, head_dim: 16, "
              "intermediate: 64, vocab: 500}, {name: l, arch: llama, hidden: 32, layers: 4, heads: 2, kv_heads: 2, "
              "head_dim: 16, intermediate: 64, vocab: 500}]")
    cfg.write_text((BENCH / "arch.yaml").read_text() + f"shapes: {shapes}\n")
    kinject(capsys, "bench", "arch", "--config", cfg, "--out", out, "decode_tokens=2", "repeats=1",
            "cuda_full_size=false")
    data = bench_json(out)
    assert set(data["cpu"]["shapes"]) == {"q", "l"}


def test_memory_bench_shipped_expert(capsys, tmp_path):
    """The shipped tiny expert (3 layers): the bench takes the tiny memory preset's layers."""
    out = tmp_path / "memory"
    kinject(capsys, "memory", "bench", "--out", out, "--expert", REPO / "assets/foundation/tiny/expert_init",
            "--n", 3, "--max-new-tokens", 3, "--batch-size", 2)
    data = bench_json(out)
    assert data["samples"] == 3 and data["expert_layers"] == 3 and data["source"] == "generate"
    kinject(capsys, "memory", "bench", "--out", out, "--expert", REPO / "assets/foundation/tiny/expert_init",
            "--n", 3, "--source", "prefill", "--answer-prefix", " The answer is")
    data = bench_json(out)
    assert data["source"] == "prefill" and data["samples"] == 3 and data["mean_generated_tokens"] > 5


def test_grip_bench_preset(capsys, tmp_path, tiny_model_dir):
    from unit.test_grip_synth import write_world

    (tmp_path / "world").mkdir()
    qa, index = write_world(tmp_path / "world")
    out = tmp_path / "grip"
    kinject(capsys, "grip", "bench", "--config", REPO / "configs/grip/eval_tiny.yaml", "--out", out, "--data", qa,
            "--n", 2, f"model={tiny_model_dir}", f"index={index}", "agent.max_new_tokens=4")
    assert bench_json(out)["questions"] == 2


@pytest.mark.filterwarnings("ignore")
def test_ppr_bench_preset(capsys, tmp_path):
    from unit.test_ppr_data import write_world_like

    world = write_world_like(tmp_path / "world", n_offline=12, n_online=6)
    out = tmp_path / "ppr"
    kinject(capsys, "bench", "ppr", "--out", out, "--world", world, "--config", REPO / "configs/ppr/tiny.yaml",
            "--n", 16, "--repeats", 1)
    assert bench_json(out)["banks"] == str(out / "banks")


def test_retrieval_bench_all_backends(capsys, tmp_path):
    out = tmp_path / "retrieval"
    kinject(capsys, "bench", "retrieval", "--out", out, "--sizes", 60, "--backends", "tantivy,bm25s,dense",
            "--dense-max", 30, "--queries", 8, "--words", 12, "--threads", 1)
    assert {r["backend"] for r in bench_json(out)["results"]} == {"tantivy", "bm25s", "dense"}


def test_serve_reliability_on_a_tiny_world(capsys, tmp_path, tiny_tokenizer, tiny_model_dir):
    """The real server over tiny random models and MiniLM banks: every check passes, and the
    config's own registry is left alone (the bench keeps its registry under --out)."""
    import yaml

    from unit.mixed_world import build_mixed_world, options_of
    from unit.test_ppr_data import questions

    world = build_mixed_world(tmp_path / "world", tiny_tokenizer, tiny_model_dir)
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"kind": "serve", "pipeline": json.loads(options_of(world).model_dump_json()),
                                      "batching": {"max_batch_size": 4, "max_wait_ms": 10}, "max_tokens_cap": 4}))
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps({"question": q, "domain": d}) + "\n"
                            for d in ("general", "materials", "adjuvant") for q in questions(d, 10, seed=5)))
    out = tmp_path / "reliability"
    stdout = kinject(capsys, "bench", "reliability", "--config", config, "--out", out, "--data", data,
                     "--requests", 12, "--concurrency", 4, "--hotplug-from", "adjuvant")
    res = bench_json(out)
    assert f"wrote {out}/bench.json" in stdout and "| during POST /admin/domains |" in stdout
    assert res["suite"] == "reliability" and res["failed"] == [] and all(res["checks"].values())
    assert res["load"]["requests"] == 12 and res["load"]["lost"] == 0 and res["load"]["mismatched"] == 0
    assert res["malformed"]["as_expected"] == res["malformed"]["requests"] >= 30 and res["malformed"]["5xx"] == 0
    plug = res["hot_plug"]
    assert plug["add_status"] == 201 and plug["idle"]["requests"] == plug["during_add"]["requests"] >= 4
    assert plug["bank"] == str(out / "registry" / "hotplugged.jsonl")
    assert res["restart"]["listed"] and res["restart"]["same_answer"] and res["restart"]["same_models"]
    # the world's banks are not calibrated: abstention has no threshold to apply and changes nothing
    routing = res["routing"]
    assert routing["n"] == 30 and routing["without_abstention"]["accuracy"] >= 0.9
    assert routing["with_abstention"]["thresholds"] == {} and routing["with_abstention"] == routing["without_abstention"]
    saved = json.loads((out / "registry" / "serve.domains.json").read_text())
    assert list(saved["added"]) == ["hotplugged"] and not (tmp_path / "serve.domains.json").exists()
    assert "load average" in (out / "summary.md").read_text()


@pytest.mark.parametrize("args, needle", [
    (["bench", "methods", "--config", BENCH / "methods_tiny.yaml", "source=demo", "artifacts.root=/nonexistent"],
     "demo artifacts missing"),
    (["bench", "levers", "--config", BENCH / "levers_tiny.yaml", "n_repeat=0"], "n_repeat"),
    (["memory", "bench", "--expert", "/nonexistent/expert", "--n", 2], "/nonexistent/expert"),
    (["memory", "bench", "--source", "decode", "--n", 2], "--source"),
    pytest.param(["bench", "reliability", "--config", REPO / "configs/serve/tiny.yaml", "--data", "/nonexistent.jsonl"],
                 "/nonexistent.jsonl", id="serve-reliability-missing-data"),
    pytest.param(["bench", "reliability", "--config", "/nonexistent/serve.yaml", "--data", "/nonexistent.jsonl"],
                 "/nonexistent/serve.yaml", id="serve-reliability-missing-config"),
])
def test_user_errors_stay_one_line(tmp_path, args, needle):
    res = subprocess.run([sys.executable, "-m", "kinject.cli", *map(str, args), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    assert needle in lines[0] and "Traceback" not in res.stderr
