"""Pseudo-anomalies for outlier exposure: corrupting transforms of normal log-mel spectrograms.

The report's only training anomalies are normal clips passed through "corrupting
transformations, such as random noise bursts and frequency shifts" (Section 3.1).  Here each
transform is registered by name (:func:`register_augmentation`), the config picks names
(``augment.names``) and :class:`PseudoAnomalyMaker` applies one randomly chosen transform per
item.

Domain and placement
--------------------
Transforms act on **batched log-mel spectrograms in dB, before [0, 1] scaling**: tensors
``[B, n_mels, T]`` (any leading dims are accepted), on whatever device they live, typically
a batch of crops just read from the feature cache.  Why not corrupt the waveform?

* features are cached; a waveform-domain corruption would need the audio re-read and the
  STFT + mel projection recomputed for every draw, which would dominate training time;
* in the spectrogram domain every transform is a few batched tensor ops, on the GPU if the
  batch is there, and every draw of a pseudo-anomaly can be a fresh corruption;
* dB values (not scaled ones) give the transforms physical units: a gain is "+6 dB", a
  burst is "9 dB above the band's mean level", independent of the scaler fitted later.

Additive events (noise bursts, tones, clicks) are added in the **power domain**
(``10 log10(10^(x/10) + P)``, computed with ``logaddexp``), so they mix with the machine sound
as real sounds would instead of overwriting it; gains and shifts are exact in dB.  The dB
convention assumed is the cache's ``10 log10(power)``.

Every transform draws its random parameters from a ``torch.Generator`` passed in, so a
batch's corruption is reproducible from a seed.  Random numbers are drawn on the generator's
device and moved to the batch's: pass ``torch.Generator(device="cuda")`` with CUDA batches to
keep the (large) noise draws on the GPU; results are reproducible per device type.

Strength
--------
``strength`` scales every effect (levels in linear power, gains and shifts proportionally);
0 returns the input unchanged.  At 1 the effects are visible in a spectrogram but of the size
of real faults (a few dB, a few mel bins, a fraction of the clip), not saturating.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from harken.config import AugmentConfig
from harken.errors import ConfigError

_LN10_OVER_10 = math.log(10.0) / 10.0

_REGISTRY: dict[str, type[Augmentation]] = {}


def register_augmentation(name: str) -> Callable[[type[Augmentation]], type[Augmentation]]:
    """Class decorator adding an :class:`Augmentation` subclass to the registry under ``name``."""

    def decorator(cls: type[Augmentation]) -> type[Augmentation]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"augmentation {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_augmentations() -> list[str]:
    return sorted(_REGISTRY)


def create_augmentation(name: str, strength: float = 1.0) -> Augmentation:
    """Instantiate a registered transform; an unknown name is a :class:`ConfigError`."""
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown augmentation {name!r} (augment.names); known: {', '.join(list_augmentations())}"
        )
    return _REGISTRY[name](strength)


class _Draw:
    """Random draws from one generator, placed on the batch's device."""

    def __init__(self, generator: torch.Generator, device: torch.device) -> None:
        self.generator = generator
        self.device = device

    def rand(self, *shape: int) -> Tensor:
        out = torch.rand(shape, generator=self.generator, device=self.generator.device)
        return out.to(self.device)

    def uniform(self, lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * self.rand(*shape)

    def randint(self, lo: int, hi: int, *shape: int) -> Tensor:
        """Integers in ``[lo, hi]`` inclusive."""
        out = torch.randint(
            lo, hi + 1, shape, generator=self.generator, device=self.generator.device
        )
        return out.to(self.device)

    def sign(self, *shape: int) -> Tensor:
        return self.randint(0, 1, *shape).float() * 2 - 1

    def exponential_db(self, *shape: int) -> Tensor:
        """dB of unit-mean exponential power: the per-bin fluctuation of a noise spectrogram."""
        u = self.rand(*shape).clamp(min=1e-7)
        return 10.0 * torch.log10(-torch.log(u))


def _db_add(x_db: Tensor, add_db: Tensor) -> Tensor:
    """``10 log10(10^(x/10) + 10^(a/10))``; ``a = -inf`` adds nothing.  Stable at any level."""
    return torch.logaddexp(x_db * _LN10_OVER_10, add_db * _LN10_OVER_10) / _LN10_OVER_10


def _segment(draw: _Draw, batch: int, length: int, frac_lo: float, frac_hi: float) -> Tensor:
    """Bool mask ``[B, length]`` of one random contiguous segment per item."""
    seg = (draw.uniform(frac_lo, frac_hi, batch) * length).round().clamp(1, length)
    start = (draw.rand(batch) * (length - seg + 1)).floor()
    pos = torch.arange(length, device=draw.device, dtype=torch.float32)
    return (pos >= start[:, None]) & (pos < (start + seg)[:, None])


def _strength_db(strength: float) -> float:
    """Strength as a power factor in dB (strength 1 -> 0 dB)."""
    return 10.0 * math.log10(strength)


class Augmentation(abc.ABC):
    """A corrupting transform of dB log-mel batches ``[..., n_mels, T]``.

    Subclasses implement :meth:`_apply` on a float32 ``[B, n_mels, T]`` batch; the base class
    handles shapes, dtypes (float16 cache values are processed in float32 and returned in
    the input dtype), empty batches and ``strength == 0``.
    """

    name: ClassVar[str] = ""

    def __init__(self, strength: float = 1.0) -> None:
        if not math.isfinite(strength) or strength < 0:
            raise ConfigError(f"augment.strength must be a finite number >= 0, got {strength}")
        self.strength = float(strength)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if x.dim() < 2:
            raise ValueError(f"{self.name}: expected [..., n_mels, T], got shape {tuple(x.shape)}")
        if x.numel() == 0 or self.strength == 0:
            return x.clone()
        shape = x.shape
        flat = x.reshape(-1, shape[-2], shape[-1]).float()
        out = self._apply(flat, _Draw(generator, x.device))
        return out.reshape(shape).to(x.dtype)

    @abc.abstractmethod
    def _apply(self, x: Tensor, draw: _Draw) -> Tensor: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(strength={self.strength})"


@register_augmentation("noise_burst")
class NoiseBurst(Augmentation):
    """Band-limited noise burst: 5-30 % of the clip, over 30-100 % of the bands, at -3..+9 dB
    relative to each band's mean level (times strength, in power).  E.g. a rubbing or
    leaking event."""

    def _apply(self, x: Tensor, draw: _Draw) -> Tensor:
        b, m, t = x.shape
        time = _segment(draw, b, t, 0.05, 0.3)
        band = _segment(draw, b, m, 0.3, 1.0)
        ref = x.mean(dim=-1, keepdim=True)
        level = ref + draw.uniform(-3.0, 9.0, b)[:, None, None] + _strength_db(self.strength)
        noise = level + draw.exponential_db(b, m, t)
        mask = band[:, :, None] & time[:, None, :]
        return _db_add(x, torch.where(mask, noise, torch.full_like(noise, -math.inf)))


@register_augmentation("freq_shift")
class FreqShift(Augmentation):
    """Shift along the mel axis by 1..4 bins (times strength, at least 1) up or down during
    30-100 % of the clip: a component at the wrong frequency (speed / resonance change).
    Integer shifts, edges replicated, so no interpolation smoothing marks the result."""

    def _apply(self, x: Tensor, draw: _Draw) -> Tensor:
        b, m, t = x.shape
        max_shift = max(1, round(4 * self.strength))
        shift = draw.randint(1, max_shift, b) * draw.sign(b).long()
        src = (torch.arange(m, device=x.device)[None, :] - shift[:, None]).clamp(0, m - 1)
        shifted = x.gather(1, src[:, :, None].expand(b, m, t))
        time = _segment(draw, b, t, 0.3, 1.0)
        return torch.where(time[:, None, :], shifted, x)


@register_augmentation("tone")
class Tone(Augmentation):
    """One to three stationary tonal components (about one mel band wide) at random bands,
    5-15 dB above the band mean, during 30-100 % of the clip: a whine or bearing tone."""

    max_tones = 3

    def _apply(self, x: Tensor, draw: _Draw) -> Tensor:
        b, m, t = x.shape
        k = self.max_tones
        n = draw.randint(1, k, b)
        active = torch.arange(k, device=x.device)[None, :] < n[:, None]  # [B, K]
        centre = draw.uniform(0.0, m - 1.0, b, k)
        gain = draw.uniform(5.0, 15.0, b, k) + _strength_db(self.strength)
        bands = torch.arange(m, device=x.device, dtype=torch.float32)
        # Gaussian spread over neighbouring bands (sigma 0.6 bin), in dB: -4.34 * d^2 / sigma^2
        dist2 = (bands[None, None, :] - centre[:, :, None]) ** 2  # [B, K, M]
        profile_db = -10.0 / math.log(10.0) * dist2 / (2 * 0.6**2)
        ref = x.mean(dim=-1)  # [B, M]
        tone_db = ref[:, None, :] + gain[:, :, None] + profile_db
        tone_db = torch.where(active[:, :, None], tone_db, torch.full_like(tone_db, -math.inf))
        total_db = torch.logsumexp(tone_db * _LN10_OVER_10, dim=1) / _LN10_OVER_10  # [B, M]
        time = _segment(draw, b, t, 0.3, 1.0)
        add = torch.where(time[:, None, :], total_db[:, :, None], torch.full_like(x, -math.inf))
        return _db_add(x, add)


@register_augmentation("band_gain")
class BandGain(Augmentation):
    """A band of 4-20 % of the mel bins boosted or cut by 4-10 dB (times strength), with
    2-bin tapered edges, during 50-100 % of the clip: a resonance appearing or a component
    vanishing.  A gain is exact in dB, so it is added there."""

    def _apply(self, x: Tensor, draw: _Draw) -> Tensor:
        b, m, t = x.shape
        width = draw.uniform(0.04, 0.2, b) * m
        centre = draw.uniform(0.0, m - 1.0, b)
        gain = draw.uniform(4.0, 10.0, b) * self.strength * draw.sign(b)
        bands = torch.arange(m, device=x.device, dtype=torch.float32)
        outside = ((bands[None, :] - centre[:, None]).abs() - width[:, None] / 2).clamp(min=0)
        profile = (1.0 - outside / 2.0).clamp(min=0.0)  # [B, M], 1 inside, linear 2-bin taper
        time = _segment(draw, b, t, 0.5, 1.0)
        return x + gain[:, None, None] * profile[:, :, None] * time[:, None, :]


@register_augmentation("clicks")
class Clicks(Augmentation):
    """Two to eight broadband impulses (1-2 frames each) 4-14 dB above the band mean, with a
    random spectral tilt of +/-10 dB: a loose part knocking or a cracked gear tooth."""

    max_clicks = 8

    def _apply(self, x: Tensor, draw: _Draw) -> Tensor:
        b, m, t = x.shape
        k = self.max_clicks
        n = draw.randint(2, k, b)
        active = (torch.arange(k, device=x.device)[None, :] < n[:, None]).float()
        pos = draw.randint(0, t - 1, b, k)
        wide = (draw.rand(b, k) < 0.5).float() * active
        mask = torch.zeros(b, t, device=x.device)
        mask = mask.scatter_reduce(1, pos, active, reduce="amax")
        mask = mask.scatter_reduce(1, (pos + 1).clamp(max=t - 1), wide, reduce="amax")
        ref = x.mean(dim=-1, keepdim=True)
        tilt = (
            draw.uniform(-10.0, 10.0, b)[:, None]
            * (torch.linspace(-0.5, 0.5, m, device=x.device)[None, :])
        )
        level = (
            ref
            + (draw.uniform(4.0, 14.0, b)[:, None] + tilt)[:, :, None]
            + _strength_db(self.strength)
        )
        click = level + draw.exponential_db(b, m, t)
        add = torch.where(mask[:, None, :] > 0, click, torch.full_like(click, -math.inf))
        return _db_add(x, add)


@register_augmentation("time_stretch_local")
class TimeStretchLocal(Augmentation):
    """A segment of 20-50 % of the clip played 1.15-1.5x faster or slower (the excess over 1
    scaled by strength), with a jump back to the original timeline at its end: a momentary
    speed irregularity.  Linear interpolation between frames."""

    def _apply(self, x: Tensor, draw: _Draw) -> Tensor:
        b, m, t = x.shape
        seg = _segment(draw, b, t, 0.2, 0.5)
        start = seg.float().argmax(dim=1)  # first True frame
        excess = draw.uniform(0.15, 0.5, b) * self.strength
        rate = torch.where(draw.sign(b) > 0, 1.0 + excess, 1.0 / (1.0 + excess))
        pos = torch.arange(t, device=x.device, dtype=torch.float32)[None, :]
        stretched = start[:, None] + (pos - start[:, None]) * rate[:, None]
        src = torch.where(seg, stretched, pos.expand(b, t)).clamp(0, t - 1)
        lo = src.floor().long()
        hi = (lo + 1).clamp(max=t - 1)
        w = (src - lo.float())[:, None, :]
        x_lo = x.gather(2, lo[:, None, :].expand(b, m, t))
        x_hi = x.gather(2, hi[:, None, :].expand(b, m, t))
        return x_lo * (1 - w) + x_hi * w


@register_augmentation("amplitude_modulation")
class AmplitudeModulation(Augmentation):
    """Periodic level modulation of 1.5-4 dB (times strength) with a period of 4-40 frames
    over 50-100 % of the bands: rotating imbalance or a loose belt beating."""

    def _apply(self, x: Tensor, draw: _Draw) -> Tensor:
        b, m, t = x.shape
        depth = draw.uniform(1.5, 4.0, b) * self.strength
        period = draw.uniform(4.0, 40.0, b)
        phase = draw.uniform(0.0, 2 * math.pi, b)
        band = _segment(draw, b, m, 0.5, 1.0).float()
        pos = torch.arange(t, device=x.device, dtype=torch.float32)[None, :]
        wave = depth[:, None] * torch.sin(2 * math.pi * pos / period[:, None] + phase[:, None])
        return x + band[:, :, None] * wave[:, None, :]


@register_augmentation("level_drop")
class LevelDrop(Augmentation):
    """All bands drop by 6-15 dB (times strength), not below each band's minimum, for 5-20 %
    of the clip: an intermittent stall or lost contact."""

    def _apply(self, x: Tensor, draw: _Draw) -> Tensor:
        b, m, t = x.shape
        drop = draw.uniform(6.0, 15.0, b) * self.strength
        time = _segment(draw, b, t, 0.05, 0.2)
        floor = x.amin(dim=-1, keepdim=True)
        lowered = torch.maximum(x - drop[:, None, None], floor)
        return torch.where(time[:, None, :], lowered, x)


class PseudoAnomalyMaker:
    """Applies one randomly chosen transform (uniform over ``names``) to each item of a batch.

    Use it on the items of a training batch flagged as pseudo-anomalies (by the sampler),
    before scaling.  Each call draws fresh corruptions, so a seed clip becomes a different
    anomaly every time it is drawn.
    """

    def __init__(self, names: Sequence[str], strength: float = 1.0) -> None:
        names = list(names)
        if not names:
            raise ConfigError(
                "augment.names is empty: pseudo-anomalies need at least one transform"
            )
        self.names = names
        self.transforms = [create_augmentation(name, strength) for name in names]
        self.strength = float(strength)

    @classmethod
    def from_config(cls, config: AugmentConfig) -> PseudoAnomalyMaker:
        return cls(config.names, config.strength)

    def apply(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Corrupted batch and, per item, the index into :attr:`names` of its transform."""
        if x.dim() < 3:
            raise ValueError(f"expected a batch [B, ..., n_mels, T], got shape {tuple(x.shape)}")
        choice = torch.randint(
            len(self.transforms), (x.shape[0],), generator=generator, device=generator.device
        ).to(x.device)
        out = x.clone()
        for k, transform in enumerate(self.transforms):
            idx = (choice == k).nonzero(as_tuple=True)[0]
            if idx.numel():
                out[idx] = transform(x[idx], generator)
        return out, choice

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self.apply(x, generator)[0]

    def __repr__(self) -> str:
        return f"PseudoAnomalyMaker(names={self.names}, strength={self.strength})"
