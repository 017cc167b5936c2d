"""Reduced precision and the scoring fast paths keep the scores (docs/SPEED.md).

* bf16 autocast vs fp32 scores of a trained model on the synthetic test set: Spearman >= 0.999
  for both score kinds (on a CPU without native bf16 autocast still runs, emulated).  The
  scorer keeps the encoder in float32 under bf16 (``harken.speed.TorchScorer``); the decoder,
  half the FLOPs, runs in bf16.
* The torch fast path (BatchNorm folded, channels-last, inference mode) and ONNX Runtime give
  the plain eval-mode module's scores to float32 rounding.
* A bf16 training step runs and its losses stay close to fp32's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from harken.config import LossConfig, load_config
from harken.speed import (
    TorchScorer,
    autocast_dtype,
    build_window_scorer,
    fold_batchnorm,
    native_bf16,
    onnxruntime_available,
    resolve_backend,
)

TINY = [
    "train.epochs=1",
    "train.epoch_size=128",
    "train.batch_size=32",
    "train.log_tensorboard=false",
    "train.device=cpu",
    "window.frames=64",
    "window.test_hop=16",  # 10 windows per 2-s clip: clip scores average 10 window scores
    "model.channels=[8,16,16,32]",
    "model.latent_dim=32",
]


@pytest.fixture(scope="module")
def trained(synth_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny CAE-DANN trained one epoch on the shared synthetic set, and the test features."""
    from harken.pipeline import discover_clips, train_run

    base = tmp_path_factory.mktemp("precision")
    config = load_config("demo", TINY)
    clips = discover_clips(synth_root)
    detector = train_run(config, clips, base / "run", progress=False, cache_dir=base / "cache")
    test = [c for c in clips if c.split == "test"]
    specs = detector.clip_features(test, progress=False)
    return detector, [np.asarray(s, dtype=np.float32) for s in specs]


def _clip_scores(detector, specs, **kw) -> dict[str, np.ndarray]:
    from harken.scoring import score_spectrograms
    from harken.training.loop import window_scorer

    scorer = window_scorer(detector.models["all"], detector.scalers["all"], device="cpu", **kw)
    results = score_spectrograms(specs, scorer, detector.config.window, batch_size=64)
    return {
        k: np.array([r.aggregate("mean")[k] for r in results]) for k in ("reconstruction", "svdd")
    }


def test_bf16_autocast_keeps_the_score_ranks(trained) -> None:
    detector, specs = trained
    fp32 = _clip_scores(detector, specs, backend="torch", precision="fp32")
    bf16 = _clip_scores(detector, specs, backend="torch", precision="bf16")
    assert len(fp32["reconstruction"]) == len(specs) >= 50
    # the decoder really ran in bf16; the encoder (the SVDD latent) stays float32 by design
    assert not np.array_equal(bf16["reconstruction"], fp32["reconstruction"])
    for kind in ("reconstruction", "svdd"):
        assert np.all(np.isfinite(bf16[kind]))
        rho = spearmanr(fp32[kind], bf16[kind]).statistic
        assert rho >= 0.999, f"{kind}: Spearman {rho:.5f} between fp32 and bf16 scores"


def test_fast_paths_give_the_plain_scores(trained) -> None:
    from harken.scoring import score_spectrograms
    from harken.training.loop import ScaledScorer

    detector, specs = trained
    model, scaler = detector.models["all"], detector.scalers["all"]
    plain = ScaledScorer(model, scaler).eval()

    def reference(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            recon, svdd = plain(x)
        return {"reconstruction": recon, "svdd": svdd}

    ref = score_spectrograms(specs, reference, detector.config.window)
    ref_scores = {
        k: np.concatenate([r.windows[k] for r in ref]) for k in ("reconstruction", "svdd")
    }
    backends = ["torch"] + (["onnxruntime"] if onnxruntime_available() else [])
    for backend in backends:
        scorer = build_window_scorer(
            plain, ("reconstruction", "svdd"), torch.zeros(1, 128, 64), backend=backend
        )
        got = score_spectrograms(specs, scorer, detector.config.window)
        for kind, want in ref_scores.items():
            have = np.concatenate([r.windows[kind] for r in got])
            np.testing.assert_allclose(
                have, want, rtol=1e-4, atol=1e-7, err_msg=f"{backend} {kind}"
            )
    # the model itself is not folded
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_fold_batchnorm_is_exact_and_leaves_the_original_alone() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU()),
        nn.ConvTranspose2d(4, 3, 3, 2, 1, 1),
        nn.BatchNorm2d(3),
        nn.Sigmoid(),
    )
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, 1, 16, 16) * 3 + 1)  # non-trivial running statistics
    net[2].weight.data.uniform_(0.5, 2.0)
    net[2].bias.data.uniform_(-1.0, 1.0)
    folded = fold_batchnorm(net)
    assert net.training and not folded.training
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        want = net.eval()(x)
        have = folded(x)
    torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-6)


def test_channels_last_fast_scorer_matches_nchw() -> None:
    from harken.systems.cae_dann.torch_model import CAEDANN, CAEScorer

    torch.manual_seed(0)
    model = CAEDANN(n_mels=32, frames=32, channels=[4, 8], latent_dim=8).eval()
    x = torch.rand(3, 1, 32, 32)
    plain = CAEScorer(model).eval()
    with torch.no_grad():
        want = plain(x)
    for cl in (False, True):
        have = TorchScorer(
            plain, CAEScorer.output_names, device=torch.device("cpu"), channels_last=cl
        )(x)
        torch.testing.assert_close(have["reconstruction"], want[0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(have["svdd"], want[1], rtol=1e-5, atol=1e-6)


def test_precision_and_backend_resolution() -> None:
    assert autocast_dtype("fp32", "cpu") is None
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    # CPU: fp32 by default (bf16 unmeasured or emulated)
    assert autocast_dtype("auto", "cpu") is None
    with pytest.raises(ValueError, match="precision"):
        autocast_dtype("int8", "cpu")
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("auto", "cpu") == ("onnxruntime" if onnxruntime_available() else "torch")
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("tensorrt", "cpu")
    assert isinstance(native_bf16("cpu"), bool)


def test_bf16_training_step_runs_and_stays_close() -> None:
    from harken.systems.cae_dann.loss import train_step
    from harken.systems.cae_dann.torch_model import CAEDANN, init_center

    x = torch.rand(8, 1, 32, 64, generator=torch.Generator().manual_seed(0))
    domain = torch.tensor([0, 1] * 4)
    pseudo = torch.tensor([False, False, True, True] * 2)
    losses = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        torch.manual_seed(0)
        model = CAEDANN(n_mels=32, frames=64, channels=[4, 8], latent_dim=8)
        init_center(model, [x])
        ae = torch.optim.AdamW(model.autoencoder.parameters(), lr=1e-4)
        clf = torch.optim.AdamW(model.domain_classifier.parameters(), lr=1e-4)
        logs = train_step(
            model,
            x,
            domain,
            pseudo,
            LossConfig(),
            ae,
            clf,
            autocast_dtype=dtype,
            channels_last=True,
        )
        assert all(np.isfinite(v) for v in logs.values())
        # autocast, not a bf16 model
        assert all(p.dtype == torch.float32 for p in model.parameters())
        losses[name] = logs
    for key in ("loss", "recon", "svdd", "adv"):
        assert losses["bf16"][key] == pytest.approx(losses["fp32"][key], rel=0.05, abs=1e-3), key
