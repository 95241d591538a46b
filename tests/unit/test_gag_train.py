"""Stage III trainer on a tiny random base and random memories: frozen base, learning, resume,
alignment + domain phases, attention pooling, bad input."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

from kinject.errors import UserError
from kinject.gag.config import Stage3Config
from kinject.gag.injector import Injector
from kinject.gag.trainer import Stage3Trainer, batch_indices
from kinject.memory.store import MemoryStore, StoreMeta

ANSWERS = ["Velmora", "Quillex", "Ferovia", "Norland"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny random base with an output layer scaled up so its logits can express an answer
    (at init scale a random model's next-token distribution is nearly uniform whatever the input)."""
    from kinject.models import TinySpec, make_tiny_model, save_model

    m = make_tiny_model(TinySpec(vocab=600, hidden=32, layers=2, heads=2, tie_embeddings=False),
                        tokenizer=tiny_tokenizer, seed=1)
    m.lm_head.weight.data *= 30
    out = tmp_path_factory.mktemp("gagbase") / "base"
    save_model(m, tiny_tokenizer, out)
    return out


def make_data(root, name, n=4, seed=0, trajectories=False, layers=("last", "minus2")):
    """Same question, different answers: only the memory can tell them apart."""
    rows = [{"id": f"{name}{k}", "question": "What is the value?", "answer": [ANSWERS[k % 4]]} for k in range(n)]
    data = root / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    st = MemoryStore.create(root / f"{name}-mem", StoreMeta(expert_hidden=16, layers=list(layers), slots=4,
                                                            dtype="float32", trajectories=trajectories))
    g = torch.Generator().manual_seed(seed)
    trs = [torch.randn(len(layers), 3 + k, 16, generator=g) for k in range(n)] if trajectories else None
    st.add([{"id": r["id"], "question": r["question"]} for r in rows], torch.randn(n, len(layers), 4, 16, generator=g), trs)
    return data, root / f"{name}-mem"


def config(tmp_path, base_dir, **kw):
    data, mem = make_data(tmp_path, "dom")
    cfg = {"base": str(base_dir), "out": str(tmp_path / "out"), "device": "cpu", "log_every": 1,
           "domain": {"data": str(data), "memory": str(mem), "max_steps": 8, "learning_rate": 1e-2, "batch_size": 4}, **kw}
    return Stage3Config.model_validate(cfg)


def test_base_gets_no_gradient_stays_bit_identical_and_injector_learns(tmp_path, base_dir):
    cfg = config(tmp_path, base_dir, w_sem=0.01, w_div=0.001)
    cfg.domain.max_steps = 20
    cfg.domain.learning_rate = 2e-2
    tr = Stage3Trainer(cfg)
    before = {k: v.clone() for k, v in tr.base.model.state_dict().items()}
    inj_before = {k: v.clone() for k, v in tr.injector.state_dict().items()}
    metrics = tr.train(progress=False)
    assert all(p.grad is None and not p.requires_grad for p in tr.base.model.parameters())
    after = tr.base.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is not None for p in tr.injector.parameters())
    assert not torch.equal(inj_before["projector.proj.weight"], tr.injector.state_dict()["projector.proj.weight"])
    hist = [json.loads(line) for line in (tmp_path / "out" / "history.jsonl").read_text().splitlines()]
    assert len(hist) == 20 and hist[0]["sem"] > 0 and hist[0]["div"] > 0
    assert hist[-1]["nll"] < hist[0]["nll"] - 1.0, (hist[0], hist[-1])
    # one question, four memories: the answers differ only through the slots
    store = MemoryStore(cfg.domain.memory)
    gens = tr.base.generate(["What is the value?"] * 4, tr.injector(slots=store.get_batch(store.ids)).detach(),
                            max_new_tokens=4)
    assert len({g.text for g in gens}) > 1
    assert metrics["injector_parameters"] == sum(p.numel() for p in tr.injector.parameters())
    assert (tmp_path / "out" / "loss_curves.png").stat().st_size > 1000
    assert Injector.load(tmp_path / "out" / "injector").config.semantic_dim == 384  # MiniLM's dim


