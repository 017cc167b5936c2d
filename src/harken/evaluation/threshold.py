"""Decision thresholds fitted on normal training-clip scores only (no anomalies, no labels).

The DCASE baseline fits a gamma distribution to the anomaly scores of the normal training
clips and decides "anomalous" above its ``q`` quantile (``q`` = 0.9 there)::

    shape, loc, scale = scipy.stats.gamma.fit(scores)
    threshold = scipy.stats.gamma.ppf(q, shape, loc=loc, scale=scale)

:func:`fit_gamma_threshold` does exactly that for ordinary scores, and makes the degenerate
cases safe, because a NaN threshold would silently decide "normal" for every clip:

* fewer than 3 distinct finite scores (e.g. a constant score): no distribution can be fitted;
  the empirical ``q`` quantile is returned, with a warning;
* scores that are not all positive (log-likelihood, standardised or fused scores) or of an
  extreme scale (1e-9, 1e9): scipy's optimiser fails there although the gamma family with free
  ``loc`` and ``scale`` covers them, so the fit is made on the scores shifted to start just
  above 0 and divided by their standard deviation, and the threshold mapped back;
* a fit is accepted only if it is finite and leaves about ``q`` of the training scores below
  it (within max(0.05, 3 binomial standard errors)); the baseline's direct fit is tried first
  (so ordinary positive scores get exactly the baseline's threshold), then the standardised
  one, and if neither is plausible the empirical ``q`` quantile, with a warning;
* non-finite scores are left out with a warning (if none are left, ValueError).

The function takes scores only: no labels and no test clips can reach it.
:meth:`harken.systems.base.Detector.fit` passes the scores of normal training clips.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["ThresholdWarning", "fit_gamma_threshold"]


class ThresholdWarning(UserWarning):
    """The gamma fit was not usable; an empirical quantile was used instead."""


def fit_gamma_threshold(scores: np.ndarray, quantile: float = 0.9) -> float:
    """The ``quantile`` point of a gamma distribution fitted to normal training scores."""
    if not 0.0 < float(quantile) < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
    q = float(quantile)
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("no finite scores to fit a decision threshold on")
    if finite.size < values.size:
        warnings.warn(
            f"{values.size - finite.size} of {values.size} training scores are not finite; "
            "fitting the threshold on the rest",
            ThresholdWarning,
            stacklevel=2,
        )
    empirical = float(np.quantile(finite, q))
    if np.unique(finite).size < 3:
        warnings.warn(
            f"{finite.size} training score(s) with {np.unique(finite).size} distinct value(s): "
            f"no gamma fit possible, using the empirical {q} quantile",
            ThresholdWarning,
            stacklevel=2,
        )
        return empirical
    # 1. the baseline's own call, when its assumptions (positive scores) hold;
    # 2. the same fit on scores shifted to start just above 0 and divided by their standard
    #    deviation (the gamma family with free loc/scale is closed under this, the optimiser
    #    is not: it fails on scales like 1e9 or on negative scores);
    # 3. the empirical quantile.
    # A fit is accepted only if about q of the training scores fall below its threshold.
    lo, hi = float(finite.min()), float(finite.max())
    span = hi - lo
    tolerance = max(0.05, 3.0 * float(np.sqrt(q * (1.0 - q) / finite.size)))

    def plausible(t: float | None) -> bool:
        return (
            t is not None
            and bool(np.isfinite(t))
            and lo - span <= t <= hi + span
            and abs(float(np.mean(finite <= t)) - q) <= tolerance
        )

    if lo > 0.0:
        threshold = _gamma_ppf(finite, q)
        if plausible(threshold):
            return float(threshold)  # type: ignore[arg-type]
    shift = lo - span / finite.size if lo <= 0.0 else 0.0
    scale = float(np.std(finite - shift)) or 1.0
    standardized = _gamma_ppf((finite - shift) / scale, q)
    threshold = None if standardized is None else standardized * scale + shift
    if plausible(threshold):
        return float(threshold)  # type: ignore[arg-type]
    warnings.warn(
        f"gamma fit to {finite.size} training scores unusable (threshold {threshold!r}); "
        f"using the empirical {q} quantile",
        ThresholdWarning,
        stacklevel=2,
    )
    return empirical


def _gamma_ppf(values: np.ndarray, q: float) -> float | None:
    from scipy import stats

    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            shape, loc, scale = stats.gamma.fit(values)
            return float(stats.gamma.ppf(q, shape, loc=loc, scale=scale))
    except (ValueError, RuntimeError, FloatingPointError, OverflowError):
        return None
