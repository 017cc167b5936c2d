"""Configs: YAML loading, overrides, errors, and that every field is documented."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from harken.config import Config, load_config
from harken.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _fields(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type) or (isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory)):
            out += _fields(f.default_factory, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        else:
            out.append(prefix + f.name)
    return out


def test_every_field_is_documented() -> None:
    doc = (REPO / "docs" / "CONFIG.md").read_text()
    missing = [name for name in _fields(Config) if f"| `{name.split('.')[-1]}` |" not in doc]
    assert missing == []


def test_paper_config_carries_the_reports_hyperparameters() -> None:
    c = load_config("paper")
    assert c.model.channels == [16, 32, 64, 128]
    assert c.model.latent_dim == 128
    assert c.model.domain_hidden == 64 and c.model.domain_dropout == 0.5
    assert c.model.grl_lambda == 0.1
    assert c.loss.alpha_recon == 0.5 and c.loss.svdd_nu == 3.0
    assert c.train.lr == 1e-4 and c.train.weight_decay == 1e-5
    assert c.train.epochs == 20 and c.train.batch_size == 256
    assert c.train.plateau_factor == 0.5 and c.train.plateau_patience == 5
    assert (c.features.n_mels, c.window.frames) == (128, 1024)
    assert c.score.kind == "reconstruction"
    assert c.train.setting == "generalized"


def test_overrides_and_round_trip() -> None:
    c = load_config("demo", ["train.epochs=3", "loss.use_dann=false", "model.channels=[8,16,32,64]"])
    assert c.train.epochs == 3 and c.loss.use_dann is False and c.model.channels == [8, 16, 32, 64]
    assert Config.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.epochz=3", "train.epochz"),
        ("train.epochs=abc", "train.epochs"),
        ("train.epochs=2.5", "train.epochs"),
        ("loss.use_dann=maybe", "loss.use_dann"),
        ("nonsense", "section.field=value"),
    ],
)
def test_bad_overrides_name_the_field(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config("demo", [override])


def test_unknown_field_in_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.batch_size=0", "train.batch_size must be > 0, got 0"),
        ("train.lr=-0.001", "train.lr must be > 0"),
        ("train.val_fraction=1", "train.val_fraction must be >= 0 and < 1"),
        ("train.setting=everything", "train.setting must be one of 'generalized', 'per_machine'"),
        ("window.frames=0", "window.frames must be > 0"),
        ("window.aggregate=median", "window.aggregate must be one of 'mean', 'max'"),
        ("score.threshold_quantile=1.0", "score.threshold_quantile must be between 0 and 1"),
        ("model.domain_dropout=1", "model.domain_dropout"),
        ("scaling.q_low=0.9995", "scaling.q_low (0.9995) must be below scaling.q_high (0.999)"),
        ("features.f_max=0", "features.f_max (0.0) must be above features.f_min"),
        ("model.channels=[16,0]", "model.channels must be a non-empty list of positive integers"),
        ("score.fused_weights=[0,0]", "score.fused_weights must be non-negative with a positive sum"),
    ],
)
def test_out_of_range_values_are_refused_when_loaded(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config("demo", [override])


def test_boundary_values_that_mean_something_are_accepted() -> None:
    # 0 epochs: build the model and its center without training; 0 val_fraction: no hold-out
    config = load_config("demo", ["train.epochs=0", "train.val_fraction=0", "train.epoch_size=0", "loss.alpha_recon=0"])
    assert (config.train.epochs, config.train.val_fraction, config.loss.alpha_recon) == (0, 0.0, 0.0)
