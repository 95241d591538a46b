"""`kinject bench retrieval`: tantivy vs dense vs bm25s on one synthetic corpus, same queries,
same run. Writes `<out>/bench.json` with, per size and backend: build docs/s, single-thread
queries/s, batched queries/s, index size on disk, wall and CPU seconds of each phase, and the
share of queries whose source passage is in the top 10 (a sanity check that every engine
searched the same thing). Build times include generating the synthetic passages on the fly
(`corpus_generation_s` measures about one such pass).

bm25s is the reference: it is fed the exact tokens tantivy indexes (`english_tokens`), with
tokenization counted in its build and query times. Its index is in memory; its size is that
of `BM25.save` (no passage text), while tantivy's includes the stored title and text.
Dense is subsampled to `dense_max` passages (encoding 100k passages with MiniLM on two CPU
cores takes most of an hour); its numbers say so (`n_docs`). The encoder's load time is
reported apart (`encoder_load_s`), not in the build.

With a real corpus (`run_corpus_bench`, `--questions/--passages`): recall@{1,3,5,10} of the gold
passages, any and all, MRR@10 and queries/s per backend, tantivy, dense, hybrid and bm25s,
overall and per question type, in `bench.json` and `bench.md`.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from kinject.io import write_json_atomic, write_jsonl_atomic, write_text_atomic
from kinject.retrieval.base import Doc
from kinject.retrieval.synthetic import SyntheticCorpus


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


class _Clock:
    """Wall and CPU (all threads) seconds of a phase: on a shared machine the CPU time shows
    how much of the wall time the process actually ran."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def _times(n_docs: int, n_queries: int, build: _Clock, single: _Clock, batch: _Clock) -> dict:
    return {
        "build_s": round(build.wall, 2), "build_cpu_s": round(build.cpu, 2),
        "build_docs_per_s": _rate(n_docs, build.wall),
        "single_qps": _rate(n_queries, single.wall), "single_cpu_s": round(single.cpu, 2),
        "batched_qps": _rate(n_queries, batch.wall), "batched_cpu_s": round(batch.cpu, 2),
    }


def _recall(results: list[list[str]], targets: list[str], indexed=None) -> float:
    pairs = [(r, t) for r, t in zip(results, targets) if indexed is None or indexed(t)]
    return round(sum(t in r for r, t in pairs) / max(1, len(pairs)), 4)


def _build(backend: str, docs: Iterable[Doc], work: Path, options: dict | None = None):
    """A fresh index of `docs` under `work/<backend>`: (open retriever, build clock)."""
    from kinject.retrieval.base import get_backend

    path = work / backend
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    r = get_backend(backend).create(path, **(options or {}))
    with _Clock() as load:  # the encoder is loaded once per process: not part of a build's rate
        getattr(r, "encoder", None)
    with _Clock() as build:
        r.add(docs, progress=True)
    build.load_s = round(load.wall, 2)
    return r, build


def _time_search(r, queries: list[str], threads: int, k: int = 10):
    """Ranked ids one query at a time and batched, with their clocks."""
    with _Clock() as t_single:
        single = [[h.id for h in r.search(q, k)] for q in queries]
    with _Clock() as t_batch:
        batched = [[h.id for h in hs] for hs in r.batch_search(queries, k, threads=threads)]
    return single, batched, t_single, t_batch


def bench_retriever(backend: str, docs: Iterable[Doc], n_docs: int, queries: list[str], targets: list[str],
                    work: Path, threads: int, options: dict | None = None, indexed=None) -> dict:
    r, build = _build(backend, docs, work, options)
    single, batched, t_single, t_batch = _time_search(r, queries, threads)
    res = {
        "n_docs": r.count(), **_times(n_docs, len(queries), build, t_single, t_batch),
        **({"encoder_load_s": build.load_s} if backend == "dense" else {}),
        "index_bytes": dir_size(work / backend), "target_at_10": _recall(single, targets, indexed),
        "batched_equals_single": single == batched,
    }
    r.close()
    return res


