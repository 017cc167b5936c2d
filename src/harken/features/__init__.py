"""Features: waveform to dB log-mel (:mod:`.logmel`), [0, 1] scaling fitted on training data
(:mod:`.scaling`), fixed-size windows (:mod:`.windows`) and the content-keyed cache
(:mod:`.cache`).

The submodules need PyTorch; they are imported on first attribute access so that
``import harken.features`` alone stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LogMel": "logmel",
    "logmel_numpy": "logmel",
    "mel_filterbank": "logmel",
    "n_frames": "logmel",
    "Scaler": "scaling",
    "ScalerModule": "scaling",
    "fit_length": "windows",
    "random_crop": "windows",
    "center_crop": "windows",
    "sliding_windows": "windows",
    "window_starts": "windows",
    "frames_to_seconds": "windows",
    "ShortClipError": "windows",
    "FeatureCache": "cache",
    "cache_dir_for": "cache",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
