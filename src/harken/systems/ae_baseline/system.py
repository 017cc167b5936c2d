"""The DCASE 2023-2025 autoencoder baseline as two harken systems.

* ``ae-baseline`` - score kind ``mse``: mean squared reconstruction error over all of a clip's
  five-frame vectors (the official ``--score MSE``).
* ``ae-baseline-mahala`` - score kinds ``mahalanobis`` (native) and ``mse``: the official
  ``--score MAHALA`` selective Mahalanobis score, with per-domain covariances of reconstruction
  residuals estimated on *training* clips after training (the official extra "epoch
  epochs + 1"), and the MSE score of the same network alongside.

Both train one :class:`~harken.systems.ae_baseline.torch_model.AENet` per machine type, as the
official recipe does, on its own features (128 mels, n_fft 1024, hop 512, power 2, dB via
``20 / power * log10(mel + eps)``) at each file's native rate.

Reference numbers: the organizers publish this system's DCASE 2025 development-set official
score as about 0.5625 (MSE) and 0.5534 (Mahalanobis).  harken cannot run the real data here;
the tests check the arithmetic against the official code instead.

Deliberate differences from the official code (for reproducibility, bounded memory or the shared
threshold machinery; none changes the network, the features or the score formulas):

* The 10 % validation split is drawn over *clips* with a seeded generator, not over vectors
  with an unseeded ``train_test_split``: overlapping vectors of one clip would otherwise sit on
  both sides and make the validation loss optimistic.
* Covariances are centered on the global mean of the training residuals (``numpy.cov``), not
  on each batch's own mean, and divided by the number of residual blocks minus one (the
  official code divides by the number of 640-dim vectors minus one, which inflates both
  covariances by about n_frames = 5 alike: the min of the two distances and every ranking are
  unchanged, the scores are about 5x larger here).  Inverses are taken in float64 (pinv if
  singular) rather than float32 ``torch.inverse``.
* Decision thresholds come from the shared :meth:`Detector.calibrate` (gamma fit to per-clip
  training scores) instead of a gamma fit to per-batch training losses.
* Model selection: the official code keeps the last epoch's weights (it saves every epoch,
  unconditionally), and so does this by default; set ``detector.selection = "best"`` before
  ``fit`` to keep the epoch with the lowest validation loss instead.
"""

from __future__ import annotations

import copy
import math
import sys
import zlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from harken.config import AudioConfig, BaselineConfig, Config, FeatureConfig
from harken.errors import AudioError, ConfigError, DatasetError
from harken.systems import register_system
from harken.systems.ae_baseline.torch_model import (
    AENet,
    CovarianceAccumulator,
    FrameBank,
    precision_matrix,
    selective_mahalanobis,
    stack_frames,
)
from harken.systems.base import ClipScores, Detector

if TYPE_CHECKING:
    from harken.data.dataset import Clip

STATE_FORMAT = "ae-baseline/1"
DOMAINS = ("source", "target")
# Vectors per forward pass at scoring time: bounds memory for hour-long recordings.
_SCORE_CHUNK = 16384


def baseline_feature_config(baseline: BaselineConfig) -> FeatureConfig:
    """harken's :class:`FeatureConfig` for the official features.

    ``amin`` is ``sys.float_info.epsilon`` because the official code floors the mel energies at
    that value before ``log10``; win_length = n_fft and f_min/f_max = 0/Nyquist are librosa's
    defaults, which the official call leaves in place.  Cached as float32: the official
    pipeline keeps features in float64, and float16 would round dB values by up to ~0.03 dB.
    """
    return FeatureConfig(
        n_fft=baseline.n_fft,
        win_length=baseline.n_fft,
        hop_length=baseline.hop_length,
        n_mels=baseline.n_mels,
        f_min=0.0,
        f_max=None,
        power=baseline.power,
        amin=sys.float_info.epsilon,
        center=True,
        cache_dtype="float32",
    )


def native_audio_config(audio: AudioConfig, sample_rate: int) -> AudioConfig:
    """The file's own rate (librosa ``sr=None``) and a channel mean (librosa ``mono=True``)."""
    return replace(audio, sample_rate=int(sample_rate), channel="mean", resample="refuse")


