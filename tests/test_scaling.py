"""Scaler: fitted statistics are numpy's quantiles, the transform is the min-max formula
without clipping, and it survives JSON, weights_only checkpoints and ONNX export."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from harken.config import ScalingConfig
from harken.features.scaling import Scaler, ScalerModule


def training_specs(n: int = 6, n_mels: int = 16, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # Different levels per band and clips of different lengths, in dB.
    return [
        (
            rng.normal(-40.0, 8.0, (n_mels, int(rng.integers(50, 120))))
            + np.linspace(-20, 10, n_mels)[:, None]
        ).astype(np.float32)
        for _ in range(n)
    ]


def test_band_quantiles_equal_numpy():
    specs = training_specs()
    config = ScalingConfig(kind="band_minmax", q_low=0.01, q_high=0.99)
    scaler = Scaler.fit(specs, config)
    frames = np.concatenate(specs, axis=1)
    np.testing.assert_allclose(scaler.low, np.quantile(frames, 0.01, axis=1), rtol=0, atol=1e-9)
    np.testing.assert_allclose(scaler.high, np.quantile(frames, 0.99, axis=1), rtol=0, atol=1e-9)
    assert scaler.n_frames_seen == scaler.n_frames_used == frames.shape[1]
    assert scaler.n_mels == 16


def test_global_quantiles_equal_numpy():
    specs = training_specs()
    scaler = Scaler.fit(iter(specs), ScalingConfig(kind="global_minmax", q_low=0.001, q_high=0.999))
    values = np.concatenate(specs, axis=1)
    assert scaler.low.shape == scaler.high.shape == (1,)
    assert scaler.low[0] == pytest.approx(np.quantile(values, 0.001), abs=1e-9)
    assert scaler.high[0] == pytest.approx(np.quantile(values, 0.999), abs=1e-9)
    assert scaler.n_mels is None


def test_transform_is_min_max_without_clipping():
    scaler = Scaler(
        kind="band_minmax", low=[-80.0, -50.0], high=[-20.0, 0.0], q_low=0.0, q_high=1.0
    )
    x = np.array([[-80.0, -20.0, -50.0, 10.0], [-50.0, 0.0, -100.0, 25.0]], dtype=np.float32)
    # By hand: (x - low) / (high - low); values outside the training range stay outside [0, 1].
    want = np.array([[0.0, 1.0, 0.5, 1.5], [0.0, 1.0, -1.0, 1.5]], dtype=np.float32)
    got = scaler.transform(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(scaler.inverse_transform(got), x, atol=1e-4)
    # Batched [B, n_mels, T] and float16 (cache) input.
    np.testing.assert_allclose(
        scaler.transform(np.stack([x, x]).astype(np.float16))[1], want, atol=1e-3
    )


def test_torch_transform_matches_numpy_and_module():
    specs = training_specs()
    scaler = Scaler.fit(specs, ScalingConfig())
    x = np.stack([specs[0][:, :40], specs[1][:, :40]])
    want = scaler.transform(x)
    got = scaler.transform(torch.from_numpy(x))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    module = ScalerModule(scaler)
    assert set(module.state_dict()) == {"offset", "scale"}
    np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), want, atol=1e-5)
    assert scaler.module()(torch.from_numpy(x)).shape == x.shape


def test_zero_range_band_is_guarded():
    spec = np.full((3, 50), -30.0, dtype=np.float32)
    spec[0] = np.linspace(-60, -20, 50)
    scaler = Scaler.fit([spec], ScalingConfig(q_low=0.0, q_high=1.0))
    out = scaler.transform(spec)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0], np.linspace(0, 1, 50), atol=1e-6)
    np.testing.assert_array_equal(out[1:], 0.0)  # constant band: x - low
    assert np.all(np.isfinite(ScalerModule(scaler)(torch.from_numpy(spec)).numpy()))


def test_round_trips_json_and_weights_only_checkpoint():
    scaler = Scaler.fit(training_specs(), ScalingConfig())
    data = scaler.to_dict()
    again = Scaler.from_dict(json.loads(json.dumps(data)))
    np.testing.assert_array_equal(again.low, scaler.low)
    np.testing.assert_array_equal(again.high, scaler.high)
    assert again.kind == scaler.kind and again.q_low == scaler.q_low
    buffer = io.BytesIO()
    torch.save({"scaler": data}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    np.testing.assert_array_equal(Scaler.from_dict(loaded["scaler"]).high, scaler.high)
    with pytest.raises(ValueError, match="low"):
        Scaler.from_dict({"kind": "band_minmax", "high": [1.0], "q_low": 0.0, "q_high": 1.0})


def test_streaming_sample_is_bounded_uniform_and_deterministic():
    # 40 clips x 500 frames = 20,000 frames, kept: 2,000.  Every band holds the frame's global
    # index, so the sample's mean index tests that the reservoir is uniform over the stream.
    n_clips, length, cap = 40, 500, 2000
    specs = [
        np.tile(np.arange(i * length, (i + 1) * length, dtype=np.float32), (2, 1))
        for i in range(n_clips)
    ]
    config = ScalingConfig(q_low=0.1, q_high=0.9)
    a = Scaler.fit(specs, config, max_frames=cap, seed=7)
    b = Scaler.fit(iter(specs), config, max_frames=cap, seed=7)
    assert a.n_frames_used == cap and a.n_frames_seen == n_clips * length
    np.testing.assert_array_equal(a.low, b.low)
    total = n_clips * length
    # Quantiles of a uniform sample of 0..N-1: q * N, within a few binomial standard errors
    # (sqrt(q (1 - q) / n) * N = 134 frames for q = 0.1, n = 2000).
    assert a.low[0] == pytest.approx(0.1 * total, abs=5 * 134)
    assert a.high[0] == pytest.approx(0.9 * total, abs=5 * 134)
    from harken.features.scaling import _FrameReservoir

    reservoir = _FrameReservoir(cap, seed=3)
    for spec in specs:
        reservoir.add(spec)
    sample = reservoir.frames()[:, 0]
    assert sample.shape == (cap,) and len(np.unique(sample)) == cap  # no frame kept twice
    # mean of a uniform sample of 0..N-1: (N - 1) / 2 +- 5 * N / sqrt(12 n)
    assert abs(sample.mean() - (total - 1) / 2) < 5 * total / np.sqrt(12 * cap)
    assert sample.max() > 0.95 * total  # late frames do get in


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="no spectrograms"):
        Scaler.fit([], ScalingConfig())
    with pytest.raises(ValueError, match="kind"):
        Scaler.fit(training_specs(), ScalingConfig(kind="zscore"))
    with pytest.raises(ValueError, match="q_low"):
        Scaler.fit(training_specs(), ScalingConfig(q_low=0.9, q_high=0.1))
    with pytest.raises(ValueError, match="NaN"):
        Scaler.fit([np.full((2, 5), np.nan, dtype=np.float32)], ScalingConfig())
    with pytest.raises(ValueError, match="mel bands"):
        Scaler.fit([np.zeros((2, 5)), np.zeros((3, 5))], ScalingConfig())
    scaler = Scaler.fit(training_specs(), ScalingConfig())
    with pytest.raises(ValueError, match="16 mel bands"):
        scaler.transform(np.zeros((8, 10), dtype=np.float32))


def test_scaler_module_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    scaler = Scaler.fit(training_specs(), ScalingConfig())
    module = ScalerModule(scaler).eval()
    path = tmp_path / "scale.onnx"
    torch.onnx.export(
        module,
        (torch.zeros(2, 16, 30),),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch", 2: "frames"}, "y": {0: "batch", 2: "frames"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(-40, 10, (3, 16, 57)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], scaler.transform(x), atol=1e-5)
