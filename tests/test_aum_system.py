"""The AuM system end to end at a tiny size: fit, score, save/load, the fixed SVDD center,
the two update steps and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("mambapy")

from harken.config import Config, load_config  # noqa: E402
from harken.pipeline import discover_clips  # noqa: E402
from harken.systems import create_system  # noqa: E402
from harken.systems.aum.system import AuMSystem, aum_step, train_aum  # noqa: E402
from harken.systems.aum.torch_model import AudioMamba  # noqa: E402
from harken.training.checkpoint import load_detector, save_detector  # noqa: E402

TINY = [
    "system=aum",
    "window.frames=64",
    "window.test_hop=64",
    "aum.embed_dim=16",
    "aum.depth=1",
    "aum.d_state=4",
    "aum.epochs=1",
    "aum.epoch_size=48",
    "aum.batch_size=16",
    "aum.lr=1e-3",
    "train.device=cpu",
]


def tiny_config(*extra: str) -> Config:
    return load_config("demo", [*TINY, *extra])


@pytest.fixture(scope="module")
def clips(synth_root: Path) -> list[Any]:
    return discover_clips(synth_root)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("aum-cache")


@pytest.fixture(scope="module")
def fitted(clips: list[Any], cache_dir: Path) -> AuMSystem:
    detector = create_system("aum", tiny_config())
    assert isinstance(detector, AuMSystem)
    detector.cache_dir = cache_dir
    return detector.fit(clips, progress=False)


@pytest.fixture(scope="module")
def train_data(clips: list[Any], fitted: AuMSystem) -> tuple[list[Any], list[np.ndarray]]:
    train = [c for c in clips if c.split == "train" and c.label == "normal"]
    return train, fitted.clip_features(train, progress=False)


def test_fit_and_score_give_finite_varied_svdd_scores(fitted: AuMSystem, clips: list[Any]) -> None:
    test = [c for c in clips if c.split == "test"]
    assert fitted.score_kinds[0] == "svdd"
    # The demo config asks for reconstruction, which AuM does not have: its native score decides.
    assert fitted.decision_kind == "svdd"
    scores = fitted.decision_function(test)
    assert scores.shape == (len(test),)
    assert np.all(np.isfinite(scores)) and np.all(scores >= 0)
    assert np.std(scores) > 0
    assert set(np.unique(fitted.predict(test))) <= {0, 1}
    assert len(fitted.history_) == 1 and np.isfinite(fitted.history_[0]["loss"])
    assert {"svdd", "adv", "domain_loss", "val_auc"} <= set(fitted.history_[0])


def test_state_round_trip_gives_identical_scores(fitted: AuMSystem, clips: list[Any], tmp_path: Path) -> None:
    test = [c for c in clips if c.split == "test"][:12]
    save_detector(tmp_path / "model.pt", fitted)
    loaded = load_detector(tmp_path)  # weights-only load
    assert isinstance(loaded, AuMSystem)
    loaded.cache_dir = fitted.cache_dir
    np.testing.assert_array_equal(loaded.decision_function(test), fitted.decision_function(test))
    assert loaded.threshold_ == fitted.threshold_
    assert loaded.model is not None and fitted.model is not None
    torch.testing.assert_close(loaded.model.center, fitted.model.center, rtol=0, atol=0)


def test_center_is_fixed_before_training_and_nonzero(train_data: tuple[list[Any], list[np.ndarray]]) -> None:
    train, features = train_data
    before = train_aum(train, features, tiny_config("aum.epochs=0"), progress=False).model
    after = train_aum(train, features, tiny_config("aum.epochs=1"), progress=False).model
    # Training moved the encoder but not c: c is a buffer set once from the untrained network.
    assert not torch.equal(before.patch_embed.weight, after.patch_embed.weight)
    torch.testing.assert_close(before.center, after.center, rtol=0, atol=0)
    assert after.has_center() and float(after.center.abs().min()) >= 0.1  # loss.center_eps
    assert "center" not in dict(after.named_parameters())


def test_classifier_step_leaves_encoder_and_adversarial_step_reaches_it() -> None:
    torch.manual_seed(0)
    model = AudioMamba(n_mels=32, frames=32, patch=16, embed_dim=8, depth=1, d_state=2, domain_hidden=8)
    model.center.fill_(0.5)
    encoder = [p for n, p in model.named_parameters() if not n.startswith("domain_classifier.")]
    x = torch.rand(8, 32, 32)
    domain = torch.tensor([0, 1] * 4)
    is_pseudo = torch.tensor([False, False, True, True] * 2)

    frozen = torch.optim.SGD(encoder, lr=0.0)
    clf_opt = torch.optim.SGD(model.domain_classifier.parameters(), lr=0.1)
    enc_before = [p.detach().clone() for p in encoder]
    clf_before = [p.detach().clone() for p in model.domain_classifier.parameters()]
    logs = aum_step(model, x, domain, is_pseudo, frozen, clf_opt, nu=3.0)
    assert all(torch.equal(a, b) for a, b in zip(enc_before, encoder, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(clf_before, model.domain_classifier.parameters(), strict=True))
    assert {"loss", "svdd", "svdd_normal", "svdd_anomaly", "adv", "domain_loss", "domain_acc"} <= set(logs)
    assert logs["loss"] == pytest.approx(logs["svdd"] + logs["adv"], rel=1e-5)
    # Step 2 gave the encoder gradients of L_SVDD + GRL(L_adv) (one backward; not applied here).
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in encoder)


def test_resume_continues_as_the_uninterrupted_run(train_data: tuple[list[Any], list[np.ndarray]], tmp_path: Path) -> None:
    train, features = train_data
    whole = train_aum(train, features, tiny_config("aum.epochs=2"), progress=False)
    run = tmp_path / "run"
    train_aum(train, features, tiny_config("aum.epochs=1"), run_dir=run, progress=False)
    assert (run / "checkpoints" / "aum-last.pt").is_file() and (run / "logs" / "aum.csv").is_file()
    resumed = train_aum(train, features, tiny_config("aum.epochs=2"), run_dir=run, progress=False, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0, msg=key)
