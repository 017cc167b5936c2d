"""Configuration: nested dataclasses loaded from YAML, with dotted command-line overrides.

A run's whole configuration is one :class:`Config`.  It is stored in every checkpoint as plain
data (``asdict``), so a model rebuilds from its checkpoint file alone and loads under
``torch.load(weights_only=True)``.  Every field is documented in ``docs/CONFIG.md``; the
comments here say why a default was chosen.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harken.errors import ConfigError


@dataclass
class AudioConfig:
    sample_rate: int = 16000
    # Multi-channel policy.  "select" keeps one channel (DCASE built its single-channel sets
    # from one microphone of the MIMII array, so that is the default); "mean" downmixes.
    channel: str = "select"
    channel_index: int = 0
    # A file at another rate is resampled with scipy's polyphase filter, or refused.
    resample: str = "polyphase"  # "polyphase" | "refuse"
    # NaN / Inf samples: refuse the file (default: never a wrong number) or zero them with a warning.
    nonfinite: str = "error"  # "error" | "zero"


@dataclass
class FeatureConfig:
    # n_fft 1024 (64 ms) and hop 156 give 1 + 160000 // 156 = 1026 frames for a 10-s 16-kHz
    # clip: the report's 128 x 1024 input after a 1024-frame window.
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 156
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None  # None: sample_rate / 2
    power: float = 2.0
    amin: float = 1e-10  # floor before log10, so all-zero audio gives a finite -100 dB
    center: bool = True
    cache_dtype: str = "float16"


@dataclass
class WindowConfig:
    """How a clip of any length becomes fixed-size model inputs."""

    frames: int = 1024
    # Training: one random crop of ``frames`` per clip per draw.  Test: windows every
    # ``test_hop`` frames covering the clip, window scores combined by ``aggregate``.
    train_crop: str = "random"  # "random" | "center"
    test_hop: int = 512
    aggregate: str = "mean"  # "mean" | "max"
    # A clip shorter than one window is tiled (repeated) to length, padded with its minimum
    # value, or refused.
    short_clip: str = "repeat"  # "repeat" | "pad" | "error"


@dataclass
class ScalingConfig:
    """Scaling of log-mel dB values to [0, 1] to match the decoder's Sigmoid output.

    Per-mel-band min-max from training data quantiles; inputs are not clipped, so test audio
    louder than anything in training still shows up as reconstruction error.
    """

    kind: str = "band_minmax"  # "band_minmax" | "global_minmax"
    q_low: float = 0.001
    q_high: float = 0.999


@dataclass
class ModelConfig:
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    latent_dim: int = 128
    domain_hidden: int = 64
    domain_dropout: float = 0.5
    grl_lambda: float = 0.1


@dataclass
class LossConfig:
    alpha_recon: float = 0.5
    svdd_nu: float = 3.0
    # Components of c closer to zero than this are pushed to +/- eps (Ruff et al.), so a
    # normal sample cannot reach the center with trivially zero weights.
    center_eps: float = 0.1
    use_svdd: bool = True
    use_dann: bool = True
    use_pseudo: bool = True


@dataclass
class AugmentConfig:
    """Pseudo-anomalies made from normal training clips (see harken.augment)."""

    names: list[str] = field(
        default_factory=lambda: [
            "noise_burst",
            "freq_shift",
            "tone",
            "band_gain",
            "clicks",
            "time_stretch_local",
        ]
    )
    # Fraction of normal clips (per machine x domain) that seed pseudo-anomalies.
    fraction: float = 0.5
    strength: float = 1.0


@dataclass
class TrainConfig:
    setting: str = "generalized"  # "generalized" (one model over all machines) | "per_machine"
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 1e-5
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    # Which epoch's weights the run keeps: "best" validation AUC (the report) or the "last".
    selection: str = "best"  # "best" | "last"
    # Validation: this fraction of normal training clips (per machine x domain, at least one
    # target clip where a machine has two or more) is held out with its pseudo-anomalies.
    val_fraction: float = 0.1
    # Inputs per epoch; 0 means as many as the balanced sampler needs to show every normal
    # training clip once in expectation (see harken.training.sampler).
    epoch_size: int = 0
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    # "auto": bf16 autocast on CUDA devices with bf16, fp32 elsewhere (CPU bf16 without
    # AVX512-BF16/AMX is emulated and slower; docs/SPEED.md).
    precision: str = "auto"  # "auto" | "fp32" | "bf16"
    # channels-last: oneDNN/cuDNN convolutions without layout reorders (measured: benchmarks/RESULTS.md)
    channels_last: bool = True
    compile: bool = False
    num_workers: int = 0
    # torch intra-op threads (also ONNX Runtime's when scoring); 0 keeps PyTorch's default.
    threads: int = 0
    # CPU training: glibc keeps freed memory for reuse (no page faults per step; RSS stays at peak).
    retain_memory: bool = True
    # DDP BatchNorm: per-rank statistics with rank 0's buffers broadcast (default), or SyncBatchNorm.
    sync_batchnorm: bool = False
    include_supplemental: bool = True
    log_tensorboard: bool = True


@dataclass
class ScoreConfig:
    kind: str = "reconstruction"  # "reconstruction" (Eq. 9) | "svdd" | "fused" | "mahalanobis"
    fused_weights: list[float] = field(default_factory=lambda: [0.5, 0.5])
    # "mahalanobis": the residual covariance is shrunk toward a scaled identity by this much
    # (relative to the mean variance), since a section has few training windows for the
    # 2 x n_mels dimensions (harken.systems.cae_dann.mahalanobis).
    mahalanobis_shrinkage: float = 0.001
    # Decision threshold: quantile of a gamma distribution fitted to training-clip scores.
    threshold_quantile: float = 0.9
    # Window scoring (test, score, validation): "auto" runs ONNX Runtime on the CPU when it is
    # installed (fastest there, benchmarks/RESULTS.md) and torch otherwise; see harken.speed.
    backend: str = "auto"  # "auto" | "torch" | "onnxruntime"
    batch_size: int = 64  # windows per forward pass
    precision: str = "auto"  # as train.precision; reduced precision runs on the torch backend


@dataclass
class BaselineConfig:
    """The DCASE 2023-2025 autoencoder baseline (its own features and training)."""

    n_mels: int = 128
    n_fft: int = 1024
    hop_length: int = 512
    power: float = 2.0
    n_frames: int = 5
    hidden: int = 128
    bottleneck: int = 8
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    val_fraction: float = 0.1


@dataclass
class AuMConfig:
    """The machine-generalized Audio Mamba comparison system."""

    patch: int = 16
    embed_dim: int = 64
    depth: int = 2
    d_state: int = 8
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-4
    # Draws per epoch (0: as train.epoch_size=0, every normal clip once in expectation).  The
    # CPU scan costs ~40 ms of CPU per 128 x 128 input, so CPU runs set it (demo: 512).
    epoch_size: int = 0


@dataclass
class Config:
    system: str = "cae-dann"
    audio: AudioConfig = field(default_factory=AudioConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    aum: AuMConfig = field(default_factory=AuMConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<dict>") -> Config:
        config = _build(cls, data, source, "")
        check_ranges(config, source=source)
        return config


# Value constraints, checked when a config is loaded so that a bad value stops the run at once
# with the field's name, not later inside PyTorch with a traceback.  (field, test, requirement)
_GT0 = (lambda v: v > 0, "must be > 0")
_GE0 = (lambda v: v >= 0, "must be >= 0")
_UNIT_OPEN = (lambda v: 0 < v < 1, "must be between 0 and 1 (exclusive)")
_UNIT_HALF_OPEN = (lambda v: 0 <= v < 1, "must be >= 0 and < 1")


def _one_of(*choices: str) -> tuple[Any, str]:
    return (lambda v: v in choices, "must be one of " + ", ".join(repr(c) for c in choices))


_RANGES: dict[str, tuple[Any, str]] = {
    "audio.sample_rate": _GT0,
    "audio.channel": _one_of("select", "mean"),
    "audio.channel_index": _GE0,
    "audio.resample": _one_of("polyphase", "refuse"),
    "audio.nonfinite": _one_of("error", "zero"),
    "features.n_fft": _GT0,
    "features.win_length": _GT0,
    "features.hop_length": _GT0,
    "features.n_mels": _GT0,
    "features.f_min": _GE0,
    "features.power": _GT0,
    "features.amin": _GT0,
    "window.frames": _GT0,
    "window.test_hop": _GT0,
    "window.train_crop": _one_of("random", "center"),
    "window.aggregate": _one_of("mean", "max"),
    "window.short_clip": _one_of("repeat", "pad", "error"),
    "scaling.kind": _one_of("band_minmax", "global_minmax"),
    "scaling.q_low": _UNIT_HALF_OPEN,
    "scaling.q_high": (lambda v: 0 < v <= 1, "must be > 0 and <= 1"),
    "model.latent_dim": _GT0,
    "model.domain_hidden": _GT0,
    "model.domain_dropout": _UNIT_HALF_OPEN,
    "model.grl_lambda": _GE0,
    "loss.alpha_recon": _GE0,
    "loss.svdd_nu": _GE0,
    "loss.center_eps": _GE0,
    "augment.fraction": (lambda v: 0 < v <= 1, "must be > 0 and <= 1"),
    "augment.strength": _GE0,
    "train.setting": _one_of("generalized", "per_machine"),
    "train.epochs": _GE0,
    "train.batch_size": _GT0,
    "train.lr": _GT0,
    "train.weight_decay": _GE0,
    "train.plateau_factor": _UNIT_OPEN,
    "train.plateau_patience": _GE0,
    "train.selection": _one_of("best", "last"),
    "train.val_fraction": _UNIT_HALF_OPEN,
    "train.epoch_size": _GE0,
    "train.precision": _one_of("auto", "fp32", "bf16"),
    "train.num_workers": _GE0,
    "train.threads": _GE0,
    "score.threshold_quantile": _UNIT_OPEN,
    "score.mahalanobis_shrinkage": _GT0,
    "score.backend": _one_of("auto", "torch", "onnxruntime"),
    "score.batch_size": _GT0,
    "score.precision": _one_of("auto", "fp32", "bf16"),
    "baseline.n_mels": _GT0,
    "baseline.n_fft": _GT0,
    "baseline.hop_length": _GT0,
    "baseline.power": _GT0,
    "baseline.n_frames": _GT0,
    "baseline.hidden": _GT0,
    "baseline.bottleneck": _GT0,
    "baseline.epochs": _GE0,
    "baseline.batch_size": _GT0,
    "baseline.lr": _GT0,
    "baseline.val_fraction": _UNIT_HALF_OPEN,
    "aum.patch": _GT0,
    "aum.embed_dim": _GT0,
    "aum.depth": _GT0,
    "aum.d_state": _GT0,
    "aum.epochs": _GE0,
    "aum.batch_size": _GT0,
    "aum.lr": _GT0,
    "aum.epoch_size": _GE0,
}


def check_ranges(config: Config, *, source: str = "<config>") -> None:
    """Refuse values outside their meaningful range (see ``_RANGES``), naming the field."""
    for name, (ok, requirement) in _RANGES.items():
        section, key = name.split(".")
        value = getattr(getattr(config, section), key)
        if not ok(value):
            raise ConfigError(f"field {name} {requirement}, got {value!r}", path=source)
    if not config.scaling.q_low < config.scaling.q_high:
        raise ConfigError(
            f"scaling.q_low ({config.scaling.q_low}) must be below scaling.q_high ({config.scaling.q_high})",
            path=source,
        )
    if config.features.f_max is not None and not config.features.f_min < config.features.f_max:
        raise ConfigError(
            f"features.f_max ({config.features.f_max}) must be above features.f_min ({config.features.f_min})",
            path=source,
        )
    if not config.model.channels or any(c <= 0 for c in config.model.channels):
        raise ConfigError(f"field model.channels must be a non-empty list of positive integers, got {config.model.channels!r}", path=source)
    if not config.score.fused_weights or any(w < 0 for w in config.score.fused_weights) or sum(config.score.fused_weights) <= 0:
        raise ConfigError(f"field score.fused_weights must be non-negative with a positive sum, got {config.score.fused_weights!r}", path=source)


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"section '{prefix or 'root'}' must be a mapping, got {type(data).__name__}", path=source)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(prefix + k for k in unknown)}", path=source)
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, source, prefix + key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, source: str, name: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, name + ".")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, source, name)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"field {name} must be a list, got {value!r}", path=source)
        (inner,) = typing.get_args(tp)
        return [_coerce(inner, v, source, name) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
        raise ConfigError(f"field {name} must be true or false, got {value!r}", path=source)
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"field {name} must be a number, got {value!r}", path=source)
        try:
            out = tp(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"field {name} must be {tp.__name__}, got {value!r}", path=source) from None
        if tp is float and not math.isfinite(out):
            raise ConfigError(f"field {name} must be a finite number, got {value!r}", path=source)
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"field {name} must be an integer, got {value!r}", path=source)
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"field {name} must be a string, got {value!r}", path=source)
        return str(value)
    return value


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
    node[keys[-1]] = value


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


CONFIG_DIR = Path(__file__).parent / "configs"


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path, or the name of a bundled config (``paper``, ``demo``)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    bundled = CONFIG_DIR / f"{name_or_path}.yaml"
    if bundled.exists():
        return bundled
    raise ConfigError("no such config file (and no bundled config of that name)", path=path)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults) and apply ``section.field=value`` overrides."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        resolved = resolve_config_path(path)
        source = str(resolved)
        try:
            loaded = yaml.safe_load(resolved.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML: {exc}", path=resolved) from None
        data = loaded or {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({first})") from None
        _set_dotted(data, key.strip(), value)
    return Config.from_dict(data, source=source)


def merge_dicts(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return _deep_merge(base, extra)
