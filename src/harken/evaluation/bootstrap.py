"""Confidence intervals for the Table-1 figures, and paired comparisons of two systems.

The official evaluator reports no usable uncertainty (its "ci95" line is about pooled AUC,
scaled so that it is ~1e-5), yet differences of 0.01 in the official score between systems
are routinely read as real.  Here:

* a **stratified bootstrap** resamples clips with replacement *within* each machine x section
  x domain x label cell, so every resample has exactly the evaluation set's design (same
  number of source/target normals and anomalies), and every AUC-S, AUC-T and pAUC stays
  defined;
* every figure (per-section values, hmean/amean rows, per-machine hmeans, official score) is
  recomputed on each resample by :func:`harken.evaluation.metrics.table_figures`, the same
  aggregation as the point estimates, and the percentile interval is reported;
* a **paired comparison** of two systems scored on the same clips applies the *same* resamples
  to both and takes the percentile interval of the differences, which is much narrower than
  comparing two independent intervals because clip difficulty is shared.

The AUCs of all resamples of a section are computed at once by
:func:`harken.evaluation.metrics.fast_roc_auc` (tested equal to scikit-learn).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harken.evaluation.metrics import (
    MAX_FPR,
    TABLE_METRICS,
    EvaluationResult,
    SectionData,
    domain_slot,
    fast_roc_auc,
    table_figures,
)

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0


@dataclass
class BootstrapResult:
    """Percentile intervals of one system's figures (keys as in ``EvaluationResult.figures``)."""

    n_resamples: int
    seed: int | None
    confidence: float
    intervals: dict[str, tuple[float, float]]
    samples: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def ci(self, key: str) -> tuple[float, float] | None:
        return self.intervals.get(key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "stratified bootstrap (machine x section x domain x label), percentile interval",
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "confidence": self.confidence,
            "intervals": {k: [lo, hi] for k, (lo, hi) in self.intervals.items()},
        }


@dataclass
class PairedComparison:
    """System B minus system A on the same clips, with paired-bootstrap intervals.

    ``p_not_better[key]`` is the fraction of resamples in which B did not beat A on that
    figure (difference <= 0): a one-sided bootstrap p-value for "B is better".
    """

    name_a: str
    name_b: str
    n_resamples: int
    seed: int | None
    confidence: float
    differences: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    p_not_better: dict[str, float]

    @property
    def label(self) -> str:
        return f"{self.name_b} - {self.name_a}"

    def ci(self, key: str) -> tuple[float, float] | None:
        return self.intervals.get(key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.name_a,
            "b": self.name_b,
            "difference": "b - a",
            "method": "paired stratified bootstrap (same resamples for both systems), percentile interval",
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "confidence": self.confidence,
            "differences": dict(self.differences),
            "intervals": {k: [lo, hi] for k, (lo, hi) in self.intervals.items()},
            "p_not_better": dict(self.p_not_better),
        }


def resample_indices(
    sections: Sequence[SectionData], n_resamples: int, seed: int | None
) -> list[np.ndarray]:
    """For each section, an (n_resamples, n_clips) array of clip indices, drawn within cells.

    Columns are grouped by cell (domain, label), so column j holds a clip of the same cell in
    every resample, and the labels and domains of a resample are those of its first row.
    """
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    rng = np.random.default_rng(seed)
    out = []
    for sec in sections:
        blocks = []
        for domain in np.unique(sec.domains):
            for label in (0, 1):
                members = np.flatnonzero((sec.domains == domain) & (sec.labels == label))
                if members.size:
                    draw = rng.integers(0, members.size, size=(n_resamples, members.size))
                    blocks.append(members[draw])
        out.append(np.concatenate(blocks, axis=1))
    return out


def _section_samples(sec: SectionData, idx: np.ndarray) -> dict[str, np.ndarray]:
    labels = sec.labels[idx[0]]
    domains = sec.domains[idx[0]]
    scores = sec.scores[idx]
    out: dict[str, np.ndarray] = {}
    for d in sec.domain_codes():
        cols = ((domains == d) & (labels == 0)) | (labels == 1)
        if (labels[cols] == 0).any():
            out[f"auc_{domain_slot(d)}"] = fast_roc_auc(labels[cols], scores[:, cols])
    out["pauc"] = fast_roc_auc(labels, scores, max_fpr=MAX_FPR)
    return out


def figure_samples(
    sections: Sequence[SectionData], indices: Sequence[np.ndarray]
) -> dict[str, np.ndarray]:
    """Every figure of ``EvaluationResult.figures`` on every resample: key -> (n_resamples,)."""
    values: dict[tuple[str, str], dict[str, Any]] = {}
    out: dict[str, np.ndarray] = {}
    for sec, idx in zip(sections, indices, strict=True):
        per = _section_samples(sec, idx)
        values[sec.key] = {m: per.get(m) for m in TABLE_METRICS}
        for metric, arr in per.items():
            out[f"{sec.machine}/{sec.section}/{metric}"] = arr
    out.update(table_figures(values))
    return out


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def bootstrap_ci(
    result: EvaluationResult,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int | None = DEFAULT_SEED,
    confidence: float = 0.95,
    *,
    keep_samples: bool = False,
) -> BootstrapResult:
    """Percentile intervals of every Table-1 figure of ``result``; also stored in ``result.bootstrap``."""
    _check_confidence(confidence)
    if not result.data:
        raise ValueError("this result holds no scores to resample")
    indices = resample_indices(result.data, n_resamples, seed)
    samples = figure_samples(result.data, indices)
    boot = BootstrapResult(
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
        intervals={k: _interval(v, confidence) for k, v in samples.items()},
        samples=samples if keep_samples else {},
    )
    result.bootstrap = boot
    return boot


def compare_systems(
    a: EvaluationResult,
    b: EvaluationResult,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int | None = DEFAULT_SEED,
    confidence: float = 0.95,
) -> PairedComparison:
    """Differences B - A of every figure, with intervals from shared (paired) resamples.

    ``n_resamples`` 0 gives the differences without intervals.  Both results must cover the same machine/sections with the same clips and ground truth.
    """
    _check_confidence(confidence)
    if [s.key for s in a.data] != [s.key for s in b.data]:
        raise ValueError(
            f"systems {a.name!r} and {b.name!r} cover different machine types / sections; "
            "a paired comparison needs the same clips"
        )
    for sa, sb in zip(a.data, b.data, strict=True):
        if (
            sa.clip_names != sb.clip_names
            or not np.array_equal(sa.labels, sb.labels)
            or not np.array_equal(sa.domains, sb.domains)
        ):
            raise ValueError(
                f"{sa.key_text}: the two systems were scored on different clips or ground truth"
            )
    point_a, point_b = a.figures(), b.figures()
    keys = [k for k in point_a if k in point_b]
    differences = {k: point_b[k] - point_a[k] for k in keys}
    diff_samples: dict[str, np.ndarray] = {}
    if n_resamples > 0:  # 0: differences only, no intervals
        indices = resample_indices(a.data, n_resamples, seed)
        samples_a = figure_samples(a.data, indices)
        samples_b = figure_samples(b.data, indices)
        diff_samples = {
            k: samples_b[k] - samples_a[k] for k in keys if k in samples_a and k in samples_b
        }
    return PairedComparison(
        name_a=a.name or "A",
        name_b=b.name or "B",
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
        differences=differences,
        intervals={k: _interval(v, confidence) for k, v in diff_samples.items()},
        p_not_better={k: float(np.mean(v <= 0.0)) for k, v in diff_samples.items()},
    )
