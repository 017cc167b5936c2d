"""Score with an exported graph and onnxruntime alone: no PyTorch (edge devices).

Needs numpy, soundfile and onnxruntime (``pip install harken[onnx]``).  :class:`OnnxScorer`
reads ``MODEL.onnx`` and its sidecar ``MODEL.onnx.json`` (written by ``harken export``), loads
audio with :mod:`harken.data.audio` (same channel policy and resampling as training), and
applies what the graph leaves out (see :mod:`harken.deploy.export`): the threshold of the
clip's machine type and section, the fused-score group, and ``window.short_clip="error"``.
It returns the same :class:`~harken.deploy.ClipScore` records as the PyTorch path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harken.config import AudioConfig
from harken.deploy import ClipScore, FieldClip, error_text, threshold_key
from harken.errors import AudioError, ConfigError, HarkenError

GLOBAL_KEY = "*"


def find_sidecar(model: Path) -> Path:
    """``model.onnx.json`` (what ``harken export`` writes) or ``model.json``."""
    for candidate in (model.with_name(model.name + ".json"), model.with_suffix(".json")):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no metadata sidecar {model.name}.json beside the model (harken export writes it)", path=model)


class OnnxScorer:
    """An exported harken graph plus its metadata, scoring files or waveforms.

    ``threads`` sets onnxruntime's intra-op threads (None: its default, one per core).
    """

    def __init__(self, model: str | Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(model)
        if not self.path.is_file():
            raise ConfigError("no such ONNX model file", path=self.path)
        try:
            self.meta: dict[str, Any] = json.loads(find_sidecar(self.path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"metadata sidecar is not valid JSON: {exc}", path=self.path) from None
        if not isinstance(self.meta, dict) or self.meta.get("format") != "harken-onnx":
            raise ConfigError("sidecar is not harken export metadata", path=self.path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ConfigError(f"onnxruntime cannot load the model: {exc}", path=self.path) from None
        try:
            self.audio = AudioConfig(**self.meta["audio"])
            self.window: dict[str, Any] = self.meta["window"]
            self.features: dict[str, Any] = self.meta["features"]
            self.kind: str = self.meta["score_kind"]
            self.thresholds: dict[str, float] = {k: float(v) for k, v in self.meta["thresholds"].items()}
            self.groups: list[str] = list(self.meta.get("fused_groups") or [])
            self.input_names: list[str] = list(self.meta["input_names"])
            self.output_names: list[str] = list(self.meta["output_names"])
            self.frame_seconds = self.features["hop_length"] / self.audio.sample_rate
        except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as exc:
            detail = f"no field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ConfigError(f"metadata sidecar is incomplete or malformed ({detail})", path=self.path) from None

    # ------------------------------------------------------------------ metadata
    @property
    def machine_types(self) -> list[str]:
        return list(self.meta.get("machine_types", []))

    @property
    def window_seconds(self) -> float:
        return self.window["frames"] * self.frame_seconds

    @property
    def hop_seconds(self) -> float:
        return self.window["test_hop"] * self.frame_seconds

    def threshold_for(self, machine: str | None, section: str | None) -> float:
        return self.thresholds[threshold_key(self.thresholds, machine, section)]

    def n_frames(self, n_samples: int) -> int:
        """STFT frames of a waveform (as :func:`harken.features.logmel.n_frames`)."""
        hop, n_fft = self.features["hop_length"], self.features["n_fft"]
        return 1 + n_samples // hop if self.features["center"] else 1 + (n_samples - n_fft) // hop

    # ------------------------------------------------------------------ scoring
    def score_clips(self, clips: Sequence[Any]) -> list[ClipScore]:
        """Load and score files; an unreadable one becomes a failure record, the rest go on."""
        from harken.data.audio import load_audio

        results = []
        for clip in clips:
            if isinstance(clip, ClipScore):  # failed earlier (as_clips): keeps its place
                results.append(clip)
                continue
            name = clip.name if isinstance(clip, FieldClip) else str(clip.path)
            try:
                wave = load_audio(clip.path, self.audio)
                results.extend(self.score_waveforms([clip], [wave]))
            except (HarkenError, OSError, ValueError) as exc:
                results.append(ClipScore.failed(name, error_text(exc), clip))
        return results

    def score_waveforms(self, clips: Sequence[Any], waves: Sequence[np.ndarray]) -> list[ClipScore]:
        """Score float32 mono waveforms at the model's rate; clips of equal length share a run."""
        if self.meta["input"] != "waveform":
            raise ConfigError(
                "this graph takes log-mel features (exported with --input features): "
                "use score_features(), or export with --input waveform to score audio",
                path=self.path,
            )
        out: list[ClipScore | None] = [None] * len(clips)
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(waves):
            by_length.setdefault(len(w), []).append(i)
        for length, idx in by_length.items():
            self._check_length(self.n_frames(length), [clips[i] for i in idx])
            batch = np.stack([np.asarray(waves[i], dtype=np.float32) for i in idx])
            for i, r in zip(idx, self._run([clips[i] for i in idx], batch, length / self.audio.sample_rate), strict=True):
                out[i] = r
        return [r for r in out if r is not None]

    def score_features(self, clips: Sequence[Any], specs: Sequence[np.ndarray]) -> list[ClipScore]:
        """Score dB log-mels ``[n_mels, frames]`` with a ``--input features`` graph."""
        if self.meta["input"] != "features":
            raise ConfigError("this graph takes waveforms: use score_waveforms()", path=self.path)
        results = []
        for clip, spec in zip(clips, specs, strict=True):
            spec = np.asarray(spec, dtype=np.float32)
            self._check_length(spec.shape[-1], [clip])
            results.extend(self._run([clip], spec[None], None))
        return results

    def _check_length(self, frames: int, clips: Sequence[Any]) -> None:
        if frames < self.window["frames"] and self.window["short_clip"] == "error":
            raise AudioError(
                f"recording gives {frames} frames, shorter than one {self.window['frames']}-frame "
                "window, and window.short_clip is 'error'",
                path=getattr(clips[0], "name", None) or getattr(clips[0], "path", None),
            )

    def _run(self, clips: Sequence[Any], x: np.ndarray, duration: float | None) -> list[ClipScore]:
        feed = {self.input_names[0]: x}
        if "group" in self.input_names:
            feed["group"] = np.array([self._group(c.machine, c.section) for c in clips], dtype=np.int64)
        outputs = dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))
        starts = np.asarray(outputs["window_start_frames"], dtype=np.float64) * self.frame_seconds
        results = []
        for i, clip in enumerate(clips):
            score = float(outputs["score"][i])
            threshold = self.threshold_for(clip.machine, clip.section)
            scores = {k: float(outputs[k][i]) for k in ("reconstruction", "svdd")}
            scores[self.kind] = score
            results.append(
                ClipScore(
                    source=clip.name if isinstance(clip, FieldClip) else str(getattr(clip, "path", "")),
                    machine=clip.machine,
                    section=clip.section,
                    kind=self.kind,
                    score=score,
                    threshold=threshold,
                    threshold_key=threshold_key(self.thresholds, clip.machine, clip.section),
                    decision=int(score > threshold),
                    duration_s=duration,
                    scores=scores,
                    window_starts=[float(s) for s in starts],
                    window_scores=[float(v) for v in np.asarray(outputs["window_scores"][i], dtype=np.float64)],
                    window_seconds=self.window_seconds,
                )
            )
        return results

    def _group(self, machine: str | None, section: str | None) -> int:
        key = f"{machine}/{section}"
        return self.groups.index(key if key in self.groups else GLOBAL_KEY)
