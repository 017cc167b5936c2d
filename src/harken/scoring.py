"""From a clip's log-mel spectrogram to window scores and a clip score.

A clip of any length is cut into fixed-size windows (``window.frames`` frames every
``window.test_hop``; a clip shorter than one window follows ``window.short_clip``), each window
is scaled and scored by the system's window scorer, and the clip score is the
``window.aggregate`` (mean or max) of its window scores.  The same function serves
``harken test``, ``harken score``, the Python API, validation during training and the service,
so all of them give the same number for the same audio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from harken.config import WindowConfig
from harken.features.windows import fit_length, sliding_windows

WindowScorer = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@dataclass
class SpectrogramScores:
    """Per-window scores of one clip (kind -> [n_windows]) and window start frames."""

    windows: dict[str, np.ndarray]
    starts: np.ndarray

    def aggregate(self, how: str) -> dict[str, float]:
        reduce = {"mean": np.mean, "max": np.max}[how]
        return {kind: float(reduce(v)) for kind, v in self.windows.items()}


def clip_windows(spec: np.ndarray, window: WindowConfig) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``[n, n_mels, frames]`` covering the clip, and their start frames."""
    spec = fit_length(np.asarray(spec, dtype=np.float32), window.frames, window.short_clip)
    return sliding_windows(spec, window.frames, window.test_hop)


@torch.no_grad()
def score_spectrograms(
    specs: Sequence[np.ndarray],
    scorer: WindowScorer,
    window: WindowConfig,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> list[SpectrogramScores]:
    """Score many clips, batching windows across clips for throughput.

    ``scorer`` receives dB windows ``[B, n_mels, frames]`` on ``device`` and returns score
    tensors ``[B]`` per kind (scaling to [0, 1] is the scorer's job, so its statistics travel
    with the model).
    """
    cut = [clip_windows(s, window) for s in specs]
    counts = [len(w) for w, _ in cut]
    flat = np.concatenate([w for w, _ in cut], axis=0) if cut else np.zeros((0, 1, 1), np.float32)
    outputs: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(flat), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(flat[start : start + batch_size])).to(device)
        for kind, values in scorer(batch).items():
            outputs.setdefault(kind, []).append(values.detach().float().cpu().numpy().astype(np.float64))
        if progress is not None:
            progress(len(batch))
    merged = {kind: np.concatenate(parts) for kind, parts in outputs.items()}
    results = []
    offset = 0
    for (_, starts), n in zip(cut, counts, strict=True):
        results.append(SpectrogramScores({k: v[offset : offset + n] for k, v in merged.items()}, starts))
        offset += n
    return results
