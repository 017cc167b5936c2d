"""The DCASE 2023-2025 AE baseline: features, network, selective Mahalanobis, end to end."""

from __future__ import annotations

import io
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harken.config import BaselineConfig, Config
from harken.systems import create_system
from harken.systems.ae_baseline.system import (
    AEBaseline,
    AEBaselineMahala,
    baseline_feature_config,
    split_train_val,
)
from harken.systems.ae_baseline.torch_model import (
    BN_EPS,
    BN_MOMENTUM,
    AENet,
    CovarianceAccumulator,
    FrameBank,
    mahalanobis_of_mean,
    precision_matrix,
    selective_mahalanobis,
    stack_frames,
)
from harken.systems.base import Detector


def official_vectors(logmel: np.ndarray, n_frames: int) -> np.ndarray:
    """The official ``file_to_vectors`` loop, verbatim in spirit."""
    n_mels = logmel.shape[0]
    n_vectors = logmel.shape[1] - n_frames + 1
    vectors = np.zeros((n_vectors, n_mels * n_frames))
    for t in range(n_frames):
        vectors[:, n_mels * t : n_mels * (t + 1)] = logmel[:, t : t + n_vectors].T
    return vectors


# ----------------------------------------------------------------------------- features
def test_feature_config_mirrors_official() -> None:
    feats = baseline_feature_config(BaselineConfig())
    assert (feats.n_mels, feats.n_fft, feats.win_length, feats.hop_length) == (128, 1024, 1024, 512)
    assert feats.power == 2.0 and feats.center and feats.f_min == 0.0 and feats.f_max is None
    assert feats.amin == sys.float_info.epsilon  # np.maximum(mel, sys.float_info.epsilon)


def test_stack_frames_shape() -> None:
    mel = torch.randn(128, 313)  # a 10-s 16-kHz clip at hop 512
    vectors = stack_frames(mel, 5)
    assert vectors.shape == (313 - 4, 640)
    assert stack_frames(torch.randn(128, 4), 5).shape == (0, 640)


def test_stack_frames_equals_official_loop() -> None:
    rng = np.random.default_rng(0)
    mel = rng.standard_normal((7, 23)).astype(np.float32)
    got = stack_frames(torch.from_numpy(mel), 5).numpy()
    np.testing.assert_array_equal(got, official_vectors(mel, 5).astype(np.float32))
    # Element t * n_mels + m of vector v is mel bin m of frame v + t.
    assert got[3, 2 * 7 + 4] == mel[4, 3 + 2]


def test_frame_bank_gathers_within_clips() -> None:
    rng = np.random.default_rng(1)
    mels = [rng.standard_normal((6, n)).astype(np.float32) for n in (9, 5, 12)]
    bank = FrameBank(mels, 5)
    expected = np.concatenate([official_vectors(m, 5) for m in mels]).astype(np.float32)
    assert len(bank) == 5 + 1 + 8 and bank.dim == 30
    np.testing.assert_array_equal(bank.vectors(torch.arange(len(bank))).numpy(), expected)
    assert bank.owner.tolist() == [0] * 5 + [1] + [2] * 8


# ----------------------------------------------------------------------------- network
def test_network_structure_and_parameter_count() -> None:
    model = AENet(640, 128, 8)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    dims = [(m.in_features, m.out_features) for m in linears]
    assert dims == [(640, 128), (128, 128), (128, 128), (128, 128), (128, 8),
                    (8, 128), (128, 128), (128, 128), (128, 128), (128, 640)]  # fmt: skip
    # Every layer but the output one is Linear -> BatchNorm1d -> ReLU, the bottleneck included.
    enc = list(model.encoder)
    assert (
        len(enc) == 15
        and isinstance(enc[-2], torch.nn.BatchNorm1d)
        and isinstance(enc[-1], torch.nn.ReLU)
    )
    dec = list(model.decoder)
    assert len(dec) == 13 and isinstance(dec[-1], torch.nn.Linear)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)):
        assert bn.momentum == BN_MOMENTUM == 0.01 and bn.eps == BN_EPS == 1e-3
    linear = sum(i * o + o for i, o in dims)
    batchnorm = 2 * (8 * 128 + 8)  # weight and bias of 8 BN(128) and one BN(8)
    assert linear == 265_864 and batchnorm == 2_064
    assert sum(p.numel() for p in model.parameters()) == linear + batchnorm == 267_928


def test_gradient_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = AENet()
    x = torch.randn(16, 640) * 10 - 40  # dB-like values
    recon, z = model(x)
    assert recon.shape == (16, 640) and z.shape == (16, 8)
    loss = F.mse_loss(recon, x)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------- Mahalanobis
