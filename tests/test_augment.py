"""Pseudo-anomaly transforms: registry, reproducibility, shapes and their physical meaning."""

from __future__ import annotations

import math

import pytest
import torch

from harken.augment import PseudoAnomalyMaker, create_augmentation, list_augmentations
from harken.config import AugmentConfig
from harken.errors import ConfigError

ALL = list_augmentations()
ADDITIVE = ["noise_burst", "tone", "clicks"]


def machine_like(batch: int = 4, n_mels: int = 64, frames: int = 96, seed: int = 0) -> torch.Tensor:
    """dB log-mel of a humming machine: pink-ish noise plus three slightly modulated lines."""
    g = torch.Generator().manual_seed(seed)
    m = torch.arange(n_mels, dtype=torch.float32)[None, :, None]
    t = torch.arange(frames, dtype=torch.float32)[None, None, :]
    noise = -torch.log(torch.rand(batch, n_mels, frames, generator=g).clamp(min=1e-7))
    power = 1e-4 * (1 + m) ** -1.0 * noise
    for f in (10, 23, 40):
        power = power + 1e-3 * torch.exp(-0.5 * ((m - f) / 0.8) ** 2) * (1 + 0.1 * torch.sin(t / 8))
    return 10 * torch.log10(power)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_lists_every_configured_transform() -> None:
    assert set(AugmentConfig().names) <= set(ALL)
    assert {
        "noise_burst",
        "freq_shift",
        "tone",
        "band_gain",
        "clicks",
        "time_stretch_local",
    } <= set(ALL)
    assert sorted(ALL) == ALL
    for name in ALL:
        assert create_augmentation(name).name == name


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown augmentation 'wobble'.*noise_burst"):
        create_augmentation("wobble")
    with pytest.raises(ConfigError, match="unknown augmentation"):
        PseudoAnomalyMaker(["noise_burst", "wobble"])
    with pytest.raises(ConfigError, match="empty"):
        PseudoAnomalyMaker([])
    with pytest.raises(ConfigError, match="strength"):
        create_augmentation("tone", -1.0)


@pytest.mark.parametrize("name", ALL)
def test_changes_every_item_visibly_but_moderately(name: str) -> None:
    x = machine_like()
    y = create_augmentation(name)(x, gen(1))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    diff = (y - x).abs()
    per_item_max = diff.flatten(1).max(dim=1).values
    assert bool((per_item_max > 0.5).all()), per_item_max  # every item visibly changed (dB)
    assert float(diff.mean()) < 6.0  # not a wholesale rewrite of the spectrogram
    assert not torch.equal(y, x)


@pytest.mark.parametrize("name", ALL)
def test_deterministic_given_the_generator(name: str) -> None:
    x = machine_like()
    aug = create_augmentation(name)
    assert torch.equal(aug(x, gen(7)), aug(x, gen(7)))
    assert not torch.equal(aug(x, gen(7)), aug(x, gen(8)))
    assert torch.equal(x, machine_like())  # input not modified in place


@pytest.mark.parametrize("name", ALL)
def test_shapes_dtypes_and_edge_cases(name: str) -> None:
    aug = create_augmentation(name)
    x = machine_like(batch=2, n_mels=16, frames=24)
    assert aug(x[0], gen(0)).shape == (16, 24)  # a single [n_mels, T]
    assert aug(x[:, None], gen(0)).shape == (2, 1, 16, 24)  # channel dim kept
    half = aug(x.half(), gen(0))
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    assert aug(x[:0], gen(0)).shape == (0, 16, 24)
    assert torch.equal(create_augmentation(name, 0.0)(x, gen(0)), x)  # strength 0: identity
    silent = torch.full((2, 16, 24), -100.0)  # the cache's floor for all-zero audio
    assert torch.isfinite(aug(silent, gen(0))).all()


@pytest.mark.parametrize("name", ADDITIVE)
def test_additive_events_only_add_power(name: str) -> None:
    x = machine_like()
    y = create_augmentation(name)(x, gen(2))
    assert bool((y >= x - 1e-4).all())


def test_noise_burst_power_scales_with_strength() -> None:
    x = machine_like().double()
    added = {}
    for strength in (1.0, 2.0):
        y = create_augmentation("noise_burst", strength)(x.float(), gen(3)).double()
        added[strength] = 10 ** (y / 10) - 10 ** (x / 10)
    region = 10 * torch.log10(1 + added[1.0] / 10 ** (x / 10)) > 1.0  # clearly inside the burst
    assert region.any()
    ratio = added[2.0][region] / added[1.0][region]
    assert torch.allclose(ratio, torch.full_like(ratio, 2.0), rtol=1e-2)


@pytest.mark.parametrize("name", ["band_gain", "amplitude_modulation"])
def test_gains_scale_linearly_with_strength(name: str) -> None:
    x = machine_like()
    d1 = create_augmentation(name, 1.0)(x, gen(4)) - x
    d2 = create_augmentation(name, 2.0)(x, gen(4)) - x
    assert torch.allclose(d2, 2 * d1, atol=1e-4)


def test_freq_shift_moves_whole_columns_by_whole_bins() -> None:
    x = machine_like()
    y = create_augmentation("freq_shift")(x, gen(5))
    n_mels = x.shape[1]
    for b in range(x.shape[0]):
        cols = (y[b] != x[b]).any(dim=0).nonzero().flatten()
        assert len(cols) > 0 and int(cols[-1] - cols[0]) + 1 == len(cols)  # one segment
        found = False
        for k in [1, 2, 3, 4, -1, -2, -3, -4]:
            src = (torch.arange(n_mels) - k).clamp(0, n_mels - 1)
            if torch.equal(y[b][:, cols], x[b][src][:, cols]):
                found = True
        assert found


def test_level_drop_lowers_but_not_below_the_band_floor() -> None:
    x = machine_like()
    y = create_augmentation("level_drop")(x, gen(6))
    assert bool((y <= x).all())
    assert bool((y >= x.amin(dim=-1, keepdim=True)).all())


def test_maker_picks_one_transform_per_item() -> None:
    x = machine_like(batch=64, n_mels=16, frames=24)
    maker = PseudoAnomalyMaker.from_config(AugmentConfig())
    y, choice = maker.apply(x, gen(9))
    assert choice.shape == (64,) and set(choice.tolist()) == set(range(len(maker.names)))
    assert bool(((y - x).abs().flatten(1).max(dim=1).values > 0).all())
    y2, choice2 = maker.apply(x, gen(9))
    assert torch.equal(y, y2) and torch.equal(choice, choice2)
    assert torch.equal(maker(x, gen(9)), y)


def test_maker_routes_items_to_the_chosen_transform() -> None:
    x = machine_like(batch=3)
    maker = PseudoAnomalyMaker(["tone"], strength=1.5)
    g = gen(11)
    torch.randint(1, (3,), generator=g)  # the maker's own draw of the choices comes first
    assert torch.equal(maker(x, gen(11)), create_augmentation("tone", 1.5)(x, g))


def test_generator_draws_move_to_the_batch_device() -> None:
    # The CPU generator serves a batch on any device (here CPU, the same code path moves
    # the draws with .to(x.device)).
    x = machine_like(batch=2, n_mels=16, frames=24)
    y = create_augmentation("noise_burst")(
        x.to("cpu"), torch.Generator(device="cpu").manual_seed(0)
    )
    assert y.device == x.device and math.isfinite(float(y.sum()))
