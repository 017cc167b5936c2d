"""From a clip's spectrogram of any length to fixed-size model inputs.

The model sees ``frames`` (1024 by default) frames at a time.  Training draws one crop per clip
(random or centered); testing covers the whole clip with windows every ``hop`` frames, the last
one aligned to the end so no frame is left unscored.  A clip shorter than one window is tiled,
padded with its own minimum (the quietest value it has, so padding reads as silence rather than
as a loud edge) or refused, per :class:`~harken.config.WindowConfig`.

Every function takes numpy arrays or torch tensors ``[..., n_mels, T]`` (time last) and returns
the same kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from harken.errors import AudioError

SHORT_CLIP_POLICIES = ("repeat", "pad", "error")

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, Tensor)


class ShortClipError(AudioError, ValueError):
    """A clip is shorter than one model window and the policy is ``"error"``."""


def fit_length(
    spec: ArrayOrTensor,
    frames: int,
    short_clip: str = "repeat",
    *,
    path: str | Path | None = None,
) -> ArrayOrTensor:
    """At least ``frames`` long: unchanged when long enough, else tiled / min-padded / refused.

    Only the short case copies.  ``path`` names the clip in the error.
    """
    if short_clip not in SHORT_CLIP_POLICIES:
        raise ValueError(f"short_clip must be one of {SHORT_CLIP_POLICIES}, got {short_clip!r}")
    _check_frames(frames)
    length = spec.shape[-1]
    if length >= frames:
        return spec
    if length == 0 or short_clip == "error":
        raise ShortClipError(
            f"clip has {length} frames, shorter than one {frames}-frame window (window.short_clip={short_clip!r})",
            path=path,
        )
    if short_clip == "repeat":
        reps = -(-frames // length)
        if isinstance(spec, Tensor):
            return spec.repeat(*([1] * (spec.dim() - 1)), reps)[..., :frames]
        return np.concatenate([spec] * reps, axis=-1)[..., :frames]
    # "pad": right-pad with the clip's minimum.
    if isinstance(spec, Tensor):
        fill = spec.amin()
        pad = fill.expand(*spec.shape[:-1], frames - length).to(spec.dtype)
        return torch.cat([spec, pad], dim=-1)
    out = np.empty((*spec.shape[:-1], frames), dtype=spec.dtype)
    out[..., :length] = spec
    out[..., length:] = spec.min()
    return out


def random_crop(
    spec: ArrayOrTensor,
    frames: int,
    rng: np.random.Generator,
    short_clip: str = "repeat",
) -> ArrayOrTensor:
    """``frames`` consecutive frames starting at a uniform position in ``[0, T - frames]``.

    A view of ``spec`` when it is long enough (no copy of a memory-mapped cache entry).
    """
    spec = fit_length(spec, frames, short_clip)
    start = int(rng.integers(0, spec.shape[-1] - frames + 1))
    return spec[..., start : start + frames]


def center_crop(spec: ArrayOrTensor, frames: int, short_clip: str = "repeat") -> ArrayOrTensor:
    """The middle ``frames`` frames (left of center when the surplus is odd)."""
    spec = fit_length(spec, frames, short_clip)
    start = (spec.shape[-1] - frames) // 2
    return spec[..., start : start + frames]


def window_starts(length: int, frames: int, hop: int) -> np.ndarray:
    """Start frames of windows every ``hop`` frames covering ``[0, length)``, last one end-aligned.

    ``length`` must be at least ``frames`` (see :func:`fit_length`) and ``hop`` at most
    ``frames``.
    """
    _check_frames(frames)
    if not 1 <= hop <= frames:
        # A hop longer than the window would leave frames between windows unscored.
        raise ValueError(f"hop must be between 1 and the window length {frames} frames, got {hop}")
    if length < frames:
        raise ValueError(
            f"clip of {length} frames is shorter than one {frames}-frame window; call fit_length first"
        )
    last = length - frames
    starts = np.arange(0, last + 1, hop, dtype=np.int64)
    if starts[-1] != last:
        starts = np.append(starts, last)
    return starts


def sliding_windows(
    spec: ArrayOrTensor,
    frames: int,
    hop: int,
    short_clip: str = "repeat",
) -> tuple[ArrayOrTensor, np.ndarray]:
    """Windows ``[n, n_mels, frames]`` covering the whole clip, and their start frames ``[n]``.

    The windows are a new array (stacked), not views.  A clip shorter than one window goes
    through :func:`fit_length` first and gives one window at start 0.
    """
    if spec.ndim != 2:
        raise ValueError(f"expected a [n_mels, T] spectrogram, got shape {tuple(spec.shape)}")
    spec = fit_length(spec, frames, short_clip)
    starts = window_starts(spec.shape[-1], frames, hop)
    if isinstance(spec, Tensor):
        index = torch.as_tensor(starts, device=spec.device)
        windows = spec.unfold(-1, frames, 1).index_select(1, index).permute(1, 0, 2)
        return windows.contiguous(), starts
    view = np.lib.stride_tricks.sliding_window_view(spec, frames, axis=-1)  # [n_mels, L, frames]
    return np.ascontiguousarray(view[:, starts].transpose(1, 0, 2)), starts


def frames_to_seconds(starts: np.ndarray | int, hop_length: int, sample_rate: int) -> np.ndarray:
    """Frame indices to seconds.

    With ``center=True`` frame ``t`` is centered on sample ``t * hop_length``, so a window
    starting at frame ``t`` starts (its first frame's center) at ``t * hop_length / sample_rate``.
    """
    return np.asarray(starts, dtype=np.float64) * hop_length / sample_rate


def _check_frames(frames: int) -> None:
    if frames < 1:
        raise ValueError(f"window length must be at least 1 frame, got {frames}")
