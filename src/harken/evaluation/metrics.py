"""The official DCASE Task 2 metrics, computed the way the organizers' evaluator computes them.

Published ASD numbers often differ in small ways that change the official score by up to a
few hundredths (per-domain anomalies, pAUC without McClish standardisation, arithmetic instead
of harmonic means; see ``docs/EVALUATION.md``).  Everything here follows
``nttcslab/dcase2024_task2_evaluator`` exactly and is checked against its golden outputs in
``tests/test_metrics_golden.py``:

* AUC (source / target): that domain's **normal** clips against **all** anomalous clips of the
  section (both domains).  Ties count half (scikit-learn's ``roc_auc_score``).
* pAUC: one value per section over all its clips, ``roc_auc_score(..., max_fpr=0.1)``
  (McClish-standardised, interpolated at FPR 0.1).
* precision / recall / F1 per domain from 0/1 decisions, each ratio's denominator floored at
  machine epsilon so that 0/0 gives 0, never NaN.
* every harmonic mean floors its inputs at machine epsilon first.

A section without domain information (old MIMII / DCASE 2020 names) is treated as a single
source domain; its AUC (target) is absent, and absent values take no part in any mean.

The point estimates use scikit-learn.  :func:`fast_roc_auc` is a vectorised equivalent (tested
equal to scikit-learn, ties and ``max_fpr`` included) that the bootstrap needs for speed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sklearn
from sklearn.metrics import roc_auc_score

#: double-precision machine epsilon: the evaluator's floor for denominators and harmonic means
EPS = float(np.finfo(np.float64).eps)
#: the challenge's pAUC limit
MAX_FPR = 0.1

#: domain codes in the arrays handed to the metric functions
SOURCE, TARGET, NO_DOMAIN = 0, 1, -1
DOMAIN_NAMES = {SOURCE: "source", TARGET: "target"}

#: the three values per section that enter the official score, in Table-1 column order
TABLE_METRICS = ("auc_source", "auc_target", "pauc")
DECISION_METRICS = ("precision", "recall", "f1")
ROW_KEYS = ("amean", "hmean", "source_hmean", "target_hmean")
ROW_METRICS = ("auc", "pauc", "precision", "recall", "f1")


# --------------------------------------------------------------------------- scalar metrics
def _roc_auc(labels: np.ndarray, scores: np.ndarray, max_fpr: float | None) -> float:
    y = np.asarray(labels)
    x = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("scores must be finite")
    # Inputs are checked here; skipping scikit-learn's re-validation halves the per-call cost.
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        return float(roc_auc_score(y, x, max_fpr=max_fpr))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; ties between a normal and an anomalous clip count half."""
    return _roc_auc(labels, scores, None)


def pauc(labels: np.ndarray, scores: np.ndarray, max_fpr: float = MAX_FPR) -> float:
    """McClish-standardised partial AUC up to ``max_fpr`` (0.5 for a constant score)."""
    return _roc_auc(labels, scores, max_fpr)


