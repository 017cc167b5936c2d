"""Waveform to dB log-mel spectrogram as a batched PyTorch module.

The numbers match librosa's ``melspectrogram`` (Slaney mel scale and area normalization, periodic
Hann window, ``center=True`` with zero padding) followed by ``power_to_db(ref=1.0, top_db=None)``,
so features and published DCASE recipes agree.  librosa is only a test dependency: the filterbank
is rebuilt here from the Slaney formula, and the module has to run on GPU and inside an exported
ONNX graph, neither of which librosa can do.

Two interchangeable STFT implementations (same numbers to float32 rounding):

* ``"fft"`` (default): an FFT per frame, O(N log N) against the DFT matrix's O(N^2).  On GPU,
  with gradients and under export it is ``torch.stft`` (the dynamo ONNX exporter lowers it to
  the ONNX ``STFT`` operator; under the legacy TorchScript exporter, which cannot export a
  complex STFT, it falls back to the conv formulation).  CPU inference takes a workspace fast
  path (``_logmel_cpu``).  Measured single-threaded on the 2-core benchmark machine, CPU time per
  10-s clip: 5.6 ms fast path, 13.0 ms ``torch.stft`` path, 44 ms ``"conv"``; librosa 15.4 ms
  at best (``benchmarks/RESULTS.md``).
* ``"conv"``: ``conv1d`` of the zero-padded waveform with a windowed real-DFT basis.  Much
  slower on CPU (2 GFLOP per 10-s clip), but made only of Pad + Conv + Mul + Add, which every
  ONNX runtime handles; use it when a target runtime lacks ``STFT``.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch
from torch import Tensor, nn

from harken.config import FeatureConfig

STFT_KINDS = ("fft", "conv")
_CPU_CHUNK_BYTES = 8 << 20
_MEL_GROUPS = 8

# Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above it with 27 steps
# per factor 6.4.  These are the constants of Auditory Toolbox / librosa (htk=False).
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(freqs: np.ndarray | float) -> np.ndarray:
    """Slaney mel of frequencies in Hz (librosa ``hz_to_mel(htk=False)``)."""
    f = np.asarray(freqs, dtype=np.float64)
    mels = f / _F_SP
    log_region = f >= _MIN_LOG_HZ
    return np.where(
        log_region,
        _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP,
        mels,
    )


def mel_to_hz(mels: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(mels, dtype=np.float64)
    freqs = m * _F_SP
    log_region = m >= _MIN_LOG_MEL
    return np.where(log_region, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), freqs)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
) -> np.ndarray:
    """Slaney-normalized triangular mel filters, shape ``[n_mels, 1 + n_fft // 2]`` float32.

    Equals ``librosa.filters.mel(..., htk=False, norm='slaney')``.  Each filter is
    scaled by 2 / (its bandwidth in Hz) so that every band has the same area: wide high-frequency
    bands do not dominate the energy.
    """
    if f_max is None:
        f_max = sample_rate / 2.0
    if not 0.0 <= f_min < f_max:
        raise ValueError(f"need 0 <= f_min < f_max, got f_min={f_min}, f_max={f_max}")
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, 1 + n_fft // 2)
    mel_points = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    # Rounded to float32 before the area normalization, in librosa's order, so both agree bit
    # for bit rather than to within one rounding.
    weights = np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)
    weights *= (2.0 / (mel_points[2 : n_mels + 2] - mel_points[:n_mels]))[:, None]
    return weights


def n_frames(n_samples: int, features: FeatureConfig) -> int:
    """Number of STFT frames for a waveform of ``n_samples`` (1026 for 10 s at the defaults)."""
    if features.center:
        return 1 + n_samples // features.hop_length
    return 1 + (n_samples - features.n_fft) // features.hop_length


def _padded_window(features: FeatureConfig) -> np.ndarray:
    """Periodic Hann window (librosa's default ``get_window('hann', fftbins=True)``), float64.

    Centered in ``n_fft`` when ``win_length`` is shorter, as librosa's ``pad_center`` does.
    """
    if not 0 < features.win_length <= features.n_fft:
        raise ValueError(
            f"need 0 < win_length <= n_fft, got {features.win_length}, {features.n_fft}"
        )
    n = np.arange(features.win_length)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / features.win_length)
    left = (features.n_fft - features.win_length) // 2
    return np.pad(window, (left, features.n_fft - features.win_length - left))


def _dft_basis(features: FeatureConfig) -> Tensor:
    """Windowed one-sided DFT as conv1d weights ``[2 * (n_fft // 2 + 1), 1, n_fft]`` float32.

    Rows ``k < F`` hold ``window * cos`` (real parts), the next ``F`` rows ``-window * sin``
    (imaginary parts).  Built in float64 numpy with the angle reduced modulo ``n_fft`` before
    the trigonometry, then rounded once; numpy also makes it a plain constant under a tracer.
    """
    n_fft = features.n_fft
    k = np.arange(n_fft // 2 + 1)[:, None]
    n = np.arange(n_fft)[None, :]
    angle = 2.0 * np.pi * ((k * n) % n_fft) / n_fft
    basis = np.concatenate([np.cos(angle), -np.sin(angle)]) * _padded_window(features)[None, :]
    return torch.from_numpy(basis.astype(np.float32)[:, None, :])


def _mel_blocks(fb: np.ndarray, groups: int) -> list[tuple[int, int, int, int]]:
    """``(first band, end band, first bin, end bin)`` of ``groups`` runs of adjacent bands.

    Each run covers every bin where any of its bands is non-zero, so the blocks reproduce the
    dense product exactly (up to summation order).
    """
    n_mels, n_bins = fb.shape
    nonzero = fb != 0
    edges = np.linspace(0, n_mels, min(groups, n_mels) + 1).round().astype(int)
    blocks = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        cols = np.flatnonzero(nonzero[a:b].any(axis=0))
        lo, hi = (int(cols[0]), int(cols[-1]) + 1) if cols.size else (0, 1)
        blocks.append((int(a), int(b), lo, hi))
    if sum((b - a) * (hi - lo) for a, b, lo, hi in blocks) > 0.5 * n_mels * n_bins:
        return [(0, n_mels, 0, n_bins)]  # not sparse enough to pay for the extra calls
    return blocks


class _Workspace:
    """Reusable intermediates of :meth:`LogMel._logmel_cpu` for one waveform shape."""

    def __init__(self, batch: int, padded: int, n_fft: int, hop: int) -> None:
        frames = 1 + (padded - n_fft) // hop
        self.key = (batch, padded, n_fft, hop)
        # Ordinary tensors even when first made under torch.inference_mode (the feature cache):
        # an inference tensor could not be written later outside it (torch.no_grad scoring).
        with torch.inference_mode(False):
            self.padded = torch.zeros(batch, padded)
            self.windowed = torch.empty(batch, frames, n_fft)
            self.power = torch.empty(batch, frames, n_fft // 2 + 1)


_WORKSPACES = threading.local()


def _workspace(batch: int, padded: int, n_fft: int, hop: int) -> _Workspace:
    # One per thread (the cache computes clips on several threads) and only the latest shape:
    # DCASE clips share one length, and a stream of varied lengths must not grow memory.
    ws: _Workspace | None = getattr(_WORKSPACES, "ws", None)
    if ws is None or ws.key != (batch, padded, n_fft, hop):
        ws = _WORKSPACES.ws = _Workspace(batch, padded, n_fft, hop)
    return ws


class LogMel(nn.Module):
    """dB log-mel spectrogram: ``[B, T]`` (or ``[T]``) waveform to ``[B, n_mels, n_frames]``.

    Window and filterbank are registered buffers, so ``.to(device)`` moves them and
    ``state_dict`` carries them (an exported model needs no librosa and no config to rebuild
    them).  The computation stays in float32: a float64 STFT would be slower for a difference far
    below the noise of real recordings (see the tolerance in ``tests/test_logmel.py``).
    """

    window: Tensor
    mel_basis: Tensor
    dft_basis: Tensor

    def __init__(self, features: FeatureConfig, sample_rate: int, *, stft: str = "fft") -> None:
        super().__init__()
        if stft not in STFT_KINDS:
            raise ValueError(f"stft must be one of {STFT_KINDS}, got {stft!r}")
        if features.n_fft < 2 or features.hop_length < 1:
            raise ValueError(
                f"need n_fft >= 2 and hop_length >= 1, got {features.n_fft}, {features.hop_length}"
            )
        self.features = features
        self.sample_rate = int(sample_rate)
        self.stft = stft
        self.n_fft = int(features.n_fft)
        self.hop_length = int(features.hop_length)
        self.power = float(features.power)
        self.amin = float(features.amin)
        self.center = bool(features.center)
        self.register_buffer(
            "window", torch.from_numpy(_padded_window(features).astype(np.float32))
        )
        fb = mel_filterbank(
            sample_rate, features.n_fft, features.n_mels, features.f_min, features.f_max
        )
        self.register_buffer("mel_basis", torch.from_numpy(fb))
        self.mel_blocks = _mel_blocks(fb, _MEL_GROUPS)
        # The DFT basis is derived data (4 MB at n_fft=1024): not persistent, so a state_dict
        # is the same whichever STFT implementation wrote it.
        basis = _dft_basis(features) if stft == "conv" else torch.empty(0)
        self.register_buffer("dft_basis", basis, persistent=False)

    @property
    def n_mels(self) -> int:
        return int(self.mel_basis.shape[0])

    def extra_repr(self) -> str:
        f = self.features
        return (
            f"sample_rate={self.sample_rate}, n_fft={f.n_fft}, win_length={f.win_length}, "
            f"hop_length={f.hop_length}, n_mels={f.n_mels}, stft={self.stft!r}"
        )

    def power_spectrogram(self, wave: Tensor) -> Tensor:
        """``|STFT|**power``, ``[B, 1 + n_fft // 2, n_frames]``."""
        if self.center:
            pad = self.n_fft // 2
            wave = nn.functional.pad(wave, (pad, pad), mode="constant", value=0.0)
        if self.stft == "conv" or torch.jit.is_tracing():
            # The TorchScript ONNX exporter cannot export a complex STFT: under its tracer the
            # "fft" module takes the conv path too (same numbers to float32 rounding).
            basis = self.dft_basis
            if basis.numel() == 0:
                basis = _dft_basis(self.features).to(wave.device)
            out = nn.functional.conv1d(wave.unsqueeze(1), basis, stride=self.hop_length)
            real, imag = out.chunk(2, dim=1)
            power = real * real + imag * imag
        else:
            spec = torch.stft(
                wave,
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                win_length=self.n_fft,
                window=self.window,
                center=False,
                return_complex=True,
            )
            # |z|^2 from the real and imaginary parts: no square root, and no complex tensor
            # reaches the rest of the graph (exporters handle those poorly).  Squaring in place
            # and adding the two strided halves allocates one real array; a reduction over the
            # size-2 last axis (``pow(2).sum(-1)``) measured ten times slower on CPU.
            parts = torch.view_as_real(spec)
            parts = parts.square_() if not parts.requires_grad else parts.square()
            power = parts[..., 0] + parts[..., 1]
        if self.power != 2.0:
            power = power.pow(self.power / 2.0)
        return power

    def mel(self, power: Tensor) -> Tensor:
        """Mel filterbank applied to a power spectrogram: ``[B, F, T]`` -> ``[B, n_mels, T]``.

        The Slaney filters are triangles: each FFT bin feeds at most two bands (1,009 of the
        65,664 weights are non-zero at the defaults).  Groups of adjacent bands times only the
        bins they cover do 13% of the dense product's multiply-adds; the skipped weights are
        exact zeros, so the result is the dense product's up to summation order.
        """
        if len(self.mel_blocks) == 1:
            return torch.matmul(self.mel_basis, power)
        return torch.cat(
            [
                torch.matmul(self.mel_basis[a:b, lo:hi], power[:, lo:hi])
                for a, b, lo, hi in self.mel_blocks
            ],
            dim=1,
        )

    def forward(self, wave: Tensor) -> Tensor:
        """``[B, T]`` -> ``[B, n_mels, n_frames]``; a ``[T]`` waveform is a batch of one.

        The output is always 3-D, so callers (and an exported graph) see one layout.
        """
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        if wave.dim() != 2:
            raise ValueError(
                f"LogMel expects a [B, T] or [T] waveform, got shape {tuple(wave.shape)}"
            )
        wave = wave.to(self.window.dtype)
        if self._use_cpu_fast_path(wave):
            chunk = self._cpu_chunk(wave)
            return torch.cat([self._logmel_cpu(part) for part in wave.split(chunk)])
        return self._logmel(wave)

    def _logmel(self, wave: Tensor) -> Tensor:
        """The general path: any device, autograd, tracing and export."""
        mel = self.mel(self.power_spectrogram(wave))
        if mel.requires_grad:
            return 10.0 * torch.log10(torch.clamp(mel, min=self.amin))
        return mel.clamp_(min=self.amin).log10_().mul_(10.0)

    # ------------------------------------------------------------------ CPU inference path
    # On CPU the arithmetic is cheap next to the memory traffic: a 10-s clip's STFT passes
    # through ~11 MB of temporaries, and freshly allocated memory costs a page fault per 4 KB
    # (glibc returns large freed blocks to the OS, so every call faults them in again: 2,000
    # faults per clip on the benchmark VM).  This path keeps one per-thread workspace per
    # waveform shape, writes the big intermediates into it (``out=`` and in-place operations),
    # skips torch.stft's own padding and copies, and takes a batch in chunks of about
    # _CPU_CHUNK_BYTES of spectrum.  Single-threaded it needs 5.6 ms of CPU per 10-s clip
    # against 13.0 ms for ``_logmel`` (benchmark VM, loaded).  Same numbers as ``_logmel``
    # to float32 rounding (tests/test_logmel.py).

    def _use_cpu_fast_path(self, wave: Tensor) -> bool:
        return (
            wave.device.type == "cpu"
            and wave.dtype == torch.float32
            and self.stft == "fft"
            and not (torch.is_grad_enabled() and wave.requires_grad)
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
            and not torch.onnx.is_in_onnx_export()
        )

    def _cpu_chunk(self, wave: Tensor) -> int:
        frames = wave.shape[-1] // self.hop_length + 1
        per_clip = frames * (self.n_fft // 2 + 1) * 8
        return max(1, _CPU_CHUNK_BYTES // per_clip)

    def _logmel_cpu(self, wave: Tensor) -> Tensor:
        batch, samples = wave.shape
        pad = self.n_fft // 2 if self.center else 0
        ws = _workspace(batch, samples + 2 * pad, self.n_fft, self.hop_length)
        ws.padded[:, pad : pad + samples].copy_(wave)  # edges stay zero: constant padding
        frames = ws.padded.unfold(-1, self.n_fft, self.hop_length)  # view [b, T, n_fft]
        torch.mul(frames, self.window, out=ws.windowed)
        # torch.fft.rfft of the windowed frames (what torch.stft does inside, minus its own
        # padding and copies).  scipy's pocketfft was 2x faster than torch's MKL FFT alone on the
        # AMD benchmark CPU but no faster inside this pipeline, so torch it is.
        spectrum = torch.fft.rfft(ws.windowed)
        parts = torch.view_as_real(spectrum).square_()
        torch.add(parts[..., 0], parts[..., 1], out=ws.power)  # [b, T, F]
        if self.power != 2.0:
            ws.power.pow_(self.power / 2.0)
        mel = self.mel(ws.power.transpose(1, 2))
        return mel.clamp_(min=self.amin).log10_().mul_(10.0)


def logmel_numpy(
    wave: np.ndarray,
    features: FeatureConfig,
    sample_rate: int,
    *,
    stft: str = "fft",
) -> np.ndarray:
    """dB log-mel of one clip ``[T]`` -> ``[n_mels, n_frames]`` or a batch ``[B, T]`` ->
    ``[B, n_mels, n_frames]``, float32, without gradients.

    Unlike :class:`LogMel` a 1-D input gives a 2-D result, like librosa, since this is the
    one-clip convenience.  It builds a module per call; loops over many clips should keep one
    :class:`LogMel` instead.
    """
    arr = np.ascontiguousarray(wave, dtype=np.float32)
    if arr.ndim not in (1, 2):
        raise ValueError(f"expected a [T] or [B, T] waveform, got shape {arr.shape}")
    module = LogMel(features, sample_rate, stft=stft)
    with torch.inference_mode():
        out = module(torch.from_numpy(arr)).numpy()
    return out[0] if arr.ndim == 1 else out
