"""MixedPipeline on tiny random models and a real MiniLM router: grouping and order, the
shared base, hot add/remove while answering, and one failing route not failing the others."""

from __future__ import annotations

import shutil
import threading

import pytest

from kinject.errors import UserError
from kinject.mixed import DomainOptions, MixedPipeline

from .mixed_world import build_mixed_world, options_of
from .test_ppr_data import questions


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizer, tiny_model_dir):
    return build_mixed_world(tmp_path_factory.mktemp("mixed"), tiny_tokenizer, tiny_model_dir)


@pytest.fixture(scope="module")
def minilm():
    from kinject.encoders import EncoderConfig
    from kinject.ppr.encoders import load_encoder

    return load_encoder(EncoderConfig())


@pytest.fixture()
def pipe(world, minilm):
    return MixedPipeline.from_config(options_of(world), encoder=minilm)


class Spy:
    """Records the batches a real route method receives (and can hold them at a gate)."""

    def __init__(self, inner, gate: threading.Event | None = None):
        self.inner, self.name, self.gate = inner, inner.name, gate
        self.batches: list[list[str]] = []
        self.entered = threading.Event()

    def answer(self, batch):
        self.batches.append([r["id"] for r in batch])
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        return self.inner.answer(batch)


def mixed_rows(n=3):
    rows = []
    for d in ("general", "materials", "adjuvant"):
        rows += [{"id": f"{d}-{i}", "question": q, "domain": d} for i, q in enumerate(questions(d, n, seed=7))]
    # interleave so groups are not contiguous in the input
    return [rows[i] for i in sorted(range(len(rows)), key=lambda i: (i % n, i))]


def test_routes_groups_once_per_route_and_keeps_order(pipe):
    spies = {name: Spy(m) for name, m in pipe.routes.items()}
    pipe = MixedPipeline(pipe.snapshot.router, spies)
    rows = mixed_rows()
    out = pipe.answer(rows)
    assert len(out) == len(rows)
    routes = [o["trace"]["route"] for o in out]
    assert routes == [r["domain"] for r in rows]  # MiniLM routes these clear questions right
    for name, spy in spies.items():
        assert len(spy.batches) == 1, name  # one model call per route
        assert spy.batches[0] == [r["id"] for r in rows if r["domain"] == name]  # input order within a group
    for r, o in zip(rows, out):
        t = o["trace"]
        assert "error" not in o and isinstance(o["prediction"], str)
        assert set(t["route_scores"]) == {"general", "materials", "adjuvant"}
        assert t["route_score"] == pytest.approx(max(t["route_scores"].values()))
        assert t["route_fallback"] is False
        if r["domain"] == "general":
            assert t["method"] == "base" and t["added_prompt_tokens"] == 0
        else:
            assert t["method"] == f"gag-{r['domain']}" and t["added_prompt_tokens"] == 4
            assert isinstance(t["background"], str) and 0 < t["expert_tokens"] <= 4
    # each answer is what its route gives for that question alone in its group (order kept)
    solo = {r["id"]: o["prediction"] for r, o in zip(
        [r for r in rows if r["domain"] == "materials"],
        spies["materials"].inner.answer([r for r in rows if r["domain"] == "materials"]))}
    assert all(o["prediction"] == solo[r["id"]] for r, o in zip(rows, out) if r["domain"] == "materials")


def test_domains_share_one_loaded_base(pipe):
    base_route, mat, adj = pipe.routes["general"], pipe.routes["materials"], pipe.routes["adjuvant"]
    assert mat.pipe.base.model is adj.pipe.base.model is base_route._impl.model
    assert mat.pipe.expert is adj.pipe.expert  # same expert dir -> loaded once
    assert len(pipe.models) == 2
    assert mat.pipe.base.instruction == "Answer about materials." != adj.pipe.base.instruction


def test_add_and_remove_while_answering(pipe, world):
    rows = mixed_rows(2)
    gate = threading.Event()
    spy = Spy(pipe.routes["materials"], gate)
    held = MixedPipeline(pipe.snapshot.router, {**pipe.routes, "materials": spy}, models=pipe.models,
                         options=pipe.options)
    result = {}
    t = threading.Thread(target=lambda: result.update(out=held.answer(rows)))
    t.start()
    assert spy.entered.wait(60)
    # while a call is in flight on the old snapshot: remove materials, add adjuvant's twin domain
    snap = held.remove_domain("materials")
    assert "materials" not in snap.routes and snap.version == 1
    later = held.answer([r for r in rows if r["domain"] == "materials"])
    assert {o["trace"]["route"] for o in later} <= {"general", "adjuvant"}
    gate.set()
    t.join(60)
    out = result["out"]  # the in-flight call finished on its snapshot, materials answered
    assert [o["trace"]["route"] for o in out] == [r["domain"] for r in rows]
    assert all("error" not in o and o["trace"]["snapshot"] == 0 for o in out)
    # add it back from its banks dir (the shared base and expert are reused, not reloaded)
    method = held.build_gag_route("materials", DomainOptions(**world["domains"]["materials"]))
    snap = held.add_domain("materials", world["banks"], method)
    assert snap.version == 2 and len(held.models) == 2
    again = held.answer([r for r in rows if r["domain"] == "materials"])
    assert [o["trace"]["route"] for o in again] == ["materials"] * 2
    with pytest.raises(UserError, match="already served"):
        held.add_domain("materials", world["banks"], method)
    with pytest.raises(UserError, match="cannot be removed"):
        held.remove_domain("general")
    with pytest.raises(UserError, match="not served"):
        held.remove_domain("finance")


