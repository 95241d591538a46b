"""Per-domain abstention thresholds, chosen on held-out labelled questions (`kinject ppr calibrate`).

A specialist d wins a question only when its score reaches `threshold[d]`; otherwise the
question goes to `general`. For each d the threshold minimizes, on the calibration split,

    (questions of d routed to d whose score is below it: answered by the base, lost)
  + (questions routed to d that are not d's, at or above it: confidently wrong)

where "routed to d" covers both the full set of banks and every *removed-domain* scenario
(each other specialist's bank taken out in turn: its questions must not land on d). The
threshold sits halfway between the best cut and the next score below it. The report gives
the accuracy with and without abstention on the held-out test split (all banks present) and,
per removed domain, how many of its questions a specialist answers anyway.
"""

from __future__ import annotations

import numpy as np

from kinject.errors import UserError
from kinject.ppr.router import FALLBACK


def split_labelled(labels: list[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (per label) seeded split -> (calibration indices, test indices)."""
    if not 0 < fraction < 1:
        raise UserError(f"calibration fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    cal, test = [], []
    lab = np.array(labels)
    for name in dict.fromkeys(labels):
        idx = rng.permutation(np.flatnonzero(lab == name))
        n = int(round(len(idx) * fraction))
        cal.extend(idx[:n])
        test.extend(idx[n:])
    return np.sort(np.array(cal, dtype=np.intp)), np.sort(np.array(test, dtype=np.intp))


def _routes(scores: np.ndarray, domains: list[str], thresholds: dict[str, float],
            removed: str | None = None) -> np.ndarray:
    keep = [j for j, d in enumerate(domains) if d != removed]
    sub = scores[:, keep]
    best = sub.argmax(axis=1)
    names = np.array([domains[j] for j in keep], dtype=object)
    route = names[best]
    if thresholds and FALLBACK in domains:
        top = sub[np.arange(len(sub)), best]
        thr = np.array([thresholds.get(r, -np.inf) for r in route])
        route = np.where(top < thr, FALLBACK, route)
    return route


def _scenarios(domains: list[str]) -> list[str | None]:
    return [None, *[d for d in domains if d != FALLBACK]]


def choose_thresholds(scores: np.ndarray, domains: list[str], labels: list[str]) -> dict[str, float]:
    """scores: [n, n_domains] router scores (bank order); labels: gold domain per row."""
    if FALLBACK not in domains:
        raise UserError(f"calibration needs a {FALLBACK!r} bank to fall back to (banks: {', '.join(domains)})")
    lab = np.array(labels, dtype=object)
    out = {}
    for j, d in enumerate(domains):
        if d == FALLBACK:
            continue
        pos, neg = [], []
        for removed in _scenarios(domains):
            if removed == d:
                continue
            routed = _routes(scores, domains, {}, removed) == d
            pos.append(scores[routed & (lab == d), j])
            neg.append(scores[routed & (lab != d) & (lab != removed if removed else True), j])
            if removed is not None:  # the removed domain's questions: none may stay on d
                neg.append(scores[routed & (lab == removed), j])
        p, n = np.concatenate(pos), np.concatenate(neg)
        if len(p) == 0:
            raise UserError(f"no calibration question of domain {d!r} is routed to it: nothing to calibrate on")
        cands = np.unique(np.concatenate([p, n, [-1.0]]))
        errors = [(int((p < t).sum() + (n >= t).sum()), i) for i, t in enumerate(cands)]
        _, i = min(errors)  # fewest errors, then the lowest threshold
        out[d] = float((cands[i] + cands[i - 1]) / 2) if i > 0 else float(cands[0])
    return out


def abstention_report(scores: np.ndarray, domains: list[str], labels: list[str],
                      thresholds: dict[str, float]) -> dict:
    """Accuracy with/without thresholds (all banks), and per removed specialist the share of its
    questions answered by another specialist (confidently wrong) or by `general`."""
    lab = np.array(labels, dtype=object)
    out: dict = {"n": len(labels)}
    for name, thr in (("without_abstention", {}), ("with_abstention", thresholds)):
        r = _routes(scores, domains, thr)
        row = {"accuracy": round(float((r == lab).mean()), 4) if len(lab) else None,
               "to_general": int((r == FALLBACK).sum()), "removed": {}}
        for removed in _scenarios(domains)[1:]:
            mine = lab == removed
            rr = _routes(scores[mine], domains, thr, removed)
            row["removed"][removed] = {"n": int(mine.sum()), "to_general": int((rr == FALLBACK).sum()),
                                       "to_other_specialist": int((rr != FALLBACK).sum())}
        out[name] = row
    out["accuracy_cost"] = (round(out["without_abstention"]["accuracy"] - out["with_abstention"]["accuracy"], 4)
                            if len(lab) else None)
    return out


def calibrate(router, questions: list[str], labels: list[str], fraction: float = 0.5, seed: int = 0) -> dict:
    """Thresholds from the calibration split of `questions`, evaluated on the rest."""
    unknown = sorted(set(labels) - set(router.domains))
    if unknown:
        raise UserError(f"labels with no bank: {', '.join(unknown)}; calibrate on questions of the banks' domains")
    scores = router.score_embeddings(router.encoder.encode(questions, progress=False))
    cal, test = split_labelled(labels, fraction, seed)
    lab = np.array(labels, dtype=object)
    thresholds = choose_thresholds(scores[cal], router.domains, list(lab[cal]))
    return {"thresholds": {d: round(t, 6) for d, t in thresholds.items()},
            "split": {"fraction": fraction, "seed": seed, "calibration": len(cal), "test": len(test)},
            "test": abstention_report(scores[test], router.domains, list(lab[test]), thresholds),
            "all": abstention_report(scores, router.domains, labels, thresholds)}