def test_covariance_accumulator_equals_numpy_cov() -> None:
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((500, 6)) * [1, 2, 3, 4, 5, 6] + 7.0
    acc = CovarianceAccumulator(6)
    for chunk in np.array_split(rows, 7):
        acc.update(torch.from_numpy(chunk))
    np.testing.assert_allclose(acc.covariance().numpy(), np.cov(rows, rowvar=False), rtol=1e-10)


def test_mahalanobis_is_the_official_pairwise_mean() -> None:
    rng = np.random.default_rng(3)
    block = 4
    residual = rng.standard_normal((6, 3 * block))  # 6 vectors of 3 frames -> 18 blocks
    a = rng.standard_normal((block, block))
    precision = a @ a.T + np.eye(block)
    delta = residual.reshape(-1, block)
    official = np.mean(delta @ precision @ delta.T)  # mahala.py: mean over the N x N matrix
    got = mahalanobis_of_mean(torch.from_numpy(residual), torch.from_numpy(precision), block)
    np.testing.assert_allclose(float(got), official, rtol=1e-10)


def test_selective_score_is_min_of_two_distances_by_hand() -> None:
    block = 2
    residual = torch.tensor([[1.0, 2.0, 3.0, 0.0], [-1.0, 0.0, 1.0, 2.0]], dtype=torch.float64)
    cov_s = np.array([[2.0, 0.5], [0.5, 1.0]])
    cov_t = np.array([[0.5, 0.0], [0.0, 4.0]])
    mean = np.array([(1 + 3 - 1 + 1) / 4, (2 + 0 + 0 + 2) / 4])  # mean residual block = [1, 1]
    d_s = mean @ np.linalg.inv(cov_s) @ mean  # = (1 - 0.5 - 0.5 + 2) / 1.75 = 8/7
    d_t = mean @ np.linalg.inv(cov_t) @ mean  # = 1/0.5 + 1/4 = 2.25
    assert d_s == pytest.approx(8 / 7) and d_t == pytest.approx(2.25)
    prec_s, prec_t = (precision_matrix(torch.from_numpy(c)) for c in (cov_s, cov_t))
    got = selective_mahalanobis(residual, prec_s, prec_t, block)
    assert float(got) == pytest.approx(min(d_s, d_t))
    assert float(got) == pytest.approx(d_s)  # the source covariance fits this clip better


def test_singular_covariance_falls_back_to_pseudo_inverse() -> None:
    cov = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    prec = precision_matrix(cov)
    assert torch.isfinite(prec).all()
    torch.testing.assert_close(prec, torch.linalg.pinv(cov))


def _detector_with_model(mahala: bool = True, n_mels: int = 4) -> AEBaseline:
    config = Config()
    config.baseline = replace(config.baseline, n_mels=n_mels, hidden=8, bottleneck=2)
    det = AEBaselineMahala(config) if mahala else AEBaseline(config)
    torch.manual_seed(0)
    det.models["fan"] = det.new_model().eval()
    return det


def test_covariances_come_from_training_residuals_only() -> None:
    det = _detector_with_model()
    rng = np.random.default_rng(4)
    mels = [rng.standard_normal((4, 12)).astype(np.float32) for _ in range(5)]
    domains = ["source", "source", "target", "source", "target"]
    bank = FrameBank(mels, 5)
    det._fit_covariances("fan", det.models["fan"], bank, domains)

    with torch.no_grad():
        x = bank.vectors(torch.arange(len(bank)))
        recon, _ = det.models["fan"](x)
    blocks = (x - recon).double().numpy().reshape(len(bank), 5, 4)
    owner = bank.owner.numpy()
    for domain in ("source", "target"):
        rows = blocks[[domains[o] == domain for o in owner]].reshape(-1, 4)
        np.testing.assert_allclose(
            det.covariances["fan"][domain].numpy(), np.cov(rows, rowvar=False), rtol=1e-9
        )
    assert det.covariance_counts["fan"] == {"source": 3 * 8 * 5, "target": 2 * 8 * 5}

    # Scoring test clips, however extreme their residuals, leaves the covariances untouched.
    stored = {d: c.clone() for d, c in det.covariances["fan"].items()}
    result = det.score_logmel("fan", np.full((4, 40), 1e4, dtype=np.float32))
    assert np.isfinite(result["mahalanobis"]) and result["mahalanobis"] > 0
    for d in stored:
        torch.testing.assert_close(det.covariances["fan"][d], stored[d], rtol=0, atol=0)


def test_no_target_training_clips_uses_source_covariance() -> None:
    det = _detector_with_model()
    rng = np.random.default_rng(5)
    bank = FrameBank([rng.standard_normal((4, 10)).astype(np.float32) for _ in range(3)], 5)
    det._fit_covariances("fan", det.models["fan"], bank, ["source"] * 3)
    torch.testing.assert_close(det.covariances["fan"]["target"], det.covariances["fan"]["source"])


