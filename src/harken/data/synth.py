"""Synthetic machine sounds in the exact DCASE 2025 Task 2 layout (``harken synth``).

The real DCASE data is gigabytes behind a download; tests, the demo and CI need a data set that
is small, built in seconds, reproducible from a seed, and still *hard in the right ways*: a
detector that only learns "louder is anomalous" or that ignores domain shift should do visibly
worse on it than one that models the machine.  So every clip is rendered from a small physical
model of its machine, with per-clip operating conditions, a source / target domain shift, and
faults at a tunable ``strength``:

==========  ===================================================  ============================
machine     normal sound                                         faults (``ANOMALY_KINDS``)
==========  ===================================================  ============================
fan         blade-pass harmonics, turbulence pulsing per blade   imbalance, blade, rub
gearbox     gear mesh harmonics with shaft-rate sidebands        tooth (once-per-turn), wear
bearing     rolling noise, roughness impacts ringing a housing   outer / inner race spall
valve       solenoid open/close clicks, flow hiss, pump          leak, chatter, stuck
slider      trapezoidal strokes: friction, stepper, end knocks   rattle, bump (dent), squeal
ToyCar      DC motor whine, pinion mesh, tyre rolling rhythm     wheel, gear, shaft
ToyTrain    motor, mesh, rail-joint clicks per axle              flat wheel, scrape, motor
==========  ===================================================  ============================

Domain shift: the target domain runs at other speeds / loads / patterns (the attributes say
which) and is recorded with other microphones in busier, noisier rooms; the environment
attribute (``mic``, ``loc`` or ``noise``) names the recording set-up.  Faults are scaled to the
machine's normal level, and rate-driven faults are scaled so that a faster target machine is
not easier to judge than a slow one.  At ``strength=1`` every fault is audible: it raises the
mel band it affects most by at least 3 dB over the clip (``_FAULT_GAIN`` sets the level of
those whose shape alone left them near-silent).  Most faults stay local in frequency or time,
and the target domain's few training clips make it harder than the source domain.

Layout and names follow the DCASE 2025 development set::

    OUT/<machine>/attributes_00.csv
    OUT/<machine>/train/section_00_{source,target}_train_normal_NNNN_<attrs>.wav
    OUT/<machine>/test/section_00_{source,target}_test_{normal,anomaly}_NNNN_<attrs>.wav

``<attrs>`` is ``key_value`` pairs joined by ``_`` (e.g. ``car_A1_spd_28V_mic_1``), and
``attributes_00.csv`` has the header ``file_name,d1p,d1v[,d2p,d2v[,d3p,d3v]]`` with one row per
clip, ``file_name`` being ``<machine>/<split>/<clip name>``.  Audio is 16-bit PCM mono WAV.
A hidden ``.harken-synth.json`` per machine folder records the parameters (see
:func:`synthesize`); dataset discovery skips hidden files.

Determinism: each clip's random stream comes from ``SeedSequence([seed, crc32(machine), split,
domain, label, index])``, so the bytes of a clip depend only on those values (and the numpy /
scipy build), not on the order in which clips are rendered or on how many worker processes
render them.  Torch-free on purpose: ``harken synth`` works in an install without PyTorch.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import logging
import math
import os
import shutil
import time
import wave
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft as sfft

from harken.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from harken.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Public constants
# --------------------------------------------------------------------------------------------

SAMPLE_RATE = 16000
#: The seven DCASE 2025 development machine types, spelled as DCASE spells them.
MACHINES: tuple[str, ...] = ("ToyCar", "ToyTrain", "bearing", "fan", "gearbox", "slider", "valve")
DOMAINS: tuple[str, ...] = ("source", "target")
SECTION = "00"

# DCASE ships 990 source and 10 target training clips per machine; a synthetic set that is meant
# to be built in seconds keeps the imbalance (few target clips is what makes the target domain
# hard) at a tenth of the size.
DEFAULT_TRAIN_SOURCE = 100
DEFAULT_TRAIN_TARGET = 10
DEFAULT_TEST_PER_CELL = 25
DEFAULT_DURATION = 10.0

#: Fault types each machine can render; an anomalous clip picks one at random unless told.
ANOMALY_KINDS: dict[str, tuple[str, ...]] = {
    "ToyCar": ("wheel", "gear", "shaft"),
    "ToyTrain": ("flat", "scrape", "motor"),
    "bearing": ("outer", "inner"),
    "fan": ("imbalance", "blade", "rub"),
    "gearbox": ("tooth", "wear"),
    "slider": ("rattle", "bump", "squeal"),
    "valve": ("leak", "chatter", "stuck"),
}

_SPLIT_CODE = {"train": 0, "test": 1}
_DOMAIN_CODE = {"source": 0, "target": 1}
_LABEL_CODE = {"normal": 0, "anomaly": 1}
_TWO_PI = 2.0 * np.pi


# --------------------------------------------------------------------------------------------
# Recording environments: microphone response + background noise, the non-machine half of the
# domain shift.  The environment attribute of a machine (mic / loc / noise) names one of these.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mic:
    hp_hz: float  # 2nd-order high-pass corner (small capsules and wind screens cut the lows)
    lp_hz: float  # 4th-order low-pass corner
    peak_hz: float  # presence peak / dip centre
    peak_db: float
    tilt_db_oct: float  # spectral tilt around 1 kHz


@dataclass(frozen=True)
class _Env:
    mic: _Mic
    noises: tuple[str, ...]  # background types drawn per clip
    snr_db: tuple[float, float]  # machine-to-background ratio, uniform range


_ENVS: dict[str, _Env] = {
    # source-domain set-ups: close, flat microphones in a fairly quiet hall
    "E1": _Env(_Mic(40.0, 7200.0, 1000.0, 0.0, 0.0), ("A", "B"), (10.0, 18.0)),
    "E2": _Env(_Mic(60.0, 6500.0, 350.0, 3.0, -1.0), ("A", "B"), (10.0, 18.0)),
    # target-domain set-ups: other microphones further away, busier background
    "E3": _Env(_Mic(110.0, 5500.0, 2500.0, 4.0, 1.0), ("C", "A"), (5.0, 15.0)),
    "E4": _Env(_Mic(90.0, 6000.0, 4000.0, 3.0, 0.5), ("C", "B"), (6.0, 16.0)),
}


# --------------------------------------------------------------------------------------------
# Machine specifications: attribute options per domain and which attribute picks the environment
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    # (key, source values, target values), in file-name order
    attributes: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]
    env_key: str
    envs: Mapping[str, str]  # env attribute value -> _ENVS key


_SPECS: dict[str, _Spec] = {
    "ToyCar": _Spec(
        (
            ("car", ("A1", "A2", "B1", "B2"), ("A1", "A2", "B1", "B2")),
            ("spd", ("28V", "31V", "34V"), ("37V", "40V")),
            ("mic", ("1",), ("2",)),
        ),
        "mic",
        {"1": "E1", "2": "E3"},
    ),
    "ToyTrain": _Spec(
        (
            ("car", ("A1", "B1", "B2", "C1"), ("A1", "B1", "B2", "C1")),
            ("spd", ("7", "8", "10"), ("6", "9")),
            ("mic", ("1",), ("2",)),
        ),
        "mic",
        {"1": "E2", "2": "E4"},
    ),
    "bearing": _Spec(
        (
            ("pro", ("A", "B"), ("A", "B")),
            ("vel", ("4", "8", "12"), ("16", "20")),
            ("loc", ("A", "B"), ("C", "D")),
        ),
        "loc",
        {"A": "E1", "B": "E2", "C": "E3", "D": "E4"},
    ),
    "fan": _Spec(
        (
            ("rpm", ("1200", "1350", "1500"), ("1800", "2100")),
            ("noise", ("1", "2"), ("3",)),
        ),
        "noise",
        {"1": "E1", "2": "E2", "3": "E3"},
    ),
    "gearbox": _Spec(
        (
            ("volt", ("1.0", "1.5", "2.0"), ("2.5", "3.0")),
            ("wt", ("0", "50"), ("100",)),
            ("noise", ("1", "2"), ("3",)),
        ),
        "noise",
        {"1": "E1", "2": "E2", "3": "E4"},
    ),
    "slider": _Spec(
        (
            ("vel", ("300", "400", "500"), ("700", "900")),
            ("ac", ("0.04", "0.06"), ("0.15", "0.2")),
            ("noise", ("1", "2"), ("3",)),
        ),
        "noise",
        {"1": "E1", "2": "E2", "3": "E3"},
    ),
    "valve": _Spec(
        (
            ("pat", ("00", "01", "02", "03"), ("04", "05")),
            ("noise", ("1", "2"), ("3",)),
        ),
        "noise",
        {"1": "E1", "2": "E2", "3": "E4"},
    ),
}


# --------------------------------------------------------------------------------------------
# Signal helpers.  Everything is vectorized over samples and kept in float32 where precision
# allows (about twice as fast); Python loops run over harmonics or events, never samples.
# --------------------------------------------------------------------------------------------

_F32 = np.float32


@functools.lru_cache(maxsize=8)
def _freqs(n: int, sr: int) -> np.ndarray:
    f = sfft.rfftfreq(n, 1.0 / sr).astype(_F32)
    f[0] = f[1] if n > 1 else 1.0  # no division by zero in 1/f shapes
    f.flags.writeable = False
    return f


@functools.lru_cache(maxsize=8)
def _log2_freqs(n: int, sr: int) -> np.ndarray:
    lf = np.log2(_freqs(n, sr))
    lf.flags.writeable = False
    return lf


def _band(n: int, sr: int, lo: float, hi: float, order: int = 2, slope: float = 0.0) -> np.ndarray:
    """Band-pass magnitude (Butterworth-like skirts) times ``(f / lo) ** slope``.

    Sound is coloured in the frequency domain (zero phase), so a band costs one multiply.
    """
    f = _freqs(n, sr)
    r_lo = f / _F32(lo)
    r_hi = f / _F32(hi)
    h = r_lo**order / np.sqrt(1 + r_lo ** (2 * order)) / np.sqrt(1 + r_hi ** (2 * order))
    if slope:
        h = h * np.exp2(_F32(slope) * (_log2_freqs(n, sr) - _F32(math.log2(lo))))
    return h.astype(_F32)


@functools.lru_cache(maxsize=64)
def _shape(n: int, sr: int, lo: float, hi: float, order: int = 2, slope: float = 0.0) -> np.ndarray:
    """Cached :func:`_band` for the fixed bands of the machine models (read-only)."""
    h = _band(n, sr, lo, hi, order, slope)
    h.flags.writeable = False
    return h


def _peak(n: int, sr: int, centre: float, gain: float, octaves: float) -> np.ndarray:
    """A resonance as a Gaussian bump on a log-frequency axis (linear gain ``1 + gain``)."""
    d = (_log2_freqs(n, sr) - _F32(math.log2(centre))) / _F32(octaves)
    return (1 + _F32(gain) * np.exp(_F32(-0.5) * d * d)).astype(_F32)


def _shaped_noise(n: int, sr: int, rng: np.random.Generator, shape: np.ndarray) -> np.ndarray:
    """Gaussian noise with magnitude spectrum ``shape``, unit RMS.

    Drawn directly as a complex Gaussian spectrum: one inverse FFT instead of two transforms.
    """
    spec = rng.standard_normal(2 * (n // 2 + 1), dtype=_F32).view(np.complex64)
    x = sfft.irfft(spec * shape, n)
    return x / _rms(x)


def _wander(n: int, sr: int, rng: np.random.Generator, rate_hz: float, depth: float) -> np.ndarray:
    """``1 + depth * slow noise``: the drift of speed or level no real machine holds constant."""
    k = int(n / sr * rate_hz) + 2
    pts = rng.standard_normal(k)
    return (1.0 + depth * np.interp(np.arange(n) * (rate_hz / sr), np.arange(k), pts)).astype(_F32)


def _turns(freq: np.ndarray | float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Cumulative turns (float64, so hours of rotation keep their phase) at frequency ``freq``."""
    start = rng.uniform()
    if np.ndim(freq) == 0:
        return np.arange(n) * (float(freq) / sr) + start
    return np.cumsum(np.asarray(freq, dtype=np.float64)) / sr + start


