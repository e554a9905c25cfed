"""Coverage and Gini of item exposure, and the served evaluation's unfiltered curves, against
hand-computed values."""
import numpy as np
import pytest

from silverrec.data.dataset import JaggedColumn
from silverrec.train.exposure import exposure_counts, exposure_summary, gini
from silverrec.train.served_eval import ServedDetails, _unfiltered, filter_class, popular_top


def test_exposure_and_gini_by_hand() -> None:
    top = np.array([[0, 1], [1, -1], [1, 2]])
    assert exposure_counts(top, 5).tolist() == [1, 3, 1, 0, 0]
    # sorted counts 0 0 1 1 3, weights 2i-N-1 = -4 -2 0 2 4: (0 + 0 + 0 + 2 + 12) / (5 * 5)
    assert gini(exposure_counts(top, 5)) == pytest.approx(14 / 25)
    assert exposure_summary(top, 5) == {"coverage": 0.6, "gini": pytest.approx(14 / 25), "distinct_items": 3}
    assert gini(np.zeros(4)) == 0.0 and gini(np.ones(7)) == 0.0
    with pytest.raises(ValueError, match="num_items=2"):
        exposure_counts(np.array([[3]]), 2)


def test_popular_top_excludes_seen_items() -> None:
    counts = np.array([5, 9, 9, 1, 0])  # order 1, 2 (tie: lower row first), 0, 3, 4
    seen = JaggedColumn.from_lists([[2], [], [1, 0, 3, 4]])
    assert popular_top(counts, seen, 3).tolist() == [[1, 0, 3], [1, 2, 0], [2, -1, -1]]


def test_filter_class() -> None:
    assert [filter_class(f) for f in (1.0, 0.6, 0.2, 0.03, 0.002)] == ["none", "~50%", "~10%", "~1%", "~1%"]


def test_unfiltered_curves_and_exposure_by_hand() -> None:
    held = JaggedColumn.from_lists([[1], [2, 5]])
    served = np.array([[0, 1], [2, 3]])           # user 0 finds 1 at rank 2; user 1 finds 2 at rank 1
    exact = np.array([[1, 0, 4], [5, 2, 3]])      # rank 1; ranks 1 and 2
    popular = np.array([[4, 3, 1], [4, 3, 0]])    # rank 3; nothing
    out: dict = {}
    details = ServedDetails({}, {}, {})
    _unfiltered(out, details, served, exact, popular, held, np.array([0, 1, 3, 7, 15, 0]), k=2)
    assert out["curves"]["k"] == [1, 2, 3]
    assert out["curves"]["served"] == [pytest.approx(0.25), pytest.approx(0.75)]  # (0 + 1/2) / 2, (1 + 1/2) / 2
    assert out["curves"]["exact"] == [pytest.approx(0.75), pytest.approx(1.0), pytest.approx(1.0)]
    assert out["curves"]["most_popular"] == [0.0, 0.0, pytest.approx(0.5)]
    np.testing.assert_allclose(details.per_user_recall["served"], [1.0, 0.5])
    np.testing.assert_allclose(details.per_user_recall["most_popular"], [0.0, 0.0])
    assert out["exposure"]["served"]["distinct_items"] == 4 and out["exposure"]["most_popular"]["distinct_items"] == 2
    assert details.exposure["exact"].tolist() == [1, 1, 1, 0, 0, 1]
    np.testing.assert_allclose(details.result_popularity["most_popular"], np.log1p([15, 7, 15, 7]))
