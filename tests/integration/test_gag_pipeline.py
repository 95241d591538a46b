"""End to end on tiny random models through the CLI: memory build (generated backgrounds for
domain rows, given backgrounds for alignment items) -> gag train (alignment + domain) ->
gag answer with online memories, which must equal the stored ones."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

CLI = [sys.executable, "-m", "kinject.cli"]


def run(*args):
    res = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_memory_train_answer_end_to_end(tmp_path, tiny_model_dir, tiny_tokenizer):
    from kinject.gag.base import InjectedBase
    from kinject.gag.injector import Injector
    from kinject.memory.store import MemoryStore
    from kinject.models import TinySpec, make_tiny_model, save_model

    base = make_tiny_model(TinySpec(vocab=600, hidden=32, layers=2, heads=2, tie_embeddings=False),
                           tokenizer=tiny_tokenizer, seed=2)
    base.lm_head.weight.data *= 30
    save_model(base, tiny_tokenizer, tmp_path / "base")
    instr = "Answer questions about catalysts."
    dom = [{"id": f"materials-train-{i}", "instruction": instr, "input": f"What is the efficiency of Ferovia-{i}?",
            "output": f"{90 + i}.5 percent", "answer": [f"{90 + i}.5 percent"]} for i in range(6)]
    (tmp_path / "dom.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dom))
    align = [{"question": f"Where is Velmora-{i}?", "answer": "Norland",
              "background": f"Velmora-{i} lies in Norland."} for i in range(8)]
    (tmp_path / "align.jsonl").write_text("".join(json.dumps(r) + "\n" for r in align))
    common = {"kind": "memory_build", "expert": str(tiny_model_dir), "layers": ["last", "minus2"], "slots": 4,
              "max_new_tokens": 8, "batch_size": 4, "device": "cpu", "dtype": "float32",
              "system": "You are an expert in catalytic materials."}
    for name, src, data in [("dom", "generate", "dom.jsonl"), ("align", "given", "align.jsonl")]:
        (tmp_path / f"{name}_memory.yaml").write_text(yaml.safe_dump(
            {**common, "source": src, "questions": [str(tmp_path / data)], "out": str(tmp_path / f"{name}-mem")}))
        run("memory", "build", "--config", str(tmp_path / f"{name}_memory.yaml"))
    amem = MemoryStore(tmp_path / "align-mem")
    assert amem.record(amem.ids[0])["background"] == "Velmora-0 lies in Norland."
    assert amem.record(amem.ids[0])["n_tokens"] == len(tiny_tokenizer("Velmora-0 lies in Norland.")["input_ids"])

    (tmp_path / "s3.yaml").write_text(yaml.safe_dump({
        "kind": "gag_stage3", "base": str(tmp_path / "base"), "out": str(tmp_path / "s3"), "device": "cpu",
        "log_every": 2, "checkpoint_every": 5,
        "alignment": {"data": str(tmp_path / "align.jsonl"), "memory": str(tmp_path / "align-mem"), "max_steps": 4,
                      "learning_rate": 1e-2, "batch_size": 4},
        "domain": {"data": str(tmp_path / "dom.jsonl"), "memory": str(tmp_path / "dom-mem"), "max_steps": 6,
                   "learning_rate": 1e-2, "batch_size": 3}}))
    run("gag", "train", "--config", str(tmp_path / "s3.yaml"))
    man = json.loads((tmp_path / "s3" / "manifest.json").read_text())
    assert man["metrics"]["global_steps"] == 10 and man["metrics"]["added_prompt_tokens"] == 4
    assert "alignment_final_nll" in man["metrics"] and "domain_final_nll" in man["metrics"]

    (tmp_path / "ans.yaml").write_text(yaml.safe_dump({
        "kind": "gag_answer", "expert": str(tiny_model_dir), "base": str(tmp_path / "base"),
        "injector": str(tmp_path / "s3" / "injector"), "system": common["system"], "instruction": instr,
        "max_background_tokens": 8, "max_new_tokens": 6, "device": "cpu"}))
    res = run("gag", "answer", "--config", str(tmp_path / "ans.yaml"), "--json", dom[0]["input"], dom[3]["input"])
    online = [json.loads(line) for line in res.stdout.splitlines()]
    # the online path reproduces the stored memory and hence the stored-memory answer
    store = MemoryStore(tmp_path / "dom-mem")
    inj = Injector.load(tmp_path / "s3" / "injector")
    ib = InjectedBase.load(tmp_path / "base", 4, "cpu", "float32", instr)
    z = inj(slots=store.get_batch(["materials-train-0", "materials-train-3"])).detach()
    offline = ib.generate([dom[0]["input"], dom[3]["input"]], z, max_new_tokens=6)
    for o, off, i in zip(online, offline, (0, 3)):
        assert o["background"] == store.record(f"materials-train-{i}")["background"]
        assert o["answer"] == off.text
    from kinject.gag.pipeline import GagPipeline

    pipe = GagPipeline.from_pretrained(str(tiny_model_dir), str(tmp_path / "base"), str(tmp_path / "s3" / "injector"),
                       common["system"], instr, 8, "cpu", "float32")
    _, inputs = pipe.memories([dom[3]["input"]])
    torch.testing.assert_close(inputs["slots"][0], store.get("materials-train-3"), rtol=1e-4, atol=1e-4)
    # an injector trained for another base is refused, naming both sides
    other = make_tiny_model(TinySpec(vocab=600, hidden=32, layers=2, heads=2, tie_embeddings=False),
                            tokenizer=tiny_tokenizer, seed=9)
    save_model(other, tiny_tokenizer, tmp_path / "other")
    res = subprocess.run([*CLI, "gag", "answer", "--config", str(tmp_path / "ans.yaml"),
                          f"base={tmp_path / 'other'}", "Q?"], capture_output=True, text=True)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert res.returncode == 2 and len(lines) == 1 and "trained for another base: fingerprint" in lines[0]


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(tmp_path, tiny_tokenizer):
    """Each rank takes batch[rank::2]; averaged gradients equal the full batch's (equal answer lengths),
    in both phases (the injector is wrapped anew for each) and with the semantic head, which runs
    outside the wrapped forward."""
    import os

    from kinject.memory.store import MemoryStore, StoreMeta
    from kinject.models import TinySpec, make_tiny_model, save_model

    m = make_tiny_model(TinySpec(vocab=600, hidden=32, layers=2, heads=2, tie_embeddings=False),
                        tokenizer=tiny_tokenizer, seed=1)
    m.lm_head.weight.data *= 30
    save_model(m, tiny_tokenizer, tmp_path / "base")
    rows = [{"id": f"i{k}", "question": "What is the value?", "answer": [a]}
            for k, a in enumerate(["Velmora", "Quillex", "Ferovia", "Norland"] * 2)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    st = MemoryStore.create(tmp_path / "mem", StoreMeta(expert_hidden=16, layers=["last", "minus2"], slots=4,
                                                        dtype="float32"))
    st.add([{"id": r["id"], "question": r["question"]} for r in rows],
           torch.randn(8, 2, 4, 16, generator=torch.Generator().manual_seed(0)))
    for name in ("one", "two"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({
            "kind": "gag_stage3", "base": str(tmp_path / "base"), "out": str(tmp_path / name), "device": "cpu",
            "w_sem": 0.01, "log_every": 1,
            **{phase: {"data": str(tmp_path / "d.jsonl"), "memory": str(tmp_path / "mem"), "max_steps": 2,
                       "learning_rate": 1e-2, "batch_size": 8} for phase in ("alignment", "domain")}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "kinject.cli", "gag", "train", "--config", str(tmp_path / "two.yaml")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    run("gag", "train", "--config", str(tmp_path / "one.yaml"))
    one, two = ([json.loads(line) for line in (tmp_path / n / "history.jsonl").read_text().splitlines()]
                for n in ("one", "two"))
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
