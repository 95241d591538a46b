"""The split of a world QA file into GRIP's evaluation subsets (popular / long-tail / 2-hop).
Question files are read by `kinject.eval.data.load_questions` (rows `{question, answer}`)."""

from __future__ import annotations

from kinject.eval.data import Question


def subset_names(qa: Question, dataset: str) -> list[str]:
    """Evaluation subsets of one question: always `dataset`; world rows add `_popular` /
    `_longtail` (1-hop, by popularity) or `_2hop` (any multi-hop question)."""
    names = [dataset]
    hops = qa.row.get("hops")
    if isinstance(hops, int) and hops >= 2:
        names.append(f"{dataset}_2hop")
    elif qa.row.get("popularity") in ("popular", "longtail"):
        names.append(f"{dataset}_{qa.row['popularity']}")
    return names
