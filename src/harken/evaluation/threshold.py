"""Decision thresholds fitted on normal training-clip scores only (no anomalies, no labels).

The DCASE baseline fits a gamma distribution to the anomaly scores of the normal training
clips and decides "anomalous" above its ``q`` quantile (``q`` = 0.9 there)::

    shape, loc, scale = scipy.stats.gamma.fit(scores)
    threshold = scipy.stats.gamma.ppf(q, shape, loc=loc, scale=scale)

:func:`fit_gamma_threshold` does exactly that for ordinary scores, and makes the degenerate
cases safe, because a NaN threshold would silently decide "normal" for every clip:

* fewer than 3 distinct finite scores (e.g. a constant score): no distribution can be fitted;
  the empirical ``q`` quantile is returned, with a warning;
* scores that are not all positive (log-likelihood scores, standardised / fused scores): the
  gamma support starts at ``loc`` and the optimiser's start guess is poor there, so the fit is
  made on the scores shifted to start just above 0 (min - 1/n of the range) and the threshold
  shifted back.  A fitted gamma has a free ``loc``, so this is the same family, only a
  better-conditioned fit;
* the fit fails, or gives a non-finite threshold or one below the scores' minimum or far
  beyond their range: the empirical ``q`` quantile, with a warning;
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
    lo, hi = float(finite.min()), float(finite.max())
    span = hi - lo
    shift = 0.0
    if lo <= 0.0:
        # Start the support just below the data: the fit is invariant to the shift, the
        # optimiser is not.
        shift = lo - span / finite.size
    threshold = _gamma_ppf(finite - shift, q)
    if threshold is not None:
        threshold += shift
    if (
        threshold is None
        or not np.isfinite(threshold)
        or not (lo - span <= threshold <= hi + 10.0 * span)
    ):
        warnings.warn(
            f"gamma fit to {finite.size} training scores unusable (threshold {threshold!r}); "
            f"using the empirical {q} quantile",
            ThresholdWarning,
            stacklevel=2,
        )
        return empirical
    return float(threshold)


def _gamma_ppf(values: np.ndarray, q: float) -> float | None:
    from scipy import stats

    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            shape, loc, scale = stats.gamma.fit(values)
            return float(stats.gamma.ppf(q, shape, loc=loc, scale=scale))
    except (ValueError, RuntimeError, FloatingPointError, OverflowError):
        return None
