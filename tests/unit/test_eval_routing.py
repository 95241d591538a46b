import pytest

from kinject.errors import UserError
from kinject.eval.routing import (
    confusion,
    macro_accuracy,
    per_domain_accuracy,
    routing_accuracy,
    routing_report,
)

GOLD = ["general", "general", "general", "general", "materials", "materials", "adjuvant", "adjuvant"]
PRED = ["general", "general", "general", "materials", "materials", "materials", "general", "adjuvant"]


def test_routing_metrics_hand_checked():
    assert routing_accuracy(GOLD, PRED) == pytest.approx(6 / 8)
    assert per_domain_accuracy(GOLD, PRED) == {"adjuvant": 0.5, "general": 0.75, "materials": 1.0}
    assert macro_accuracy(GOLD, PRED) == pytest.approx((0.5 + 0.75 + 1.0) / 3)
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix

    assert macro_accuracy(GOLD, PRED) == pytest.approx(balanced_accuracy_score(GOLD, PRED))
    assert routing_accuracy(GOLD, PRED) == pytest.approx(accuracy_score(GOLD, PRED))
    labels = ["general", "materials", "adjuvant"]
    assert confusion(GOLD, PRED, labels)[1] == confusion_matrix(GOLD, PRED, labels=labels).tolist()
    assert confusion(["a", "a"], ["a", "b"]) == (["a", "b"], [[1, 1], [0, 0]])
    labels, m = confusion(GOLD, PRED, ["general", "materials", "adjuvant"])
    assert labels == ["general", "materials", "adjuvant"]
    assert m == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]
    rep = routing_report(GOLD, PRED)
    assert rep.n == 8 and rep.labels == ["adjuvant", "general", "materials"]
    assert sum(map(sum, rep.confusion)) == 8


def test_routing_bad_input():
    with pytest.raises(UserError, match="one prediction per gold"):
        routing_accuracy(["a"], [])
    with pytest.raises(UserError, match="at least one"):
        macro_accuracy([], [])