class Bm25sReference:
    """bm25s over the exact tokens tantivy indexes (`english_tokens` of title + text), Lucene's BM25
    with tantivy's k1 and b; tokenization is counted in its build and query times."""

    def __init__(self, docs: Iterable[Doc]):
        import bm25s
        import numpy as np

        from kinject.retrieval.tantivy_backend import english_tokens

        vocab: dict[str, int] = {}
        self.ids: list[str] = []
        corpus_ids = []
        self.model = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
        with _Clock() as self.build:
            for d in docs:
                toks = english_tokens(f"{d.title} {d.text}")
                # int32 arrays, not lists of Python ints: 1M passages stay within a few hundred MB
                corpus_ids.append(np.fromiter((vocab.setdefault(t, len(vocab)) for t in toks), dtype=np.int32,
                                              count=len(toks)))
                self.ids.append(d.id)
            self.model.index((corpus_ids, vocab), show_progress=False)

    def run(self, qs: list[str], n_threads: int, k: int = 10) -> list[list[str]]:
        from kinject.retrieval.tantivy_backend import english_tokens

        k = min(k, len(self.ids))
        res = self.model.retrieve([english_tokens(q) for q in qs], k=k, n_threads=n_threads, show_progress=False)
        return [[self.ids[j] for j, s in zip(row, sc) if s > 0] for row, sc in zip(res.documents, res.scores)]

    def time_search(self, queries: list[str], threads: int, k: int = 10):
        with _Clock() as t_single:
            single = [self.run([q], 1, k)[0] for q in queries]
        with _Clock() as t_batch:
            batched = self.run(queries, threads, k)
        return single, batched, t_single, t_batch


def bench_bm25s(docs: Iterable[Doc], n_docs: int, queries: list[str], targets: list[str], work: Path,
                threads: int) -> dict:
    ref = Bm25sReference(docs)
    single, batched, t_single, t_batch = ref.time_search(queries, threads)
    path = work / "bm25s"
    shutil.rmtree(path, ignore_errors=True)
    ref.model.save(str(path), show_progress=False)
    return {
        "n_docs": len(ref.ids), **_times(n_docs, len(queries), ref.build, t_single, t_batch),
        "index_bytes": dir_size(path), "target_at_10": _recall(single, targets),
        "batched_equals_single": single == batched,
    }


