"""The ``mahalanobis`` score: how unusual a window's reconstruction residual is.

Eq. 9 averages the squared residual over every time-frequency cell, so its value is dominated
by what no autoencoder can predict (noise texture, the timing of clicks and strokes) and by how
far a clip's operating condition sits from what the decoder does on average; a fault that
changes one band by a few dB hardly moves it, and one that fills quiet gaps can even lower it.
The official DCASE autoencoder baseline meets the same problem with its second score, a
Mahalanobis distance of the residual.  harken applies that idea to the CAE: each window is
summarised by the per-band mean and standard deviation over time of its residual
(:func:`~harken.systems.cae_dann.torch_model.residual_statistics`), and scored by its squared
Mahalanobis distance to the normal training windows of its machine type and section:

* one mean per domain (source, target), one covariance pooled over the residuals of both
  domains about their own means, shrunk toward a scaled identity by ``shrinkage`` (the
  training set has fewer windows than the vector has dimensions in a first-shot section);
* the distance to the *nearer* domain mean, so scoring never needs the test clip's domain
  (the DCASE evaluation set hides it).

Fitted on normal training windows only, after training; the statistics are saved with the run
and exported as graph buffers.  The clip score is the ``window.aggregate`` of its window scores,
like every other kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

DOMAIN_ORDER = ("source", "target")


@dataclass
class ResidualGaussian:
    """Domain means ``[n_domains, D]`` and the pooled, shrunk precision matrix ``[D, D]``."""

    means: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, vectors: np.ndarray, domains: Sequence[str], shrinkage: float) -> ResidualGaussian:
        """Fit on residual vectors ``[N, D]`` of normal training windows with their domains.

        A domain with no window takes no part; with one window in all the covariance is the
        identity scaled by nothing better than 1 (shrinkage then carries everything).
        """
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"need residual vectors [N, D] with N > 0, got shape {x.shape}")
        labels = np.array([d if d in DOMAIN_ORDER else DOMAIN_ORDER[0] for d in domains])
        means, centred = [], []
        for d in DOMAIN_ORDER:
            part = x[labels == d]
            if len(part):
                mu = part.mean(axis=0)
                means.append(mu)
                centred.append(part - mu)
        resid = np.concatenate(centred)
        cov = resid.T @ resid / max(len(resid) - len(means), 1)
        scale = float(np.trace(cov)) / cov.shape[0]
        if not np.isfinite(scale) or scale <= 0:
            scale = 1.0
        cov += shrinkage * scale * np.eye(cov.shape[0])
        precision = np.linalg.inv(cov)
        return cls(np.stack(means), (precision + precision.T) / 2)

    def distance(self, vectors: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row of ``[N, D]`` to the nearer domain mean."""
        x = np.asarray(vectors, dtype=np.float64)
        diff = x[:, None, :] - self.means[None, :, :]  # [N, K, D]
        d2 = np.einsum("nkd,de,nke->nk", diff, self.precision, diff)
        return d2.min(axis=1)

    def to_state(self) -> dict[str, Any]:
        return {
            "means": torch.from_numpy(self.means.astype(np.float32)),
            "precision": torch.from_numpy(self.precision.astype(np.float32)),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ResidualGaussian:
        return cls(
            np.asarray(state["means"], dtype=np.float64),
            np.asarray(state["precision"], dtype=np.float64),
        )