def test_resume_equals_uninterrupted(tmp_path, base_dir):
    (tmp_path / "a").mkdir()
    a = config(tmp_path / "a", base_dir, checkpoint_every=2, w_sem=0.0)
    Stage3Trainer(a).train(progress=False)
    (tmp_path / "b").mkdir()
    b = config(tmp_path / "b", base_dir, checkpoint_every=2, w_sem=0.0)
    tr = Stage3Trainer(b)
    rng = torch.get_rng_state()
    assert tr.train(stop_after=5, progress=False) == {"stopped_at": 5}
    ckpts = sorted(p.name for p in (tmp_path / "b" / "out" / "checkpoints").iterdir())
    assert ckpts == ["ckpt-000002", "ckpt-000004"]  # keep_checkpoints=2; step 5 was lost
    torch.manual_seed(123)
    m = Stage3Trainer(b).train(progress=False)
    assert m["steps_this_run"] == 4 and m["global_steps"] == 8
    assert torch.equal(torch.get_rng_state(), rng)  # the checkpoint's RNG state, restored (training draws none)
    wa = Injector.load(tmp_path / "a" / "out" / "injector").state_dict()
    wb = Injector.load(tmp_path / "b" / "out" / "injector").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    hist = [json.loads(line) for line in (tmp_path / "b" / "out" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == list(range(1, 9))


def test_checkpoint_of_the_older_format_is_refused(tmp_path, base_dir):
    cfg = config(tmp_path, base_dir, w_sem=0.0)
    old = tmp_path / "out" / "checkpoints" / "ckpt-000004"
    old.mkdir(parents=True)
    (old / "state.json").write_text(json.dumps({"phase": 0, "phase_step": 4, "global_step": 4}))
    (old / "optimizer.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match=r"ckpt-000004 is a Stage III checkpoint of an older format.*remove .*checkpoints"):
        Stage3Trainer(cfg)


def test_resume_across_the_phase_boundary_equals_uninterrupted(tmp_path, base_dir):
    """Stopped in the alignment phase, resumed past it: the domain phase starts with a fresh
    optimizer (not the checkpoint's, long since rotated away) and ends where an uninterrupted run does."""
    runs = {}
    for name, stop in (("a", None), ("b", 3)):
        root = tmp_path / name
        root.mkdir()
        adata, amem = make_data(root, "gen", n=8, seed=5)
        cfg = config(root, base_dir, w_sem=0.0, checkpoint_every=1, keep_checkpoints=1,
                     alignment={"data": str(adata), "memory": str(amem), "max_steps": 5, "learning_rate": 5e-3, "batch_size": 4})
        if stop:
            assert Stage3Trainer(cfg).train(stop_after=stop, progress=False) == {"stopped_at": stop}
        m = Stage3Trainer(cfg).train(progress=False)
        assert m["global_steps"] == 13
        runs[name] = Injector.load(root / "out" / "injector").state_dict()
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])


def test_alignment_then_domain_phases(tmp_path, base_dir):
    adata, amem = make_data(tmp_path, "gen", n=8, seed=5)
    cfg = config(tmp_path, base_dir, w_sem=0.0,
                 alignment={"data": str(adata), "memory": str(amem), "max_steps": 5, "learning_rate": 5e-3, "batch_size": 4,
                            "warmup_ratio": 0.4})
    Stage3Trainer(cfg).train(progress=False)
    hist = [json.loads(line) for line in (tmp_path / "out" / "history.jsonl").read_text().splitlines()]
    assert [h["phase"] for h in hist] == ["alignment"] * 5 + ["domain"] * 8
    # each phase has its own linear warmup then decay to 0
    assert hist[0]["lr"] == pytest.approx(5e-3 / 2) and hist[4]["lr"] == 0.0
    assert hist[5]["lr"] == pytest.approx(1e-2 * 7 / 8) and hist[-1]["lr"] == 0.0  # int(0.1 * 8) = 0 warmup


def test_attention_pooling_trains_on_trajectories(tmp_path, base_dir):
    data, mem = make_data(tmp_path, "traj", trajectories=True)
    cfg = Stage3Config.model_validate({"base": str(base_dir), "out": str(tmp_path / "out"), "device": "cpu",
                                       "w_sem": 0.0, "injector": {"pooling": "attention", "attention_dim": 8},
                                       "domain": {"data": str(data), "memory": str(mem), "max_steps": 3, "learning_rate": 1e-2,
                                                  "batch_size": 4}})
    tr = Stage3Trainer(cfg)
    q0 = tr.injector.pooler.queries.detach().clone()
    tr.train(progress=False)
    assert not torch.equal(q0, tr.injector.pooler.queries.detach())
    assert Injector.load(tmp_path / "out" / "injector").config.pooling == "attention"


def test_batches_are_deterministic_epoch_permutations():
    seen = [i for s in range(3) for i in batch_indices(10, 3, s, seed=0)]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 9
    assert batch_indices(10, 3, 4, 0) == batch_indices(10, 3, 4, 0) != batch_indices(10, 3, 4, 1)
    assert sorted(batch_indices(2, 8, 0, 0)) == [0, 1]


def test_missing_memories_and_mismatched_injector(tmp_path, base_dir):
    cfg = config(tmp_path, base_dir, w_sem=0.0)
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"question": "Unseen?", "answer": "x"}) + "\n")
    bad = cfg.model_copy(update={"domain": cfg.domain.model_copy(update={"data": str(extra)})})
    with pytest.raises(UserError, match="1 of 1 rows have no memory"):
        Stage3Trainer(bad)
    cfg.domain.max_steps = 1
    Stage3Trainer(cfg).train(progress=False)
    _, mem1 = make_data(tmp_path, "one", layers=("last",))
    data, _ = make_data(tmp_path, "dom2")
    other = cfg.model_copy(update={"out": str(tmp_path / "o2"), "init_injector": str(tmp_path / "out" / "injector"),
                                   "domain": cfg.domain.model_copy(update={"memory": str(mem1), "data": str(data)})})
    (mem1 / "index.jsonl").write_text((tmp_path / "dom2-mem" / "index.jsonl").read_text())
    with pytest.raises(UserError, match=r"layers \['last', 'minus2'\] \(injector\) vs \['last'\]"):
        Stage3Trainer(other)