def run_bench(out: str | os.PathLike, sizes: list[int], backends: list[str], dense_max: int = 20000,
              n_queries: int = 1000, words: int = 100, threads: int = 2, seed: int = 0) -> dict:
    from kinject.errors import UserError

    unknown = set(backends) - {"tantivy", "dense", "bm25s"}
    if unknown:
        raise UserError(f"--backends: unknown {sorted(unknown)}; choose from tantivy, dense, bm25s")
    out = Path(out)
    work = out / "work"
    results = []
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": threads},
              "settings": {"sizes": sizes, "backends": backends, "dense_max": dense_max, "queries": n_queries,
                           "words_per_passage": words, "seed": seed},
              "results": results}
    try:
        for n in sizes:
            corpus = SyntheticCorpus(n, words=words, seed=seed)
            with _Clock() as gen:  # generating the passages is part of every build time below
                pairs = corpus.queries(n_queries)
            report.setdefault("corpus_generation_s", {})[str(n)] = round(gen.wall, 2)
            queries, targets = [q for q, _ in pairs], [t for _, t in pairs]
            for backend in backends:
                if backend == "bm25s":
                    res = bench_bm25s(corpus.docs(), n, queries, targets, work, threads)
                elif backend == "dense":
                    m = min(n, dense_max)
                    sub = SyntheticCorpus(m, words=words, seed=seed) if m < n else corpus
                    # same queries; target_at_10 counts only those whose passage is in the subsample
                    res = bench_retriever("dense", sub.docs(), m, queries, targets, work, threads,
                                          indexed=lambda t, m=m: int(t[1:]) < m)
                else:
                    res = bench_retriever(backend, corpus.docs(), n, queries, targets, work, threads,
                                          {"writer_threads": threads})
                res.update({"backend": backend, "corpus_size": n})
                results.append(res)
                write_json_atomic(out / "bench.json", report)  # partial results survive a long run
                shutil.rmtree(work / backend, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # scratch indexes, also after an interruption
    tq = {(r["corpus_size"], r["backend"]): r for r in results}
    report["tantivy_vs_bm25s_qps"] = [
        {"corpus_size": n, "single": round(tq[(n, "tantivy")]["single_qps"] / tq[(n, "bm25s")]["single_qps"], 3),
         "batched": round(tq[(n, "tantivy")]["batched_qps"] / tq[(n, "bm25s")]["batched_qps"], 3)}
        for n in sizes if (n, "tantivy") in tq and (n, "bm25s") in tq
    ]
    write_json_atomic(out / "bench.json", report)
    return report


# --- a real corpus with gold passages -----------------------------------------------------------
KS = (1, 3, 5, 10)
CORPUS_BACKENDS = ("tantivy", "dense", "hybrid", "bm25s")
RUN_DEPTH = 50  # hybrid's default depth: runs.jsonl holds what it fuses


def ranking_metrics(runs: list[list[str]], golds: list[list[str]], ks=KS) -> dict:
    """recall@k of the gold passages, "any" (at least one gold in the top k: enough for a single-hop
    answer) and "all" (every gold: what a multi-hop answer needs), and MRR of the first gold in the
    top max(ks)."""
    n = max(1, len(golds))
    out: dict[str, float] = {}
    for k in ks:
        top = [set(r[:k]) for r in runs]
        out[f"recall_any@{k}"] = round(sum(bool(t & set(g)) for t, g in zip(top, golds)) / n, 4)
        out[f"recall_all@{k}"] = round(sum(set(g) <= t for t, g in zip(top, golds)) / n, 4)
    depth = max(ks)
    rr = [next((1 / i for i, pid in enumerate(r[:depth], 1) if pid in set(g)), 0.0) for r, g in zip(runs, golds)]
    out[f"mrr@{depth}"] = round(sum(rr) / n, 4)
    return out


def _quality(name: str, single: list[list[str]], batched: list[list[str]], golds: list[list[str]],
             types: list[str], n_docs: int, build_s: float, t_single: _Clock, t_batch: _Clock) -> dict:
    by_type: dict[str, list[int]] = {}
    for i, t in enumerate(types):
        by_type.setdefault(t, []).append(i)
    return {
        "backend": name, "n_docs": n_docs, "n_queries": len(golds), **ranking_metrics(single, golds),
        "by_type": {t: {"n": len(ix), **ranking_metrics([single[i] for i in ix], [golds[i] for i in ix])}
                    for t, ix in by_type.items()},
        "build_s": round(build_s, 2), "single_qps": _rate(len(golds), t_single.wall),
        "single_cpu_s": round(t_single.cpu, 2), "batched_qps": _rate(len(golds), t_batch.wall),
        "batched_cpu_s": round(t_batch.cpu, 2), "batched_equals_single": single == batched,
    }


def run_corpus_bench(out: str | os.PathLike, docs: list[Doc], queries: list[str], golds: list[list[str]],
                     types: list[str], backends: list[str], threads: int = 2, name: str = "corpus",
                     dense_options: dict | None = None, hybrid_options: dict | None = None,
                     qids: list[str] | None = None) -> dict:
    """Index `docs` with each backend, search every query, score the top 10 against `golds`.

    Hybrid searches the tantivy and dense indexes built here through `HybridRetriever` (RRF, the
    same code as a hybrid index), so the passages are encoded once; its build time is the sum of
    both. bm25s is the reference BM25 (`Bm25sReference`). Writes `<out>/bench.json` and
    `<out>/bench.md` only at the end, atomically, and `<out>/runs.jsonl`: per question, the top 50
    of tantivy and dense (the lists hybrid fuses, searched again untimed), for error analysis and
    fusion settings without encoding the corpus again."""
    from kinject.errors import UserError
    from kinject.retrieval.hybrid import HybridRetriever

    unknown = sorted(set(backends) - set(CORPUS_BACKENDS))
    if unknown or not backends:
        raise UserError(f"--backends: unknown {unknown}; choose from {', '.join(CORPUS_BACKENDS)}")
    out = Path(out)
    work = out / "work"
    opts = {"tantivy": {"writer_threads": threads}, "dense": dense_options or {}}
    need = [b for b in ("tantivy", "dense") if b in backends or "hybrid" in backends]
    results, built = [], {}
    runs: dict[str, list[list[str]]] = {}
    try:
        for b in need:
            built[b] = _build(b, docs, work, opts[b])
        for b in backends:
            if b == "bm25s":
                ref = Bm25sReference(docs)
                single, batched, t1, tb = ref.time_search(queries, threads)
                build_s = ref.build.wall
            else:
                if b == "hybrid":
                    r = HybridRetriever(work / "hybrid", [built["tantivy"][0], built["dense"][0]],
                                        **(hybrid_options or {}))
                    build_s = built["tantivy"][1].wall + built["dense"][1].wall
                else:
                    r, clock = built[b]
                    build_s = clock.wall
                single, batched, t1, tb = _time_search(r, queries, threads)
            results.append(_quality(b, single, batched, golds, types, len(docs), build_s, t1, tb))
            if b in ("dense", "hybrid"):
                results[-1]["encoder_load_s"] = built["dense"][1].load_s
        for b, (r, _) in built.items():
            runs[b] = [[h.id for h in hs] for hs in r.batch_search(queries, RUN_DEPTH, threads=threads)]
    finally:
        for r, _ in built.values():
            r.close()
        shutil.rmtree(work, ignore_errors=True)
    write_jsonl_atomic(out / "runs.jsonl", (
        {"id": qids[i] if qids else i, "gold": golds[i], **{b: runs[b][i] for b in runs}} for i in range(len(queries))))
    report = {"corpus": name, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                          "threads": threads},
              "settings": {"backends": backends, "passages": len(docs), "queries": len(queries),
                           "dense": dense_options or {}, "hybrid": hybrid_options or {}},
              "results": results}
    write_json_atomic(out / "bench.json", report)
    write_text_atomic(out / "bench.md", corpus_markdown(report))
    return report


