"""Looking inside an autoencoder system: latents and reconstructions of test clips.

Only systems that keep, per machine group, a model with ``encode``/``decode`` and the scaler
it was trained with (CAE-DANN-SVDD: ``detector.models`` and ``detector.scalers``) can be
shown this way; :func:`autoencoder_support` says why another system cannot, so the report
skips it with a note instead of failing.

Both views cut clips into the very windows the test scored (``harken.scoring.clip_windows``
with the run's ``window`` config) and scale them with the model's own scaler, so a
reconstruction error seen here is the one that made the clip's score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Reconstruction:
    """One clip at full length: input and reconstruction in dB, squared error in scaled units.

    ``error`` is ``(x - x_hat)^2`` on the [0, 1]-scaled input the model sees (the quantity
    whose mean is the reconstruction score, Eq. 9); where windows overlap, frames are averaged.
    """

    input_db: np.ndarray
    recon_db: np.ndarray
    error: np.ndarray
    frame_seconds: float
    #: mean squared error of each test window: their ``window.aggregate`` is the clip's score
    window_errors: np.ndarray


def autoencoder_support(detector: Any) -> str | None:
    """None when latents and reconstructions can be computed, else the reason they cannot."""
    if detector is None:
        return "the model is not available"
    models = getattr(detector, "models", None)
    scalers = getattr(detector, "scalers", None)
    if not isinstance(models, dict) or not isinstance(scalers, dict) or not models:
        return (
            f"the {getattr(detector, 'name', 'detector')} system has no autoencoder latents to show"
        )
    if not all(hasattr(m, "encode") and hasattr(m, "decode") for m in models.values()):
        return f"the {getattr(detector, 'name', 'detector')} system's models have no encode/decode"
    if not hasattr(detector, "clip_features"):
        return "the system does not expose its features (clip_features)"
    return None


def _group(detector: Any, machine: str) -> str:
    models = detector.models
    if machine in models:
        return machine
    return "all" if "all" in models else next(iter(models))


def _windows(detector: Any, spec: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fitted spectrogram, windows [n, n_mels, frames], start frames) as the test cut them."""
    from harken.features.windows import fit_length
    from harken.scoring import clip_windows

    window = detector.config.window
    fitted = fit_length(np.asarray(spec, dtype=np.float32), window.frames, window.short_clip)
    windows, starts = clip_windows(fitted, window)
    return fitted, windows, starts


def _forward(
    detector: Any, machine: str, windows: np.ndarray, *, decode: bool, batch: int = 64
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Latents [n, d], reconstructions [n, n_mels, frames] (if ``decode``) and scaled inputs.

    The decoder costs more than the encoder (transposed convolutions), so the latent map,
    which needs only ``z``, skips it.
    """
    import torch

    tag = _group(detector, machine)
    model = detector.models[tag].cpu().eval()
    scaler = detector.scalers[tag]
    zs, recons, scaled = [], [], []
    with torch.no_grad():
        for start in range(0, len(windows), batch):
            chunk = torch.from_numpy(np.ascontiguousarray(windows[start : start + batch]))
            x = scaler.transform(chunk).float().unsqueeze(1)
            z = model.encode(x)
            zs.append(z.float().numpy())
            if decode:
                recons.append(model.decode(z)[:, 0].float().numpy())
            scaled.append(x[:, 0].numpy())
    return np.concatenate(zs), np.concatenate(recons) if decode else None, np.concatenate(scaled)


def clip_spectrograms(detector: Any, clips: Sequence[Any]) -> list[np.ndarray]:
    """dB log-mels of ``clips`` through the system's feature cache (the features it scored)."""
    return [
        np.asarray(s, dtype=np.float32) for s in detector.clip_features(list(clips), progress=False)
    ]


def encode_clips(detector: Any, machine: str, specs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Latents ``[n_windows, latent_dim]`` of each clip's test windows (batched across clips)."""
    cut = [_windows(detector, spec)[1] for spec in specs]
    if not cut:
        return []
    z, _, _ = _forward(detector, machine, np.concatenate(cut), decode=False)
    bounds = np.cumsum([0] + [len(w) for w in cut])
    return [z[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def svdd_center(detector: Any, machine: str) -> np.ndarray | None:
    """The SVDD center ``c`` of the model that scores ``machine`` (None if it has none)."""
    model = detector.models[_group(detector, machine)]
    center = getattr(model, "center", None)
    if center is None:
        return None
    c = center.detach().cpu().float().numpy()
    return c if np.any(c != 0) else None


def reconstruct_clip(detector: Any, machine: str, spec: np.ndarray) -> Reconstruction:
    """Stitch the window reconstructions of a whole clip (overlaps averaged)."""
    fitted, windows, starts = _windows(detector, spec)
    _, recons, scaled = _forward(detector, machine, windows, decode=True)
    assert recons is not None
    n_mels, length = fitted.shape
    frames = windows.shape[-1]
    recon_sum = np.zeros((n_mels, length), dtype=np.float64)
    err_sum = np.zeros((n_mels, length), dtype=np.float64)
    counts = np.zeros(length, dtype=np.float64)
    for i, s in enumerate(starts):
        recon_sum[:, s : s + frames] += recons[i]
        err_sum[:, s : s + frames] += (scaled[i] - recons[i]) ** 2
        counts[s : s + frames] += 1.0
    counts = np.maximum(counts, 1.0)
    recon_scaled = recon_sum / counts
    scaler = detector.scalers[_group(detector, machine)]
    cfg = detector.config
    return Reconstruction(
        input_db=fitted.astype(np.float64),
        recon_db=np.asarray(scaler.inverse_transform(recon_scaled), dtype=np.float64),
        error=err_sum / counts,
        frame_seconds=cfg.features.hop_length / cfg.audio.sample_rate,
        window_errors=((scaled - recons) ** 2).reshape(len(recons), -1).mean(axis=1),
    )


def mel_centers_hz(detector_config: Any) -> np.ndarray:
    """Centre frequency (Hz) of every mel band of the run's features (Slaney scale, as LogMel)."""
    from harken.features.logmel import hz_to_mel, mel_to_hz

    f = detector_config.features
    f_max = f.f_max if f.f_max is not None else detector_config.audio.sample_rate / 2.0
    edges = mel_to_hz(np.linspace(hz_to_mel(f.f_min), hz_to_mel(f_max), f.n_mels + 2))
    return np.asarray(edges[1:-1], dtype=np.float64)
