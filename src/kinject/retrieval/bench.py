"""`kinject bench retrieval`: tantivy vs dense vs bm25s on one synthetic corpus, same queries,
same run. Writes `<out>/bench.json` with, per size and backend: build docs/s, single-thread
queries/s, batched queries/s, index size on disk, and the share of queries whose source
passage is in the top 10 (a sanity check that every engine searched the same thing).

bm25s is the reference: it is fed the exact tokens tantivy indexes (`english_tokens`), with
tokenization counted in its build and query times. Its index is in memory; its size is that
of `BM25.save` (no passage text), while tantivy's includes the stored title and text.
Dense is subsampled to `dense_max` passages (encoding 100k passages with MiniLM on two CPU
cores takes most of an hour); its numbers say so (`n_docs`).
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from kinject.io import write_json_atomic
from kinject.retrieval.base import Doc
from kinject.retrieval.synthetic import SyntheticCorpus


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def _recall(results: list[list[str]], targets: list[str], indexed=None) -> float:
    pairs = [(r, t) for r, t in zip(results, targets) if indexed is None or indexed(t)]
    return round(sum(t in r for r, t in pairs) / max(1, len(pairs)), 4)


def bench_retriever(backend: str, docs: Iterable[Doc], n_docs: int, queries: list[str], targets: list[str],
                    work: Path, threads: int, options: dict | None = None, indexed=None) -> dict:
    from kinject.retrieval.base import get_backend

    path = work / backend
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    cls = get_backend(backend)
    r = cls.create(path, **(options or {}))
    t0 = time.perf_counter()
    r.add(docs, progress=True)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [[h.id for h in r.search(q, 10)] for q in queries]
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = [[h.id for h in hs] for hs in r.batch_search(queries, 10, threads=threads)]
    t_batch = time.perf_counter() - t0
    res = {
        "n_docs": r.count(), "build_s": round(build, 2), "build_docs_per_s": _rate(n_docs, build),
        "single_qps": _rate(len(queries), t_single), "batched_qps": _rate(len(queries), t_batch),
        "index_bytes": dir_size(path), "target_at_10": _recall(single, targets, indexed),
        "batched_equals_single": single == batched,
    }
    r.close()
    return res


def bench_bm25s(docs: Iterable[Doc], n_docs: int, queries: list[str], targets: list[str], work: Path,
                threads: int) -> dict:
    import bm25s
    import numpy as np

    from kinject.retrieval.tantivy_backend import english_tokens

    t0 = time.perf_counter()
    vocab: dict[str, int] = {}
    ids: list[str] = []
    corpus_ids = []
    for d in docs:
        toks = english_tokens(f"{d.title} {d.text}")
        # int32 arrays, not lists of Python ints: 1M passages stay within a few hundred MB
        corpus_ids.append(np.fromiter((vocab.setdefault(t, len(vocab)) for t in toks), dtype=np.int32, count=len(toks)))
        ids.append(d.id)
    model = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    model.index((corpus_ids, vocab), show_progress=False)
    build = time.perf_counter() - t0
    del corpus_ids

    def run(qs: list[str], n_threads: int) -> list[list[str]]:
        res = model.retrieve([english_tokens(q) for q in qs], k=10, n_threads=n_threads, show_progress=False)
        return [[ids[j] for j, s in zip(row, sc) if s > 0] for row, sc in zip(res.documents, res.scores)]

    t0 = time.perf_counter()
    single = [run([q], 1)[0] for q in queries]
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = run(queries, threads)
    t_batch = time.perf_counter() - t0
    path = work / "bm25s"
    shutil.rmtree(path, ignore_errors=True)
    model.save(str(path), show_progress=False)
    return {
        "n_docs": len(ids), "build_s": round(build, 2), "build_docs_per_s": _rate(n_docs, build),
        "single_qps": _rate(len(queries), t_single), "batched_qps": _rate(len(queries), t_batch),
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
    for n in sizes:
        corpus = SyntheticCorpus(n, words=words, seed=seed)
        pairs = corpus.queries(n_queries)
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
    tq = {(r["corpus_size"], r["backend"]): r for r in results}
    report["tantivy_vs_bm25s_qps"] = [
        {"corpus_size": n, "single": round(tq[(n, "tantivy")]["single_qps"] / tq[(n, "bm25s")]["single_qps"], 3),
         "batched": round(tq[(n, "tantivy")]["batched_qps"] / tq[(n, "bm25s")]["batched_qps"], 3)}
        for n in sizes if (n, "tantivy") in tq and (n, "bm25s") in tq
    ]
    write_json_atomic(out / "bench.json", report)
    shutil.rmtree(work, ignore_errors=True)
    return report
