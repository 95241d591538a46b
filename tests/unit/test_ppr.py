"""PPR: encoders, prototype banks, router, plug-and-play add/remove, evaluation (library level)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kinject.encoders import ENCODERS, Encoder, EncoderConfig
from kinject.errors import UserError
from kinject.ppr.banks import (
    add_domain,
    build_banks,
    kmeans_prototypes,
    load_bank,
    parse_domain_args,
    read_index,
    read_questions,
    remove_domain,
)
from kinject.ppr.config import PPRConfig
from kinject.ppr.encoders import load_encoder, parse_encoder
from kinject.ppr.evaluate import evaluate, read_labelled, result_rows, write_eval
from kinject.ppr.router import Router

from .test_ppr_data import questions, write_jsonl, write_world_like

CFG = PPRConfig()


@pytest.fixture(scope="module")
def minilm() -> Encoder:
    return load_encoder(EncoderConfig())


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return write_world_like(tmp_path_factory.mktemp("ppr") / "world")


def offline(world: Path, *names: str) -> list[tuple[str, Path]]:
    return [(n, world / "mixed_domain" / "offline" / f"{n}.jsonl") for n in names]


def dir_digest(d: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir()) if f.is_file()}


@pytest.fixture(scope="module")
def banks2(world, minilm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("banks") / "b2"
    build_banks(offline(world, "general", "materials"), out, CFG, minilm, progress=False)
    return out


@pytest.fixture(scope="module")
def banks3(banks2, world, minilm, tmp_path_factory) -> Path:
    """banks2 + `ppr add adjuvant` (a copy: banks2 stays as built)."""
    out = tmp_path_factory.mktemp("banks") / "b3"
    shutil.copytree(banks2, out)
    add_domain(out, "adjuvant", offline(world, "adjuvant")[0][1], CFG, minilm, progress=False)
    return out


# ------------------------------------------------------------------ encoders


def test_registry_and_parse_encoder(tiny_model_dir):
    assert {"hf-mean", "sentence-transformers"} <= set(ENCODERS)
    assert parse_encoder("minilm").kind == "sentence-transformers"
    assert parse_encoder("minilm").path is None
    assert parse_encoder(f"hf-mean:{tiny_model_dir}").kind == "hf-mean"
    assert parse_encoder(str(tiny_model_dir)) == EncoderConfig(kind="hf-mean", path=str(tiny_model_dir))
    with pytest.raises(UserError, match="neither a known encoder"):
        parse_encoder("/no/such/model")
    with pytest.raises(UserError, match="unknown encoder"):
        load_encoder(EncoderConfig(kind="bogus"))


def test_minilm_vectors_are_unit_and_semantic(minilm):
    assert isinstance(minilm, Encoder) and minilm.dim == 384 and minilm.max_length == 256
    assert minilm.id.startswith("sentence-transformers:all-MiniLM-L6-v2@")
    emb = minilm.encode(["What is the Faradaic efficiency of Ferovia-7?",
                         "What is the Faradaic efficiency of Lutor-3?",
                         "Who was the first president of Norland?"])
    assert emb.dtype == np.float32 and emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2
    with pytest.raises(UserError, match="empty"):
        minilm.encode(["ok?", "   "])


def test_hf_mean_is_masked_mean_of_last_layer(tiny_model_dir):
    import torch
    from transformers import AutoModel

    enc = load_encoder(EncoderConfig(kind="hf-mean", path=str(tiny_model_dir), batch_size=4))
    texts = ["What is the capital of Norland?", "Who?", "Which river flows through the old town of Velmora?"]
    batched = enc.encode(texts)
    one_by_one = np.concatenate([enc.encode([t]) for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)  # padding never leaks in
    model = AutoModel.from_pretrained(str(tiny_model_dir)).eval()
    ids = enc.tokenizer(texts[0], return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(input_ids=ids).last_hidden_state[0].mean(0)
    np.testing.assert_allclose(batched[0], (ref / ref.norm()).numpy(), atol=1e-5)
    assert enc.id.startswith("hf-mean:tiny-qwen3@") and enc.dim == 64


# ------------------------------------------------------------------ banks


def test_parse_domain_args_errors(tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [{"question": "What is X?"}])
    assert parse_domain_args([f"materials={f}"]) == [("materials", f)]
    with pytest.raises(UserError, match="given twice"):
        parse_domain_args([f"materials={f}", f"materials={f}"])
    with pytest.raises(UserError, match="NAME=FILE"):
        parse_domain_args([str(f)])
    with pytest.raises(UserError, match="bad domain name"):
        parse_domain_args([f"../x={f}"])
    with pytest.raises(UserError, match="not found"):
        parse_domain_args([f"x={tmp_path / 'missing.jsonl'}"])


def test_read_questions_dedupes_caps_and_rejects_empty(tmp_path):
    qs = questions("materials", 50, seed=3)
    f = write_jsonl(tmp_path / "m.jsonl", [{"question": q} for q in qs + qs[:10]])
    dq = read_questions("materials", f, max_questions=1000, seed=0)
    assert dq.n_records == 60 and len(dq.questions) == len(set(qs))
    capped = read_questions("materials", f, max_questions=7, seed=0)
    assert len(capped.questions) == 7 and capped.questions == read_questions("materials", f, 7, 0).questions
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="empty file"):
        read_questions("x", tmp_path / "empty.jsonl", 10, 0)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "ok?"}, {"question": " "}])
    with pytest.raises(UserError, match="record 2"):
        read_questions("x", bad, 10, 0)


def test_kmeans_caps_k_is_seeded_and_normalized():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(10, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cent, _ = kmeans_prototypes(np.concatenate([emb, emb]), k=32, n_init=10, seed=0)
    assert cent.shape == (10, 16)  # k capped by the 10 distinct vectors
    np.testing.assert_allclose(np.linalg.norm(cent, axis=1), 1.0, atol=1e-5)
    big = rng.normal(size=(200, 16)).astype(np.float32)
    a, _ = kmeans_prototypes(big, k=8, n_init=10, seed=3)
    b, _ = kmeans_prototypes(big, k=8, n_init=10, seed=3)
    assert a.shape == (8, 16) and np.array_equal(a, b)
    # k >= distinct questions: the questions themselves, in first-seen order, no k-means
    ex, inertia = kmeans_prototypes(np.concatenate([emb, emb[:3]]), k=4096, n_init=10, seed=0)
    np.testing.assert_allclose(ex, emb, atol=1e-6)
    assert inertia == 0.0


def test_build_writes_banks_with_metadata(banks2, minilm, world):
    index = read_index(banks2)
    assert index["domains"] == ["general", "materials"]
    assert index["encoder"]["id"] == minilm.id and index["encoder"]["path"] is None
    bank = load_bank(banks2, "materials", encoder_id=minilm.id, dim=384)
    src = world / "mixed_domain" / "offline" / "materials.jsonl"
    assert bank.prototypes.shape == (32, 384)
    np.testing.assert_allclose(np.linalg.norm(bank.prototypes, axis=1), 1.0, atol=1e-5)
    assert bank.meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert bank.meta["k"] == 32 and bank.meta["dim"] == 384 and bank.meta["encoder_id"] == minilm.id
    assert {"created", "source_file", "n_questions"} <= set(bank.meta)


# ------------------------------------------------------------------ router


def test_router_scores_are_max_cosine_per_domain(banks2, minilm):
    router = Router.from_pretrained(banks2, minilm)
    qs = ["What is the BET surface area of Quzan-12?", "Who wrote the novel Palmo?"]
    emb = minilm.encode(qs)
    scores = router.score_embeddings(emb)
    for j, b in enumerate(router.banks):
        np.testing.assert_allclose(scores[:, j], (emb @ b.prototypes.T).max(axis=1), atol=1e-6)
    d = router.route_batch(qs)
    assert [x.route for x in d] == ["materials", "general"]
    assert set(d[0].scores) == {"general", "materials"}
    assert d[0].score == max(d[0].scores.values()) and not d[0].fallback


def test_margin_rule_falls_back_to_general(banks2, minilm):
    q = ["What is the BET surface area of Quzan-12?"]
    plain = Router.from_pretrained(banks2, minilm).route_batch(q)[0]
    gap = plain.scores["materials"] - plain.scores["general"]
    assert Router.from_pretrained(banks2, minilm, margin=gap / 2).route_batch(q)[0].route == "materials"
    fell = Router.from_pretrained(banks2, minilm, margin=gap + 0.01).route_batch(q)[0]
    assert fell.route == "general" and fell.fallback and fell.score == plain.scores["general"]


def test_long_query_is_truncated_and_said_so(banks2, minilm):
    router = Router.from_pretrained(banks2, minilm)
    long_q = "What is the Faradaic efficiency of " + " and ".join(["Ferovia-7"] * 120) + "?"
    d = router.route_batch([long_q, "Who wrote the novel Palmo?"])
    assert d[0].truncated_from is not None and d[0].truncated_from > 256
    assert d[1].truncated_from is None
    with pytest.raises(UserError, match="empty"):
        router.route("")


# ------------------------------------------------------------------ plug and play


def test_add_domain_keeps_other_banks_and_accuracy(banks2, banks3, world, minilm):
    digest, after_digest = dir_digest(banks2), dir_digest(banks3)
    for f in ("general.safetensors", "general.json", "materials.safetensors", "materials.json"):
        assert after_digest[f] == digest[f]  # untouched, byte for byte
    assert read_index(banks3)["created"] == read_index(banks2)["created"]
    router3 = Router.from_pretrained(banks3, minilm)
    assert router3.domains == ["general", "materials", "adjuvant"]
    data = read_labelled(world / "mixed_domain" / "online" / "mixed.jsonl")
    first_two = [d for d in data if d.label != "adjuvant"]
    before = evaluate(Router.from_pretrained(banks2, minilm), first_two, n_latency=0, progress=False)
    full = evaluate(router3, data, n_latency=0, progress=False)
    after = np.mean([r == d.label for d, r in zip(data, full.routes) if d.label != "adjuvant"])
    assert before.accuracy >= 0.95
    assert after >= before.accuracy - 0.005
    assert full.accuracy >= 0.95 and full.per_domain["adjuvant"][0] >= 0.9


def test_failed_add_or_remove_leaves_banks_intact(banks2, world, minilm, tmp_path):
    before = dir_digest(banks2)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match="empty"):
        add_domain(banks2, "adjuvant", tmp_path / "empty.jsonl", CFG, minilm, progress=False)
    with pytest.raises(UserError, match="already in"):
        add_domain(banks2, "materials", offline(world, "adjuvant")[0][1], CFG, minilm, progress=False)
    with pytest.raises(UserError, match="not in"):
        remove_domain(banks2, "finance")
    assert dir_digest(banks2) == before
    assert not [p for p in banks2.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_remove_domain(banks3, minilm, tmp_path):
    banks = tmp_path / "b"
    shutil.copytree(banks3, banks)
    keep = {f: h for f, h in dir_digest(banks).items() if f.startswith(("general", "materials"))}
    assert remove_domain(banks, "adjuvant") == ["general", "materials"]
    after = dir_digest(banks)
    assert "adjuvant.safetensors" not in after and all(after[f] == h for f, h in keep.items())
    assert Router.from_pretrained(banks, minilm).domains == ["general", "materials"]
    remove_domain(banks, "materials")
    with pytest.raises(UserError, match="only domain"):
        remove_domain(banks, "general")


def test_bank_from_another_encoder_is_refused(world, tiny_model_dir, minilm, tmp_path):
    banks = tmp_path / "tiny"
    tiny = load_encoder(EncoderConfig(kind="hf-mean", path=str(tiny_model_dir)))
    build_banks(offline(world, "general"), banks, CFG.model_copy(update={"k": 4}), tiny, progress=False)
    assert Router.from_pretrained(banks).encoder.id == tiny.id  # reloads its own encoder from banks.json
    with pytest.raises(UserError, match="built with encoder"):
        Router.from_pretrained(banks, minilm)
    with pytest.raises(UserError, match="built with encoder"):
        add_domain(banks, "materials", offline(world, "materials")[0][1], CFG, minilm, progress=False)


@pytest.mark.parametrize("damage", ["missing", "truncated", "index", "shape", "huge_row", "bytes", "no_checksum",
                                    "threshold"])
def test_damaged_banks_dir_is_a_user_error(banks2, minilm, tmp_path, damage):
    d = tmp_path / "b"
    shutil.copytree(banks2, d)
    if damage == "missing":
        (d / "materials.safetensors").unlink()
    elif damage == "truncated":
        data = (d / "materials.safetensors").read_bytes()
        (d / "materials.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "index":
        (d / "banks.json").write_text("{not json")
    elif damage == "huge_row":  # finite, but it would win every question
        from safetensors.numpy import load_file, save_file

        t = load_file(str(d / "materials.safetensors"))["prototypes"]
        t[0] = 1e30
        save_file({"prototypes": t}, str(d / "materials.safetensors"))
    elif damage == "bytes":  # 200 random bytes over the tensor's data (the header stays valid)
        data = bytearray((d / "materials.safetensors").read_bytes())
        data[-400:-200] = np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8).tobytes()
        (d / "materials.safetensors").write_bytes(bytes(data))
    elif damage == "no_checksum":
        meta = json.loads((d / "materials.json").read_text())
        (d / "materials.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "prototypes_sha256"}))
    elif damage == "threshold":
        meta = json.loads((d / "materials.json").read_text())
        (d / "materials.json").write_text(json.dumps({**meta, "threshold": "high"}))
    else:
        meta = json.loads((d / "materials.json").read_text())
        (d / "materials.json").write_text(json.dumps({**meta, "k": 31}))
    with pytest.raises(UserError, match="banks dir|rebuild"):
        Router.from_pretrained(d, minilm)


def test_bank_records_a_checksum_of_its_prototypes(banks2):
    from kinject.ppr.banks import check_prototypes, prototypes_sha256

    bank = load_bank(banks2, "materials")
    assert bank.meta["prototypes_sha256"] == prototypes_sha256(bank.prototypes)
    changed = bank.prototypes.copy()
    changed[[0, 1]] = changed[[1, 0]]  # still unit rows, still finite: only the checksum sees it
    assert "checksum" in check_prototypes(changed, bank.meta)


# ------------------------------------------------------------------ abstention


def test_thresholds_send_a_removed_domains_questions_to_general():
    from kinject.ppr.calibrate import abstention_report, choose_thresholds

    domains = ["general", "a", "b"]
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for j, d in enumerate(domains):  # own domain ~0.8, the others ~0.45 (b's questions a bit closer to a)
        for _ in range(40):
            row = rng.normal(0.45, 0.04, 3)
            row[j] = rng.normal(0.8, 0.04)
            if d == "b":
                row[1] = rng.normal(0.55, 0.04)
            rows.append(row)
            labels.append(d)
    scores = np.array(rows)
    thr = choose_thresholds(scores, domains, labels)
    assert set(thr) == {"a", "b"} and 0.6 < thr["a"] < 0.75 and 0.5 < thr["b"] < 0.75
    rep = abstention_report(scores, domains, labels, thr)
    no, yes = rep["without_abstention"], rep["with_abstention"]
    assert no["removed"]["b"]["to_other_specialist"] == 40  # every b question lands on a without thresholds
    assert yes["removed"]["b"]["to_other_specialist"] <= 1 and yes["removed"]["b"]["to_general"] >= 39
    assert no["accuracy"] == 1.0 and rep["accuracy_cost"] == pytest.approx(1.0 - yes["accuracy"], abs=1e-4)
    with pytest.raises(UserError, match="general"):
        choose_thresholds(scores[:, 1:], ["a", "b"], labels)


def test_calibrated_thresholds_are_recorded_and_applied(banks3, world, minilm, tmp_path):
    from kinject.ppr.banks import write_thresholds
    from kinject.ppr.calibrate import calibrate

    d = tmp_path / "b"
    shutil.copytree(banks3, d)
    data = read_labelled(world / "mixed_domain" / "online" / "mixed.jsonl")
    rep = calibrate(Router.from_pretrained(d, minilm, abstain=False), [r.question for r in data], [r.label for r in data])
    assert set(rep["thresholds"]) == {"materials", "adjuvant"} and rep["split"]["test"] > 0
    write_thresholds(d, rep["thresholds"], rep)
    assert json.loads((d / "calibration.json").read_text())["thresholds"] == rep["thresholds"]
    router = Router.from_pretrained(d, minilm)
    assert router.thresholds == pytest.approx(rep["thresholds"])
    assert router.status()["domains"]["materials"]["threshold_source"] == "calibrated"
    assert Router.from_pretrained(d, minilm, abstain=False).thresholds == {}
    # a question far from every specialist goes to general; with abstention off it does not
    q = "Xylophone quantum marmalade?"
    dec, off = router.route(q), Router.from_pretrained(d, minilm, abstain=False).route(q)
    best = max(("materials", "adjuvant"), key=lambda k: dec.scores[k])
    if dec.scores[best] < router.thresholds[best] and off.route != "general":
        assert dec.route == "general" and dec.fallback and dec.threshold == router.thresholds[best]
    # every score is held to its route's threshold
    for dec in router.route_batch([r.question for r in data]):
        if dec.route != "general":
            assert dec.scores[dec.route] >= router.thresholds[dec.route]
    # a bank added without calibration gets the median of the calibrated ones
    remove_domain(d, "adjuvant")
    add_domain(d, "adjuvant", offline(world, "adjuvant")[0][1], CFG, minilm, progress=False)
    r2 = Router.from_pretrained(d, minilm)
    assert r2.threshold_source == {"materials": "calibrated", "adjuvant": "default"}
    assert r2.thresholds["adjuvant"] == pytest.approx(rep["thresholds"]["materials"])


# ------------------------------------------------------------------ evaluation


def test_evaluate_rows_confusion_and_files(banks2, world, minilm, tmp_path):
    data = read_labelled(world / "mixed_domain" / "online" / "mixed.jsonl")
    res = evaluate(Router.from_pretrained(banks2, minilm), data, n_latency=5, progress=False)
    # adjuvant has no bank: its 30 questions are errors, the others (60) should be right
    assert res.confusion.sum() == 90 and res.labels == ["general", "materials", "adjuvant"]
    assert res.confusion[2, 2] == 0 and res.per_domain["adjuvant"] == (0.0, 30)
    assert res.accuracy == pytest.approx(np.trace(res.confusion[:, :3]) / 90)
    assert res.macro_accuracy == pytest.approx(np.mean([a for a, _ in res.per_domain.values()]))
    rows = result_rows(res, "mixed", "online")
    assert [(r.dataset, r.metric) for r in rows] == [
        ("mixed", "accuracy"), ("mixed", "macro_accuracy"), ("general", "accuracy"),
        ("materials", "accuracy"), ("adjuvant", "accuracy"), ("mixed", "latency_ms_p50")]
    assert rows[-1].n == 5 and rows[-1].value > 0
    write_eval(res, tmp_path, "mixed", "online")
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 90
    assert "| adjuvant | " in (tmp_path / "confusion.md").read_text()


def test_labels_must_be_names(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"question": "What is X?", "label": 1}])
    with pytest.raises(UserError, match="domain name"):
        read_labelled(f)
    g = write_jsonl(tmp_path / "e.jsonl", [{"question": "What is X?"}])
    with pytest.raises(UserError, match="'domain' or 'label'"):
        read_labelled(g)


def test_plug_and_play_and_bench(tmp_path, minilm):
    from kinject.ppr.bench import bench_routing
    from kinject.ppr.evaluate import plug_and_play

    w = write_world_like(tmp_path / "w", n_offline=30, n_online=10)
    data = read_labelled(w / "mixed_domain" / "online" / "mixed.jsonl")
    pp = plug_and_play(offline(w, "general", "materials", "adjuvant"), data, tmp_path / "b",
                       CFG.model_copy(update={"k": 8}), minilm)
    assert pp["initial_domains"] == ["general", "materials"] and pp["added_domains"] == ["adjuvant"]
    assert pp["n_initial_questions"] == 20 and pp["drop_points"] <= 0.5
    assert pp["accuracy_all_after_add"] >= 0.9
    res = bench_routing(Router.from_pretrained(tmp_path / "b", minilm), [d.question for d in data], n=40,
                        repeats=1, n_latency=3)
    assert res["n_queries"] == 40 and res["n_domains"] == 3 and res["n_prototypes"] == 24
    assert res["queries_per_s"] > 0 and 0 <= res["share_outside_encoder"] < 0.5
    assert res["latency_ms_p50"] > 0


def test_shipped_configs_load():
    from kinject.config import load_config

    root = Path(__file__).resolve().parents[2] / "configs" / "ppr"
    cfgs = {f.stem: load_config(f, expect=PPRConfig) for f in sorted(root.glob("*.yaml"))}
    assert cfgs["default"] == PPRConfig()  # the file states the defaults
    assert cfgs["paper"].encoder.kind == "hf-mean" and cfgs["paper"].k == 32
    # tiny: the default encoder with exemplar banks (k above the tiny world's offline questions)
    assert cfgs["tiny"].encoder == PPRConfig().encoder and cfgs["tiny"].k >= 1200


def test_memo_encoder_encodes_each_text_once_and_returns_the_same_vectors(tiny_model_dir):
    from kinject.ppr.encoders import MemoEncoder

    enc = load_encoder(EncoderConfig(kind="hf-mean", path=str(tiny_model_dir), batch_size=4))
    calls: list[int] = []
    inner_encode = enc.encode
    enc.encode = lambda texts, progress=False: calls.append(len(texts)) or inner_encode(texts, progress)
    memo = MemoEncoder(enc)
    texts = ["Which lab made Dremvam-1?", "Where is Norland?", "Which lab made Dremvam-1?"]
    first = memo.encode(texts)
    again = memo.encode(["Where is Norland?", "A new question?"])
    assert calls == [2, 1]  # duplicates and already-seen texts are not encoded again
    assert np.allclose(first, inner_encode(texts), atol=1e-6)
    assert np.allclose(again[0], first[1]) and memo.id == enc.id and memo.encode([]).shape == (0, enc.dim)