def corpus_markdown(report: dict) -> str:
    cols = [*(f"recall_any@{k}" for k in KS), *(f"recall_all@{k}" for k in KS), f"mrr@{max(KS)}"]
    heads = [*(f"any@{k}" for k in KS), *(f"all@{k}" for k in KS), "MRR@10", "q/s (1 thread)", "q/s (batched)",
             "build s"]
    s = report["settings"]
    lines = [f"### {report['corpus']}: {s['passages']:,} passages, {s['queries']:,} questions", "",
             "| backend | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for r in report["results"]:
        vals = [f"{r[c]:.3f}" for c in cols] + [f"{r['single_qps']:.0f}", f"{r['batched_qps']:.0f}",
                                                 f"{r['build_s']:.1f}"]
        lines.append(f"| {r['backend']} | " + " | ".join(vals) + " |")
    types = list(dict.fromkeys(t for r in report["results"] for t in r["by_type"]))
    if len(types) > 1:
        lines += ["", "recall_any@5 / recall_all@5 by question type:", "",
                  "| backend | " + " | ".join(f"{t} (n={report['results'][0]['by_type'][t]['n']})" for t in types)
                  + " |", "|---" * (len(types) + 1) + "|"]
        for r in report["results"]:
            cells = [f"{r['by_type'][t]['recall_any@5']:.3f} / {r['by_type'][t]['recall_all@5']:.3f}" for t in types]
            lines.append(f"| {r['backend']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fusion_table(runs_path: str | os.PathLike, rrf_ks: list[int], depth: int = RUN_DEPTH) -> list[dict]:
    """Ranking metrics of tantivy, dense and their RRF (`hybrid.rrf`, what a hybrid index computes)
    for each `rrf_k`, from a corpus bench's `runs.jsonl`: fusion settings without encoding again."""
    from kinject.errors import UserError
    from kinject.io import read_jsonl
    from kinject.retrieval.base import Hit
    from kinject.retrieval.hybrid import rrf

    rows = read_jsonl(runs_path, required=["gold", "tantivy", "dense"])
    golds = [r["gold"] for r in rows]
    if any(k <= 0 for k in rrf_ks) or not rrf_ks:
        raise UserError(f"--rrf-k must be positive integers, got {rrf_ks}")
    hits = [[[Hit(i, "", "", 0.0) for i in r[b][:depth]] for b in ("tantivy", "dense")] for r in rows]
    out = [{"run": b, **ranking_metrics([r[b] for r in rows], golds)} for b in ("tantivy", "dense")]
    for k in rrf_ks:
        fused = [[h.id for h in rrf(pair, max(KS), k)] for pair in hits]
        out.append({"run": f"hybrid rrf_k={k}", **ranking_metrics(fused, golds)})
    return out
