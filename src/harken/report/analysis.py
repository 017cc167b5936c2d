"""Numbers behind the latent figure: a 2-D projection and how separable the domains are.

A scatter plot alone can mislead (PCA keeps the directions of largest variance, which need not
be the ones that tell source from target), so each machine type also gets a number: the
cross-validated balanced accuracy of a linear classifier that predicts the domain of normal
test windows from their latents.  0.5 means the domains overlap completely, which is what the
domain-adversarial branch trains for; near 1.0 means they are still linearly separable.
Folds are grouped by clip so that windows of one clip never sit on both sides of a split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from harken.errors import HarkenError

PROJECTIONS = ("pca", "tsne", "umap")


@dataclass
class Projection:
    points: np.ndarray  # [n, 2]
    center: np.ndarray | None  # [2] projected SVDD center (PCA only)
    xlabel: str
    ylabel: str
    method: str


def project(
    z: np.ndarray, method: str = "pca", *, center: np.ndarray | None = None, seed: int = 0
) -> Projection:
    """2-D embedding of latents ``z`` [n, d]; the SVDD center is placed where a map allows it."""
    z = np.asarray(z, dtype=np.float64)
    n = len(z)
    if method == "pca":
        from sklearn.decomposition import PCA

        k = min(2, n, z.shape[1])
        pca = PCA(n_components=k, random_state=seed).fit(z)
        pts = _pad2(pca.transform(z))
        c = None if center is None else _pad2(pca.transform(center[None, :].astype(np.float64)))[0]
        ratio = list(pca.explained_variance_ratio_) + [0.0, 0.0]
        return Projection(
            pts, c, f"PC 1 ({ratio[0]:.0%} of variance)", f"PC 2 ({ratio[1]:.0%})", "PCA"
        )
    if method == "tsne":
        from sklearn.manifold import TSNE

        if n < 3:
            return Projection(_pad2(z[:, :2]), None, "dim 1", "dim 2", "t-SNE")
        tsne = TSNE(
            n_components=2,
            perplexity=float(max(1.0, min(30.0, (n - 1) / 3.0))),
            init="pca",
            random_state=seed,
        )
        return Projection(tsne.fit_transform(z), None, "t-SNE 1", "t-SNE 2", "t-SNE")
    if method == "umap":
        umap = require_umap()
        reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(15, n - 1)), random_state=seed)
        pts = reducer.fit_transform(z)
        c = None if center is None else reducer.transform(center[None, :])[0]
        return Projection(
            np.asarray(pts), None if c is None else np.asarray(c), "UMAP 1", "UMAP 2", "UMAP"
        )
    raise HarkenError(f"unknown projection {method!r}; choose from {', '.join(PROJECTIONS)}")


def require_umap() -> Any:
    """The umap module, or an error saying how to get it (it is no dependency of harken)."""
    try:
        import umap  # type: ignore[import-not-found]
    except ImportError:
        raise HarkenError(
            "the UMAP projection needs the umap-learn package (pip install umap-learn); "
            "use --projection pca or tsne"
        ) from None
    return umap


def _pad2(x: np.ndarray) -> np.ndarray:
    """At least two columns (a one-dimensional PCA gets a zero second axis)."""
    if x.shape[1] >= 2:
        return x[:, :2]
    return np.concatenate([x, np.zeros((len(x), 2 - x.shape[1]))], axis=1)


def domain_separability(
    z: np.ndarray, domains: np.ndarray, groups: np.ndarray, *, seed: int = 0
) -> float | None:
    """Cross-validated balanced accuracy of a linear domain classifier (None if too few clips).

    ``domains``: 0/1 per window; ``groups``: the clip each window comes from.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    domains = np.asarray(domains)
    groups = np.asarray(groups)
    clips_per_domain = [len(np.unique(groups[domains == d])) for d in (0, 1)]
    folds = min(5, *clips_per_domain)
    if folds < 2:
        return None
    model: Any = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(
        model,
        np.asarray(z, dtype=np.float64),
        domains,
        groups=groups,
        cv=cv,
        scoring="balanced_accuracy",
    )
    return float(np.mean(scores))
