"""LogMel against librosa (the reference implementation of the features DCASE recipes use).

Tolerance, in dB, over every time-frequency bin librosa puts above -80 dB:

* max |ours - librosa| < 1e-3 dB where the bin is within 60 dB of the loudest bin of its frame;
* max |ours - librosa| < 0.05 dB for the rest (60-120 dB below the frame's peak).

Why: LogMel computes in float32 while librosa's STFT runs in float64 (its window is float64)
and rounds to complex64 afterwards.  float32 rounding in a 1024-point STFT adds noise about
130-140 dB below the *frame's* energy, so a bin's relative error grows as the bin gets quieter
than its frame's peak: measured ~3e-4 dB at 60 dB below (a chirp, the worst case here), ~3e-3 dB
at 80 dB and ~0.017 dB at 100 dB below.  Broadband real audio (the MIMII fan) stays within
1e-4 dB everywhere.  Both bounds are finer than the float16 cache's own rounding (up to 0.03 dB
at 60 dB).  Bins below -80 dB are only checked to be finite and at or above the -100 dB floor.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from harken.config import FeatureConfig
from harken.features.logmel import LogMel, hz_to_mel, logmel_numpy, mel_filterbank, n_frames

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MIMII = SHARED / "audio" / "mimii_fan_id_00" / "normal" / "00000000.wav"
TOL_DB = 1e-3
TOL_FAR_DB = 0.05
SR = 16000


def librosa_logmel(y: np.ndarray, features: FeatureConfig, sr: int) -> np.ndarray:
    S = librosa.feature.melspectrogram(
        y=y,
        sr=sr,
        n_fft=features.n_fft,
        hop_length=features.hop_length,
        win_length=features.win_length,
        window="hann",
        center=True,
        pad_mode="constant",
        power=features.power,
        n_mels=features.n_mels,
        fmin=features.f_min,
        fmax=features.f_max,
        htk=False,
        norm="slaney",
    )
    return librosa.power_to_db(S, ref=1.0, amin=features.amin, top_db=None)


def assert_parity(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    loud = ref > -80.0
    near_peak = loud & (ref >= ref.max(axis=0, keepdims=True) - 60.0)
    assert near_peak.sum() >= 1000, "test signal too quiet to test anything"
    diff = np.abs(ours - ref)
    assert diff[near_peak].max() < TOL_DB, (
        f"max diff {diff[near_peak].max():.2e} dB within 60 dB of the frame peak"
    )
    assert diff[loud].max() < TOL_FAR_DB, (
        f"max diff {diff[loud].max():.2e} dB over bins above -80 dB"
    )
    assert np.all(np.isfinite(ours))
    assert ours.min() >= -100.0 - 1e-4


def assert_close_db(
    got: torch.Tensor, want: torch.Tensor, *, atol: float, rtol: float = 0.0
) -> None:
    # numpy's check: torch.testing's first use costs seconds of imports.
    np.testing.assert_allclose(
        got.detach().cpu().numpy(), want.detach().cpu().numpy(), atol=atol, rtol=rtol
    )


def synthetic_signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    t = np.arange(2 * SR) / SR
    chirp = 0.5 * np.sin(2 * np.pi * (50 * t + 0.5 * 3900 * t**2))  # 50 Hz -> 7.95 kHz
    tone_noise = 0.3 * np.sin(2 * np.pi * 1000 * t) + 0.05 * rng.standard_normal(t.size)
    clicks = 0.01 * rng.standard_normal(t.size)
    clicks[:: SR // 10] = 0.9
    return {
        "white": (0.1 * rng.standard_normal(t.size)).astype(np.float32),
        "chirp": chirp.astype(np.float32),
        "tone_noise": tone_noise.astype(np.float32),
        "clicks": clicks.astype(np.float32),
        "odd_length": (0.2 * rng.standard_normal(SR + 77)).astype(np.float32),
    }


@pytest.mark.parametrize(
    ("sr", "n_fft", "n_mels", "fmin", "fmax"),
    [(16000, 1024, 128, 0.0, None), (22050, 2048, 64, 50.0, 8000.0), (8000, 512, 40, 0.0, 3000.0)],
)
def test_filterbank_equals_librosa(sr, n_fft, n_mels, fmin, fmax):
    ours = mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    ref = librosa.filters.mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney"
    )
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-10)


def test_slaney_mel_scale_matches_librosa_and_definition():
    freqs = np.array([0.0, 200.0, 999.0, 1000.0, 1001.0, 6400.0, 8000.0])
    np.testing.assert_allclose(hz_to_mel(freqs), librosa.hz_to_mel(freqs, htk=False), rtol=1e-12)
    # By definition: 3 mels per 200 Hz below 1 kHz (15 mel at 1 kHz), then 27 mels per factor 6.4.
    assert hz_to_mel(1000.0) == pytest.approx(15.0)
    assert hz_to_mel(6400.0) == pytest.approx(15.0 + 27.0)


@pytest.mark.parametrize("stft", ["fft", "conv"])
def test_real_audio_matches_librosa(stft):
    data, sr = sf.read(MIMII, dtype="float32", always_2d=True)
    y = np.ascontiguousarray(data[:, 0])
    assert sr == SR and y.size == 10 * SR
    features = FeatureConfig()
    ours = logmel_numpy(y, features, sr, stft=stft)
    ref = librosa_logmel(y, features, sr)
    assert ref.shape == (128, 1 + 160000 // 156) == (128, 1026)
    assert_parity(ours, ref)


@pytest.mark.parametrize("stft", ["fft", "conv"])
def test_synthetic_signals_match_librosa(stft):
    features = FeatureConfig()
    module = LogMel(features, SR, stft=stft)
    for name, y in synthetic_signals().items():
        with torch.inference_mode():
            ours = module(torch.from_numpy(y))[0].numpy()
        ref = librosa_logmel(y, features, SR)
        try:
            assert_parity(ours, ref)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


@pytest.mark.parametrize(
    "changes",
    [
        {"win_length": 800},
        {
            "n_fft": 512,
            "win_length": 512,
            "hop_length": 160,
            "n_mels": 64,
            "f_min": 20.0,
            "f_max": 7000.0,
        },
        {"power": 1.0},
    ],
)
def test_other_parameters_match_librosa(changes):
    features = replace(FeatureConfig(), **changes)
    y = synthetic_signals()["tone_noise"]
    assert_parity(logmel_numpy(y, features, SR), librosa_logmel(y, features, SR))


def test_silence_gives_the_amin_floor():
    out = logmel_numpy(np.zeros(SR, dtype=np.float32), FeatureConfig(), SR)
    # 10 * log10(1e-10) = -100 dB exactly: all-zero audio stays finite.
    np.testing.assert_array_equal(out, np.full_like(out, -100.0))


@pytest.mark.parametrize("samples", [1, 155, 156, 16000, 160000, 160001])
def test_frame_count(samples):
    features = FeatureConfig()
    out = LogMel(features, SR)(torch.zeros(2, samples))
    assert out.shape == (2, 128, 1 + samples // 156)
    assert n_frames(samples, features) == 1 + samples // 156
    assert n_frames(160000, features) == 1026


@pytest.mark.parametrize("stft", ["fft", "conv"])
def test_batch_equals_per_clip(stft):
    rng = np.random.default_rng(2)
    batch = torch.from_numpy((0.1 * rng.standard_normal((4, SR))).astype(np.float32))
    module = LogMel(FeatureConfig(), SR, stft=stft)
    with torch.inference_mode():
        together = module(batch)
        one_by_one = torch.cat([module(batch[i : i + 1]) for i in range(4)])
        single = module(batch[3])
    assert together.shape == (4, 128, 1 + SR // 156)
    assert_close_db(together, one_by_one, atol=1e-4, rtol=0)
    # A 1-D waveform is a batch of one.
    assert single.shape == (1, 128, 1 + SR // 156)
    assert_close_db(single[0], together[3], atol=1e-4, rtol=0)


def test_long_batch_chunking_equals_unchunked():
    # 10-s clips are processed one STFT chunk at a time on CPU; results must not depend on it.
    rng = np.random.default_rng(3)
    batch = torch.from_numpy((0.1 * rng.standard_normal((2, 10 * SR))).astype(np.float32))
    module = LogMel(FeatureConfig(), SR)
    with torch.inference_mode():
        chunked = module(batch)
        whole = module._logmel(batch)
    assert_close_db(chunked, whole, atol=1e-4, rtol=0)


def test_fft_and_conv_agree_and_share_state_dict():
    y = torch.from_numpy(synthetic_signals()["white"])
    fft, conv = LogMel(FeatureConfig(), SR, stft="fft"), LogMel(FeatureConfig(), SR, stft="conv")
    assert set(fft.state_dict()) == set(conv.state_dict()) == {"window", "mel_basis"}
    conv.load_state_dict(fft.state_dict())
    with torch.inference_mode():
        assert_close_db(fft(y), conv(y), atol=1e-3, rtol=0)


def test_autograd_and_float64_paths_match_inference():
    # Inference on CPU takes a workspace fast path; gradients, float64 and export take the
    # general one.  Both must give the same numbers.
    y = torch.from_numpy(synthetic_signals()["tone_noise"][:8000]).repeat(2, 1)
    module = LogMel(FeatureConfig(), SR)
    with torch.inference_mode():
        fast = module(y)
    wave = y.clone().requires_grad_()
    slow = module(wave)
    assert_close_db(slow.detach(), fast, atol=1e-4, rtol=0)
    slow.mean().backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0
    double = LogMel(FeatureConfig(), SR).double()
    assert_close_db(double(y.double()).float(), fast, atol=1e-4, rtol=0)


def test_buffers_follow_the_module():
    module = LogMel(FeatureConfig(), SR).double()
    assert module.mel_basis.dtype == torch.float64
    np.testing.assert_allclose(
        module.window.numpy(), librosa.filters.get_window("hann", 1024, fftbins=True), atol=1e-12
    )


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="waveform"):
        LogMel(FeatureConfig(), SR)(torch.zeros(1, 2, 100))
    with pytest.raises(ValueError, match="stft"):
        LogMel(FeatureConfig(), SR, stft="dft")
    with pytest.raises(ValueError, match="win_length"):
        LogMel(replace(FeatureConfig(), win_length=2048), SR)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_matches_cpu():
    y = torch.from_numpy(synthetic_signals()["white"]).repeat(4, 1)
    cpu = LogMel(FeatureConfig(), SR)
    with torch.inference_mode():
        assert_close_db(
            cpu.cuda()(y.cuda()).cpu(), LogMel(FeatureConfig(), SR)(y), atol=1e-3, rtol=0
        )


# --------------------------------------------------------------------------- ONNX export
def _onnx_parity(path: Path, module: LogMel) -> None:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(4)
    # Batch sizes and lengths other than the export example's: the axes must be dynamic.
    for shape in [(1, 20000), (3, 32000), (2, 10 * SR)]:
        x = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        (got,) = session.run(None, {name: x})
        with torch.inference_mode():
            want = module(torch.from_numpy(x)).numpy()
        assert got.shape == want.shape == (shape[0], 128, 1 + shape[1] // 156)
        np.testing.assert_allclose(got, want, atol=TOL_DB, rtol=0)


def test_onnx_export_torchscript_exporter(tmp_path):
    """The legacy exporter (``dynamo=False``): the fft module falls back to the DFT conv."""
    pytest.importorskip("onnx")
    module = LogMel(FeatureConfig(), SR).eval()
    path = tmp_path / "logmel.onnx"
    torch.onnx.export(
        module,
        (torch.zeros(2, 16000),),
        str(path),
        dynamo=False,
        input_names=["wave"],
        output_names=["logmel"],
        dynamic_axes={"wave": {0: "batch", 1: "samples"}, "logmel": {0: "batch", 2: "frames"}},
        opset_version=17,
    )
    _onnx_parity(path, module)


@pytest.mark.slow
def test_onnx_export_dynamo_exporter(tmp_path):
    """torch.onnx.export's default (dynamo) path: torch.stft becomes the ONNX STFT operator."""
    pytest.importorskip("onnxscript")
    module = LogMel(FeatureConfig(), SR).eval()
    path = tmp_path / "logmel.onnx"
    batch, samples = torch.export.Dim("batch"), torch.export.Dim("samples", min=1024)
    # A 2 x 10-s example: larger than one CPU chunk, so the export must not trace the chunk loop.
    torch.onnx.export(
        module,
        (torch.zeros(2, 10 * SR),),
        str(path),
        input_names=["wave"],
        output_names=["logmel"],
        dynamic_shapes=({0: batch, 1: samples},),
        verbose=False,
    )
    _onnx_parity(path, module)
