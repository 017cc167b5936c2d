"""The estimator surface every system shares.

A :class:`Detector` is trained on normal clips only (``fit``), turns clips into anomaly scores
(``decision_function``), and into 0/1 decisions (``predict``) with thresholds it fitted on
training-clip scores alone.  Systems implement four hooks (``_fit``, ``_score_clips``,
``_state`` and ``_load_state``); thresholds, score fusion and (de)serialization live here so
that every system gets them the same way.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harken.config import Config

if TYPE_CHECKING:
    from harken.data.dataset import Clip

GLOBAL_KEY = "*"  # threshold / statistics key used for a machine type or section not seen in training


def group_key(machine: str, section: str) -> str:
    return f"{machine}/{section}"


@dataclass
class ClipScores:
    """Scores of a list of clips: one array per score kind, aligned with ``clips``.

    ``windows`` holds, for each clip, the per-window scores of the decision kind and
    ``window_starts`` their start times in seconds, so a long recording can be shown as a
    timeline.
    """

    clips: list[Any]
    scores: dict[str, np.ndarray]
    windows: list[np.ndarray] = field(default_factory=list)
    window_starts: list[np.ndarray] = field(default_factory=list)


class Detector(abc.ABC):
    """Base class of all systems (CAE-DANN-SVDD, the DCASE AE baseline, Audio Mamba)."""

    name: str = "detector"
    #: score kinds this system produces; the first is its native score
    score_kinds: tuple[str, ...] = ("score",)

    def __init__(self, config: Config) -> None:
        self.config = config
        self.threshold_: dict[str, float] = {}
        #: per group key and score kind: (mean, std) of training-clip scores, for ``fused``
        self.score_stats_: dict[str, dict[str, list[float]]] = {}
        self.history_: list[dict[str, float]] = []

    # ----------------------------------------------------------------- hooks for systems
    @abc.abstractmethod
    def _fit(self, clips: Sequence[Clip], *, run_dir: Path | None, progress: bool, resume: bool) -> None:
        """Train on normal training clips (no labels beyond 'normal' are available)."""

    @abc.abstractmethod
    def _score_clips(self, clips: Sequence[Clip], *, progress: bool) -> ClipScores:
        """Raw scores of every kind in ``score_kinds`` (no fusion, no thresholds)."""

    @abc.abstractmethod
    def _state(self) -> dict[str, Any]:
        """Everything a trained system needs to score: tensors and plain data only."""

    @abc.abstractmethod
    def _load_state(self, state: dict[str, Any]) -> None: ...

    # ----------------------------------------------------------------- estimator surface
    @property
    def decision_kind(self) -> str:
        kind = self.config.score.kind
        if kind == "fused" or kind in self.score_kinds:
            return kind
        return self.score_kinds[0]

    def fit(
        self,
        clips: Sequence[Clip],
        *,
        run_dir: str | Path | None = None,
        progress: bool = True,
        resume: bool = False,
    ) -> Detector:
        train = [c for c in clips if c.split in ("train", "supplemental") and c.label == "normal"]
        if not train:
            from harken.errors import DatasetError

            raise DatasetError("no normal training clips to fit on")
        self._fit(train, run_dir=None if run_dir is None else Path(run_dir), progress=progress, resume=resume)
        self.calibrate(train, progress=progress)
        return self

    def calibrate(self, train_clips: Sequence[Clip], *, progress: bool = False) -> None:
        """Fit score statistics and decision thresholds on training-clip scores only."""
        from harken.evaluation.threshold import fit_gamma_threshold

        raw = self._calibration_scores(train_clips, progress=progress)
        groups: dict[str, list[int]] = {GLOBAL_KEY: list(range(len(train_clips)))}
        for i, clip in enumerate(train_clips):
            groups.setdefault(group_key(clip.machine, clip.section), []).append(i)
        self.score_stats_ = {}
        for key, idx in groups.items():
            self.score_stats_[key] = {
                kind: [float(np.mean(values[idx])), float(np.std(values[idx]) + 1e-12)]
                for kind, values in raw.scores.items()
            }
        decision = self._with_fused(raw).scores[self.decision_kind]
        q = self.config.score.threshold_quantile
        self.threshold_ = {key: fit_gamma_threshold(decision[idx], q) for key, idx in groups.items()}

    def _calibration_scores(self, train_clips: Sequence[Clip], *, progress: bool) -> ClipScores:
        """Training-clip scores for the statistics and thresholds.

        A system whose score is itself fitted on the training clips overrides this with
        out-of-sample (cross-fitted) values, so thresholds are not set on in-sample scores.
        """
        return self._score_clips(train_clips, progress=progress)

    def score_clips(self, clips: Sequence[Clip], *, progress: bool = False) -> ClipScores:
        """Every score kind (including ``fused``) of ``clips``."""
        return self._with_fused(self._score_clips(list(clips), progress=progress))

    def decision_function(self, clips: Sequence[Clip]) -> np.ndarray:
        return self.score_clips(clips).scores[self.decision_kind]

    def predict(self, clips: Sequence[Clip]) -> np.ndarray:
        scores = self.decision_function(clips)
        return self.decide(clips, scores)

    def decide(self, clips: Sequence[Clip], scores: np.ndarray) -> np.ndarray:
        thresholds = np.array([self.threshold_for(c.machine, c.section) for c in clips])
        return (np.asarray(scores) > thresholds).astype(np.int64)

    def threshold_for(self, machine: str, section: str) -> float:
        if not self.threshold_:
            raise RuntimeError("detector is not fitted")
        return self.threshold_.get(group_key(machine, section), self.threshold_[GLOBAL_KEY])

    def _stats_for(self, machine: str, section: str) -> dict[str, list[float]]:
        return self.score_stats_.get(group_key(machine, section), self.score_stats_[GLOBAL_KEY])

    def _with_fused(self, raw: ClipScores) -> ClipScores:
        """Add the ``fused`` kind: each kind standardized on training scores, weighted average."""
        if not self.score_stats_ or len(self.score_kinds) < 2:
            return raw
        weights = list(self.config.score.fused_weights)[: len(self.score_kinds)]
        weights += [0.0] * (len(self.score_kinds) - len(weights))
        fused = np.zeros(len(raw.clips), dtype=np.float64)
        for i, clip in enumerate(raw.clips):
            stats = self._stats_for(clip.machine, clip.section)
            fused[i] = sum(
                w * (raw.scores[k][i] - stats[k][0]) / stats[k][1]
                for w, k in zip(weights, self.score_kinds, strict=True)
            ) / max(sum(weights), 1e-12)
        raw.scores["fused"] = fused
        return raw

    # ----------------------------------------------------------------- serialization
    def state_dict(self) -> dict[str, Any]:
        return {
            "system": self.name,
            "config": self.config.to_dict(),
            "threshold": dict(self.threshold_),
            "score_stats": self.score_stats_,
            "history": list(self.history_),
            "state": self._state(),
        }

    @classmethod
    def from_state_dict(cls, payload: dict[str, Any]) -> Detector:
        from harken.systems import create_system

        config = Config.from_dict(payload["config"], source="checkpoint")
        detector = create_system(payload["system"], config)
        detector._load_state(payload["state"])
        detector.threshold_ = {k: float(v) for k, v in payload["threshold"].items()}
        detector.score_stats_ = payload["score_stats"]
        detector.history_ = list(payload.get("history", []))
        return detector