def test_add_domain_from_questions_file(pipe, world, tmp_path):
    """A third private domain, its bank built from its offline questions with the router's encoder."""
    shutil.copytree(world["all_domains"]["adjuvant"]["injector"], tmp_path / "inj")
    pipe.remove_domain("adjuvant")
    opts = DomainOptions(**{**world["all_domains"]["adjuvant"], "injector": str(tmp_path / "inj")})
    pipe.add_domain("adjuvant", world["offline"]["adjuvant"], pipe.build_gag_route("adjuvant", opts))
    out = pipe.answer([{"id": "a", "question": questions("adjuvant", 1, seed=9)[0]}])
    assert out[0]["trace"]["route"] == "adjuvant" and "error" not in out[0]


def test_one_failing_route_fails_only_its_rows(pipe, world, tmp_path):
    rows = mixed_rows(2)
    # a domain whose injector files vanish while serving: only its rows fail, clearly
    inj = tmp_path / "inj"
    shutil.copytree(world["domains"]["materials"]["injector"], inj)
    pipe.remove_domain("materials")
    route = pipe.build_gag_route("materials", DomainOptions(**{**world["domains"]["materials"], "injector": str(inj)}))
    pipe.add_domain("materials", world["banks"], route)
    assert all("error" not in o for o in pipe.answer(rows))
    shutil.rmtree(inj)
    out = pipe.answer(rows)
    for r, o in zip(rows, out):
        if r["domain"] == "materials":
            assert o["prediction"] == "" and "injector files" in o["error"] and "missing" in o["error"]
            assert o["trace"]["route"] == "materials"
        else:
            assert "error" not in o and o["trace"]["route"] == r["domain"]
    # restored (another injector of the same shape): reloaded in place, the route serves again
    shutil.copytree(world["all_domains"]["adjuvant"]["injector"], inj)
    assert all("error" not in o for o in pipe.answer(rows))
    # strict mode (evaluation) raises instead
    shutil.rmtree(inj)
    strict = MixedPipeline(pipe.snapshot.router, pipe.routes, strict=True)
    with pytest.raises(RuntimeError, match="missing"):
        strict.answer(rows)


def test_bad_setups_are_one_line_errors(pipe, world, tmp_path):
    from kinject.mixed import MixedOptions

    with pytest.raises(UserError, match="have no route"):
        MixedPipeline(pipe.snapshot.router, {"general": pipe.routes["general"]})
    with pytest.raises(UserError, match="have no PPR bank"):
        MixedPipeline(pipe.snapshot.router, {**pipe.routes, "finance": pipe.routes["general"]})
    opts = options_of(world).model_dump()
    opts["domains"]["materials"]["injector"] = str(tmp_path / "nope")
    with pytest.raises(UserError, match=r"domains.materials.injector: .*nope does not exist; run make demo"):
        MixedPipeline.from_config(MixedOptions(**opts), hint="; run make demo")
    opts = options_of(world).model_dump()
    opts["domains"]["finance"] = opts["domains"]["materials"]
    with pytest.raises(UserError, match="domain 'finance' has no bank"):
        MixedPipeline.from_config(MixedOptions(**opts))


def test_gag_routes_share_one_loaded_base(pipe):
    """Every GAG route is a `GagPipeline` built from loaded objects: the domains share the one base
    model (not a copy per domain), each with its own injector."""
    from kinject.gag.pipeline import GagPipeline

    routes = [r.pipe for name, r in pipe.routes.items() if hasattr(r, "pipe")]
    assert len(routes) >= 2 and all(isinstance(p, GagPipeline) for p in routes)
    assert len({id(p.base.model) for p in routes}) == 1
    assert len({id(p.injector) for p in routes}) == len(routes)


def test_grip_route_with_its_own_bank(world, minilm, tmp_path):
    """`wiki` -> GRIP when a bank for it is given (here a questions JSONL); its trace has the
    retrieval steps. Without a bank GRIP is built but not routed to (served alone)."""
    import json

    from kinject.mixed import MixedOptions
    from kinject.retrieval.index import build_index

    passages = [{"id": f"p{i}", "title": f"Vault {i}", "text": f"The archive vault {i} holds {i} scrolls."}
                for i in range(6)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    build_index(tmp_path / "p.jsonl", tmp_path / "index", progress=False)
    wiki_qs = [f"How many scrolls does the archive vault number {i} hold according to the wiki passage?"
               for i in range(12)]
    (tmp_path / "wiki.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in wiki_qs))
    grip = {"model": world["domains"]["materials"]["expert"], "index": str(tmp_path / "index"),
            "max_rounds": 2, "max_new_tokens": 6}
    opts = options_of(world).model_dump()
    alone = MixedPipeline.from_config(MixedOptions(**{**opts, "grip": grip}), encoder=minilm)
    assert alone.grip is not None and "wiki" not in alone.routes
    routed = MixedPipeline.from_config(
        MixedOptions(**{**opts, "grip": {**grip, "bank": str(tmp_path / "wiki.jsonl")}}), encoder=minilm)
    assert list(routed.routes) == ["general", "materials", "adjuvant", "wiki"] and routed.routes["wiki"] is routed.grip
    rows = [{"id": "w", "question": "How many scrolls does the archive vault number 3 hold?"},
            {"id": "m", "question": questions("materials", 1, seed=4)[0]}]
    out = routed.answer(rows)
    assert [o["trace"]["route"] for o in out] == ["wiki", "materials"]
    t = out[0]["trace"]
    assert t["method"] == "grip" and 0 <= t["n_retrievals"] <= 1 and isinstance(t["step_answers"], list)
    assert len(t["retrievals"]) == t["n_retrievals"]
