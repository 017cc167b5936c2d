"""The ``mahalanobis`` score: residual statistics, the residual Gaussian, and its place in a run.

Expected values are computed by hand from the definitions in
``harken.systems.cae_dann.mahalanobis`` (pooled covariance about each domain's mean, divided
by N - K, plus ``shrinkage`` times the mean variance on the diagonal; distance to the nearer
domain mean).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import test_api
from harken.api import AnomalyDetector
from harken.data.dataset import discover
from harken.systems.cae_dann.mahalanobis import ResidualGaussian
from harken.systems.cae_dann.system import CROSSFIT_FOLDS
from harken.systems.cae_dann.torch_model import residual_statistics
from harken.training.checkpoint import load_detector, save_detector

feature_cache = test_api.feature_cache
field_run = test_api.field_run


def test_residual_statistics_by_hand() -> None:
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]]])  # [1, 1, 2 bands, 4 frames]
    x_hat = torch.tensor([[[[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0]]]])
    # band 0 residual 0, 1, 2, 3: mean 1.5, population std sqrt(1.25)
    # band 1 residual -1, 1, -1, 1: mean 0, std 1
    got = residual_statistics(x, x_hat)
    np.testing.assert_allclose(got.numpy(), [[1.5, 0.0, np.sqrt(1.25), 1.0]], rtol=1e-6)


def _hand_example() -> tuple[np.ndarray, list[str]]:
    source = [[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]  # mean (0, 0)
    target = [[10.0, 11.0], [10.0, 9.0]]  # mean (10, 10)
    return np.array(source + target), ["source"] * 4 + ["target"] * 2


def test_gaussian_fit_and_distance_by_hand() -> None:
    vectors, domains = _hand_example()
    g = ResidualGaussian.fit(vectors, domains, shrinkage=0.1)
    np.testing.assert_allclose(g.means, [[0.0, 0.0], [10.0, 10.0]])
    # residual scatter: source diag(2, 2), target diag(0, 2) -> diag(2, 4) / (6 - 2) = diag(0.5, 1)
    # mean variance 0.75, shrinkage 0.1 -> + 0.075 on the diagonal
    var = np.array([0.575, 1.075])
    np.testing.assert_allclose(g.precision, np.diag(1 / var), rtol=1e-12)
    got = g.distance(np.array([[1.0, 1.0], [10.0, 12.0], [5.0, 5.0]]))
    want = [
        1 / var[0] + 1 / var[1],  # nearer to the source mean
        4 / var[1],  # on the target mean's axis, 2 above it
        min(25 / var[0] + 25 / var[1], 25 / var[0] + 25 / var[1]),  # half way: either mean
    ]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_gaussian_needs_no_test_domain_and_survives_its_state() -> None:
    vectors, domains = _hand_example()
    g = ResidualGaussian.fit(vectors, domains, shrinkage=0.1)
    again = ResidualGaussian.from_state(g.to_state())
    probe = np.array([[0.3, -0.2], [9.0, 10.5]])
    np.testing.assert_allclose(again.distance(probe), g.distance(probe), rtol=1e-6)
    # one domain only: a single mean, and a degenerate covariance is still invertible
    one = ResidualGaussian.fit(np.ones((3, 4)), ["source"] * 3, shrinkage=0.01)
    assert one.means.shape == (1, 4) and np.all(np.isfinite(one.precision))
    with pytest.raises(ValueError, match="residual vectors"):
        ResidualGaussian.fit(np.zeros((0, 4)), [], shrinkage=0.1)


def test_run_scores_mahalanobis_and_keeps_it_in_the_checkpoint(
    field_run: Path, synth_root: Path, tmp_path: Path
) -> None:
    detector = load_detector(field_run)
    assert "mahalanobis" in detector.score_kinds
    assert set(detector.gaussians) == set(detector.score_stats_)  # every machine/section and "*"
    test = [c for c in discover(synth_root) if c.split == "test"]
    scores = detector.score_clips(test).scores["mahalanobis"]
    assert np.all(np.isfinite(scores)) and np.all(scores >= 0) and np.std(scores) > 0
    # the clip score is the mean of its window scores, each the distance of that window
    detector.config.score.kind = "mahalanobis"
    save_detector(tmp_path / "m" / "model.pt", detector)
    reloaded = AnomalyDetector.load(tmp_path / "m")
    np.testing.assert_allclose(reloaded.decision_function(test[:4]), scores[:4], rtol=1e-5)
    details = reloaded.score_details(test[:1])[0]
    assert details.kind == "mahalanobis"
    assert np.mean(details.window_scores) == pytest.approx(scores[0], rel=1e-5)


def test_checkpoint_without_residual_statistics_still_loads(
    field_run: Path, synth_root: Path, tmp_path: Path
) -> None:
    detector = load_detector(field_run)
    payload = detector.state_dict()
    del payload["state"]["mahalanobis"]
    for stats in payload["score_stats"].values():
        stats.pop("mahalanobis", None)
    old = type(detector).from_state_dict(payload)
    assert old.score_kinds == ("reconstruction", "svdd")
    test = [c for c in discover(synth_root) if c.split == "test"][:2]
    assert set(old.score_clips(test).scores) == {"reconstruction", "svdd", "fused"}


def test_thresholds_come_from_cross_fitted_training_scores(
    field_run: Path, synth_root: Path
) -> None:
    """A training clip's calibration score comes from a Gaussian fitted without its fold."""
    detector = load_detector(field_run)
    train = [c for c in discover(synth_root) if c.split == "train" and c.machine == "fan"]
    features = detector.clip_features(train, progress=False)
    windows = [
        r.windows["residual"]
        for r in detector.score_spectrograms(features, [c.machine for c in train], residual=True)
    ]
    # calibration re-fits the Gaussians on these clips (fan only: one group)
    got = detector._calibration_scores(train, progress=False).scores["mahalanobis"]
    in_sample = detector.score_clips(train).scores["mahalanobis"]
    shrink = detector.config.score.mahalanobis_shrinkage
    for i, clip in enumerate(train):
        rest = [
            j for j in range(len(train)) if j % CROSSFIT_FOLDS != i % CROSSFIT_FOLDS
        ]  # folds by position
        g = ResidualGaussian.fit(
            np.concatenate([windows[j] for j in rest]),
            [train[j].domain for j in rest for _ in windows[j]],
            shrink,
        )
        assert got[i] == pytest.approx(float(np.mean(g.distance(windows[i]))), rel=1e-9), (
            clip.path.name
        )
    assert np.median(got) > 2 * np.median(
        in_sample
    )  # in-sample scores would set thresholds far too low