def test_cli_train_and_one_line_errors(tmp_path, base_dir):
    cfg = config(tmp_path, base_dir, w_sem=0.0)
    cfg.domain.max_steps = 2
    path = tmp_path / "s3.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    from typer.testing import CliRunner

    from kinject.cli import app

    res = CliRunner().invoke(app, ["gag", "train", "--config", str(path)])  # in-process: no new interpreter
    assert res.exit_code == 0, res.output
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["metrics"]["global_steps"] == 2 and man["command"] == "gag train"
    ev = CliRunner().invoke(app, ["gag", "eval", "--injector", str(tmp_path / "out" / "injector"),
                                  "--base", str(base_dir), "--memory", cfg.domain.memory, "--data", cfg.domain.data,
                                  "--out", str(tmp_path / "ev"), "--device", "cpu", "--max-new-tokens", "4"])
    assert ev.exit_code == 0, ev.output
    rows = [json.loads(line) for line in (tmp_path / "ev" / "results.jsonl").read_text().splitlines()]
    assert {(r["method"], r["metric"]) for r in rows} == {(m, k) for m in ("gag", "gag_zero_memory", "gag_foreign_memory")
                                                          for k in ("em", "f1", "has_answer")}
    assert all(set(r) == {"method", "dataset", "split", "metric", "value", "n"} and r["n"] == 4 for r in rows)
    preds = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    from kinject.eval.metrics import exact_match

    em = next(r["value"] for r in rows if r["method"] == "gag" and r["metric"] == "em")
    assert em == round(sum(exact_match(p["gag"], p["gold"]) for p in preds) / 4, 4)
    assert len({p["zero_memory"] for p in preds}) == 1  # one question, zeroed memories: one answer
    cli = [sys.executable, "-m", "kinject.cli", "gag", "train", "--config", str(path)]
    res = subprocess.run([*cli, "domain.memory=/nonexistent"], capture_output=True, text=True)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "not a memory store" in lines[0]