def precision_recall_f1(labels: np.ndarray, decisions: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall and F1 of 0/1 decisions (positive = anomalous), 0/0 counted as 0.

    The denominators are floored at machine epsilon as in the evaluator, so a system that
    decides "normal" for every clip gets precision 0 (not NaN) and its harmonic means stay
    finite (about 1e-15) instead of becoming NaN or exactly 0.
    """
    y = np.asarray(labels).astype(bool)
    d = np.asarray(decisions).astype(bool)
    tp = float(np.sum(y & d))
    fp = float(np.sum(~y & d))
    fn = float(np.sum(y & ~d))
    precision = tp / max(tp + fp, EPS)
    recall = tp / max(tp + fn, EPS)
    f1 = 2.0 * precision * recall / max(precision + recall, EPS)
    return precision, recall, f1


def hmean(values: Any, axis: int = 0) -> Any:
    """Harmonic mean after flooring every value at machine epsilon (works along ``axis``).

    Without the floor one zero (e.g. precision of a system that never decides "anomalous")
    would make the whole mean 0 or a division error; the evaluator floors, so we do.
    """
    v = np.maximum(np.asarray(values, dtype=np.float64), EPS)
    out = v.shape[axis] / np.sum(1.0 / v, axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def amean(values: Any, axis: int = 0) -> Any:
    out = np.mean(np.asarray(values, dtype=np.float64), axis=axis)
    return float(out) if np.ndim(out) == 0 else out


# --------------------------------------------------------------------------- fast ROC area
def fast_roc_auc(
    labels: np.ndarray, scores: np.ndarray, max_fpr: float | None = None
) -> np.ndarray:
    """ROC AUC (or McClish pAUC) of every row of ``scores`` against its labels.

    Equals ``roc_auc_score(labels, row, max_fpr=max_fpr)`` for each row (to rounding), ties
    included: the ROC curve gets a vertex only at the end of each group of equal scores, so it
    runs diagonally through a tied group, and the pAUC cut at ``max_fpr`` interpolates
    linearly inside the segment it falls in, as scikit-learn does.  It exists because the
    bootstrap needs thousands of AUCs per section and scikit-learn's per-call overhead would
    dominate; all rows are sorted and integrated at once.

    ``labels``: shape (n,) or (B, n), 1/True = anomalous.  ``scores``: shape (n,) or (B, n).
    Returns shape (B,) (a 1-element array for 1-D input).
    """
    y = np.asarray(labels).astype(bool)
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    n = s.shape[1]
    if y.shape[-1] != n or y.ndim > 2 or (y.ndim == 2 and y.shape[0] != s.shape[0]):
        raise ValueError(f"labels of shape {y.shape} do not fit scores of shape {s.shape}")
    y2 = np.broadcast_to(y, s.shape)
    n_pos = y2.sum(axis=1, keepdims=True).astype(np.float64)
    n_neg = n - n_pos
    if (n_pos == 0).any() or (n_neg == 0).any():
        raise ValueError("ROC AUC needs both normal and anomalous clips")
    order = np.argsort(-s, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(s, order, axis=1)
    sorted_pos = np.take_along_axis(y2, order, axis=1)
    return _sorted_roc_area(sorted_scores, sorted_pos, n_pos, n_neg, max_fpr)


def _sorted_roc_area(
    sorted_scores: np.ndarray,
    sorted_pos: np.ndarray,
    n_pos: np.ndarray,
    n_neg: np.ndarray,
    max_fpr: float | None,
) -> np.ndarray:
    """:func:`fast_roc_auc` on rows already sorted by decreasing score."""
    s = sorted_scores
    n = s.shape[1]
    tp = np.cumsum(sorted_pos, axis=1, dtype=np.float64)
    fp = np.arange(1, n + 1, dtype=np.float64)[None, :] - tp
    # Index of the last member of each position's tied group: only there is a ROC vertex.
    group_end = np.ones(s.shape, dtype=bool)
    group_end[:, :-1] = sorted_scores[:, 1:] != sorted_scores[:, :-1]
    end_idx = np.where(group_end, np.arange(n)[None, :], n - 1)
    end_idx = np.minimum.accumulate(end_idx[:, ::-1], axis=1)[:, ::-1]
    x1 = np.take_along_axis(fp, end_idx, axis=1) / n_neg
    y1 = np.take_along_axis(tp, end_idx, axis=1) / n_pos
    # Consecutive equal vertices give zero-width segments, so they add nothing.
    zeros = np.zeros((s.shape[0], 1))
    x0 = np.concatenate([zeros, x1[:, :-1]], axis=1)
    y0 = np.concatenate([zeros, y1[:, :-1]], axis=1)
    if max_fpr is None or max_fpr == 1:
        return np.sum((x1 - x0) * (y0 + y1) / 2.0, axis=1)
    c = float(max_fpr)
    full = x1 <= c
    area = np.sum(np.where(full, (x1 - x0) * (y0 + y1) / 2.0, 0.0), axis=1)
    cross = (x0 < c) & (x1 > c)
    with np.errstate(divide="ignore", invalid="ignore"):
        y_cut = y0 + (c - x0) * (y1 - y0) / (x1 - x0)
    area += np.sum(np.where(cross, (c - x0) * (y0 + y_cut) / 2.0, 0.0), axis=1)
    min_area = 0.5 * c**2
    return 0.5 * (1.0 + (area - min_area) / (c - min_area))


def evaluator_ci95(labels: np.ndarray, scores: np.ndarray, *, chunk: int = 256) -> float:
    """The evaluator's "official score ci95" line, reproduced (it is *not* a CI of the score).

    All clips pooled; for the pooled AUC and the pooled pAUC, the N leave-one-out values v_i,
    s = sqrt(sum((v_i - mean v)^2) / (N (N - 1))), ci = |t_{0.025, N-1}| * s; the mean of the
    two.  Spreading the leave-one-out values over N (N - 1) makes it ~N - 1 times smaller than
    a jackknife error, hence values near 1e-5.  Kept only so that every figure of the
    evaluator's output can be matched; :mod:`harken.evaluation.bootstrap` gives real intervals.
    Cost O(N^2 log N), in row chunks so memory stays O(chunk * N).
    """
    from scipy import stats

    y = np.asarray(labels).astype(bool)
    x = np.asarray(scores, dtype=np.float64)
    n = y.shape[0]
    n_pos = int(y.sum())
    n_neg = n - n_pos
    if n_pos < 2 or n_neg < 2:
        raise ValueError("needs at least two normal and two anomalous clips")
    loo_auc = _leave_one_out_auc(y, x, n_pos, n_neg)
    # pAUC: leaving a clip out keeps the others in order, so sort once and drop one position
    # per row; only the sorted prefix up to just past FPR 0.1 can affect the partial area.
    order = np.argsort(-x, kind="stable")
    xs, ys = x[order], y[order]
    fp_global = np.cumsum(~ys)
    first_past = int(np.searchsorted(fp_global, MAX_FPR * n_neg + 2.0))
    width = n - 1
    if first_past < n:
        group_last = first_past + int(np.sum(xs[first_past:] == xs[first_past])) - 1
        width = min(n - 1, group_last + 2)
    loo_pauc = np.empty(n)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        cols = np.arange(width)[None, :]
        idx = cols + (cols >= rows[:, None])  # row r: sorted positions but r, first `width`
        row_pos = np.full((len(rows), 1), float(n_pos)) - ys[rows][:, None]
        loo_pauc[rows] = _sorted_roc_area(xs[idx], ys[idx], row_pos, (n - 1) - row_pos, MAX_FPR)
    # loo_pauc[r] is for the clip at sorted position r; the statistic ignores the order.
    cis = []
    for loo in (loo_auc, loo_pauc):
        se = np.sqrt(np.sum((loo - loo.mean()) ** 2) / (n * (n - 1)))
        cis.append(abs(float(stats.t.ppf(0.025, n - 1))) * se)
    return float(np.mean(cis))


def _leave_one_out_auc(y: np.ndarray, x: np.ndarray, n_pos: int, n_neg: int) -> np.ndarray:
    """Full AUC without each clip in turn, from counts (ties half), in O(n log n)."""
    neg_sorted = np.sort(x[~y])
    pos_sorted = np.sort(x[y])
    # For an anomaly: normals it beats (+ half the tied ones); for a normal: anomalies above it.
    below = np.searchsorted(neg_sorted, x, side="left")
    tied_neg = np.searchsorted(neg_sorted, x, side="right") - below
    above = n_pos - np.searchsorted(pos_sorted, x, side="right")
    tied_pos = np.searchsorted(pos_sorted, x, side="right") - np.searchsorted(
        pos_sorted, x, side="left"
    )
    wins = np.where(y, below + 0.5 * tied_neg, 0.0)
    u = float(np.sum(wins))
    return np.where(
        y,
        (u - (below + 0.5 * tied_neg)) / ((n_pos - 1) * n_neg),
        (u - (above + 0.5 * tied_pos)) / (n_pos * (n_neg - 1)),
    )


# --------------------------------------------------------------------------- per-section data
@dataclass
class SectionData:
    """One machine type and section: clip names, ground truth and one system's outputs.

    Arrays are aligned with ``clip_names`` (the ground truth's order).  ``labels``: 1 =
    anomalous; ``domains``: 0 source, 1 target, -1 unknown; ``decisions``: 0/1 or None.
    ``origin`` names the score file (for messages); it is empty for in-memory scores.
    """

    machine: str
    section: str
    clip_names: tuple[str, ...]
    labels: np.ndarray
    domains: np.ndarray
    scores: np.ndarray
    decisions: np.ndarray | None = None
    origin: str = ""

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int8)
        self.domains = np.asarray(self.domains, dtype=np.int8)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if self.decisions is not None:
            self.decisions = np.asarray(self.decisions, dtype=np.int8)
        n = len(self.clip_names)
        for name, arr in (
            ("labels", self.labels),
            ("domains", self.domains),
            ("scores", self.scores),
        ):
            if arr.shape != (n,):
                raise ValueError(f"{self.key_text}: {name} has shape {arr.shape}, expected ({n},)")
        if self.decisions is not None and self.decisions.shape != (n,):
            raise ValueError(f"{self.key_text}: decisions have shape {self.decisions.shape}")

    @property
    def key(self) -> tuple[str, str]:
        return (self.machine, self.section)

    @property
    def key_text(self) -> str:
        return f"{self.machine} section {self.section}"

    def domain_codes(self) -> list[int]:
        """The domains whose AUC is reported: both for DCASE 2022+ data, 'source' for domainless."""
        present = set(np.unique(self.domains).tolist())
        if present == {NO_DOMAIN}:
            return [NO_DOMAIN]
        return [d for d in (SOURCE, TARGET) if d in present]

    def auc_mask(self, domain: int) -> np.ndarray:
        """Clips of the AUC of ``domain``: its normals plus every anomaly of the section."""
        return ((self.domains == domain) & (self.labels == 0)) | (self.labels == 1)


def domain_slot(domain: int) -> str:
    # A domainless section reports its single AUC in the source slot (see module docstring).
    return "target" if domain == TARGET else "source"


# --------------------------------------------------------------------------- results
@dataclass
class SummaryRow:
    """One "arithmetic mean" / "harmonic mean" row of the evaluator's result table."""

    auc: float | None = None
    pauc: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {k: getattr(self, k) for k in ROW_METRICS}


@dataclass
class MachineResult:
    """All figures of one machine type and section (one block of the evaluator's table)."""

    machine: str
    section: str
    n_clips: int
    n_anomalous: int
    auc_all: float
    auc_source: float | None
    auc_target: float | None
    pauc: float
    precision_source: float | None = None
    precision_target: float | None = None
    recall_source: float | None = None
    recall_target: float | None = None
    f1_source: float | None = None
    f1_target: float | None = None
    rows: dict[str, SummaryRow] = field(default_factory=dict)

    def get(self, metric: str) -> float | None:
        return getattr(self, metric)

    def official_values(self) -> list[float]:
        """The values this section contributes to the official score."""
        return [v for v in (self.auc_source, self.auc_target, self.pauc) if v is not None]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "machine": self.machine,
            "section": self.section,
            "n_clips": self.n_clips,
            "n_anomalous": self.n_anomalous,
        }
        for k in (
            "auc_all",
            "auc_source",
            "auc_target",
            "pauc",
            "precision_source",
            "precision_target",
            "recall_source",
            "recall_target",
            "f1_source",
            "f1_target",
        ):
            out[k] = getattr(self, k)
        for key in ROW_KEYS:
            out[key] = self.rows[key].to_dict()
        return out


def section_metrics(data: SectionData) -> MachineResult:
    """Every per-section figure of the evaluator's table for one machine type and section."""
    labels, scores = data.labels, data.scores
    if not labels.any() or labels.all():
        raise ValueError(f"{data.key_text}: needs both normal and anomalous clips to compute AUC")
    per_domain: dict[str, float] = {}
    for d in data.domain_codes():
        mask = data.auc_mask(d)
        if (labels[mask] == 0).any():
            per_domain[f"auc_{domain_slot(d)}"] = auc(labels[mask], scores[mask])
    result = MachineResult(
        machine=data.machine,
        section=data.section,
        n_clips=len(labels),
        n_anomalous=int(labels.sum()),
        auc_all=auc(labels, scores),
        auc_source=per_domain.get("auc_source"),
        auc_target=per_domain.get("auc_target"),
        pauc=pauc(labels, scores),
    )
    if data.decisions is not None:
        for d in data.domain_codes():
            mask = data.domains == d
            p, r, f = precision_recall_f1(labels[mask], data.decisions[mask])
            slot = domain_slot(d)
            setattr(result, f"precision_{slot}", p)
            setattr(result, f"recall_{slot}", r)
            setattr(result, f"f1_{slot}", f)
    result.rows = _section_rows(result)
    return result


def _domain_values(result: MachineResult, metric: str, slot: str | None) -> list[float]:
    """A metric's per-domain values of one section (``slot`` None: both domains)."""
    if metric == "pauc":
        return [result.pauc]
    slots = ("source", "target") if slot is None else (slot,)
    values = [getattr(result, f"{metric}_{s}") for s in slots]
    return [v for v in values if v is not None]


def _row(values_of: Callable[[str], float | None]) -> SummaryRow:
    row = SummaryRow()
    for metric in ROW_METRICS:
        values = values_of(metric)
        if values is not None:
            setattr(row, metric, values)
    return row


def _section_rows(result: MachineResult) -> dict[str, SummaryRow]:
    def make(reduce: Any, slot: str | None) -> SummaryRow:
        def values_of(metric: str) -> float | None:
            vals = _domain_values(result, metric, slot)
            return reduce(vals) if vals else None

        return _row(values_of)

    return {
        "amean": make(amean, None),
        "hmean": make(hmean, None),
        "source_hmean": make(hmean, "source"),
        "target_hmean": make(hmean, "target"),
    }


@dataclass
class EvaluationResult:
    """Every figure of one system: per-section results and the overall rows.

    ``sections`` are in (machine, section) order, machines alphabetical as in the evaluator.
    ``bootstrap`` holds confidence intervals once :func:`harken.evaluation.bootstrap.bootstrap_ci`
    has run.  ``data`` keeps the aligned scores so that CIs and paired comparisons can be
    computed later from the result alone; it is not part of :meth:`to_dict`.
    """

    sections: list[MachineResult]
    official_score: float
    official_score_amean: float
    auc_source_hmean: float | None
    auc_target_hmean: float | None
    auc_source_amean: float | None
    auc_target_amean: float | None
    pauc_hmean: float
    pauc_amean: float
    auc_amean: float | None
    overall: dict[str, SummaryRow]
    machines: dict[str, dict[str, Any]]
    has_decisions: bool
    name: str = ""
    #: the evaluator's "official score ci95" line (see :func:`evaluator_ci95`); None if not computed
    official_score_ci95: float | None = None
    bootstrap: Any = None
    data: list[SectionData] = field(default_factory=list, repr=False)

    def section(self, machine: str, section: str) -> MachineResult:
        for r in self.sections:
            if r.machine == machine and r.section == section:
                return r
        raise KeyError(f"{machine} section {section}")

    @property
    def machine_names(self) -> list[str]:
        return sorted({r.machine for r in self.sections})

    def figures(self) -> dict[str, float]:
        """Table-1 figures keyed as :func:`table_figures` names them, plus
        ``<machine>/<section>/<metric>`` for each section's AUC-S, AUC-T and pAUC."""
        values = {
            (r.machine, r.section): {m: r.get(m) for m in TABLE_METRICS} for r in self.sections
        }
        out = {
            f"{m}/{s}/{metric}": v
            for (m, s), vals in values.items()
            for metric, v in vals.items()
            if v is not None
        }
        out.update(table_figures(values))
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"system": self.name}
        for k in (
            "official_score",
            "official_score_amean",
            "official_score_ci95",
            "auc_source_hmean",
            "auc_target_hmean",
            "auc_source_amean",
            "auc_target_amean",
            "pauc_hmean",
            "pauc_amean",
            "auc_amean",
        ):
            out[k] = getattr(self, k)
        out["has_decisions"] = self.has_decisions
        out["overall"] = {k: row.to_dict() for k, row in self.overall.items()}
        out["machines"] = self.machines
        out["sections"] = [r.to_dict() for r in self.sections]
        if self.bootstrap is not None:
            out["bootstrap"] = self.bootstrap.to_dict()
        return out


