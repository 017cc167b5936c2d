"""The DCASE Task 2 / MIMII data layer: clip names, dataset discovery, audio loading.

Torch-free by design: ``harken evaluate`` and ``harken score --onnx`` use these modules in an
install without PyTorch.  The names below are re-exported lazily, so importing
``harken.data.names`` alone does not load numpy or libsndfile.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ClipName": "harken.data.names",
    "parse_clip_name": "harken.data.names",
    "format_clip_name": "harken.data.names",
    "Clip": "harken.data.dataset",
    "clip_from_path": "harken.data.dataset",
    "discover": "harken.data.dataset",
    "summary": "harken.data.dataset",
    "format_summary": "harken.data.dataset",
    "AudioInfo": "harken.data.audio",
    "audio_info": "harken.data.audio",
    "load_audio": "harken.data.audio",
    "load_audio_bytes": "harken.data.audio",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harken.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
