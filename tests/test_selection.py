"""``train.selection``: which epoch's weights a CAE-DANN-SVDD run keeps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harken.config import load_config
from harken.errors import ConfigError
from harken.training.loop import train_cae
from test_ddp import _Clip  # the minimal clip the training loop reads

TINY = [
    "train.epochs=4",
    "train.batch_size=16",
    "train.epoch_size=64",
    "train.lr=0.003",
    "train.seed=2",
    "train.device=cpu",
    "train.log_tensorboard=false",
    "window.frames=32",
    "window.test_hop=16",
    "model.channels=[4,4,4,4]",
    "model.latent_dim=8",
    "augment.strength=0.6",  # faint pseudo-anomalies: the validation AUC moves between epochs
]


def _data() -> tuple[list[_Clip], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    clips, feats = [], []
    for i in range(60):
        clips.append(_Clip(Path(f"fan_{i}.wav"), "fan", "00", "target" if i < 10 else "source"))
        feats.append((np.linspace(-60, -20, 128)[:, None] + rng.normal(0, 4, (128, 40))).astype(np.float32))
    return clips, feats


def _final_state(selection: str) -> tuple[dict[str, torch.Tensor], int, list[float]]:
    clips, feats = _data()
    result = train_cae(clips, feats, load_config("demo", [*TINY, f"train.selection={selection}"]), run_dir=None, progress=False)
    return result.model.state_dict(), result.best_epoch, [row["val_auc"] for row in result.history]


def test_last_keeps_the_final_epoch_and_best_keeps_the_highest_validation_auc() -> None:
    last_state, last_epoch, aucs = _final_state("last")
    assert last_epoch == 4
    assert np.all(np.isfinite(aucs)) and len(set(aucs)) > 1  # selection has something to choose
    best_state, best_epoch, best_aucs = _final_state("best")
    assert best_aucs == aucs  # same seed, same training: only the kept weights differ
    # the first epoch with the highest validation AUC (ties keep the earlier one)
    assert best_epoch == int(np.argmax(aucs)) + 1
    assert best_epoch < 4  # this seed's validation AUC peaks early: the two choices differ
    assert not all(torch.equal(last_state[k], best_state[k]) for k in last_state)


def test_an_unknown_selection_is_refused() -> None:
    clips, feats = _data()
    with pytest.raises(ConfigError, match="train.selection"):
        train_cae(clips, feats, load_config("demo", [*TINY, "train.selection=median"]), run_dir=None, progress=False)