def _sample_rate(path: str | Path) -> int:
    import soundfile

    try:
        return int(soundfile.info(str(path)).samplerate)
    except Exception as exc:  # noqa: BLE001 - any libsndfile failure is an unreadable file
        raise AudioError(f"cannot read the audio header ({exc})", path=path) from None


def _domain_of(clip: Clip) -> str:
    # The official code treats every clip whose name does not say "target" as source.
    return "target" if clip.domain == "target" else "source"


def _machine_seed(seed: int, machine: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(machine.encode("utf-8"))) % (2**31)


def split_train_val(n_clips: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded clip-level split: ``ceil(fraction * n)`` validation clips (sklearn's rounding),
    at least one clip always left for training; no validation below two clips."""
    n_val = math.ceil(fraction * n_clips) if fraction > 0 else 0
    n_val = min(n_val, n_clips - 1) if n_clips >= 2 else 0
    order = np.random.default_rng(seed).permutation(n_clips)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


class AEBaseline(Detector):
    """Per-machine-type MLP autoencoders scored by mean squared error."""

    name = "ae-baseline"
    score_kinds: tuple[str, ...] = ("mse",)
    #: estimate per-domain residual covariances after training (the Mahalanobis variant)
    uses_mahalanobis = False

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.baseline = config.baseline
        if self.baseline.n_frames < 1 or self.baseline.n_mels < 1:
            raise ConfigError("baseline.n_frames and baseline.n_mels must be positive")
        self.features = baseline_feature_config(self.baseline)
        self.input_dim = self.baseline.n_mels * self.baseline.n_frames
        #: "last" (official) or "best" (lowest validation loss)
        self.selection = "last"
        #: FeatureCache root; None: $HARKEN_CACHE_DIR or ~/.cache/harken/features (as CAE-DANN)
        self.cache_dir: Path | None = None
        self.models: dict[str, AENet] = {}
        #: per machine: {"source": cov, "target": cov} covariances of residual blocks (float64)
        self.covariances: dict[str, dict[str, torch.Tensor]] = {}
        #: per machine: {"source": n, "target": n} residual blocks behind each covariance
        self.covariance_counts: dict[str, dict[str, int]] = {}
        self._precisions: dict[str, dict[str, torch.Tensor]] = {}
        self._logmel_modules: dict[int, torch.nn.Module] = {}

    # ------------------------------------------------------------------ features
    @property
    def device(self) -> torch.device:
        requested = self.config.train.device
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(requested)

    def feature_cache(self, sample_rate: int) -> Any:
        """The shared content-keyed cache for files at ``sample_rate`` (keyed by these features)."""
        from harken.features.cache import FeatureCache

        root = self.cache_dir
        if root is None:  # the same default location as CAE-DANN's features
            from harken.systems.cae_dann.system import default_cache_dir

            root = default_cache_dir()
        audio = native_audio_config(self.config.audio, sample_rate)
        return FeatureCache(root, audio, self.features)

    def clip_features(self, clips: Sequence[Clip], *, progress: bool) -> list[np.ndarray]:
        """Official dB log-mels ``[n_mels, frames]`` (float32) of ``clips``, each at its own rate."""
        return self._features_and_rates(clips, progress=progress)[0]

    def _features_and_rates(
        self, clips: Sequence[Clip], *, progress: bool
    ) -> tuple[list[np.ndarray], list[int]]:
        rates = [_sample_rate(c.path) for c in clips]
        out: list[np.ndarray] = [np.empty(0, np.float32)] * len(clips)
        for rate in sorted(set(rates)):
            idx = [i for i, r in enumerate(rates) if r == rate]
            mels = self.feature_cache(rate).build(
                [clips[i].path for i in idx],
                workers=self.config.train.num_workers,
                progress=progress,
            )
            for i, mel in zip(idx, mels, strict=True):
                # A writable copy, independent of the cache's memory-mapped file.
                out[i] = self._official_scale(np.array(mel, dtype=np.float32))
                if out[i].shape[1] < self.baseline.n_frames:
                    raise AudioError(
                        f"clip too short for the baseline: {out[i].shape[1]} frames, "
                        f"need {self.baseline.n_frames}",
                        path=clips[i].path,
                    )
        return out, rates

    def waveform_features(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """Official dB log-mel of an in-memory mono waveform (no cache)."""
        from harken.features.logmel import LogMel

        module = self._logmel_modules.get(sample_rate)
        if module is None:
            module = self._logmel_modules[sample_rate] = LogMel(self.features, sample_rate)
        with torch.inference_mode():
            mel = module(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))).numpy()
        return self._official_scale(mel)

    def _official_scale(self, mel: np.ndarray) -> np.ndarray:
        # harken's LogMel gives 10 * log10(mel); the official scale is 20 / power * log10(mel).
        if self.features.power != 2.0:
            mel = mel * np.float32(2.0 / self.features.power)
        return mel

    def new_model(self) -> AENet:
        return AENet(self.input_dim, self.baseline.hidden, self.baseline.bottleneck)

    # ------------------------------------------------------------------ training
    def _fit(
        self, clips: Sequence[Clip], *, run_dir: Path | None, progress: bool, resume: bool
    ) -> None:
        """One autoencoder per machine type, trained from scratch.

        ``resume`` is accepted and ignored: a machine type trains in minutes on a GPU, so an
        interrupted run retrains (the official ``--restart`` resumes from a per-epoch
        checkpoint instead).
        """
        if self.selection not in ("last", "best"):
            raise ConfigError(f"selection must be 'last' or 'best', got {self.selection!r}")
        by_machine: dict[str, list[Clip]] = {}
        for clip in clips:
            by_machine.setdefault(clip.machine, []).append(clip)
        self.models, self.covariances, self.covariance_counts, self._precisions = {}, {}, {}, {}
        self.history_ = []
        for index, machine in enumerate(sorted(by_machine)):
            self._fit_machine(index, machine, by_machine[machine], progress)

    def _fit_machine(self, index: int, machine: str, clips: list[Clip], progress: bool) -> None:
        cfg = self.baseline
        seed = _machine_seed(self.config.train.seed, machine)
        train_idx, val_idx = split_train_val(len(clips), cfg.val_fraction, seed)
        mels = self.clip_features(clips, progress=progress)
        device = self.device
        train_bank = FrameBank([mels[i] for i in train_idx], cfg.n_frames)
        val_bank = FrameBank([mels[i] for i in val_idx], cfg.n_frames) if val_idx else None
        del mels

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.new_model().to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        generator = torch.Generator().manual_seed(seed)
        best_state: dict[str, torch.Tensor] | None = None
        best_val = math.inf
        bar = tqdm(range(1, cfg.epochs + 1), desc=f"ae-baseline {machine}", disable=not progress)
        for epoch in bar:
            model.train()
            order = torch.randperm(len(train_bank), generator=generator)
            total, seen = 0.0, 0
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                if len(idx) <= 1:  # BatchNorm needs two rows (the official loop skips these too)
                    continue
                x = train_bank.vectors(idx).to(device)
                recon, _ = model(x)
                loss = F.mse_loss(recon, x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                seen += len(idx)
            train_loss = total / max(seen, 1)
            val_loss = self._mean_mse(model, val_bank) if val_bank is not None else math.nan
            self.history_.append(
                {
                    "machine_index": float(index),
                    "epoch": float(epoch),
                    "loss": train_loss,
                    "val_loss": val_loss,
                }
            )
            bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
            if self.selection == "best" and val_loss < best_val:
                best_val = val_loss
                best_state = copy.deepcopy(model.state_dict())
        if self.selection == "best" and best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        self.models[machine] = model
        if self.uses_mahalanobis:
            domains = [_domain_of(clips[i]) for i in train_idx]
            self._fit_covariances(machine, model, train_bank, domains)

    @torch.no_grad()
    def _mean_mse(self, model: AENet, bank: FrameBank) -> float:
        total, n = 0.0, 0
        for start in range(0, len(bank), _SCORE_CHUNK):
            idx = torch.arange(start, min(start + _SCORE_CHUNK, len(bank)))
            residual = self._residuals(model, bank.vectors(idx))
            total += float(residual.double().pow(2).sum())
            n += residual.numel()
        return total / max(n, 1)

    @torch.no_grad()
    def _fit_covariances(
        self, machine: str, model: AENet, bank: FrameBank, domains: list[str]
    ) -> None:
        """Per-domain covariances of ``n_mels``-dim residual blocks of the training clips.

        Only clips passed here (the training part of the training split) contribute; test
        clips never do.  A machine without target training clips uses the source covariance
        for both, as the official code does.
        """
        model.eval()
        acc = {d: CovarianceAccumulator(self.baseline.n_mels) for d in DOMAINS}
        is_target = torch.tensor([d == "target" for d in domains], dtype=torch.bool)
        for start in range(0, len(bank), _SCORE_CHUNK):
            idx = torch.arange(start, min(start + _SCORE_CHUNK, len(bank)))
            residual = self._residuals(model, bank.vectors(idx))  # the sign does not matter
            target = is_target[bank.owner[idx]]
            acc["source"].update(residual[~target])
            acc["target"].update(residual[target])
        cov_source = (
            acc["source"].covariance() if acc["source"].n >= 2 else acc["target"].covariance()
        )
        cov_target = acc["target"].covariance() if acc["target"].n >= 2 else cov_source.clone()
        self.covariances[machine] = {"source": cov_source, "target": cov_target}
        self.covariance_counts[machine] = {d: acc[d].n for d in DOMAINS}

    def precisions(self, machine: str) -> dict[str, torch.Tensor]:
        """Inverse covariances of a machine type (computed once, float64)."""
        if machine not in self._precisions:
            self._precisions[machine] = {
                d: precision_matrix(c) for d, c in self.covariances[machine].items()
            }
        return self._precisions[machine]

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def _residuals(self, model: AENet, vectors: torch.Tensor) -> torch.Tensor:
        """``recon - x`` of ``vectors`` on CPU, in passes of at most ``_SCORE_CHUNK`` vectors."""
        model.eval()
        out = []
        for start in range(0, len(vectors), _SCORE_CHUNK):
            x = vectors[start : start + _SCORE_CHUNK].to(self.device)
            recon, _ = model(x)
            out.append((recon - x).cpu())
        return torch.cat(out) if out else vectors.new_zeros((0, self.input_dim))

    def score_logmel(self, machine: str, logmel: np.ndarray | torch.Tensor) -> dict[str, Any]:
        """All score kinds of one clip's log-mel, plus per-vector scores of each kind."""
        return self.score_logmels(machine, [logmel])[0]

    @torch.no_grad()
    def score_logmels(
        self, machine: str, logmels: Sequence[np.ndarray | torch.Tensor]
    ) -> list[dict[str, Any]]:
        """:meth:`score_logmel` of many clips of one machine type, their vectors batched
        through the network together (a few large passes instead of one small pass per clip)."""
        n_frames, block = self.baseline.n_frames, self.baseline.n_mels
        vectors = [
            stack_frames(torch.as_tensor(np.array(m, dtype=np.float32)), n_frames) for m in logmels
        ]
        counts = [len(v) for v in vectors]
        residual = self._residuals(self.models[machine], torch.cat(vectors))  # recon - x
        per_vector_mse = residual.pow(2).mean(1).double().split(counts)
        if self.uses_mahalanobis:
            prec = self.precisions(machine)
            # Per vector: the clip statistic over that vector's own n_frames blocks.
            means = residual.reshape(len(residual), n_frames, block).double().mean(1)
            per = [((means @ prec[d]) * means).sum(1) for d in DOMAINS]
            per_vector_maha = torch.minimum(per[0], per[1]).split(counts)
        results: list[dict[str, Any]] = []
        for i, clip_residual in enumerate(residual.split(counts)):
            out: dict[str, Any] = {
                "mse": float(per_vector_mse[i].mean()),
                "windows": {"mse": per_vector_mse[i].numpy()},
            }
            if self.uses_mahalanobis:
                score = selective_mahalanobis(clip_residual, prec["source"], prec["target"], block)
                out["mahalanobis"] = float(score)
                out["windows"]["mahalanobis"] = per_vector_maha[i].numpy()
            results.append(out)
        return results

    def _score_clips(self, clips: Sequence[Clip], *, progress: bool) -> ClipScores:
        clips = list(clips)
        missing = sorted({c.machine for c in clips} - set(self.models))
        if missing:
            raise DatasetError(
                f"{self.name} trains one model per machine type and has none for {', '.join(missing)} "
                f"(trained: {', '.join(sorted(self.models)) or 'none'})"
            )
        scores = {kind: np.zeros(len(clips), dtype=np.float64) for kind in self.score_kinds}
        windows: list[np.ndarray] = [np.empty(0)] * len(clips)
        starts: list[np.ndarray] = [np.empty(0)] * len(clips)
        kind = self.decision_kind if self.decision_kind in self.score_kinds else self.score_kinds[0]
        bar = tqdm(total=len(clips), desc=f"{self.name} scoring", disable=not progress)
        # Chunks of clips: features of a chunk are read together (one cache pass), while
        # memory stays bounded on large test sets.
        for first in range(0, len(clips), 256):
            chunk = list(range(first, min(first + 256, len(clips))))
            mels, rates = self._features_and_rates([clips[i] for i in chunk], progress=False)
            for machine in sorted({clips[i].machine for i in chunk}):
                mine = [j for j, i in enumerate(chunk) if clips[i].machine == machine]
                results = self.score_logmels(machine, [mels[j] for j in mine])
                for j, result in zip(mine, results, strict=True):
                    i = chunk[j]
                    for k in self.score_kinds:
                        scores[k][i] = result[k]
                    windows[i] = result["windows"][kind]
                    hop_seconds = self.baseline.hop_length / rates[j]
                    starts[i] = np.arange(len(windows[i]), dtype=np.float64) * hop_seconds
            bar.update(len(chunk))
        bar.close()
        return ClipScores(clips=clips, scores=scores, windows=windows, window_starts=starts)

    # ------------------------------------------------------------------ state
    def _state(self) -> dict[str, Any]:
        machines: dict[str, Any] = {}
        for machine, model in self.models.items():
            entry: dict[str, Any] = {
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}
            }
            if machine in self.covariances:
                entry["covariance"] = {d: c.cpu() for d, c in self.covariances[machine].items()}
                entry["covariance_count"] = dict(self.covariance_counts[machine])
            machines[machine] = entry
        return {
            "format": STATE_FORMAT,
            "input_dim": self.input_dim,
            "selection": self.selection,
            "machines": machines,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ConfigError(f"not an {STATE_FORMAT} state (found {state.get('format')!r})")
        if int(state["input_dim"]) != self.input_dim:
            raise ConfigError(
                f"state is for {state['input_dim']}-dim vectors, config gives {self.input_dim}"
            )
        self.selection = str(state.get("selection", "last"))
        self.models, self.covariances, self.covariance_counts, self._precisions = {}, {}, {}, {}
        for machine, entry in state["machines"].items():
            model = self.new_model()
            model.load_state_dict(entry["model"])
            self.models[machine] = model.to(self.device).eval()
            if "covariance" in entry:
                self.covariances[machine] = {
                    d: c.to(torch.float64) for d, c in entry["covariance"].items()
                }
                self.covariance_counts[machine] = {
                    d: int(n) for d, n in entry["covariance_count"].items()
                }
        if self.uses_mahalanobis and set(self.covariances) != set(self.models):
            raise ConfigError(
                f"{self.name} state lacks residual covariances (was it saved by ae-baseline?)"
            )


class AEBaselineMahala(AEBaseline):
    """The same autoencoders scored by selective Mahalanobis distance (MSE kept alongside)."""

    name = "ae-baseline-mahala"
    score_kinds = ("mahalanobis", "mse")
    uses_mahalanobis = True


@register_system("ae-baseline")
def _make_ae_baseline(config: Config) -> Detector:
    return AEBaseline(config)


@register_system("ae-baseline-mahala")
def _make_ae_baseline_mahala(config: Config) -> Detector:
    return AEBaselineMahala(config)
