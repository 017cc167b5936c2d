"""The fast ROC area against scikit-learn, and the stratified / paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from harken.evaluation.bootstrap import (
    bootstrap_ci,
    compare_systems,
    figure_samples,
    resample_indices,
)
from harken.evaluation.evaluate import ScoreRecord, evaluate_arrays
from harken.evaluation.metrics import evaluator_ci95, fast_roc_auc


# --------------------------------------------------------------------------- fast ROC area
@pytest.mark.parametrize("max_fpr", [None, 0.1, 0.37])
def test_fast_roc_auc_equals_sklearn_on_tied_random_data(max_fpr):
    rng = np.random.default_rng(0 if max_fpr is None else int(max_fpr * 1000))
    worst = 0.0
    for _ in range(40):
        n = int(rng.integers(2, 80))
        labels = rng.integers(0, 2, n)
        labels[0], labels[-1] = 0, 1
        # few distinct values -> many ties, also across the pAUC cut
        scores = np.round(
            rng.normal(size=(3, n)) * rng.choice([0.3, 1.0, 4.0]) + labels * rng.choice([0, 1])
        )
        got = fast_roc_auc(labels, scores, max_fpr=max_fpr)
        want = np.array([roc_auc_score(labels, row, max_fpr=max_fpr) for row in scores])
        worst = max(worst, float(np.max(np.abs(got - want))))
    assert worst < 1e-12


def test_fast_roc_auc_hand_cases():
    y = np.array([0, 0, 1, 1])
    assert fast_roc_auc(y, np.array([0.1, 0.2, 0.3, 0.4]))[0] == 1.0
    assert fast_roc_auc(y, np.array([0.4, 0.3, 0.2, 0.1]))[0] == 0.0
    assert fast_roc_auc(y, np.array([1.0, 1.0, 1.0, 1.0]))[0] == 0.5
    assert fast_roc_auc(y, np.array([1.0, 1.0, 1.0, 1.0]), max_fpr=0.1)[0] == pytest.approx(
        0.5, abs=1e-15
    )
    # one anomaly tied with one normal, the other above both: (1 + 1 + 1 + 0.5) / 4
    assert fast_roc_auc(y, np.array([0.0, 0.5, 0.5, 0.9]))[0] == 0.875
    # perfect / worst pAUC: 1 and 0.5 * (1 + (0 - 0.005) / 0.095)
    assert fast_roc_auc(y, np.array([0.1, 0.2, 0.3, 0.4]), max_fpr=0.1)[0] == pytest.approx(
        1.0, abs=1e-15
    )
    assert fast_roc_auc(y, np.array([0.4, 0.3, 0.2, 0.1]), max_fpr=0.1)[0] == pytest.approx(
        0.5 * (1 - 0.005 / 0.095)
    )
    with pytest.raises(ValueError):
        fast_roc_auc(np.array([1, 1]), np.array([0.1, 0.2]))


def test_evaluator_ci95_equals_brute_force_leave_one_out():
    from scipy import stats

    rng = np.random.default_rng(5)
    n = 60
    y = rng.integers(0, 2, n)
    x = np.round(rng.normal(size=n) + y, 1)  # ties
    cis = []
    for max_fpr in (None, 0.1):
        loo = np.array(
            [roc_auc_score(np.delete(y, i), np.delete(x, i), max_fpr=max_fpr) for i in range(n)]
        )
        cis.append(
            abs(stats.t.ppf(0.025, n - 1))
            * np.sqrt(np.sum((loo - loo.mean()) ** 2) / (n * (n - 1)))
        )
    assert evaluator_ci95(y, x, chunk=7) == pytest.approx(np.mean(cis), rel=1e-9)


# --------------------------------------------------------------------------- bootstrap
def _records(
    rng: np.random.Generator,
    machines: int,
    per_cell: int,
    shift: float,
    noise: np.ndarray | None = None,
):
    """Synthetic records: per machine, per_cell clips in each domain x label cell."""
    recs = []
    k = 0
    for m in range(machines):
        for domain in ("source", "target"):
            for label in ("normal", "anomaly"):
                for i in range(per_cell):
                    base = noise[k] if noise is not None else rng.normal()
                    score = base + (shift if label == "anomaly" else 0.0)
                    recs.append(
                        ScoreRecord(
                            f"m{m}", "00", f"{domain}_{label}_{i:03d}.wav", domain, label, score
                        )
                    )
                    k += 1
    return recs


def test_resamples_stay_inside_their_cells():
    rng = np.random.default_rng(1)
    result = evaluate_arrays(_records(rng, 2, 7, 1.0))
    indices = resample_indices(result.data, 50, seed=3)
    for sec, idx in zip(result.data, indices, strict=True):
        assert idx.shape == (50, len(sec.clip_names))
        # every column holds clips of one cell (domain, label) in all resamples
        assert (sec.labels[idx] == sec.labels[idx[0]][None, :]).all()
        assert (sec.domains[idx] == sec.domains[idx[0]][None, :]).all()
        # so each resample has exactly the evaluation set's design
        assert np.bincount(sec.labels[idx[0]] * 2 + sec.domains[idx[0]]).tolist() == [7, 7, 7, 7]
        # and clips really are drawn with replacement
        assert any(len(set(row)) < len(row) for row in idx)
    again = resample_indices(result.data, 50, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(indices, again, strict=True))


def test_intervals_are_seeded_and_bracket_the_estimates():
    rng = np.random.default_rng(2)
    result = evaluate_arrays(_records(rng, 3, 25, 1.0))
    boot = bootstrap_ci(result, n_resamples=200, seed=7)
    assert result.bootstrap is boot
    again = bootstrap_ci(
        evaluate_arrays(_records(np.random.default_rng(2), 3, 25, 1.0)), n_resamples=200, seed=7
    )
    assert boot.intervals == again.intervals
    other = bootstrap_ci(result, n_resamples=200, seed=8)
    assert other.intervals != boot.intervals
    figures = result.figures()
    assert set(boot.intervals) == set(figures)
    for key, value in figures.items():
        lo, hi = boot.intervals[key]
        assert lo <= hi
        assert lo - 0.02 <= value <= hi + 0.02, key
    lo, hi = boot.ci("official_score")
    assert 0.0 < hi - lo < 0.3


def test_bootstrap_samples_use_the_same_aggregation_as_the_point_estimates():
    # identity resample (each clip once, in cell order) must give the point estimates back
    rng = np.random.default_rng(4)
    result = evaluate_arrays(_records(rng, 2, 10, 0.7))
    identity = []
    for sec in result.data:
        cols = np.concatenate(
            [
                np.flatnonzero((sec.domains == d) & (sec.labels == lab))
                for d in np.unique(sec.domains)
                for lab in (0, 1)
            ]
        )
        identity.append(cols[None, :])
    samples = figure_samples(result.data, identity)
    for key, value in result.figures().items():
        assert samples[key][0] == pytest.approx(value, abs=1e-12), key


def test_perfect_separation_has_a_degenerate_interval():
    rng = np.random.default_rng(6)
    result = evaluate_arrays(_records(rng, 2, 10, 100.0))
    boot = bootstrap_ci(result, n_resamples=100, seed=0)
    assert boot.ci("official_score") == (1.0, 1.0)
    assert boot.ci("m0/00/pauc") == (1.0, 1.0)


def test_paired_comparison():
    noise = np.random.default_rng(9).normal(size=2 * 4 * 30)
    a = evaluate_arrays(_records(np.random.default_rng(0), 2, 30, 0.5, noise), name="a")
    b = evaluate_arrays(_records(np.random.default_rng(0), 2, 30, 1.5, noise), name="b")
    comp = compare_systems(a, b, n_resamples=300, seed=1)
    assert comp.label == "b - a"
    assert comp.differences["official_score"] == pytest.approx(b.official_score - a.official_score)
    lo, hi = comp.ci("official_score")
    assert 0.0 < lo <= comp.differences["official_score"] <= hi
    assert comp.p_not_better["official_score"] == 0.0
    # paired: the interval of the difference is narrower than the two systems' own intervals
    width_a = np.subtract(*bootstrap_ci(a, 300, 1).ci("official_score")[::-1])
    assert hi - lo < width_a
    # swapping the systems flips the sign, same resamples
    back = compare_systems(b, a, n_resamples=300, seed=1)
    assert back.ci("official_score") == pytest.approx((-hi, -lo))
    # a system against itself: every difference exactly 0
    same = compare_systems(a, a, n_resamples=50, seed=1)
    assert set(same.differences.values()) == {0.0}
    assert all(ci == (0.0, 0.0) for ci in same.intervals.values())
    # without resamples: differences only
    bare = compare_systems(a, b, n_resamples=0)
    assert bare.intervals == {} and bare.differences == comp.differences


def test_paired_comparison_needs_the_same_clips():
    rng = np.random.default_rng(0)
    a = evaluate_arrays(_records(rng, 2, 10, 1.0))
    b = evaluate_arrays(_records(rng, 3, 10, 1.0))
    with pytest.raises(ValueError, match="different machine types"):
        compare_systems(a, b, 10)
    c = evaluate_arrays(
        [r._replace(file_name="x" + r.file_name) for r in _records(rng, 2, 10, 1.0)]
    )
    with pytest.raises(ValueError, match="different clips"):
        compare_systems(a, c, 10)