class _Rotor:
    """A rotating part.  Its angle is held as unit phasors, so the k-th harmonic is a complex
    power made of a few multiplications instead of a sine of a huge argument per harmonic."""

    def __init__(self, turns: np.ndarray, hz: float, sr: int) -> None:
        self.turns = turns
        self.hz = hz  # nominal rate, to drop harmonics above Nyquist
        self.sr = sr
        a = (_TWO_PI * (turns - np.floor(turns))).astype(_F32)
        z = np.empty(a.size, np.complex64)
        z.real = np.cos(a)
        z.imag = np.sin(a)
        self._pow: dict[int, np.ndarray] = {1: z}

    def phasor(self, k: int) -> np.ndarray:
        p = self._pow
        if k not in p:
            split = next((j for j in sorted(p, reverse=True) if j < k and (k - j) in p), None)
            if split is not None:
                p[k] = p[split] * p[k - split]
            elif k % 2 == 0:
                h = self.phasor(k // 2)
                p[k] = h * h
            else:
                p[k] = self.phasor(k - 1) * p[1]
        return p[k]

    def sin(self, k: int = 1, phase: float = 0.0) -> np.ndarray:
        """``sin(k * angle + phase)``."""
        return (self.phasor(k) * np.complex64(complex(math.cos(phase), math.sin(phase)))).imag

    def tones(
        self, orders: Sequence[int], amps: Sequence[float], rng: np.random.Generator
    ) -> np.ndarray:
        """Sum of harmonics ``amp * sin(k * angle + random phase)``; those above 0.45 sr dropped."""
        out = np.zeros(self.turns.size, np.complex64)
        phases = rng.uniform(0.0, _TWO_PI, size=len(orders))
        for k, amp, ph in zip(orders, amps, phases, strict=True):
            if amp and k * self.hz < 0.45 * self.sr:
                out += self.phasor(int(k)) * np.complex64(amp * complex(math.cos(ph), math.sin(ph)))
        return np.ascontiguousarray(out.imag)

    def geared(self, ratio: float) -> _Rotor:
        """The rotor on the other side of a gear (or wheel) with speed ratio ``ratio``."""
        return _Rotor(self.turns * ratio, self.hz * ratio, self.sr)


def _crossings(turns: np.ndarray, per_turn: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """Sample indices where ``per_turn * turns + offset`` passes an integer: one event a cycle."""
    cycles = np.floor(turns * per_turn + offset)
    return np.flatnonzero(np.diff(cycles) > 0) + 1


def _kernel(sr: int, modes: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """Impulse response of a few damped modes ``(freq_hz, decay_s, amp)``: what an impact rings."""
    length = int(sr * 5.0 * max(d for _, d, _ in modes)) + 1
    t = np.arange(length) / sr
    k = np.zeros(length)
    for f, d, a in modes:
        if f < 0.45 * sr:
            k += a * np.exp(-t / d) * np.sin(_TWO_PI * f * t)
    return k.astype(_F32)


def _strike(n: int, idx: np.ndarray, amps: np.ndarray | float, kernel: np.ndarray) -> np.ndarray:
    """Impacts at sample indices ``idx`` with amplitudes ``amps``, each ringing ``kernel``."""
    idx = np.asarray(idx, dtype=np.int64)
    amps_arr = np.broadcast_to(np.asarray(amps, dtype=_F32), idx.shape)
    keep = (idx >= 0) & (idx < n)
    idx, amps_arr = idx[keep], amps_arr[keep]
    if idx.size == 0:
        return np.zeros(n, _F32)
    size = idx.size * kernel.size
    if size <= 400_000:
        # overlap-add of the scaled kernels: cheaper than three FFTs for sparse impacts
        where = (idx[:, None] + np.arange(kernel.size)).ravel()
        ring = (amps_arr[:, None] * kernel[None, :]).ravel()
        return np.bincount(where, weights=ring, minlength=n + kernel.size)[:n].astype(_F32)
    length = sfft.next_fast_len(n + kernel.size, real=True)
    x = np.zeros(length, _F32)
    np.add.at(x, idx, amps_arr)
    return sfft.irfft(sfft.rfft(x) * sfft.rfft(kernel, length), length)[:n]


def _poisson_times(n: int, sr: int, rng: np.random.Generator, rate_hz: float) -> np.ndarray:
    count = rng.poisson(rate_hz * n / sr)
    return np.sort(rng.integers(0, n, size=count))


def _ramp_gate(mask: np.ndarray, sr: int, ramp_s: float = 0.004) -> np.ndarray:
    """Smooth a 0/1 gate with short linear ramps, so gated sound has no clicks of its own."""
    n = mask.size
    w = max(1, int(ramp_s * sr))
    padded = np.concatenate([np.zeros(w // 2 + 1), mask.astype(np.float64), np.zeros(w - w // 2)])
    c = np.cumsum(padded)
    return ((c[w : w + n] - c[:n]) / w).astype(_F32)  # centred moving average, O(n)


def _intervals(n: int, sr: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """0/1 mask that is 1 from each start to its end (seconds)."""
    edges = np.zeros(n + 1, np.int64)
    s = np.clip(np.round(starts * sr).astype(np.int64), 0, n)
    e = np.clip(np.round(ends * sr).astype(np.int64), 0, n)
    ok = e > s
    np.add.at(edges, s[ok], 1)
    np.add.at(edges, e[ok], -1)
    return (np.cumsum(edges[:n]) > 0).astype(_F32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12)


# --------------------------------------------------------------------------------------------
# Machine renderers.  Each returns (signal, reference RMS): the reference is the RMS of the
# normal parts, so the caller normalizes a clip by its *normal* level and an anomaly keeps the
# energy it adds (or removes) instead of being normalized away.  ``eff`` is the anomaly
# strength (0 for normal clips); ``arng`` is consumed only when ``eff > 0``, so a normal clip and
# the same clip rendered with strength 0 are identical.
# --------------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    n: int
    sr: int
    attrs: dict[str, str]
    rng: np.random.Generator  # the machine's own randomness
    eff: float  # anomaly strength, 0 for normal
    kind: str  # anomaly kind (meaningful only when eff > 0)
    arng: np.random.Generator  # anomaly randomness


def _fan(c: _Ctx) -> tuple[np.ndarray, float]:
    n, sr, rng = c.n, c.sr, c.rng
    rpm = float(c.attrs["rpm"]) * (1.0 + 0.015 * rng.standard_normal())
    fr = rpm / 60.0
    blades = 7
    shaft = _Rotor(_turns(fr * _wander(n, sr, rng, 0.5, 0.003), n, sr, rng), fr, sr)
    # blade-pass harmonics: the pressure pulse each blade gives the air
    orders = [blades * k for k in range(1, 11)]
    tones = shaft.tones(orders, [0.5 / k**0.8 * rng.uniform(0.6, 1.4) for k in range(1, 11)], rng)
    # broadband turbulence, a little louder each time a blade passes
    turb = _shaped_noise(n, sr, rng, _shape(n, sr, 80.0, 6000.0, 2, -0.5))
    turb *= 1 + _F32(0.15) * shaft.sin(blades, rng.uniform(0, _TWO_PI))
    x = _F32(0.6) * tones + turb  # (louder at speed: see _loudness)
    ref = _rms(x)
    if c.eff > 0:
        a = c.arng
        if c.kind == "imbalance":
            # a heavy side: the whole flow pulses once per turn, plus shaft-rate vibration
            x = x * (1 + _F32(min(c.eff * 0.3, 0.95)) * shaft.sin(1, a.uniform(0, _TWO_PI)))
            amps = [1.0, 0.7, 0.5, 0.35, 0.25, 0.18]  # looseness adds shaft-rate harmonics
            x += _F32(c.eff * 0.3 * ref) * shaft.tones([1, 2, 3, 4, 5, 6], amps, a)
        elif c.kind == "blade":
            # one damaged blade breaks the B-fold symmetry: shaft harmonics between blade-pass
            orders = [k for k in range(1, 4 * blades) if k % blades]
            amps = [a.uniform(0.3, 1.0) / (1 + k / blades) for k in orders]
            x += _F32(c.eff * 0.45 * ref) * shaft.tones(orders, amps, a)
        else:  # rub: a blade tip touching the housing once per turn
            starts = _crossings(shaft.turns, 1.0, a.uniform()) / sr
            gate = _ramp_gate(_intervals(n, sr, starts, starts + 0.12 / fr), sr, 0.002)
            hiss = _shaped_noise(n, sr, a, _shape(n, sr, 2500.0, 7000.0))
            x += _F32(c.eff * 0.85 * ref) * hiss * gate
    return x, ref


def _gearbox(c: _Ctx) -> tuple[np.ndarray, float]:
    n, sr, rng = c.n, c.sr, c.rng
    volt = float(c.attrs["volt"])
    wt = float(c.attrs["wt"])
    fr = 8.0 * volt * (1.0 + 0.02 * rng.standard_normal())
    teeth = 21
    shaft = _Rotor(_turns(fr * _wander(n, sr, rng, 0.4, 0.004), n, sr, rng), fr, sr)
    load = 1.0 + wt / 100.0
    mesh_amps = [a * rng.uniform(0.7, 1.3) for a in (1.0, 0.5, 0.3, 0.2, 0.12)]
    mesh = shaft.tones([teeth * k for k in range(1, 6)], mesh_amps, rng)
    # shaft-rate sidebands: a real gear is never perfectly round nor perfectly centred
    sb = 0.08 + 0.02 * wt / 50.0
    am = 1 + _F32(sb) * shaft.sin(1, rng.uniform(0, _TWO_PI)) + _F32(0.5 * sb) * shaft.sin(2)
    out_stage = shaft.geared(teeth / 37.0).tones([37, 74], [0.25, 0.1], rng)  # 21:37 stage
    noise = _shaped_noise(n, sr, rng, _shape(n, sr, 200.0, 6000.0, 2, -0.5))
    hum = _Rotor(_turns(100.0, n, sr, rng), 100.0, sr).tones([1, 2], [0.1, 0.05], rng)
    x = _F32(0.6 * load) * mesh * am + _F32(0.2) * out_stage + _F32(0.35) * noise + hum
    ref = _rms(x)
    if c.eff > 0:
        a = c.arng
        if c.kind == "tooth":
            # a cracked tooth: an impact once per shaft turn.  Impacts come more often at speed
            # but each is scaled down so the fault energy per second falls a little with speed:
            # a fast (target-domain) gearbox hides a crack somewhat better, not worse.
            offset = a.uniform()
            idx = _crossings(shaft.turns, 1.0, offset)
            kern = _kernel(sr, [(2200.0 * a.uniform(0.9, 1.1), 0.004, 1.0), (5200.0, 0.002, 0.5)])
            x += _F32(c.eff * 1.2 * ref * (12.0 / fr)) * _strike(
                n, idx, a.uniform(0.8, 1.2, idx.size), kern
            )
            # ... and a mesh-force spike while the cracked tooth is in mesh
            wrapped = (np.mod(shaft.turns + offset + 0.5, 1.0) - 0.5).astype(_F32)
            x *= 1 + _F32(c.eff * 0.6) * np.exp(_F32(-0.5) * (wrapped / _F32(0.025)) ** 2)
        else:  # wear: worn flanks raise sidebands, higher mesh harmonics and friction noise
            x += _F32(c.eff * 0.25 * ref) * mesh * shaft.sin(1, a.uniform(0, _TWO_PI))
            x += _F32(c.eff * 0.2 * ref) * shaft.tones([teeth * 3, teeth * 4], [0.7, 0.5], a)
            x += _F32(c.eff * 0.15 * ref) * _shaped_noise(n, sr, a, _shape(n, sr, 1500.0, 6000.0))
    return x, ref


_BEARING_GEOM = {"A": (9, 0.22, 3200.0), "B": (12, 0.16, 2600.0)}  # balls, d/D, resonance


def _bearing(c: _Ctx) -> tuple[np.ndarray, float]:
    n, sr, rng = c.n, c.sr, c.rng
    balls, ratio, f_res = _BEARING_GEOM[c.attrs["pro"]]
    f_res *= rng.uniform(0.95, 1.05)
    fr = 2.5 * float(c.attrs["vel"]) * (1.0 + 0.02 * rng.standard_normal())
    shaft = _Rotor(_turns(fr * _wander(n, sr, rng, 0.3, 0.003), n, sr, rng), fr, sr)
    # rolling noise, coloured by the housing resonance that every impact also rings; it grows
    # with speed, so a fast (target-domain) bearing hides a defect better
    shape = _shape(n, sr, 400.0, 7000.0) * _peak(n, sr, f_res, 3.0, 0.3)
    rolling = _shaped_noise(n, sr, rng, shape)
    level = rng.uniform(0.8, 1.25) * fr / 25.0
    shaft_tones = shaft.tones([1, 2, 3, 4], [0.3, 0.15, 0.1, 0.05], rng)
    # distributed surface roughness: small random impacts; how rough, and how much of each
    # impact reaches the housing mode below the resonance, differs from bearing to bearing
    low = rng.uniform(0.1, 0.5)
    kern = _kernel(
        sr, [(f_res, 0.0015, 1.0), (1.6 * f_res, 0.0008, 0.4), (0.45 * f_res, 0.003, low)]
    )
    idx = _poisson_times(n, sr, rng, rng.uniform(100.0, 250.0) * fr / 25.0)
    rough = _strike(n, idx, rng.exponential(0.25, idx.size), kern)
    x = _F32(0.5 * level) * rolling + shaft_tones + rough
    ref = _rms(x)
    if c.eff > 0:
        a = c.arng
        # outer-race spall: an impact each time a ball rolls over it (BPFO); inner-race spall:
        # impacts at BPFI, modulated as the spall turns in and out of the loaded zone
        rate = balls / 2.0 * (1.0 - ratio if c.kind == "outer" else 1.0 + ratio)
        hits = _crossings(shaft.turns, rate, a.uniform())
        # balls slip: impacts wander ~1 % of a period around the kinematic times
        hits = hits + np.round(a.normal(0.0, 0.01 * sr / (rate * fr), hits.size)).astype(np.int64)
        amps = a.uniform(0.7, 1.3, hits.size)
        if c.kind == "inner":
            amps = amps * (0.6 + 0.4 * np.cos(_TWO_PI * shaft.turns[np.clip(hits, 0, n - 1)]))
        # a spall hits harder and lower than fine roughness: it also rings the housing below
        spall = _kernel(
            sr, [(f_res, 0.0015, 1.0), (1.6 * f_res, 0.0008, 0.4), (0.45 * f_res, 0.003, 0.7)]
        )
        x += _F32(c.eff * 0.25) * _strike(n, hits, amps, spall)
    return x, ref


# valve patterns: (period s, ((open, close) as fractions of the period), ...)
_VALVE_PATTERNS: dict[str, tuple[float, tuple[tuple[float, float], ...]]] = {
    "00": (1.0, ((0.0, 0.4),)),
    "01": (0.8, ((0.0, 0.25), (0.5, 0.75))),
    "02": (1.4, ((0.0, 0.3), (0.45, 0.6))),
    "03": (1.2, ((0.0, 0.5), (0.62, 0.8))),
    "04": (0.6, ((0.0, 0.3),)),
    "05": (2.0, ((0.0, 0.2), (0.3, 0.5), (0.6, 0.9))),
}


def _valve(c: _Ctx) -> tuple[np.ndarray, float]:
    n, sr, rng = c.n, c.sr, c.rng
    period, events = _VALVE_PATTERNS[c.attrs["pat"]]
    period *= rng.uniform(0.97, 1.03)
    start = rng.uniform(0.0, period)
    cycles = np.arange(-1, int(n / sr / period) + 2)[:, None] * period + start
    opens = (cycles + np.array([e[0] for e in events]) * period).ravel()
    closes = (cycles + np.array([e[1] for e in events]) * period).ravel()
    opens = opens + rng.normal(0.0, 0.006, opens.size)
    closes = closes + rng.normal(0.0, 0.006, closes.size)
    body = rng.uniform(0.9, 1.1)
    open_k = _kernel(
        sr,
        [
            (2800.0 * body, 0.003, 1.0),
            (4600.0 * body, 0.002, 0.6),
            (900.0, 0.006, 0.5),
            (150.0, 0.01, 0.6),
        ],
    )
    close_k = _kernel(sr, [(3300.0 * body, 0.0025, 1.0), (1200.0, 0.005, 0.5), (180.0, 0.01, 0.4)])
    hiss = _shaped_noise(n, sr, rng, _shape(n, sr, 1000.0, 5000.0))
    hum = _shaped_noise(n, sr, rng, _shape(n, sr, 60.0, 600.0, 3))  # the pump feeding the valve
    is_open = _intervals(n, sr, opens, closes)
    close_amps = rng.uniform(0.5, 0.8, closes.size)
    clicks = _strike(n, np.round(opens * sr), rng.uniform(0.8, 1.2, opens.size), open_k)
    clicks += _strike(n, np.round(closes * sr), close_amps, close_k)
    flow_level = rng.uniform(0.1, 0.2)
    x = clicks + _F32(flow_level) * hiss * _ramp_gate(is_open, sr) + _F32(0.08) * hum
    ref = _rms(x)
    if c.eff > 0:
        a = c.arng
        if c.kind == "leak":
            # a seat that no longer seals: flow noise and a faint whistle while closed
            whistle = _Rotor(_turns(a.uniform(3000.0, 4200.0), n, sr, a), 4200.0, sr).sin()
            leak = _F32(0.7) * _shaped_noise(n, sr, a, _shape(n, sr, 2000.0, 6500.0))
            leak += _F32(0.3) * whistle
            x += _F32(c.eff * 0.1 * ref) * leak * _ramp_gate(1 - is_open, sr)
        elif c.kind == "chatter":
            # a weak spring: the plunger bounces after each stroke
            base = np.concatenate([opens, closes])
            b = np.concatenate(
                [base + d * a.uniform(0.8, 1.2, base.size) for d in (0.018, 0.034, 0.05)]
            )
            x += _F32(c.eff * 0.14) * _strike(
                n, np.round(b * sr), a.uniform(0.3, 1.0, b.size), close_k
            )
        else:  # stuck: some closings come late; the valve hangs open with flow noise running
            late = a.random(closes.size) < 0.6
            lag = a.uniform(0.1, 0.35, closes.size) * period * min(c.eff, 2.0)
            new_closes = closes + np.where(late, lag, 0.0)
            x += (
                _F32(flow_level * 2.0)
                * hiss
                * _ramp_gate(_intervals(n, sr, closes, new_closes), sr)
            )
            move = _F32(min(c.eff, 1.0))
            x -= move * _strike(n, np.round(closes[late] * sr), close_amps[late], close_k)
            x += move * _strike(n, np.round(new_closes[late] * sr), close_amps[late], close_k)
    return x, ref


def _slider(c: _Ctx) -> tuple[np.ndarray, float]:
    n, sr, rng = c.n, c.sr, c.rng
    v = float(c.attrs["vel"]) * (1.0 + 0.02 * rng.standard_normal())  # mm/s
    acc = float(c.attrs["ac"]) * 9810.0  # mm/s^2
    stroke = 400.0 * rng.uniform(0.97, 1.03)  # mm
    dwell = 0.15
    t_ramp = v / acc
    if stroke < v * t_ramp:  # never reaches cruise speed: triangular profile
        v = math.sqrt(acc * stroke)
        t_ramp = v / acc
    t_cruise = (stroke - v * t_ramp) / v
    t_move = 2 * t_ramp + t_cruise
    cycle = 2 * (t_move + dwell)
    t = np.arange(n) / sr + rng.uniform(0.0, cycle)
    tc = np.mod(t, cycle)
    back = tc >= t_move + dwell
    tm = np.where(back, tc - (t_move + dwell), tc)  # time since this stroke started
    speed = np.clip(np.minimum(tm, t_move - tm) * acc, 0.0, v) * (tm < t_move)
    # distance travelled in this stroke (trapezoidal velocity profile), then carriage position
    dist = np.select(
        [tm < t_ramp, tm < t_ramp + t_cruise, tm < t_move],
        [
            0.5 * acc * tm**2,
            0.5 * acc * t_ramp**2 + v * (tm - t_ramp),
            stroke - 0.5 * acc * (t_move - tm) ** 2,
        ],
        stroke,
    )
    pos = np.where(back, stroke - dist, dist)
    rel = (speed / v).astype(_F32)
    friction = _shaped_noise(n, sr, rng, _shape(n, sr, 300.0, 6000.0, 2, -0.5))
    step_hz = speed / 0.4  # step rate of the stepper motor, 0.4 mm per step
    steps = _Rotor(_turns(step_hz, n, sr, rng), 0.0, sr)
    motor = (steps.sin(1) + _F32(0.4) * steps.sin(2, 1.0)) * ((step_hz < 0.2 * sr) & (rel > 0.01))
    screw = _Rotor(_turns(speed / 10.0, n, sr, rng), 0.0, sr).sin()  # 10-mm lead screw
    # the carriage knocks into its end position at the end of each stroke
    stops = np.flatnonzero(np.diff(np.floor((t - t_move) / (t_move + dwell))) > 0) + 1
    end_k = _kernel(sr, [(1200.0, 0.008, 1.0), (350.0, 0.015, 0.6)])
    knocks = _strike(n, stops, rng.uniform(0.4, 0.6, stops.size), end_k)
    x = _F32(0.5) * rel**0.8 * friction + _F32(0.15) * motor + _F32(0.1) * rel * screw + knocks
    ref = _rms(x)
    if c.eff > 0:
        a = c.arng
        if c.kind == "rattle":
            # a loose part on the carriage rattling while it moves
            idx = _poisson_times(n, sr, a, 40.0)
            idx = idx[rel[idx] > 0.2]
            kern = _kernel(sr, [(4500.0 * a.uniform(0.9, 1.1), 0.002, 1.0), (2100.0, 0.003, 0.5)])
            x += _F32(c.eff * 0.9 * ref) * _strike(n, idx, a.uniform(0.5, 1.0, idx.size), kern)
        elif c.kind == "bump":
            # a dent in the rail: a tick each time the carriage passes one position, scaled so
            # the tick energy per second does not grow with stroke rate (faster is not easier)
            x0 = a.uniform(0.2, 0.8) * stroke
            idx = np.flatnonzero(np.diff(np.sign(pos - x0)) != 0) + 1
            kern = _kernel(sr, [(1800.0, 0.01, 1.0), (3900.0, 0.003, 0.6)])
            x += _F32(c.eff * 8.0 * ref * math.sqrt(1.2 / (t_move + dwell))) * _strike(
                n, idx, a.uniform(0.8, 1.2, idx.size), kern
            )
        else:  # squeal: dry bearing blocks singing while moving
            f0 = a.uniform(2500.0, 3500.0) * (1 + 0.01 * np.sin(_TWO_PI * 6.0 * t))
            squeal = _Rotor(_turns(f0, n, sr, a), 0.0, sr).sin()
            x += _F32(c.eff * 0.25 * ref) * rel * squeal
    return x, ref


def _toycar(c: _Ctx) -> tuple[np.ndarray, float]:
    n, sr, rng = c.n, c.sr, c.rng
    volts = float(c.attrs["spd"].rstrip("V"))
    model, tire = c.attrs["car"][0], c.attrs["car"][1]
    ratio = {"A": 11.0, "B": 15.0}[model]
    f_rot = 6.0 * volts * (1.0 + 0.02 * rng.standard_normal())
    rotor = _Rotor(_turns(f_rot * _wander(n, sr, rng, 0.3, 0.01), n, sr, rng), f_rot, sr)
    # DC motor: rotation harmonics, the 3-pole commutation (3rd, 6th) strongest
    motor = rotor.tones([1, 2, 3, 4, 6, 9], [0.5, 0.2, 0.6, 0.1, 0.3, 0.1], rng)
    brush = _shaped_noise(n, sr, rng, _shape(n, sr, 3000.0, 7000.0))
    brush *= 1 + _F32(0.5) * rotor.sin(6)
    mesh = rotor.tones([10, 20], [0.25, 0.08], rng)  # 10-tooth pinion
    wheel = rotor.geared(1.0 / ratio)
    rolling = _shaped_noise(n, sr, rng, _shape(n, sr, 150.0, 2500.0 if tire == "1" else 5000.0))
    rolling *= 1 + _F32(0.3) * wheel.sin()
    x = _F32(0.6) * motor + _F32(0.08) * brush + mesh + _F32(0.45) * rolling
    ref = _rms(x)
    if c.eff > 0:
        a = c.arng
        if c.kind == "wheel":
            # a flat spot on a tyre: a thump every wheel turn
            idx = _crossings(wheel.turns, 1.0, a.uniform())
            kern = _kernel(sr, [(300.0, 0.01, 1.0), (1500.0, 0.003, 0.6)])
            x += _F32(c.eff * 1.0 * ref) * _strike(n, idx, a.uniform(0.8, 1.2, idx.size), kern)
        elif c.kind == "gear":
            # a chipped pinion tooth: a tick every motor turn and mesh sidebands
            idx = _crossings(rotor.turns, 1.0, a.uniform())
            kern = _kernel(sr, [(2600.0, 0.002, 1.0)])
            x += _F32(c.eff * 0.6 * ref) * _strike(n, idx, a.uniform(0.6, 1.0, idx.size), kern)
            x += _F32(c.eff * 0.4) * mesh * rotor.sin(1, a.uniform(0, _TWO_PI))
        else:  # shaft: a bent axle modulates everything at the wheel rate
            x = x * (1 + _F32(min(c.eff * 0.2, 0.95)) * wheel.sin(1, a.uniform(0, _TWO_PI)))
            half = rotor.geared(0.5)  # a rub once every second motor turn
            x += _F32(c.eff * 0.12 * ref) * half.tones([1, 3], [1.0, 0.5], a)
    return x, ref


def _toytrain(c: _Ctx) -> tuple[np.ndarray, float]:
    n, sr, rng = c.n, c.sr, c.rng
    s = float(c.attrs["spd"])
    model, cars = c.attrs["car"][0], int(c.attrs["car"][1])
    f_rot = 15.0 * s * (1.0 + 0.02 * rng.standard_normal())
    rotor = _Rotor(_turns(f_rot * _wander(n, sr, rng, 0.3, 0.01), n, sr, rng), f_rot, sr)
    wheel = rotor.geared(1.0 / 25.0)
    motor = rotor.tones([1, 2, 3, 6], [0.3, 0.15, 0.4, 0.2], rng)
    mesh = rotor.tones([12, 24], [0.2, 0.06], rng)
    rolling = _shaped_noise(n, sr, rng, _shape(n, sr, 400.0, 5000.0, 2, -0.5))
    # rail joints: every axle of every car clicks over each joint (250-mm rails, 20-mm wheels)
    speed = wheel.hz * np.pi * 0.02  # m/s
    per_turn = np.pi * 0.02 / 0.25  # joints passed per wheel turn
    offsets = [car * 0.12 + axle for car in range(1 + cars) for axle in (0.0, 0.05)]  # metres
    joints = _crossings(wheel.turns, per_turn)
    idx = np.concatenate([joints + int(o / speed * sr) for o in offsets])
    click_hz = {"A": 1800.0, "B": 2300.0, "C": 1500.0}[model]
    kern = _kernel(sr, [(click_hz, 0.005, 1.0), (600.0, 0.008, 0.5)])
    clicks = _strike(n, idx, rng.uniform(0.5, 0.8, idx.size), kern)
    x = motor + mesh + _F32(0.35 * (0.5 + 0.1 * s)) * rolling + clicks
    ref = _rms(x)
    if c.eff > 0:
        a = c.arng
        if c.kind == "flat":
            # a flat spot on a wheel: a thump every wheel turn
            idx = _crossings(wheel.turns, 1.0, a.uniform())
            kern = _kernel(sr, [(250.0, 0.012, 1.0), (1000.0, 0.004, 0.6)])
            x += _F32(c.eff * 2.0 * ref) * _strike(n, idx, a.uniform(0.8, 1.2, idx.size), kern)
        elif c.kind == "scrape":
            # a flange rubbing the rail in bursts
            gate = _ramp_gate((_wander(n, sr, a, 3.0, 1.0) > 1.6).astype(_F32), sr, 0.01)
            noise = _shaped_noise(n, sr, a, _shape(n, sr, 2000.0, 6500.0))
            x += _F32(c.eff * 1.0 * ref) * noise * gate
        else:  # motor: worn brushes arcing, more at some rotor angles than others
            idx = _poisson_times(n, sr, a, 200.0)
            kern = _kernel(sr, [(5200.0, 0.0008, 1.0), (3400.0, 0.001, 0.6)])
            weights = (0.5 + 0.5 * rotor.sin()[idx] ** 2) * a.uniform(0.5, 1.5, idx.size)
            x += _F32(c.eff * 0.7 * ref) * _strike(n, idx, weights, kern)
    return x, ref


# Audibility calibration: the gain each fault's level gets at ``strength=1``, so that every
# fault raises the mel band it affects most by about 4 dB or more (clip average, source domain;
# ``tests/test_synth.py`` checks it).  The machine models above set each fault's *shape*; some
# came out nearly inaudible (a valve leak under 0.1 dB, a slider rattle 0.6 dB), far subtler than
# the deliberately damaged machines of the DCASE recordings, and no frame-level detector could
# find them.  Every gained fault is additive, so the gain scales its amplitude.
_FAULT_GAIN: dict[tuple[str, str], float] = {
    ("slider", "rattle"): 3.2,
    ("slider", "squeal"): 3.2,
    ("valve", "leak"): 13.0,
    ("valve", "chatter"): 4.6,
    ("bearing", "outer"): 1.5,
    ("bearing", "inner"): 2.1,
    ("gearbox", "wear"): 1.6,
    ("ToyCar", "gear"): 1.35,
    ("ToyTrain", "motor"): 1.25,
}

_RENDERERS: dict[str, Callable[[_Ctx], tuple[np.ndarray, float]]] = {
    "ToyCar": _toycar,
    "ToyTrain": _toytrain,
    "bearing": _bearing,
    "fan": _fan,
    "gearbox": _gearbox,
    "slider": _slider,
    "valve": _valve,
}

# The attribute that sets each machine's speed: faster machines are louder.
_SPEED_KEY = {
    "ToyCar": "spd",
    "ToyTrain": "spd",
    "bearing": "vel",
    "fan": "rpm",
    "gearbox": "volt",
    "slider": "vel",
    "valve": None,
}


def _loudness(machine: str, spec: _Spec, attrs: Mapping[str, str]) -> float:
    """+3 dB per doubling of speed over the slowest source setting."""
    key = _SPEED_KEY[machine]
    if key is None:
        return 1.0
    slowest = next(src[0] for k, src, _ in spec.attributes if k == key)
    return (float(attrs[key].rstrip("V")) / float(slowest.rstrip("V"))) ** 0.5


# --------------------------------------------------------------------------------------------
# Environment: background noise and microphone
# --------------------------------------------------------------------------------------------


def _background(kind: str, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "A":  # factory hall: pink noise and mains hum
        x = _shaped_noise(n, sr, rng, _shape(n, sr, 20.0, 7500.0, 2, -0.5))
        mains = float(rng.choice([50.0, 60.0]))
        x += _Rotor(_turns(mains, n, sr, rng), mains, sr).tones(
            [1, 2, 3, 4], [0.4, 0.2, 0.13, 0.1], rng
        )
    elif kind == "B":  # ventilation: low rumble and hiss
        x = _shaped_noise(n, sr, rng, _shape(n, sr, 20.0, 3000.0, 2, -1.0))
        x += _F32(0.3) * _shaped_noise(n, sr, rng, _shape(n, sr, 1000.0, 7500.0))
    else:  # "C": other machines and people nearby: fluctuating mid band and distant clanks
        x = _shaped_noise(n, sr, rng, _shape(n, sr, 150.0, 3000.0))
        x *= np.clip(_wander(n, sr, rng, 1.5, 0.3), 0.1, None)
        idx = _poisson_times(n, sr, rng, 0.7)
        kern = _kernel(sr, [(900.0, 0.03, 1.0), (2300.0, 0.01, 0.6)])
        x += _strike(n, idx, rng.uniform(1.0, 2.5, idx.size), kern)
    return x / _F32(_rms(x))


def _mic_response(mic: _Mic, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Magnitude response of one microphone placement on the rfft grid of ``n`` samples."""
    # every placement differs a little from the nominal set-up
    hp = mic.hp_hz * rng.uniform(0.9, 1.1)
    lp = min(mic.lp_hz * rng.uniform(0.95, 1.05), 0.48 * sr)
    peak_db = mic.peak_db + rng.uniform(-1.0, 1.0)
    # smooth in frequency, so computed on a coarse grid and interpolated (cheap per clip)
    f = np.linspace(0.0, sr / 2.0, 1025)
    f[0] = f[1] / 4
    h = (f / hp) ** 2 / np.sqrt(1 + (f / hp) ** 4) / np.sqrt(1 + (f / lp) ** 8)
    db = peak_db * np.exp(-0.5 * (np.log2(f / mic.peak_hz) / 0.5) ** 2)
    db += mic.tilt_db_oct * np.log2(np.maximum(f, 20.0) / 1000.0)
    h *= 10.0 ** (db / 20.0)
    return np.interp(_freqs(n, sr), f, h).astype(_F32)


# --------------------------------------------------------------------------------------------
# Public rendering API
# --------------------------------------------------------------------------------------------


def _check_machine(machine: str) -> _Spec:
    try:
        return _SPECS[machine]
    except KeyError:
        raise ConfigError(
            f"unknown synthetic machine type {machine!r}; choose from {', '.join(MACHINES)}"
        ) from None


def _choose_attributes(
    spec: _Spec, domain: str, rng: np.random.Generator, fixed: Mapping[str, str] | None
) -> dict[str, str]:
    attrs: dict[str, str] = {}
    fixed = dict(fixed or {})
    for key, src, tgt in spec.attributes:
        options = src if domain == "source" else tgt
        pick = options[int(rng.integers(len(options)))]  # always drawn: stream stays aligned
        if key in fixed:
            value = str(fixed.pop(key))
            if value not in src + tgt:
                raise ConfigError(
                    f"attribute {key}={value!r} is not one of {sorted(set(src + tgt))}"
                )
            pick = value
        attrs[key] = pick
    if fixed:
        raise ConfigError(
            f"unknown attribute(s) {sorted(fixed)}; known: {[k for k, _, _ in spec.attributes]}"
        )
    return attrs


def render_clip(
    machine: str,
    *,
    duration: float,
    sample_rate: int = SAMPLE_RATE,
    domain: str = "source",
    anomaly: bool = False,
    strength: float = 1.0,
    rng: np.random.Generator | int | None = None,
    anomaly_kind: str | None = None,
    anomaly_span: tuple[float, float] | None = None,
    attributes: Mapping[str, str] | None = None,
) -> tuple[np.ndarray, tuple[tuple[str, str], ...]]:
    """Render one clip; return ``(float32 mono audio in [-1, 1], attribute pairs)``.

    ``domain`` picks the operating conditions and recording set-up of that domain.
    ``attributes`` pins some attribute values (others are drawn for the domain), e.g. the speed
    of a long recording.  ``anomaly_span=(t0, t1)`` (seconds) confines the fault to that stretch
    with 20-ms fades, so one long normal recording can carry an inserted anomaly: outside the
    span the machine sound is the normal rendering sample for sample, and the recording differs
    from the all-normal one only by the microphone filter's few-ms smear around the fades.
    ``strength`` scales the fault (0 renders exactly the normal clip); ``anomaly_kind`` picks
    one of ``ANOMALY_KINDS[machine]`` instead of the clip's random choice.  ``rng`` (a
    Generator or a seed) decides everything else; the same value gives the same clip.
    """
    spec = _check_machine(machine)
    if domain not in DOMAINS:
        raise ConfigError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if not (duration > 0) or not math.isfinite(duration):
        raise ConfigError(f"duration must be a positive number of seconds, got {duration!r}")
    if sample_rate < 8000:
        raise ConfigError(f"sample_rate must be at least 8000 Hz, got {sample_rate}")
    if strength < 0 or not math.isfinite(strength):
        raise ConfigError(f"strength must be >= 0, got {strength!r}")
    kinds = ANOMALY_KINDS[machine]
    if anomaly_kind is not None and anomaly_kind not in kinds:
        raise ConfigError(f"{machine} anomaly kind must be one of {kinds}, got {anomaly_kind!r}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)

    n = max(1, int(round(duration * sample_rate)))
    sr = sample_rate
    # Independent streams: conditions, machine, environment, anomaly.  The anomaly stream is
    # separate so that a fault changes nothing but the fault.
    seeds = rng.integers(0, 2**63 - 1, size=4)
    cond_rng = np.random.default_rng(seeds[0])
    attrs = _choose_attributes(spec, domain, cond_rng, attributes)
    env = _ENVS[spec.envs[attrs[spec.env_key]]]
    gain_db = cond_rng.uniform(-2.0, 2.0)
    snr_db = cond_rng.uniform(*env.snr_db)
    noise_kind = env.noises[int(cond_rng.integers(len(env.noises)))]
    kind_pick = kinds[int(cond_rng.integers(len(kinds)))]
    kind = anomaly_kind or kind_pick

    def machine_signal(eff: float) -> np.ndarray:
        ctx = _Ctx(
            n,
            sr,
            attrs,
            np.random.default_rng(seeds[1]),
            eff,
            kind,
            np.random.default_rng(seeds[3]),
        )
        sig, ref = _RENDERERS[machine](ctx)
        return sig * _F32(1.0 / ref)

    eff = float(strength) * _FAULT_GAIN.get((machine, kind), 1.0) if anomaly else 0.0
    x = machine_signal(eff)
    if eff > 0 and anomaly_span is not None:
        t0, t1 = (float(v) for v in anomaly_span)
        w = _ramp_gate(_intervals(n, sr, np.array([t0]), np.array([t1])), sr, 0.02)
        normal = machine_signal(0.0)
        x = normal + w * (x - normal)

    x *= _F32(_loudness(machine, spec, attrs))

    env_rng = np.random.default_rng(seeds[2])
    bg = _background(noise_kind, n, sr, env_rng) * _F32(10.0 ** (-snr_db / 20.0))
    h = _mic_response(env.mic, n, sr, env_rng)
    y = sfft.irfft(sfft.rfft(x + bg) * h, n)
    y *= _F32(10.0 ** ((-26.0 + gain_db) / 20.0))  # recorder gain: about -26 dBFS, +-2 dB
    return _limit(y).astype(_F32), tuple(attrs.items())


def _limit(y: np.ndarray, knee: float = 0.9) -> np.ndarray:
    """Soft-saturate the rare samples above ``knee`` so the int16 file never clips.

    Sample by sample on purpose: rescaling the whole clip by its peak would make a loud fault
    turn the *entire* clip quieter, a level cue no real recording has.
    """
    over = np.abs(y) > knee
    if over.any():
        a = np.abs(y[over])
        y[over] = np.sign(y[over]) * (knee + (1 - knee) * np.tanh((a - knee) / (1 - knee)))
    return y


# --------------------------------------------------------------------------------------------
# Names, files, data set
# --------------------------------------------------------------------------------------------


def attribute_string(attrs: Sequence[tuple[str, str]]) -> str:
    """``car_A1_spd_28V_mic_1`` from pairs; ``noAttribute`` for none, as DCASE writes it."""
    return "_".join(f"{k}_{v}" for k, v in attrs) if attrs else "noAttribute"


def clip_file_name(
    split: str, domain: str, label: str, index: int, attrs: Sequence[tuple[str, str]]
) -> str:
    """The DCASE 2025 file name of one clip (section 00)."""
    return f"section_{SECTION}_{domain}_{split}_{label}_{index:04d}_{attribute_string(attrs)}.wav"


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM mono WAV bytes with a plain 44-byte header (no timestamps: reproducible)."""
    pcm = np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32767.0), -32768, 32767)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


def clip_rng(
    seed: int, machine: str, split: str, domain: str, label: str, index: int
) -> np.random.Generator:
    """The random stream of one clip of the data set: a pure function of its identity."""
    key = [
        int(seed) & 0xFFFFFFFF,
        int(seed) >> 32 & 0xFFFFFFFF,
        zlib.crc32(machine.encode()),
        _SPLIT_CODE[split],
        _DOMAIN_CODE[domain],
        _LABEL_CODE[label],
        int(index),
    ]
    return np.random.default_rng(np.random.SeedSequence(key))


@dataclass(frozen=True)
class _Job:
    root: str
    machine: str
    split: str
    domain: str
    label: str
    index: int
    seed: int
    duration: float
    sample_rate: int
    strength: float


def _render_job(job: _Job) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    rng = clip_rng(job.seed, job.machine, job.split, job.domain, job.label, job.index)
    audio, attrs = render_clip(
        job.machine,
        duration=job.duration,
        sample_rate=job.sample_rate,
        domain=job.domain,
        anomaly=job.label == "anomaly",
        strength=job.strength,
        rng=rng,
    )
    name = clip_file_name(job.split, job.domain, job.label, job.index, attrs)
    atomic_write_bytes(
        Path(job.root) / job.machine / job.split / name, wav_bytes(audio, job.sample_rate)
    )
    return job.split, name, attrs


def _attributes_csv(
    machine: str, rows: Sequence[tuple[str, str, tuple[tuple[str, str], ...]]]
) -> str:
    width = max((len(a) for _, _, a in rows), default=0)
    width = max(width, 1)
    header = ["file_name"] + [f"d{i}{s}" for i in range(1, width + 1) for s in ("p", "v")]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    order = {"train": 0, "test": 1}
    for split, name, attrs in sorted(rows, key=lambda r: (order[r[0]], r[1])):
        cells = [c for pair in attrs for c in pair]
        if not attrs:
            cells = ["noAttribute", ""]
        cells += [""] * (2 * width - len(cells))
        writer.writerow([f"{machine}/{split}/{name}", *cells])
    return buf.getvalue()


_MARKER = ".harken-synth.json"
#: Bumped whenever rendering changes, so that a re-run re-renders instead of keeping old clips.
SYNTH_VERSION = 1


def _read_marker(mdir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((mdir / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _up_to_date(mdir: Path, params: dict[str, Any], expected: int) -> bool:
    """The folder holds a complete earlier rendering with these exact parameters."""
    marker = _read_marker(mdir)
    if not marker or not marker.get("complete") or marker.get("params") != params:
        return False
    csv_path = mdir / "attributes_00.csv"
    try:
        with open(csv_path, encoding="utf-8", newline="") as fh:
            names = [row[0] for row in list(csv.reader(fh))[1:] if row]
    except OSError:
        return False
    return len(names) == expected and all((mdir.parent / name).is_file() for name in names)


def _clear(mdir: Path) -> None:
    for sub in ("train", "test"):
        if (mdir / sub).is_dir():
            shutil.rmtree(mdir / sub)
    (mdir / "attributes_00.csv").unlink(missing_ok=True)


def synthesize(
    out: str | Path,
    *,
    machines: Sequence[str] | None = None,
    seed: int = 0,
    n_train_source: int = DEFAULT_TRAIN_SOURCE,
    n_train_target: int = DEFAULT_TRAIN_TARGET,
    n_test: int = DEFAULT_TEST_PER_CELL,
    duration: float = DEFAULT_DURATION,
    sample_rate: int = SAMPLE_RATE,
    strength: float = 1.0,
    progress: bool = True,
    workers: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic data set under ``out`` in the DCASE 2025 layout and return ``out``.

    ``n_test`` clips go in each of the four test cells (source/target x normal/anomaly).

    Re-runs are cheap and safe: each machine folder gets a hidden ``.harken-synth.json`` marker
    (discovery skips hidden files).  A folder already holding a complete rendering with the same
    parameters is kept as is; one rendered with other parameters (or interrupted) is cleared
    and rendered again, so a smaller re-run never leaves stale clips behind.  A non-empty folder
    *without* the marker is someone else's data and is refused unless ``overwrite``.
    ``workers > 1`` renders in processes; the bytes do not depend on it.
    """
    out = Path(out)
    machines = list(MACHINES if machines is None else machines)
    if not machines:
        raise ConfigError("no machine types given")
    for m in machines:
        _check_machine(m)
    if len(set(machines)) != len(machines):
        raise ConfigError(f"machine types repeated: {machines}")
    for name, value in (
        ("n_train_source", n_train_source),
        ("n_train_target", n_train_target),
        ("n_test", n_test),
    ):
        if int(value) != value or value < 0 or value > 9999:
            raise ConfigError(
                f"{name} must be an integer in 0..9999 (4-digit clip index), got {value!r}"
            )
    if n_train_source + n_train_target + n_test == 0:
        raise ConfigError("nothing to write: every clip count is 0")
    if not (0 < duration <= 600) or not math.isfinite(duration):
        raise ConfigError(f"duration must be in (0, 600] seconds, got {duration!r}")
    if sample_rate < 8000:
        raise ConfigError(f"sample_rate must be at least 8000 Hz, got {sample_rate}")
    if strength < 0 or not math.isfinite(strength):
        raise ConfigError(f"strength must be >= 0, got {strength!r}")

    params = {
        "version": SYNTH_VERSION,
        "seed": int(seed),
        "n_train_source": int(n_train_source),
        "n_train_target": int(n_train_target),
        "n_test": int(n_test),
        "duration": float(duration),
        "sample_rate": int(sample_rate),
        "strength": float(strength),
    }
    per_machine_total = int(n_train_source) + int(n_train_target) + 4 * int(n_test)
    todo: list[str] = []
    for m in machines:
        mdir = out / m
        if mdir.is_dir() and any(mdir.iterdir()):
            if _up_to_date(mdir, params, per_machine_total):
                log.info("%s: up to date (same parameters), kept", mdir)
                continue
            if _read_marker(mdir) is None and not overwrite:
                raise DatasetError(
                    "folder holds files harken synth did not write; pass overwrite=True "
                    "(--overwrite) to replace its clips",
                    path=mdir,
                )
            _clear(mdir)
        for sub in ("train", "test"):
            (mdir / sub).mkdir(parents=True, exist_ok=True)
        # claim the folder before the first clip, so an interrupted run is recognised as ours
        atomic_write_json(mdir / _MARKER, {"complete": False, "params": params})
        todo.append(m)

    jobs: list[_Job] = []
    for m in todo:
        cells = [
            ("train", "source", "normal", n_train_source),
            ("train", "target", "normal", n_train_target),
        ]
        cells += [("test", d, lab, n_test) for d in DOMAINS for lab in ("normal", "anomaly")]
        for split, domain, label, count in cells:
            jobs += [
                _Job(
                    str(out),
                    m,
                    split,
                    domain,
                    label,
                    i,
                    int(seed),
                    float(duration),
                    int(sample_rate),
                    float(strength),
                )
                for i in range(count)
            ]

    started = time.perf_counter()
    bar = _progress(len(jobs), progress)
    results: list[tuple[str, str, tuple[tuple[str, str], ...]]] = []
    try:
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=min(workers, os.cpu_count() or 1)) as pool:
                for r in pool.map(_render_job, jobs, chunksize=8):
                    results.append(r)
                    bar(1)
        else:
            for job in jobs:
                results.append(_render_job(job))
                bar(1)
    finally:
        bar(0, close=True)

    per_machine: dict[str, list[tuple[str, str, tuple[tuple[str, str], ...]]]] = {
        m: [] for m in todo
    }
    for job, r in zip(jobs, results, strict=True):
        per_machine[job.machine].append(r)
    for m, rows in per_machine.items():
        atomic_write_text(out / m / "attributes_00.csv", _attributes_csv(m, rows))
        atomic_write_json(out / m / _MARKER, {"complete": True, "params": params})
    if jobs:
        log.info(
            "wrote %d clips of %d machine type(s) to %s in %.1f s",
            len(jobs),
            len(todo),
            out,
            time.perf_counter() - started,
        )
    return out


def _progress(total: int, enabled: bool) -> Callable[..., None]:
    if not enabled:
        return lambda k, close=False: None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="clip", desc="synth")

    def update(k: int, close: bool = False) -> None:
        if k:
            bar.update(k)
        if close:
            bar.close()

    return update


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _machine_list(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    lookup = {m.lower(): m for m in MACHINES}
    out = []
    for name in names:
        if name.lower() not in lookup:
            raise argparse.ArgumentTypeError(
                f"unknown machine type {name!r}; choose from {','.join(MACHINES)}"
            )
        out.append(lookup[name.lower()])
    return out


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic machine-sound dataset in the DCASE 2025 layout",
        description=(
            "Render physically motivated machine sounds (normal and anomalous, source and target "
            "domains) into OUT/<machine>/{train,test}/ with DCASE 2025 file names and "
            "attributes_00.csv.  Same seed, same bytes."
        ),
    )
    p.add_argument("out", type=Path, help="output root folder")
    p.add_argument(
        "--machines",
        type=_machine_list,
        default=None,
        help=f"comma-separated machine types (default: all of {','.join(MACHINES)})",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--train-source",
        type=int,
        default=DEFAULT_TRAIN_SOURCE,
        help=f"source-domain training clips per machine (default {DEFAULT_TRAIN_SOURCE})",
    )
    p.add_argument(
        "--train-target",
        type=int,
        default=DEFAULT_TRAIN_TARGET,
        help=f"target-domain training clips per machine (default {DEFAULT_TRAIN_TARGET})",
    )
    p.add_argument(
        "--test-per-cell",
        type=int,
        default=DEFAULT_TEST_PER_CELL,
        help="test clips per domain x label cell (default %(default)s)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION,
        help="clip length in seconds (default 10)",
    )
    p.add_argument(
        "--sample-rate", type=int, default=SAMPLE_RATE, help="sample rate in Hz (default 16000)"
    )
    p.add_argument(
        "--strength",
        type=float,
        default=1.0,
        help="anomaly strength: 0 = anomalies sound normal, 1 = default difficulty",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="render in this many processes (default 1)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the clips of machine folders that hold files harken synth did not write",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    out = synthesize(
        args.out,
        machines=args.machines,
        seed=args.seed,
        n_train_source=args.train_source,
        n_train_target=args.train_target,
        n_test=args.test_per_cell,
        duration=args.duration,
        sample_rate=args.sample_rate,
        strength=args.strength,
        progress=not args.no_progress,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    print(out)
    return 0
