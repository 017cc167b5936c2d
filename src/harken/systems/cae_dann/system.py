"""CAE-DANN-SVDD as a harken system: features, training, scoring and state.

The thin wrapper between the plain ``nn.Module`` (:mod:`.torch_model`), the training loop
(:mod:`harken.training.loop`) and the estimator surface (:class:`~harken.systems.base.Detector`).
``train.setting`` chooses one machine-generalized model over all machine types (the report's
setting) or one model per machine type.  When the trained model is calibrated, the residual
statistics of the normal training windows are fitted per machine type and section for the
``mahalanobis`` score (:mod:`.mahalanobis`), in the same scoring pass as the thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harken.config import Config
from harken.features.cache import FeatureCache
from harken.features.logmel import LogMel
from harken.features.scaling import Scaler
from harken.scoring import SpectrogramScores, score_spectrograms
from harken.systems import register_system
from harken.systems.base import GLOBAL_KEY, ClipScores, Detector, group_key
from harken.systems.cae_dann.mahalanobis import ResidualGaussian
from harken.systems.cae_dann.torch_model import CAEDANN
from harken.training import distributed as D
from harken.training.distributed import resolve_device
from harken.training.loop import config_window_scorer, model_args, train_cae

GENERALIZED = "all"
#: folds of the cross-fitting that gives the training clips out-of-sample mahalanobis scores
CROSSFIT_FOLDS = 20


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("HARKEN_CACHE_DIR", Path.home() / ".cache" / "harken" / "features"))


class FeatureSystem(Detector):
    """A Detector that reads log-mel features through the shared content-keyed cache."""

    cache_dir: Path | None = None

    def feature_cache(self) -> FeatureCache:
        # Missing features are computed on the training device (the log-mel runs on the GPU
        # when there is one); entries are stored on disk either way.
        device = resolve_device(self.config.train.device, D.current())
        return FeatureCache(self.cache_dir or default_cache_dir(), self.config.audio, self.config.features, device=device)

    def clip_features(self, clips: Sequence[Any], *, progress: bool) -> list[np.ndarray]:
        # Under DDP the first rank of each node fills the (node-local or shared) cache while the
        # others wait, so no entry is computed twice; the others then read it.
        info = D.current()
        if info.enabled and info.local_rank != 0:
            D.barrier(info)
        features = self.feature_cache().build([c.path for c in clips], workers=self.config.train.num_workers, progress=progress)
        if info.enabled and info.local_rank == 0:
            D.barrier(info)
        return features

    def waveform_features(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Log-mel of in-memory waveforms (field use, the service): no cache."""
        logmel = LogMel(self.config.features, self.config.audio.sample_rate)
        with torch.no_grad():
            return [logmel(torch.from_numpy(np.asarray(w, dtype=np.float32)))[0].numpy() for w in waves]


