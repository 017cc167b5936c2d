"""Checkpoints that rebuild a model from the file alone and load under ``weights_only=True``.

A checkpoint is a dict of tensors and plain Python data: the configuration as ``asdict``,
the model arguments, weights, the SVDD center, feature scaling, thresholds and library
versions.  Nothing is pickled as an object, so ``torch.load(weights_only=True)`` reads it and
no code runs from a model file.  Writes are atomic: a run killed mid-write leaves the previous
checkpoint intact.

Format 2 adds ``digest``, a BLAKE2b checksum of everything else in the file (keys, plain values
and every tensor's dtype, shape and bytes), checked on every load: torch's zip container does
not verify its CRCs, so without it a flipped bit in a weight would load silently as a
different model.  The checksum guards against damage (a disk error, a copy cut short, an
edited file), not against a deliberate forgery, which could recompute it; that no code runs
from the file is what ``weights_only`` guarantees.  Format-1 files (no digest) still load.
"""

from __future__ import annotations

import hashlib
import io
import platform
from pathlib import Path
from typing import Any

import torch

import harken
from harken.atomic import atomic_write_bytes
from harken.errors import CheckpointError

FORMAT = "harken-checkpoint"
FORMAT_VERSION = 2
#: the first format whose files must carry a ``digest``
DIGEST_SINCE = 2


def versions() -> dict[str, str]:
    import numpy

    return {
        "harken": str(harken.__version__),
        "torch": str(torch.__version__),
        "numpy": str(numpy.__version__),
        "python": platform.python_version(),
    }


def save_checkpoint(path: str | Path, payload: dict[str, Any], *, kind: str) -> None:
    """Atomically write ``payload`` with the format header and versions."""
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "versions": versions()}
    data.update(plain(payload))
    data["digest"] = payload_digest(data)
    buffer = io.BytesIO()
    torch.save(data, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def plain(obj: Any) -> Any:
    """Tensors and plain Python data only, so the weights-only unpickler accepts the file.

    numpy arrays become tensors, numpy scalars Python numbers, str/int/float subclasses
    (``torch.__version__`` is one) their base type, tuples lists.
    """
    import numpy as np

    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bool) or obj is None:
        return obj
    for base in (int, float, str):
        if isinstance(obj, base):
            return base(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"checkpoint payload holds a {type(obj).__name__}, which weights-only loading refuses")


def payload_digest(data: dict[str, Any]) -> str:
    """BLAKE2b-128 (hex) of a checkpoint's contents, ``digest`` itself left out."""
    h = hashlib.blake2b(digest_size=16)

    def feed(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().to("cpu").reshape(-1).contiguous()
            h.update(f"T{t.dtype}{tuple(obj.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(obj, dict):
            h.update(b"D%d:" % len(obj))
            for key, value in obj.items():
                feed(key)
                feed(value)
        elif isinstance(obj, (list, tuple)):
            h.update(b"L%d:" % len(obj))
            for value in obj:
                feed(value)
        else:
            text = f"{type(obj).__name__}:{obj!r}".encode()
            h.update(b"V%d:" % len(text) + text)

    feed({k: v for k, v in data.items() if k != "digest"})
    return h.hexdigest()


def load_checkpoint(path: str | Path, *, kind: str | None = None, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; a tampered, foreign or truncated file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("no checkpoint file here", path=path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a safe harken file"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"not a readable harken checkpoint (refused by the weights-only loader: {first})", path=path
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError("not a harken checkpoint (missing format header)", path=path)
    try:
        version = int(data.get("format_version", -1))
    except (TypeError, ValueError):
        raise CheckpointError(f"malformed format_version {data.get('format_version')!r}", path=path) from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format {data.get('format_version')} is newer than this harken understands ({FORMAT_VERSION})",
            path=path,
        )
    if "digest" in data or version >= DIGEST_SINCE:
        try:
            intact = data.get("digest") == payload_digest(data)
        except Exception:  # noqa: BLE001 - contents the digest cannot even walk are damaged too
            intact = False
        if not intact:
            raise CheckpointError(
                "checkpoint contents do not match their checksum: the file was damaged or modified "
                "after harken wrote it",
                path=path,
            )
    if kind is not None and data.get("kind") != kind:
        raise CheckpointError(f"expected a {kind!r} checkpoint, found {data.get('kind')!r}", path=path)
    return data


def save_detector(path: str | Path, detector: Any) -> None:
    save_checkpoint(path, {"detector": detector.state_dict()}, kind="detector")


def load_detector(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """A fitted Detector from a model file (``RUN/model.pt`` or a run directory)."""
    from harken.systems.base import Detector

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    data = load_checkpoint(path, kind="detector", map_location=map_location)
    try:
        return Detector.from_state_dict(data["detector"])
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed contents of a well-formed file
        raise CheckpointError(f"checkpoint contents do not rebuild a model: {exc}", path=path) from None
