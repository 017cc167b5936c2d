"""The Python API: a scikit-learn-style estimator over harken's pipeline, and the scoring path
that ``harken score`` and ``harken serve`` share.

>>> from harken.api import AnomalyDetector
>>> det = AnomalyDetector("demo", train__epochs=2).fit("data/")      # doctest: +SKIP
>>> det.predict(["pump/test/section_00_0001.wav"])                     # doctest: +SKIP

``AnomalyDetector`` is deliberately thin: ``fit`` is :func:`harken.pipeline.train_run`, a saved
detector is the run's ``model.pt``, and every score goes through :func:`score_clips` /
:func:`score_waveforms`, which the command line and the service call too, so a clip gets the
same number whichever door it comes through.  Scoring a file here reads the audio and
computes its log-mel directly (no feature cache: field files are seen once), rounded to
``features.cache_dtype`` like the cached features the model was trained and calibrated on, so
``harken score`` reproduces ``harken test`` on the same file.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harken.config import Config, load_config, merge_dicts
from harken.deploy import (
    ClipScore,
    FieldClip,
    collect_audio_files,
    error_text,
    field_clip,
    threshold_key,
)
from harken.errors import AudioError, ConfigError, DatasetError, HarkenError

#: clips scored together per call into the model (bounds memory on a folder of thousands)
CHUNK = 16


# ----------------------------------------------------------------------------- loading
def load_run(path: str | Path) -> Any:
    """A fitted Detector from a run directory or its ``model.pt`` (weights-only loading)."""
    from harken.training.checkpoint import load_detector

    return load_detector(path)


def model_versions(path: str | Path) -> dict[str, str]:
    """The library versions a model file was written with (its checkpoint header)."""
    from harken.training.checkpoint import load_checkpoint

    path = Path(path)
    data = load_checkpoint(path / "model.pt" if path.is_dir() else path, kind="detector")
    return {str(k): str(v) for k, v in dict(data.get("versions", {})).items()}


# ----------------------------------------------------------------------------- inputs
def as_clips(
    items: Any,
    *,
    machine: str | None = None,
    section: str | int | None = None,
    errors: str = "raise",
) -> list[Any]:
    """What to score, in input order, from a dataset root, paths, folders or Clip objects.

    A single folder that holds a DCASE/MIMII dataset layout means its *test* clips (as
    ``harken test`` scores them); any other folder is searched recursively for WAV/FLAC files.
    Clip objects pass through unchanged.  With ``errors="keep"`` a path that cannot be scored
    (missing, or a name giving no machine type) becomes a failed :class:`ClipScore` in its
    place instead of an error; :func:`score_clips` passes those through.
    """
    if isinstance(items, (str, Path)):
        root = Path(items)
        if root.is_dir():
            dataset = _dataset_clips(root)
            if dataset is not None:
                test = [c for c in dataset if c.split == "test"]
                if not test:
                    raise DatasetError("dataset has no test clips to score", path=root)
                return _override(test, machine, section)
        items = [items]
    out: list[Any] = []
    for item in items:
        if isinstance(item, (str, Path)):
            for path, problem in collect_audio_files([item]):
                try:
                    if problem is not None:
                        raise AudioError(problem, path=path)
                    out.append(field_clip(path, machine=machine, section=section))
                except HarkenError as exc:
                    if errors == "raise":
                        raise
                    out.append(ClipScore.failed(str(path), error_text(exc)))
        elif isinstance(item, ClipScore):
            out.append(item)
        elif hasattr(item, "machine") and hasattr(item, "section") and hasattr(item, "path"):
            out.extend(_override([item], machine, section))
        else:
            raise TypeError(f"cannot score {type(item).__name__}: pass file paths, folders or Clip objects")
    return out


def _dataset_clips(root: Path) -> list[Any] | None:
    """The clips of ``root`` if it is a DCASE/MIMII dataset, else None.

    Discovery's warnings (skipped folders, no target clips) matter only for a dataset: for
    any other folder they would be noise, so they are replayed only when ``root`` is one.
    """
    import warnings

    from harken.data.dataset import discover

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            clips = discover(root)
        except DatasetError:
            return None
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return clips


def _override(clips: list[Any], machine: str | None, section: str | int | None) -> list[Any]:
    from harken.deploy import normalize_section

    if machine is None and section is None:
        return clips
    sec = normalize_section(section)
    return [
        FieldClip(
            c.path, machine or c.machine, sec or c.section, str(c.path),
            domain=c.domain, split=c.split, label=c.label,
        )
        for c in clips
    ]  # fmt: skip


# ----------------------------------------------------------------------------- scoring
def supports_waveforms(detector: Any) -> bool:
    """Whether ``detector`` scores in-memory audio (CAE-DANN); others score files via the cache."""
    return hasattr(detector, "scores_from_spectrograms") and hasattr(detector, "waveform_features")


def score_clips(detector: Any, clips: Sequence[Any], *, chunk: int = CHUNK) -> list[ClipScore]:
    """Scores of files (``clips`` with a ``path``), a failure record for each unreadable one.

    Audio is read and checked file by file, so one truncated or non-audio file is reported
    and the others are still scored; scoring itself is batched ``chunk`` files at a time.
    Failed records already among ``clips`` (from :func:`as_clips`) keep their place.
    """
    todo = [c for c in clips if not isinstance(c, ClipScore)]
    scored = iter(_score_chunks(detector, todo, chunk))
    return [c if isinstance(c, ClipScore) else next(scored) for c in clips]


def _score_chunks(detector: Any, clips: list[Any], chunk: int) -> list[ClipScore]:
    results: list[ClipScore] = []
    for start in range(0, len(clips), chunk):
        part = list(clips[start : start + chunk])
        cached = _from_cache(detector, part)
        if cached is not None:
            results.extend(cached)
            continue
        waves: list[np.ndarray | None] = []
        failures: dict[int, ClipScore] = {}
        for i, clip in enumerate(part):
            try:
                waves.append(_load(detector, clip))
            except (HarkenError, OSError, ValueError) as exc:
                waves.append(None)
                failures[i] = ClipScore.failed(_source(clip), error_text(exc), clip)
        good = [i for i in range(len(part)) if i not in failures]
        if supports_waveforms(detector):
            scored = score_waveforms(detector, [part[i] for i in good], [waves[i] for i in good])  # type: ignore[misc]
        else:
            scored = _score_via_system(detector, [part[i] for i in good], [waves[i] for i in good])  # type: ignore[misc]
        by_index = dict(zip(good, scored, strict=True))
        results.extend(failures.get(i) or by_index[i] for i in range(len(part)))
    return results


def _from_cache(detector: Any, part: list[Any]) -> list[ClipScore] | None:
    """Dataset clips (``Clip`` records) through the system's feature cache, as ``harken test``.

    A data set is scored again and again (``decision_function`` then ``predict``): its
    features are cached like the training features.  Loose field files are read directly
    instead (seen once; no cache entries to pile up).  None when this does not apply or a
    file fails, so the file-by-file path reports which one.
    """
    from harken.data.audio import audio_info
    from harken.data.dataset import Clip

    if not part or not supports_waveforms(detector) or not hasattr(detector, "clip_features"):
        return None
    if not all(isinstance(c, Clip) for c in part):
        return None
    try:
        specs = [np.asarray(s, dtype=np.float32) for s in detector.clip_features(part, progress=False)]
        durations: list[float | None] = [audio_info(c.path).duration for c in part]
    except (HarkenError, OSError, ValueError):
        return None
    return score_spectrograms(detector, part, specs, durations)


def _load(detector: Any, clip: Any) -> np.ndarray:
    from harken.data.audio import load_audio

    return load_audio(clip.path, detector.config.audio)


def _source(clip: Any) -> str:
    return clip.name if isinstance(clip, FieldClip) else str(clip.path)


def score_waveforms(detector: Any, clips: Sequence[Any], waves: Sequence[np.ndarray]) -> list[ClipScore]:
    """Scores of in-memory waveforms (float32 mono at the model's rate), one per clip."""
    if not clips:
        return []
    specs = features(detector, waves)
    durations = [len(w) / detector.config.audio.sample_rate for w in waves]
    return score_spectrograms(detector, clips, specs, durations)


def features(detector: Any, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
    """dB log-mel of waveforms, rounded to ``features.cache_dtype`` as the training features were."""
    specs = detector.waveform_features(list(waves))
    dtype = np.dtype(detector.config.features.cache_dtype)
    return [np.asarray(s).astype(dtype).astype(np.float32) for s in specs]


def score_spectrograms(
    detector: Any,
    clips: Sequence[Any],
    specs: Sequence[np.ndarray],
    durations: Sequence[float | None],
) -> list[ClipScore]:
    """Clip scores, decisions and window timelines from dB log-mels (the service's batch step).

    A clip too short for one window under ``window.short_clip="error"`` fails alone instead of
    failing the whole batch.
    """
    window = detector.config.window
    results: list[ClipScore | None] = [None] * len(clips)
    good = []
    for i, spec in enumerate(specs):
        if spec.shape[-1] < window.frames and window.short_clip == "error":
            results[i] = ClipScore.failed(
                _source(clips[i]),
                f"recording gives {spec.shape[-1]} frames, shorter than one {window.frames}-frame "
                "window, and window.short_clip is 'error'",
                clips[i],
            )
        else:
            good.append(i)
    if good:
        raw = detector.scores_from_spectrograms([clips[i] for i in good], [specs[i] for i in good])
        scored = _results(detector, detector._with_fused(raw), [durations[i] for i in good])
        for i, r in zip(good, scored, strict=True):
            results[i] = r
    return [r for r in results if r is not None]


def _score_via_system(detector: Any, clips: Sequence[Any], waves: Sequence[np.ndarray]) -> list[ClipScore]:
    """Systems without an in-memory hook (the AE baseline) score their files themselves.

    Such a system refuses a whole call for one clip it cannot score (a machine type it has no
    model for): the chunk is then retried clip by clip so the failure is that clip's alone.
    """
    if not clips:
        return []
    durations = [len(w) / detector.config.audio.sample_rate for w in waves]
    try:
        return _results(detector, detector.score_clips(list(clips)), durations)
    except HarkenError as exc:
        if len(clips) == 1:
            return [ClipScore.failed(_source(clips[0]), error_text(exc), clips[0])]
    return [r for clip, wave in zip(clips, waves, strict=True) for r in _score_via_system(detector, [clip], [wave])]


def _results(detector: Any, scored: Any, durations: Sequence[float | None]) -> list[ClipScore]:
    kind = detector.decision_kind
    values = np.asarray(scored.scores[kind], dtype=np.float64)
    decisions = detector.decide(scored.clips, values)
    seconds = _window_seconds(detector) if supports_waveforms(detector) else None
    out = []
    for i, clip in enumerate(scored.clips):
        windows = scored.windows[i] if i < len(scored.windows) else {}
        starts = np.asarray(scored.window_starts[i] if i < len(scored.window_starts) else [], dtype=np.float64)
        per_window = _window_values(detector, clip, windows, kind)
        if len(per_window) != len(starts):  # a system that reports windows without their times
            per_window, starts = np.zeros(0), np.zeros(0)
        out.append(
            ClipScore(
                source=_source(clip),
                machine=clip.machine,
                section=clip.section,
                kind=kind,
                score=float(values[i]),
                threshold=float(detector.threshold_for(clip.machine, clip.section)),
                threshold_key=threshold_key(detector.threshold_, clip.machine, clip.section),
                decision=int(decisions[i]),
                duration_s=durations[i],
                scores={k: float(v[i]) for k, v in scored.scores.items()},
                window_starts=[float(s) for s in starts],
                window_scores=[float(v) for v in per_window],
                window_seconds=seconds,
            )
        )
    return out


def _window_values(detector: Any, clip: Any, windows: Any, kind: str) -> np.ndarray:
    """The decision kind per window; ``fused`` standardized with the clip's training statistics.

    The fused formula is linear, so with ``window.aggregate="mean"`` the mean of these equals
    the clip's fused score; it is applied through the detector's own ``_with_fused`` (the
    windows posing as clips of the same machine and section) so there is one formula.
    """
    if not isinstance(windows, dict) or not windows:
        return np.asarray(windows if windows is not None else [], dtype=np.float64).reshape(-1)
    if kind in windows:
        return np.asarray(windows[kind], dtype=np.float64)
    from harken.systems.base import ClipScores

    n = len(next(iter(windows.values())))
    posing = ClipScores(clips=[clip] * n, scores={k: np.asarray(v, dtype=np.float64) for k, v in windows.items()})
    return np.asarray(detector._with_fused(posing).scores[kind], dtype=np.float64)


def _window_seconds(detector: Any) -> float | None:
    frames = getattr(detector.config.window, "frames", None)
    if frames is None:
        return None
    return frames * detector.config.features.hop_length / detector.config.audio.sample_rate


# ----------------------------------------------------------------------------- estimator
class AnomalyDetector:
    """A harken system as a scikit-learn-style estimator (fit on normal sounds only).

    ``config`` is a bundled config name (``"demo"``, ``"paper"``), a YAML path or a
    :class:`~harken.config.Config`; keyword ``overrides`` set config fields with ``__``
    between section and field, scikit-learn's nested-parameter convention
    (``train__epochs=2`` is ``train.epochs=2``).  After ``fit`` (or ``load``) ``detector_`` is
    the fitted :class:`~harken.systems.base.Detector` and ``threshold_`` its decision
    thresholds keyed ``"machine/section"`` (``"*"``: the fallback).

    Inputs of ``fit`` and the scoring methods: a dataset root (training uses its normal
    train/supplemental clips, scoring its test clips), audio file paths, folders (searched
    recursively) or :class:`~harken.data.dataset.Clip` objects.
    """

    def __init__(
        self,
        config: str | Path | Config = "demo",
        system: str = "cae-dann",
        *,
        cache_dir: str | Path | None = None,
        progress: bool = False,
        **overrides: Any,
    ) -> None:
        self.config = config
        self.system = system
        self.cache_dir = cache_dir
        self.progress = progress
        self.overrides = overrides
        self.detector_: Any = None

    # ---------------------------------------------------------------- parameters
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {
            "config": self.config,
            "system": self.system,
            "cache_dir": self.cache_dir,
            "progress": self.progress,
            **self.overrides,
        }

    def set_params(self, **params: Any) -> AnomalyDetector:
        for key, value in params.items():
            if key in ("config", "system", "cache_dir", "progress"):
                setattr(self, key, value)
            else:
                self.overrides[key] = value
        return self

    def resolved_config(self) -> Config:
        """The :class:`Config` that ``fit`` trains with (config + overrides + system)."""
        dotted = {k.replace("__", "."): v for k, v in self.overrides.items()}
        bad = [k for k in dotted if "." not in k]
        if bad:
            raise ConfigError(f"override(s) {bad} need a section, e.g. train__epochs=2 for train.epochs")
        base = self.config if isinstance(self.config, Config) else load_config(self.config)
        data: dict[str, Any] = base.to_dict()
        for key, value in dotted.items():
            section, name = key.split(".", 1)
            data = merge_dicts(data, {section: {name: value}})
        config = Config.from_dict(data, source="AnomalyDetector overrides")
        config.system = self.system
        return config

    # ---------------------------------------------------------------- fitting
    def fit(
        self,
        X: Any,
        y: Any = None,
        *,
        run_dir: str | Path | None = None,
        machine: str | None = None,
        section: str | int | None = None,
    ) -> AnomalyDetector:
        """Train on the normal clips of ``X`` (``y`` is ignored: training is unsupervised).

        Loose files (not in a dataset) are all taken as normal training recordings; their
        machine type and section come from their names or ``machine`` / ``section``.
        ``run_dir`` keeps the run (``config.yaml``, ``model.pt``, checkpoints, logs) as
        ``harken train`` would write it; without it the run lives in a temporary folder.
        """
        from harken.pipeline import train_run

        dataset = _dataset_clips(Path(X)) if isinstance(X, (str, Path)) and Path(X).is_dir() else None
        if dataset is not None:
            clips = dataset
        else:
            found = as_clips(X if not isinstance(X, (str, Path)) else [X], machine=machine, section=section)
            clips = [
                c if not isinstance(c, FieldClip) else FieldClip(c.path, c.machine, c.section, c.name, c.domain, "train", "normal")
                for c in found
            ]
        config = self.resolved_config()
        if run_dir is not None:
            self.detector_ = train_run(config, clips, run_dir, progress=self.progress, cache_dir=self.cache_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="harken-fit-") as tmp:
                self.detector_ = train_run(config, clips, tmp, progress=self.progress, cache_dir=self.cache_dir)
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return self.detector_ is not None

    def _fitted(self) -> Any:
        if self.detector_ is None:
            raise RuntimeError("this AnomalyDetector is not fitted: call fit() or AnomalyDetector.load()")
        return self.detector_

    @property
    def threshold_(self) -> dict[str, float]:
        return dict(self._fitted().threshold_)

    @property
    def score_kind_(self) -> str:
        return str(self._fitted().decision_kind)

    # ---------------------------------------------------------------- scoring
    def score_details(
        self,
        X: Any,
        *,
        machine: str | None = None,
        section: str | int | None = None,
        errors: str = "raise",
    ) -> list[ClipScore]:
        """Per clip: score, decision, threshold, machine type/section and window timeline.

        ``errors="raise"`` stops at the first unreadable input (an estimator should not return
        a score that is not one); ``"keep"`` returns a failure record for it instead, which is
        what ``harken score`` reports.
        """
        if errors not in ("raise", "keep"):
            raise ValueError(f"errors must be 'raise' or 'keep', got {errors!r}")
        detector = self._fitted()
        results = score_clips(detector, as_clips(X, machine=machine, section=section, errors=errors))
        if errors == "raise":
            for r in results:
                if not r.ok:
                    raise AudioError(r.error or "cannot score", path=r.source)
        return results

    def decision_function(self, X: Any, *, machine: str | None = None, section: str | int | None = None) -> np.ndarray:
        """Anomaly scores (higher: more anomalous), one per clip, in input order."""
        return np.array([r.score for r in self.score_details(X, machine=machine, section=section)], dtype=np.float64)

    def score_samples(self, X: Any, **kwargs: Any) -> np.ndarray:
        """scikit-learn's outlier-detector convention: higher means *more normal*."""
        return -self.decision_function(X, **kwargs)

    def predict(self, X: Any, *, machine: str | None = None, section: str | int | None = None) -> np.ndarray:
        """1 for anomalous, 0 for normal, by the thresholds fitted on training scores."""
        return np.array([r.decision for r in self.score_details(X, machine=machine, section=section)], dtype=np.int64)

    def timeline(self, X: Any, **kwargs: Any) -> list[list[tuple[float, float]]]:
        """Per clip, ``(window start in seconds, window score)`` along the recording."""
        return [r.timeline for r in self.score_details(X, **kwargs)]

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write the fitted model: ``path`` ending in ``.pt`` is the file, else a run folder.

        A folder gets ``model.pt`` and ``config.yaml``, so ``harken score --run``,
        ``harken export`` and ``harken serve`` take it as they take a trained run.
        """
        from harken.pipeline import save_config
        from harken.training.checkpoint import save_detector

        detector = self._fitted()
        path = Path(path)
        if path.suffix == ".pt":
            save_detector(path, detector)
            return path
        save_detector(path / "model.pt", detector)
        save_config(path / "config.yaml", detector.config)
        return path / "model.pt"

    @classmethod
    def load(cls, path: str | Path, *, cache_dir: str | Path | None = None) -> AnomalyDetector:
        """A fitted estimator from a run folder or model file (``harken train``'s or ``save``'s).

        ``cache_dir`` is where features of dataset clips are cached (default as ``harken
        test``: ``$HARKEN_CACHE_DIR`` or ``~/.cache/harken/features``).
        """
        detector = load_run(path)
        if cache_dir is not None:
            detector.cache_dir = Path(cache_dir)
        est = cls(detector.config, detector.name, cache_dir=cache_dir)
        est.detector_ = detector
        return est

    def __repr__(self) -> str:
        shown = {k: (f"<Config system={v.system}>" if isinstance(v, Config) else repr(v)) for k, v in self.get_params().items()}
        params = ", ".join(f"{k}={v}" for k, v in shown.items() if v not in ("None", "False"))
        return f"AnomalyDetector({params})"