@pytest.mark.parametrize("selection", ["last", "best"])
def test_model_selection(selection: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config()
    config.baseline = replace(
        config.baseline, n_mels=4, hidden=8, bottleneck=2, epochs=4, batch_size=64
    )
    config.train = replace(config.train, device="cpu")
    det = AEBaselineMahala(config)
    det.selection = selection
    rng = np.random.default_rng(6)
    mels = [rng.standard_normal((4, 30)).astype(np.float32) * 5 for _ in range(10)]
    monkeypatch.setattr(det, "clip_features", lambda clips, progress: mels)
    # Injected validation losses (best at epoch 2), and the weights each epoch ended with.
    val_losses = [5.0, 2.0, 3.0, 4.0]
    snapshots: list[dict[str, torch.Tensor]] = []

    def fake_val(model: AENet, bank: FrameBank) -> float:
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return val_losses[len(snapshots) - 1]

    monkeypatch.setattr(det, "_mean_mse", fake_val)
    clips = [
        SimpleNamespace(machine="fan", domain="source" if i < 8 else "target") for i in range(10)
    ]
    det._fit(clips, run_dir=None, progress=False, resume=False)  # type: ignore[arg-type]
    assert [h["val_loss"] for h in det.history_] == val_losses
    kept = snapshots[1] if selection == "best" else snapshots[-1]
    final = det.models["fan"].state_dict()
    for name, value in kept.items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=0)
    assert not torch.equal(snapshots[1]["decoder.12.weight"], snapshots[-1]["decoder.12.weight"])
    assert set(det.covariances["fan"]) == {"source", "target"}


def test_split_is_seeded_and_clip_level() -> None:
    train, val = split_train_val(20, 0.1, seed=7)
    assert len(val) == 2 and sorted(train + val) == list(range(20))
    assert split_train_val(20, 0.1, seed=7) == (train, val)
    assert split_train_val(1, 0.1, seed=7) == ([0], [])
    assert len(split_train_val(3, 0.1, seed=7)[1]) == 1  # ceil, as sklearn's test_size


def test_registered() -> None:
    # create_system imports only the module registering the name asked for (list_systems
    # would import every built-in system).
    assert isinstance(create_system("ae-baseline", Config()), AEBaseline)
    det = create_system("ae-baseline-mahala", Config())
    assert isinstance(det, AEBaselineMahala) and det.decision_kind == "mahalanobis"
    assert create_system("ae-baseline", Config()).decision_kind == "mse"


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def fitted(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Detector, list]:
    from harken.data.dataset import discover

    clips = discover(synth_root)
    config = Config()
    config.baseline = replace(config.baseline, epochs=2, batch_size=256)
    config.train = replace(config.train, device="cpu")
    det = create_system("ae-baseline-mahala", config)
    det.cache_dir = tmp_path_factory.mktemp("ae-baseline-cache")  # never the user's cache
    det.fit(clips, progress=False)
    return det, clips


@pytest.mark.slow
def test_end_to_end_fit_and_score(fitted: tuple[Detector, list]) -> None:
    det, clips = fitted
    machines = sorted({c.machine for c in clips})
    assert sorted(det.models) == machines
    assert len(det.history_) == 2 * len(machines)
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["val_loss"]) for h in det.history_)
    test = [c for c in clips if c.split == "test"]
    out = det.score_clips(test)
    for kind in ("mahalanobis", "mse"):
        scores = out.scores[kind]
        assert scores.shape == (len(test),)
        assert np.isfinite(scores).all() and np.ptp(scores) > 0, kind
    assert len(out.windows) == len(test) and all(len(w) > 0 for w in out.windows)
    decisions = det.predict(test)
    assert set(np.unique(decisions)) <= {0, 1}


@pytest.mark.slow
def test_state_round_trip_and_mse_system(fitted: tuple[Detector, list]) -> None:
    det, clips = fitted
    test = [c for c in clips if c.split == "test"][:6]
    buffer = io.BytesIO()
    torch.save(det.state_dict(), buffer)
    buffer.seek(0)
    payload = torch.load(buffer, weights_only=True)  # tensors and plain data only
    clone = type(det).from_state_dict(payload)
    clone.cache_dir = det.cache_dir
    before, after = det.score_clips(test), clone.score_clips(test)
    for kind in ("mahalanobis", "mse"):
        np.testing.assert_allclose(after.scores[kind], before.scores[kind], rtol=1e-6)
    # The MSE system scores the same networks by mean squared error alone.
    mse = create_system("ae-baseline", det.config)
    mse.cache_dir = det.cache_dir
    mse._load_state(payload["state"])
    out = mse.score_clips(test)
    assert list(out.scores) == ["mse"]
    np.testing.assert_allclose(out.scores["mse"], before.scores["mse"], rtol=1e-6)