class CAEDANNSystem(FeatureSystem):
    name = "cae-dann"
    score_kinds: tuple[str, ...] = ("reconstruction", "svdd", "mahalanobis")

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.models: dict[str, CAEDANN] = {}
        self.scalers: dict[str, Scaler] = {}
        #: per machine type / section key (and ``"*"``): the residual statistics' Gaussian
        self.gaussians: dict[str, ResidualGaussian] = {}

    # ------------------------------------------------------------------ training
    def _fit(self, clips: Sequence[Any], *, run_dir: Path | None, progress: bool, resume: bool) -> None:
        features = self.clip_features(clips, progress=progress)
        if self.config.train.setting == "per_machine":
            groups = {m: [i for i, c in enumerate(clips) if c.machine == m] for m in sorted({c.machine for c in clips})}
        else:
            groups = {GENERALIZED: list(range(len(clips)))}
        self.history_ = []
        for tag, idx in groups.items():
            result = train_cae(
                [clips[i] for i in idx],
                [features[i] for i in idx],
                self.config,
                run_dir=run_dir,
                tag=tag,
                progress=progress,
                resume=resume,
            )
            self.models[tag] = result.model.cpu().eval()
            self.scalers[tag] = result.scaler
            self.history_ += result.history

    def _calibration_scores(self, train_clips: Sequence[Any], *, progress: bool) -> ClipScores:
        """Fit the residual Gaussians on the training clips and score them in the same pass.

        The ``mahalanobis`` scores returned are cross-fitted (see :meth:`_fit_mahalanobis`), so
        the thresholds are not set on in-sample distances.
        """
        results = self.score_spectrograms(
            self._checked_features(train_clips, progress=progress), [c.machine for c in train_clips], residual=True
        )
        crossfit = self._fit_mahalanobis(train_clips, [r.windows.pop("residual") for r in results])
        for r, distances in zip(results, crossfit, strict=True):
            r.windows["mahalanobis"] = distances
        self.score_kinds = type(self).score_kinds  # a run loaded without the statistics gains them
        return self._clip_scores(list(train_clips), results)

    def _fit_mahalanobis(self, clips: Sequence[Any], vectors: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Fit the residual Gaussians per machine type / section (and ``"*"``) on the residual
        windows ``vectors`` of normal training ``clips``; return each clip's window distances
        under a Gaussian of its group fitted without it (``CROSSFIT_FOLDS`` folds): a Gaussian
        fitted on a clip's own windows scores it far too low.
        """
        groups: dict[str, list[int]] = {GLOBAL_KEY: list(range(len(clips)))}
        for i, clip in enumerate(clips):
            groups.setdefault(group_key(clip.machine, clip.section), []).append(i)
        shrinkage = self.config.score.mahalanobis_shrinkage

        def fit(idx: Sequence[int]) -> ResidualGaussian:
            domains = [clips[i].domain for i in idx for _ in range(len(vectors[i]))]
            return ResidualGaussian.fit(np.concatenate([vectors[i] for i in idx]), domains, shrinkage)

        self.gaussians = {}
        crossfit: list[np.ndarray] = [np.empty(0)] * len(clips)
        for key, idx in groups.items():
            self.gaussians[key] = fit(idx)
            if key == GLOBAL_KEY:
                continue
            folds = np.arange(len(idx)) % CROSSFIT_FOLDS
            for f in range(min(CROSSFIT_FOLDS, len(idx))):
                held = [i for i, k in zip(idx, folds, strict=True) if k == f]
                rest = [i for i, k in zip(idx, folds, strict=True) if k != f]
                g = fit(rest) if rest else self.gaussians[key]
                for i in held:
                    crossfit[i] = g.distance(vectors[i])
        return crossfit

    # ------------------------------------------------------------------ scoring
    def _group(self, machine: str) -> str:
        return machine if machine in self.models else GENERALIZED if GENERALIZED in self.models else next(iter(self.models))

    def score_spectrograms(
        self, specs: Sequence[np.ndarray], machines: Sequence[str], *, residual: bool = False
    ) -> list[SpectrogramScores]:
        """Window scores of dB log-mel spectrograms, each with the model of its machine type.

        ``residual=True`` adds each window's residual statistics (``windows["residual"]``,
        ``[n_windows, 2 * n_mels]``).  Under DDP (calibration at the end of training) each rank
        scores every ``world_size``-th spectrogram and the results are gathered, so all ranks
        return all.
        """
        pairs = list(zip(specs, machines, strict=True))
        return D.shard_map(
            lambda part: self._score_local([s for s, _ in part], [m for _, m in part], residual), pairs, D.current()
        )

    def _score_local(self, specs: Sequence[np.ndarray], machines: Sequence[str], residual: bool = False) -> list[SpectrogramScores]:
        device = resolve_device(self.config.train.device, D.current())
        out: list[SpectrogramScores | None] = [None] * len(specs)
        for tag in self.models:
            idx = [i for i, m in enumerate(machines) if self._group(m) == tag]
            if not idx:
                continue
            model = self.models[tag].to(device).eval()
            scorer = config_window_scorer(model, self.scalers[tag], self.config, device, residual=residual)
            scores = score_spectrograms([specs[i] for i in idx], scorer, self.config.window, batch_size=self.config.score.batch_size, device=device)
            for i, s in zip(idx, scores, strict=True):
                out[i] = s
        return [s for s in out if s is not None]

    def _checked_features(self, clips: Sequence[Any], *, progress: bool) -> list[np.ndarray]:
        specs = self.clip_features(clips, progress=progress)
        if self.config.window.short_clip == "error":  # name the too-short clip in the error
            from harken.features.windows import fit_length

            for clip, spec in zip(clips, specs, strict=True):
                fit_length(spec, self.config.window.frames, "error", path=clip.path)
        return specs

    def _score_clips(self, clips: Sequence[Any], *, progress: bool) -> ClipScores:
        return self.scores_from_spectrograms(list(clips), self._checked_features(clips, progress=progress))

    def scores_from_spectrograms(self, clips: list[Any], specs: Sequence[np.ndarray]) -> ClipScores:
        results = self.score_spectrograms(specs, [c.machine for c in clips], residual=bool(self.gaussians))
        if self.gaussians:
            for clip, r in zip(clips, results, strict=True):
                r.windows["mahalanobis"] = self.gaussian_for(clip.machine, clip.section).distance(r.windows.pop("residual"))
        return self._clip_scores(clips, results)

    def _clip_scores(self, clips: list[Any], results: Sequence[SpectrogramScores]) -> ClipScores:
        how = self.config.window.aggregate
        agg = [r.aggregate(how) for r in results]
        scores = {k: np.array([a[k] for a in agg], dtype=np.float64) for k in self.score_kinds}
        seconds = self.config.features.hop_length / self.config.audio.sample_rate
        return ClipScores(
            clips=clips,
            scores=scores,
            windows=[{k: r.windows[k] for k in self.score_kinds} for r in results],
            window_starts=[r.starts * seconds for r in results],
        )

    def gaussian_for(self, machine: str, section: str) -> ResidualGaussian:
        return self.gaussians.get(group_key(machine, section), self.gaussians[GLOBAL_KEY])

    # ------------------------------------------------------------------ state
    def _state(self) -> dict[str, Any]:
        return {
            "model_args": model_args(self.config),
            "groups": {
                tag: {"weights": {k: v.detach().cpu() for k, v in m.state_dict().items()}, "scaler": self.scalers[tag].to_dict()}
                for tag, m in self.models.items()
            },
            "mahalanobis": {key: g.to_state() for key, g in self.gaussians.items()},
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.models, self.scalers = {}, {}
        for tag, group in state["groups"].items():
            model = CAEDANN(**state["model_args"])
            model.load_state_dict(group["weights"])
            self.models[tag] = model.eval()
            self.scalers[tag] = Scaler.from_dict(group["scaler"])
        self.gaussians = {key: ResidualGaussian.from_state(g) for key, g in state.get("mahalanobis", {}).items()}
        if not self.gaussians:  # a run saved before the residual statistics existed
            self.score_kinds = ("reconstruction", "svdd")


@register_system("cae-dann")
def build_cae_dann(config: Config) -> CAEDANNSystem:
    return CAEDANNSystem(config)
