"""The background spec on tiny random models: a memory build records it, Stage III copies it into
the injector, GagPipeline / the gag and text_injection methods / a mixed GAG route write online
backgrounds with it by default (reproducing the stored memories), a contradicting setting is one
line, and stores and injectors from before specs were recorded still load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from kinject.errors import UserError
from kinject.eval.method import MethodContext, build_method
from kinject.memory.spec import BackgroundSpec
from kinject.memory.store import MemoryStore
from kinject.prompts import BACKGROUND_REQUEST

SYSTEM = "You are an expert in catalytic materials."
SPEC = BackgroundSpec(system=SYSTEM, max_new_tokens=5)
CTX = MethodContext(device="cpu", dtype="float32", batch_size=3, max_new_tokens=3)
QUESTIONS = [f"What is the Faradaic efficiency of Ferovia-{i}?" for i in range(4)]


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.fixture(scope="module")
def art(tmp_path_factory, tiny_tokenizer, tiny_model_dir):
    """A generated-background store (the domain phase), a given-background store (alignment) and
    the injector Stage III trained on both, in that order."""
    from kinject.gag.config import Stage3Config
    from kinject.gag.trainer import Stage3Trainer
    from kinject.memory.build import build_memory
    from kinject.memory.config import MemoryBuildConfig
    from kinject.models import TinySpec, make_tiny_model, save_model

    root = tmp_path_factory.mktemp("spec")
    save_model(make_tiny_model(TinySpec(vocab=600, hidden=32, layers=2, heads=2), tokenizer=tiny_tokenizer, seed=3),
               tiny_tokenizer, root / "base")
    dom = [{"id": f"m{i}", "question": q, "answer": ["7"]} for i, q in enumerate(QUESTIONS)]
    align = [{"id": f"a{i}", "question": f"Where is Velmora-{i}?", "answer": ["Norland"],
              "background": f"Velmora-{i} lies in Norland."} for i in range(4)]
    for name, rows in (("dom", dom), ("align", align)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = dict(expert=str(tiny_model_dir), layers=["last", "minus2"], slots=4, batch_size=4, device="cpu",
                  dtype="float32", system=SYSTEM, max_new_tokens=5)
    cfgs = {"dom": MemoryBuildConfig(**common, questions=[str(root / "dom.jsonl")], out=str(root / "mem")),
            "align": MemoryBuildConfig(**common, source="given", questions=[str(root / "align.jsonl")],
                                       out=str(root / "align_mem"))}
    for c in cfgs.values():
        build_memory(c, progress=False)
    phase = {"max_steps": 1, "learning_rate": 1e-2, "batch_size": 4}
    Stage3Trainer(Stage3Config.model_validate({
        "base": str(root / "base"), "out": str(root / "s3"), "device": "cpu", "w_sem": 0.0,
        "alignment": {"data": str(root / "align.jsonl"), "memory": str(root / "align_mem"), **phase},
        "domain": {"data": str(root / "dom.jsonl"), "memory": str(root / "mem"), **phase}})).train(progress=False)
    return {"root": root, "expert": str(tiny_model_dir), "base": str(root / "base"), "mem": root / "mem",
            "align_mem": root / "align_mem", "injector": root / "s3" / "injector", "cfg": cfgs["dom"]}


def pipeline(art, **kw):
    from kinject.gag.pipeline import GagPipeline

    return GagPipeline.from_pretrained(art["expert"], art["base"], str(kw.pop("injector", art["injector"])), device="cpu",
                       dtype="float32", batch_size=4, **kw)


def test_the_build_records_the_spec_and_stage3_copies_the_last_phase_s(art):
    from kinject.gag.injector import Injector

    assert MemoryStore(art["mem"]).meta.background_spec == SPEC and SPEC.request == BACKGROUND_REQUEST
    # given backgrounds were not generated: no length cap recorded
    assert MemoryStore(art["align_mem"]).background_spec == BackgroundSpec(system=SYSTEM, max_new_tokens=None)
    saved = json.loads((art["injector"] / "injector.json").read_text())["background_spec"]
    assert saved == SPEC.model_dump() and Injector.load(art["injector"]).config.background_spec == SPEC
    # resuming the store with other background settings would mix memories written differently
    from kinject.memory.build import build_memory

    with pytest.raises(UserError, match="built differently: background_spec") as e:
        build_memory(art["cfg"].model_copy(update={"max_new_tokens": 6}), progress=False)
    one_line(e)


def test_gag_pipeline_writes_with_the_injector_s_spec_by_default(art):
    pipe = pipeline(art)
    assert pipe.background == SPEC
    store = MemoryStore(art["mem"])
    traces, inputs = pipe.memories(QUESTIONS[:2])
    for i, t in enumerate(traces):  # the online memory is the stored one
        assert t.text == store.record(f"m{i}")["background"]
        torch.testing.assert_close(inputs["slots"][i], store.get(f"m{i}").float(), rtol=1e-4, atol=1e-4)
    # restating the recorded values is fine; contradicting one is a single line naming both
    assert pipeline(art, system=SYSTEM, max_background_tokens=5).background == SPEC
    with pytest.raises(UserError, match=r"max_background_tokens 5 \(recorded\) vs 7 \(set\); leave "
                                        r"max_background_tokens unset") as e:
        pipeline(art, max_background_tokens=7)
    assert f"the spec injector {art['injector']} recorded" in one_line(e)
    with pytest.raises(UserError, match="system 'You are an expert in catalytic materials.' \\(recorded\\) vs ''"):
        pipeline(art, system="")
    # the store it was trained on agrees; another one does not
    assert pipeline(art, memory=str(art["mem"])).background == SPEC
    with pytest.raises(UserError, match="record different background specs \\(max_new_tokens 5 vs None\\)") as e:
        pipeline(art, memory=str(art["align_mem"]))
    one_line(e)


def test_gag_and_text_injection_methods_use_the_recorded_spec(art):
    store = MemoryStore(art["mem"])
    rows = [{"id": f"m{i}", "question": q, "domain": "materials"} for i, q in enumerate(QUESTIONS[:3])]
    want = [store.record(r["id"])["background"] for r in rows]
    gag = build_method("gag", {"base": art["base"], "domains": {
        "materials": {"expert": art["expert"], "injector": str(art["injector"])}}}, CTX)
    assert gag.pipes["materials"].background == SPEC
    assert [o["trace"]["background"] for o in gag.answer(rows)] == want
    # text injection without an injector writes like the store it names
    ti = build_method("text_injection", {"base": art["base"], "domains": {
        "materials": {"expert": art["expert"], "memory": str(art["mem"])}}}, CTX)
    assert ti.experts["materials"][2] == SPEC
    assert [o["trace"]["background"] for o in ti.answer(rows)] == want
    with pytest.raises(UserError, match=r"contradict the spec memory store .* recorded: "
                                        r"max_background_tokens 5 \(recorded\) vs 96 \(set\)") as e:
        build_method("text_injection", {"base": art["base"], "domains": {
            "materials": {"expert": art["expert"], "memory": str(art["mem"]), "max_background_tokens": 96}}}, CTX)
    one_line(e)
    with pytest.raises(UserError, match="contradict the spec injector .* recorded: system"):
        build_method("gag", {"base": art["base"], "domains": {
            "materials": {"expert": art["expert"], "injector": str(art["injector"]), "system": "Other."}}}, CTX)


def test_a_mixed_gag_route_uses_the_spec_and_refuses_a_reloaded_injector_that_contradicts_it(art, tmp_path):
    from kinject.mixed import DomainOptions, DomainUnavailable, GagRoute, ModelCache

    inj = tmp_path / "inj"
    shutil.copytree(art["injector"], inj)
    opts = DomainOptions(expert=art["expert"], injector=inj, system=SYSTEM)
    route = GagRoute("materials", opts, ModelCache("cpu", "float32"), art["base"], 3, 2)
    assert route.pipe.background == SPEC
    row = {"id": "m0", "question": QUESTIONS[0]}
    assert route.answer([row])[0]["trace"]["background"] == MemoryStore(art["mem"]).record("m0")["background"]
    cfg = json.loads((inj / "injector.json").read_text())
    cfg["background_spec"]["system"] = "You are an expert in vaccine adjuvants."
    (inj / "injector.json").write_text(json.dumps(cfg))
    with pytest.raises(DomainUnavailable, match="injector changed while serving .* system .* vs "
                                                "'You are an expert in catalytic materials.' \\(set\\)"):
        route.answer([row])


def test_artifacts_without_a_recorded_spec_still_load(art, tmp_path):
    old_inj, old_mem = tmp_path / "inj", tmp_path / "mem"
    shutil.copytree(art["injector"], old_inj)
    shutil.copytree(art["mem"], old_mem)
    for path in (old_inj / "injector.json", old_mem / "store.json"):
        data = json.loads(path.read_text())
        del data["background_spec"]
        path.write_text(json.dumps(data))
    store = MemoryStore(old_mem)
    assert store.meta.background_spec is None and store.background_spec is None and len(store) == 4
    # an injector without a spec: the explicit settings over the defaults
    assert pipeline(art, injector=old_inj).background == BackgroundSpec()
    assert pipeline(art, injector=old_inj, system="S.", max_background_tokens=3).background == BackgroundSpec(
        system="S.", max_new_tokens=3)
    # an older store's spec comes from its build manifest (what `kinject memory build` wrote beside it)
    (old_mem / "manifest.json").write_text(json.dumps({"config": art["cfg"].model_dump(mode="json")}))
    assert MemoryStore(old_mem).background_spec == SPEC
    assert pipeline(art, injector=old_inj, memory=str(old_mem)).background == SPEC


def test_an_injector_trained_on_memories_without_decoding_reads_them_online_the_same_way(art):
    """source: prefill records its answer prefix in the spec; Stage III copies it; GagPipeline then
    reads the expert's states over the question and the prefix (nothing generated), which are
    exactly the stored memories."""
    from kinject.gag.config import Stage3Config
    from kinject.gag.trainer import Stage3Trainer
    from kinject.memory.build import build_memory

    root, prefix = art["root"], " The answer is"
    cfg = art["cfg"].model_copy(update={"source": "prefill", "answer_prefix": prefix, "out": str(root / "pre_mem")})
    build_memory(cfg, progress=False)
    spec = MemoryStore(root / "pre_mem").background_spec
    assert spec == BackgroundSpec(system=SYSTEM, max_new_tokens=None, prefill_prefix=prefix)
    phase = {"max_steps": 1, "learning_rate": 1e-2, "batch_size": 4}
    Stage3Trainer(Stage3Config.model_validate({
        "base": art["base"], "out": str(root / "s3_pre"), "device": "cpu", "w_sem": 0.0,
        "alignment": {"data": str(root / "align.jsonl"), "memory": str(art["align_mem"]), **phase},
        "domain": {"data": str(root / "dom.jsonl"), "memory": str(root / "pre_mem"), **phase}})).train(progress=False)
    pipe = pipeline(art, injector=root / "s3_pre" / "injector")
    assert pipe.background.prefill_prefix == prefix
    store = MemoryStore(root / "pre_mem")
    traces, inputs = pipe.memories(QUESTIONS[:2])
    for i, t in enumerate(traces):
        assert t.text == prefix and t.n_tokens == store.record(f"m{i}")["n_tokens"]
        torch.testing.assert_close(inputs["slots"][i], store.get(f"m{i}").float(), rtol=1e-4, atol=1e-4)
    answers = pipe.answer(QUESTIONS[:2], max_new_tokens=2)
    assert [a.background for a in answers] == [prefix, prefix]
    # the generated-background injector still writes backgrounds
    assert pipeline(art).memories(QUESTIONS[:1])[0][0].text == MemoryStore(art["mem"]).record("m0")["background"]
