"""BM25 field layouts and analyzers on the real QA corpora (docs/realqa.md, "Why the default
changed"): each variant is a tantivy index of the same passages and the same analyzed queries;
only the fields queried and the analyzer chain differ. Run from the repository root:

    .venv/bin/python benchmarks/realqa/bm25_variants.py

Then, on NQ, the questions whose gold passage the default ranks first and the earlier default did
not: how many have a question word in the gold's title that its text lacks (best_fields scores
the better field fully and the other at half, so a match split between title and text is
discounted; one `body` field adds them up), with a few examples.
"""

from __future__ import annotations

import tempfile

import tantivy

from kinject.realqa.data import load_qa_set
from kinject.retrieval.bench import ranking_metrics

CORPORA = ("nq_oracle", "multihop")


def analyzer(stop: bool, stem: bool) -> tantivy.TextAnalyzer:
    b = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).filter(tantivy.Filter.remove_long(40))
    b = b.filter(tantivy.Filter.lowercase())
    if stop:
        b = b.filter(tantivy.Filter.stopword("english"))
    if stem:
        b = b.filter(tantivy.Filter.stemmer("english"))
    return b.build()


def searcher(docs, an):
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("id", stored=True, tokenizer_name="raw", index_option="basic")
    for f in ("title", "text", "body"):
        sb.add_text_field(f, stored=False, tokenizer_name="a", index_option="freq")
    schema = sb.build()
    index = tantivy.Index(schema, path=tempfile.mkdtemp())
    index.register_tokenizer("a", an)
    w = index.writer(heap_size=100_000_000, num_threads=1)
    for d in docs:
        w.add_document(tantivy.Document(id=d.id, title=d.title, text=d.text, body=f"{d.title} {d.text}"))
    w.commit()
    w.wait_merging_threads()
    index.reload()
    return schema, index.searcher()


def field_query(schema, field, terms, boost=1.0):
    q = tantivy.Query.boolean_query([(tantivy.Occur.Should, tantivy.Query.term_query(schema, field, t)) for t in terms])
    return q if boost == 1.0 else tantivy.Query.boost_query(q, boost)


def queries(schema):
    dismax = tantivy.Query.disjunction_max_query
    return {
        "best_fields(title, text) tie 0.5 (earlier default)":
            lambda t: dismax([field_query(schema, "title", t), field_query(schema, "text", t)], tie_breaker=0.5),
        "most_fields(title, text) (sum)":
            lambda t: dismax([field_query(schema, "title", t), field_query(schema, "text", t)], tie_breaker=1.0),
        "body = title + text (plain BM25, as bm25s)": lambda t: field_query(schema, "body", t),
        "dismax(body, title) tie 0.5 (default)":
            lambda t: dismax([field_query(schema, "body", t), field_query(schema, "title", t)], tie_breaker=0.5),
        "dismax(body, title x0.5) tie 0.5":
            lambda t: dismax([field_query(schema, "body", t), field_query(schema, "title", t, 0.5)], tie_breaker=0.5),
    }


def run(qa, schema, s, make, an) -> dict:
    runs = []
    for q in qa.questions:
        terms = an.analyze(q.question)
        runs.append([s.doc(a).get_first("id") for _, a in s.search(make(terms), 10).hits] if terms else [])
    return ranking_metrics(runs, [q.gold for q in qa.questions])


def main() -> None:
    cols = ("recall_any@1", "recall_any@5", "recall_all@5", "mrr@10")
    print("| corpus | analyzer | query | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 3) + "|")
    for c in CORPORA:
        qa = load_qa_set(f"data/realqa/{c}/dev.jsonl", f"data/realqa/{c}/passages.tsv")
        for stop, stem in ((True, True), (True, False), (False, True)):
            an = analyzer(stop, stem)
            schema, s = searcher(qa.passages, an)
            name = f"stop words {'on' if stop else 'off'}, stemming {'on' if stem else 'off'}"
            for qname, make in queries(schema).items():
                if (stop, stem) != (True, True) and "(default)" not in qname:
                    continue  # analyzer ablations: the default query only
                m = run(qa, schema, s, make, an)
                print(f"| {c} | {name} | {qname} | " + " | ".join(f"{m[k]:.3f}" for k in cols) + " |")


def explain(n_examples: int = 4) -> None:
    qa = load_qa_set("data/realqa/nq_oracle/dev.jsonl", "data/realqa/nq_oracle/passages.tsv")
    by_id = {d.id: d for d in qa.passages}
    an = analyzer(True, True)
    schema, s = searcher(qa.passages, an)
    q = queries(schema)
    old, new = q["best_fields(title, text) tie 0.5 (earlier default)"], q["dismax(body, title) tie 0.5 (default)"]
    rescued, split, examples = 0, 0, []
    for item in qa.questions:
        terms = an.analyze(item.question)
        first = [s.doc(s.search(make(terms), 1).hits[0][1]).get_first("id") for make in (old, new)]
        gold = by_id[item.gold[0]]
        if first[1] == gold.id != first[0]:
            rescued += 1
            title_only = set(terms) & set(an.analyze(gold.title)) - set(an.analyze(gold.text))
            split += bool(title_only)
            if title_only and by_id[first[0]].title != gold.title and len(examples) < n_examples:
                examples.append(f"- {item.question!r}: gold {gold.title!r} (title-only words {sorted(title_only)}), "
                                f"earlier top 1 {by_id[first[0]].title!r}")
    print(f"\nnq_oracle: {rescued} questions ranked first by the default and not by the earlier default; "
          f"{split} of them have a question word in the gold's title that its text lacks.")
    print("\n".join(examples))


if __name__ == "__main__":
    main()
    explain()