# --------------------------------------------------------------------------- aggregation
def table_figures(values: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """The Table-1 figures from per-section AUC-S / AUC-T / pAUC values (None = absent).

    Works on floats (point estimates) and on equally long arrays (bootstrap resamples), so the
    confidence intervals are computed by exactly the aggregation the point estimates use.
    Keys: ``official_score``, ``hmean/<metric>``, ``amean/<metric>``, and, for machines with
    several sections, ``machine/<machine>/<metric>`` (harmonic mean over its sections).
    """
    out: dict[str, Any] = {}
    everything: list[Any] = []
    for metric in TABLE_METRICS:
        col = [v[metric] for v in values.values() if v.get(metric) is not None]
        everything.extend(col)
        if col:
            out[f"hmean/{metric}"] = hmean(np.stack([np.asarray(c, dtype=np.float64) for c in col]))
            out[f"amean/{metric}"] = amean(np.stack([np.asarray(c, dtype=np.float64) for c in col]))
    out["official_score"] = hmean(np.stack([np.asarray(c, dtype=np.float64) for c in everything]))
    by_machine: dict[str, list[dict[str, Any]]] = {}
    for (machine, _section), v in values.items():
        by_machine.setdefault(machine, []).append(v)
    for machine, sections in by_machine.items():
        if len(sections) < 2:
            continue
        for metric in TABLE_METRICS:
            col = [v[metric] for v in sections if v.get(metric) is not None]
            if col:
                out[f"machine/{machine}/{metric}"] = hmean(
                    np.stack([np.asarray(c, dtype=np.float64) for c in col])
                )
    return out


def evaluate_sections(
    sections: Sequence[SectionData], *, name: str = "", with_evaluator_ci95: bool = False
) -> EvaluationResult:
    """All figures of a system from its per-section data (the function every entry point uses).

    ``with_evaluator_ci95`` also reproduces the evaluator's "official score ci95" line (O(N^2
    log N) in the number of clips, hence optional; it is no confidence interval of the score).
    """
    if not sections:
        raise ValueError("nothing to evaluate: no sections")
    ordered = sorted(sections, key=lambda s: (s.machine, s.section))
    keys = [s.key for s in ordered]
    if len(set(keys)) != len(keys):
        raise ValueError("a machine type / section appears twice")
    has_decisions = ordered[0].decisions is not None
    if any((s.decisions is not None) != has_decisions for s in ordered):
        raise ValueError("decisions must be given for every section or for none")
    results = [section_metrics(s) for s in ordered]
    figures = table_figures(
        {(r.machine, r.section): {m: r.get(m) for m in TABLE_METRICS} for r in results}
    )

    def over(metric: str, slot: str | None) -> list[float]:
        return [v for r in results for v in _domain_values(r, metric, slot)]

    def reduce(fn: Any, values: Iterable[float]) -> float | None:
        vals = list(values)
        return fn(vals) if vals else None

    overall = {
        "amean": _row(lambda m: reduce(amean, over(m, None))),
        "hmean": _row(lambda m: reduce(hmean, over(m, None))),
        "source_hmean": _row(lambda m: reduce(hmean, over(m, "source"))),
        "target_hmean": _row(lambda m: reduce(hmean, over(m, "target"))),
    }
    official_values = [v for r in results for v in r.official_values()]
    machines: dict[str, dict[str, Any]] = {}
    for machine in sorted({r.machine for r in results}):
        rs = [r for r in results if r.machine == machine]
        entry: dict[str, Any] = {"n_sections": len(rs)}
        for metric in TABLE_METRICS:
            vals = [getattr(r, metric) for r in rs if getattr(r, metric) is not None]
            entry[metric] = reduce(hmean, vals)
        entry["hmean"] = hmean([v for r in rs for v in r.official_values()])
        machines[machine] = entry
    ci95 = None
    if with_evaluator_ci95:
        pooled_labels = np.concatenate([s.labels for s in ordered])
        if 2 <= pooled_labels.sum() <= len(pooled_labels) - 2:
            ci95 = evaluator_ci95(pooled_labels, np.concatenate([s.scores for s in ordered]))
    return EvaluationResult(
        official_score_ci95=ci95,
        sections=results,
        official_score=figures["official_score"],
        official_score_amean=amean(official_values),
        auc_source_hmean=figures.get("hmean/auc_source"),
        auc_target_hmean=figures.get("hmean/auc_target"),
        auc_source_amean=figures.get("amean/auc_source"),
        auc_target_amean=figures.get("amean/auc_target"),
        pauc_hmean=figures["hmean/pauc"],
        pauc_amean=figures["amean/pauc"],
        auc_amean=reduce(amean, over("auc", None)),
        overall=overall,
        machines=machines,
        has_decisions=has_decisions,
        name=name,
        data=list(ordered),
    )
