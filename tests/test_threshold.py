"""Gamma-fit decision thresholds: the baseline's formula, safe degenerate cases, and no path
by which test labels (or test clips) can reach them."""

from __future__ import annotations

import inspect
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from harken.config import Config
from harken.evaluation.threshold import ThresholdWarning, fit_gamma_threshold
from harken.systems.base import GLOBAL_KEY, ClipScores, Detector


def test_matches_the_baseline_formula_on_ordinary_scores():
    scores = np.random.default_rng(0).gamma(2.0, 3.0, size=400) + 1.0
    shape, loc, scale = stats.gamma.fit(scores)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ThresholdWarning)
        for q in (0.9, 0.5, 0.99):
            assert fit_gamma_threshold(scores, q) == stats.gamma.ppf(q, shape, loc=loc, scale=scale)


def test_default_quantile_is_the_baselines_0_9():
    assert inspect.signature(fit_gamma_threshold).parameters["quantile"].default == 0.9


def test_threshold_is_near_the_true_quantile_of_gamma_data():
    rng = np.random.default_rng(1)
    scores = rng.gamma(3.0, 2.0, size=5000)
    assert fit_gamma_threshold(scores, 0.9) == pytest.approx(
        stats.gamma.ppf(0.9, 3.0, scale=2.0), rel=0.03
    )


@pytest.mark.parametrize("values", [[4.2] * 20, [1.0, 2.0, 1.0, 2.0, 2.0], [7.0]])
def test_too_few_distinct_scores_fall_back_to_the_empirical_quantile(values):
    with pytest.warns(ThresholdWarning, match="empirical"):
        t = fit_gamma_threshold(np.array(values), 0.9)
    assert t == np.quantile(values, 0.9)
    # a constant training score: training clips are decided normal (score > threshold is false)
    if len(set(values)) == 1:
        assert t == values[0]


@pytest.mark.parametrize(
    "scores",
    [
        np.random.default_rng(2).normal(-50.0, 2.0, size=300),  # log-likelihood-like, all negative
        np.random.default_rng(3).normal(0.0, 1.0, size=300),  # standardised / fused scores
        -np.random.default_rng(4).gamma(2.0, 1.0, size=300),  # left-skewed, negative
        np.random.default_rng(5).gamma(2.0, 1.0, size=300) * 1e-9,  # tiny scale
        np.random.default_rng(6).gamma(2.0, 1.0, size=300) * 1e9,  # huge scale
        np.random.default_rng(7).lognormal(0.0, 3.0, size=300),  # heavy tail
    ],
)
def test_awkward_scores_give_a_finite_sensible_threshold(scores):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ThresholdWarning)
        t = fit_gamma_threshold(scores, 0.9)
    assert np.isfinite(t)
    lo, hi = scores.min(), scores.max()
    assert lo - (hi - lo) <= t <= hi + 10 * (hi - lo)
    # a threshold at the 0.9 point leaves roughly that share of training clips below it
    assert 0.75 <= np.mean(scores <= t) <= 0.995


def test_shift_for_negative_scores_equals_fitting_positive_scores():
    # Shifting a whole score set shifts its threshold by the same amount.
    base = np.random.default_rng(8).gamma(2.0, 1.0, size=500) + 0.5
    t_pos = fit_gamma_threshold(base, 0.9)
    t_neg = fit_gamma_threshold(base - 100.0, 0.9)
    assert t_neg + 100.0 == pytest.approx(t_pos, rel=0.02)


def test_non_finite_scores_are_left_out_with_a_warning():
    scores = np.concatenate([np.random.default_rng(9).gamma(2.0, 1.0, 200) + 1, [np.nan, np.inf]])
    with pytest.warns(ThresholdWarning, match="2 of 202"):
        t = fit_gamma_threshold(scores, 0.9)
    assert t == fit_gamma_threshold(scores[:200], 0.9)
    with pytest.raises(ValueError, match="no finite"):
        fit_gamma_threshold(np.array([np.nan, np.nan]))
    with pytest.raises(ValueError, match="no finite"):
        fit_gamma_threshold(np.array([]))


@pytest.mark.parametrize("q", [0.0, 1.0, -0.1, 1.5])
def test_quantile_must_be_inside_the_unit_interval(q):
    with pytest.raises(ValueError, match="quantile"):
        fit_gamma_threshold(np.arange(10.0), q)


# --------------------------------------------------------------------------- no label leak
def test_api_takes_scores_only():
    assert list(inspect.signature(fit_gamma_threshold).parameters) == ["scores", "quantile"]


@dataclass(frozen=True)
class FakeClip:
    path: Path
    machine: str
    section: str
    split: str
    label: str
    domain: str = "source"

    @property
    def file_name(self) -> str:
        return self.path.name


class FixedScoreDetector(Detector):
    """A system whose score is a fixed function of the clip's file name (never of its label)."""

    name = "fixed"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.seen: list[FakeClip] = []

    def _fit(
        self, clips: Sequence[Any], *, run_dir: Path | None, progress: bool, resume: bool
    ) -> None:
        self.seen.extend(clips)

    def _score_clips(self, clips: Sequence[Any], *, progress: bool) -> ClipScores:
        self.seen.extend(clips)
        values = np.array([1.0 + (zlib.crc32(c.path.name.encode()) % 1000) / 37.0 for c in clips])
        return ClipScores(clips=list(clips), scores={"score": values})

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        pass


def _clips() -> list[FakeClip]:
    clips = []
    for section in ("00", "01"):
        for i in range(40):
            clips.append(
                FakeClip(
                    Path(f"fan/train/s{section}_train_{i}.wav"), "fan", section, "train", "normal"
                )
            )
        for i in range(20):
            label = "anomaly" if i % 2 else "normal"
            clips.append(
                FakeClip(Path(f"fan/test/s{section}_test_{i}.wav"), "fan", section, "test", label)
            )
    return clips


def test_test_clips_and_their_labels_cannot_reach_the_thresholds():
    clips = _clips()
    det = FixedScoreDetector(Config()).fit(clips, progress=False)
    # only normal training clips were ever trained on or scored for calibration
    assert det.seen and all(c.split == "train" and c.label == "normal" for c in det.seen)

    flipped = [
        replace(c, label={"normal": "anomaly", "anomaly": "normal"}[c.label])
        if c.split == "test"
        else c
        for c in clips
    ]
    det_flipped = FixedScoreDetector(Config()).fit(flipped, progress=False)
    det_train_only = FixedScoreDetector(Config()).fit(
        [c for c in clips if c.split == "train"], progress=False
    )
    assert det.threshold_ == det_flipped.threshold_ == det_train_only.threshold_

    # and each threshold is the gamma fit to that group's training scores
    train = [c for c in clips if c.split == "train"]
    scores = FixedScoreDetector(Config())._score_clips(train, progress=False).scores["score"]
    for key in ("fan/00", "fan/01"):
        idx = [i for i, c in enumerate(train) if f"{c.machine}/{c.section}" == key]
        assert det.threshold_[key] == fit_gamma_threshold(
            scores[idx], Config().score.threshold_quantile
        )
    assert det.threshold_[GLOBAL_KEY] == fit_gamma_threshold(
        scores, Config().score.threshold_quantile
    )
