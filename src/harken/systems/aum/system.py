"""Machine-generalized Audio Mamba (AuM) as a harken system: the report's second comparison row.

The report trains AuM "as a single, machine-generalized model incorporating GRL and an SVDD
Outlier Exposure (OE) strategy" and scores it in embedding space.  It gives no separate
recipe, so this system keeps everything else equal to CAE-DANN, so that the two rows differ
only in the network and the score:

* the same inputs: 128-mel dB log-mels from the shared feature cache, ``window.frames`` crops,
  per-band [0, 1] scaling fitted on the training part, the same validation hold-out, the same
  stratified (machine x domain x normal/pseudo) sampler and the same pseudo-anomalies;
* the SVDD center ``c`` is the (guarded) mean embedding of the normal training clips, computed
  once before the first update and never trained (a trainable center collapses onto the data);
* Algorithm 1 without the decoder: per batch, step 1 updates the domain classifier on the
  detached class-token embedding ``z``; step 2 updates the encoder on
  ``L_SVDD (Eq. 5, hinge nu = loss.svdd_nu) + L_adv`` with the adversarial term through the
  gradient reversal layer (``model.grl_lambda``);
* after every epoch the validation AUC of the ``svdd`` score on held-out normals and their
  pseudo-anomalous copies picks the best epoch, as for CAE-DANN.

Only the optimizer settings come from the ``aum`` section (AdamW at ``aum.lr``, ``aum.epochs``,
``aum.batch_size``, ``aum.epoch_size``); there is no LR scheduler (the report names one only
for CAE-DANN).  AuM is always one model over all machine types (``train.setting`` is not
read), always single-process (a torchrun launch trains the same model on every rank), and
always scores in float32 (mambapy's scan and mamba-ssm's kernel are not half-precision safe).

Score kind ``svdd``: ``||z - c||^2`` of each window, aggregated per clip by ``window.aggregate``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from harken.augment.pseudo import PseudoAnomalyMaker
from harken.config import Config
from harken.errors import DatasetError
from harken.features.scaling import Scaler, ScalerModule
from harken.features.windows import fit_length
from harken.scoring import SpectrogramScores, WindowScorer, score_spectrograms
from harken.speed import TorchScorer, set_threads
from harken.systems import register_system
from harken.systems.aum.torch_model import AudioMamba
from harken.systems.base import ClipScores
from harken.systems.cae_dann.loss import domain_loss, svdd_terms
from harken.systems.cae_dann.system import FeatureSystem
from harken.systems.cae_dann.torch_model import init_center, svdd_distance
from harken.training import distributed as D
from harken.training.checkpoint import load_checkpoint, save_checkpoint
from harken.training.data import DOMAINS, CropDataset, NumberedSampler, collate, split_validation
from harken.training.runs import (
    center_batches,
    check_resumable,
    data_key,
    validation_set,
    write_csv_log,
)
from harken.training.sampler import StratifiedSampler

log = logging.getLogger(__name__)

TAG = "aum"
STATE_FORMAT = "aum/1"


def model_args(config: Config) -> dict[str, Any]:
    """Constructor arguments of :class:`AudioMamba` for this config (stored with the weights)."""
    a, m = config.aum, config.model
    return {
        "n_mels": config.features.n_mels,
        "frames": config.window.frames,
        "patch": a.patch,
        "embed_dim": a.embed_dim,
        "depth": a.depth,
        "d_state": a.d_state,
        "domain_hidden": m.domain_hidden,
        "domain_dropout": m.domain_dropout,
        "grl_lambda": m.grl_lambda,
    }


class SVDDScorer(nn.Module):
    """dB windows ``[B, n_mels, frames]`` -> ``||z - c||^2`` ``[B]``: scaling, encoder, distance.

    One module so that scaling statistics and center travel with the weights into the copy the
    scorer runs.
    """

    output_names = ("svdd",)

    def __init__(self, model: AudioMamba, scaler: Scaler) -> None:
        super().__init__()
        self.scale = ScalerModule(scaler)
        self.model = model

    def forward(self, x_db: Tensor) -> tuple[Tensor]:
        z = self.model.encode(self.scale(x_db))
        return (svdd_distance(z, self.model.center),)


def window_scorer(model: AudioMamba, scaler: Scaler, device: torch.device | str) -> WindowScorer:
    """A float32 inference-mode scorer on a *copy* of ``model`` (training continues unaffected).

    On CPU the copy runs mambapy's sequential scan: without autograd it is about twice as fast
    there as the parallel scan, which pads the 65-token sequence of a 128 x 128 window to 128.
    On a GPU the parallel scan (or mamba-ssm's kernel) stays, as sequential steps would idle it.
    """
    scorer = TorchScorer(
        SVDDScorer(model, scaler),
        SVDDScorer.output_names,
        device=torch.device(device),
        channels_last=False,
        fold_bn=False,
    )
    # The copy's block config (shared by its blocks only), not the training model's.
    scorer.module.model.mamba_config.pscan = torch.device(device).type != "cpu"
    return scorer


@dataclass
class AuMTrainResult:
    model: AudioMamba
    scaler: Scaler
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_auc: float = float("nan")


def train_aum(
    clips: Sequence[Any],
    features: Sequence[np.ndarray],
    config: Config,
    *,
    run_dir: Path | None = None,
    progress: bool = True,
    resume: bool = False,
) -> AuMTrainResult:
    """Train one machine-generalized AuM on normal training ``clips`` (dB log-mel ``features``).

    Randomness is a function of ``(train.seed, epoch, step)`` as in CAE-DANN's loop, so a run
    resumed from epoch k's checkpoint continues as the uninterrupted run would have.
    """
    tc, lc, ac = config.train, config.loss, config.aum
    device = D.resolve_device(tc.device, D.DistInfo())
    set_threads(tc.threads)

    # ---------------------------------------------------------------- data (as train_cae)
    if config.window.short_clip == "error":  # refuse a too-short clip by name, before any work
        for clip, spec in zip(clips, features, strict=True):
            fit_length(spec, config.window.frames, "error", path=getattr(clip, "path", None))
    keyed = [
        SimpleNamespace(i=i, machine=c.machine, section=c.section, domain=c.domain)
        for i, c in enumerate(clips)
    ]
    train_part, val_part = split_validation(keyed, tc.val_fraction, tc.seed)
    train_idx, val_idx = [c.i for c in train_part], [c.i for c in val_part]
    if not train_idx:
        raise DatasetError("no training clips left after the validation hold-out")
    train_feats = [features[i] for i in train_idx]
    scaler = Scaler.fit(train_feats, config.scaling)
    domains = [clips[i].domain for i in train_idx]
    sampler = StratifiedSampler(
        [clips[i].machine for i in train_idx],
        domains,
        pseudo_fraction=config.augment.fraction,
        use_pseudo=lc.use_pseudo,
        epoch_size=ac.epoch_size,
        seed=tc.seed,
    )
    dataset = CropDataset(
        train_feats,
        [DOMAINS.get(d, 0) for d in domains],
        config.window.frames,
        short_clip=config.window.short_clip,
        crop=config.window.train_crop,
        seed=tc.seed,
    )
    batch_size = max(1, ac.batch_size)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=NumberedSampler(sampler),
        collate_fn=collate,
        num_workers=tc.num_workers,
        drop_last=len(sampler) >= batch_size,
    )
    maker = PseudoAnomalyMaker.from_config(config.augment) if lc.use_pseudo else None
    val_specs, val_labels, _ = validation_set(clips, features, val_idx, config)

    # ---------------------------------------------------------------- model
    torch.manual_seed(tc.seed)
    model = AudioMamba(**model_args(config)).to(device)
    encoder_params = [
        p for n, p in model.named_parameters() if not n.startswith("domain_classifier.")
    ]
    enc_opt = torch.optim.AdamW(encoder_params, lr=ac.lr, weight_decay=tc.weight_decay)
    clf_opt = torch.optim.AdamW(
        model.domain_classifier.parameters(), lr=ac.lr, weight_decay=tc.weight_decay
    )

    ckpt_path = None if run_dir is None else Path(run_dir) / "checkpoints" / f"{TAG}-last.pt"
    start_epoch, history = 0, []
    best: dict[str, Any] = {"auc": -math.inf, "epoch": -1, "state": None}
    if resume and ckpt_path is not None and ckpt_path.exists():
        checkpoint = load_checkpoint(ckpt_path, kind="training", map_location=device)
        check_resumable(checkpoint, _with_stored_epochs(config, checkpoint), clips, ckpt_path)
        state = checkpoint["training"]
        model.load_state_dict(state["model"])
        enc_opt.load_state_dict(state["enc_opt"])
        clf_opt.load_state_dict(state["clf_opt"])
        start_epoch, history = int(state["epoch"]) + 1, list(state["history"])
        best = {
            "auc": float(state["best_auc"]),
            "epoch": int(state["best_epoch"]),
            "state": state["best_model"],
        }
        log.info("resumed %s from %s at epoch %d", TAG, ckpt_path, start_epoch)
    else:
        # c from the untrained network, as in Deep SVDD: fixed before the first update.
        init_center(model, center_batches(train_feats, scaler, config, device), eps=lc.center_eps)  # type: ignore[arg-type]
    scale = ScalerModule(scaler).to(device)

    # ---------------------------------------------------------------- epochs
    for epoch in range(start_epoch, ac.epochs):
        torch.manual_seed(tc.seed * 100_003 + epoch)  # dropout of the domain classifier
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        n_steps, t0 = 0, time.perf_counter()
        bar = tqdm(
            total=len(loader),
            desc=f"aum epoch {epoch + 1}/{ac.epochs}",
            disable=not progress,
            leave=False,
        )
        for step, (x_db, domain, is_pseudo) in enumerate(loader):
            x_db, domain, is_pseudo = x_db.to(device), domain.to(device), is_pseudo.to(device)
            if maker is not None and bool(is_pseudo.any()):
                gen = torch.Generator(device=device).manual_seed(
                    tc.seed * 1_000_003 + epoch * 10_007 + step
                )
                idx = is_pseudo.nonzero(as_tuple=True)[0]
                x_db[idx] = maker(x_db[idx], gen)
            logs = aum_step(
                model,
                scale(x_db),
                domain,
                is_pseudo,
                enc_opt,
                clf_opt,
                nu=lc.svdd_nu,
                use_dann=lc.use_dann,
            )
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            n_steps += 1
            bar.set_postfix({k: f"{logs[k]:.4f}" for k in ("loss", "svdd", "adv")})
            bar.update(1)
        bar.close()
        train_time = time.perf_counter() - t0

        val_auc = _validate(model, scaler, val_specs, val_labels, config, device)
        metric = val_auc if not math.isnan(val_auc) else -sums.get("loss", 0.0) / max(n_steps, 1)
        row = {"tag": TAG, "epoch": epoch + 1, **{k: v / max(n_steps, 1) for k, v in sums.items()}}
        row.update(
            val_auc=val_auc,
            lr=enc_opt.param_groups[0]["lr"],
            epoch_seconds=train_time,
            steps=n_steps,
        )
        history.append(row)
        if metric > best["auc"]:
            best = {
                "auc": metric,
                "epoch": epoch + 1,
                "state": {k: v.detach().clone().cpu() for k, v in model.state_dict().items()},
            }
        log.info(
            "aum epoch %d/%d loss %.4f val_auc %.4f (%.1fs, %d steps)",
            epoch + 1,
            ac.epochs,
            row.get("loss", float("nan")),
            val_auc,
            train_time,
            n_steps,
        )
        if run_dir is not None:
            write_csv_log(Path(run_dir) / "logs" / f"{TAG}.csv", history)
        if ckpt_path is not None:
            save_checkpoint(
                ckpt_path,
                {
                    "config": config.to_dict(),
                    "model_args": model_args(config),
                    "scaler": scaler.to_dict(),
                    "training": {
                        "epoch": epoch,
                        "data_key": data_key(clips),
                        "model": model.state_dict(),
                        "enc_opt": enc_opt.state_dict(),
                        "clf_opt": clf_opt.state_dict(),
                        "history": history,
                        "best_auc": best["auc"],
                        "best_epoch": best["epoch"],
                        "best_model": best["state"],
                    },
                },
                kind="training",
            )

    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return AuMTrainResult(model, scaler, history, best["epoch"], best["auc"])


def _with_stored_epochs(config: Config, checkpoint: dict[str, Any]) -> Config:
    """``config`` with the checkpoint's ``aum.epochs``: training longer is a legitimate resume
    (``check_resumable`` only knows CAE-DANN's ``train.epochs`` as such)."""
    stored = checkpoint.get("config", {}).get("aum", {}).get("epochs", config.aum.epochs)
    return replace(config, aum=replace(config.aum, epochs=int(stored)))


def aum_step(
    model: AudioMamba,
    x: Tensor,
    domain: Tensor,
    is_pseudo: Tensor,
    enc_opt: torch.optim.Optimizer,
    clf_opt: torch.optim.Optimizer,
    *,
    nu: float,
    use_dann: bool = True,
) -> dict[str, float]:
    """Both steps of Algorithm 1 for one batch of scaled inputs ``x [B, n_mels, frames]``.

    One encoder forward serves both steps: step 1 changes only the classifier, and the encoder
    has no dropout or BatchNorm, so recomputing ``z`` for step 2 would give the same tensor.
    Step 2 uses the classifier as step 1 left it, as in Algorithm 1.  Step 2's backward also
    fills the classifier's gradients through the GRL; they are never applied (step 2 steps only
    ``enc_opt``, and step 1 zeroes them before its own backward).
    """
    domain = domain.long().reshape(-1)
    z = model(x)
    logged: dict[str, Tensor] = {}
    if use_dann:
        clf_opt.zero_grad(set_to_none=True)
        logits = model.domain_logits(z.detach(), reverse=False)
        d_loss = domain_loss(logits, domain)
        d_loss.backward()
        clf_opt.step()
        logged["domain_loss"] = d_loss.detach()
        logged["domain_acc"] = (logits.detach().argmax(dim=1) == domain).float().mean()
    terms = svdd_terms(z, model.center, is_pseudo, nu)
    adv = domain_loss(model.domain_logits(z, reverse=True), domain) if use_dann else z.new_zeros(())
    loss = terms["svdd"] + adv
    enc_opt.zero_grad(set_to_none=True)
    loss.backward()
    enc_opt.step()
    values = {"loss": loss, **terms, "adv": adv, **logged}
    flat = torch.stack([v.detach().float().reshape(()) for v in values.values()]).tolist()
    return dict(zip(values, flat, strict=True))


def _validate(
    model: AudioMamba,
    scaler: Scaler,
    specs: list[np.ndarray],
    labels: np.ndarray,
    config: Config,
    device: torch.device,
) -> float:
    """ROC AUC of the ``svdd`` score, held-out normals vs their pseudo-anomalous copies."""
    if not specs or len(set(labels.tolist())) < 2:
        return float("nan")
    scorer = window_scorer(model, scaler, device)
    results = score_spectrograms(
        specs, scorer, config.window, batch_size=config.score.batch_size, device=device
    )
    values = np.array([r.aggregate(config.window.aggregate)["svdd"] for r in results])
    if not np.all(np.isfinite(values)):
        return float("nan")
    return float(roc_auc_score(labels, values))


class AuMSystem(FeatureSystem):
    """One Audio Mamba over all machine types, scored by ``||z - c||^2`` (kind ``svdd``)."""

    name = "aum"
    score_kinds = ("svdd",)

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        # Deliberately not ``models``/``scalers`` dicts: those names mark a CAE-DANN-shaped
        # system to export and the report's reconstruction views, which AuM cannot serve.
        self.model: AudioMamba | None = None
        self.scaler: Scaler | None = None

    def _fit(
        self, clips: Sequence[Any], *, run_dir: Path | None, progress: bool, resume: bool
    ) -> None:
        features = self.clip_features(clips, progress=progress)
        result = train_aum(
            list(clips), features, self.config, run_dir=run_dir, progress=progress, resume=resume
        )
        self.model, self.scaler = result.model.cpu().eval(), result.scaler
        self.history_ = list(result.history)

    def _fitted(self) -> tuple[AudioMamba, Scaler]:
        if self.model is None or self.scaler is None:
            raise RuntimeError("detector is not fitted")
        return self.model, self.scaler

    def score_spectrograms(self, specs: Sequence[np.ndarray]) -> list[SpectrogramScores]:
        """Window scores of dB log-mel spectrograms."""
        model, scaler = self._fitted()
        device = D.resolve_device(self.config.train.device, D.DistInfo())
        scorer = window_scorer(model, scaler, device)
        return score_spectrograms(
            list(specs),
            scorer,
            self.config.window,
            batch_size=self.config.score.batch_size,
            device=device,
        )

    def _score_clips(self, clips: Sequence[Any], *, progress: bool) -> ClipScores:
        specs = self.clip_features(clips, progress=progress)
        if self.config.window.short_clip == "error":  # name the too-short clip in the error
            for clip, spec in zip(clips, specs, strict=True):
                fit_length(spec, self.config.window.frames, "error", path=clip.path)
        return self.scores_from_spectrograms(list(clips), specs)

    def scores_from_spectrograms(self, clips: list[Any], specs: Sequence[np.ndarray]) -> ClipScores:
        """Clip scores from dB log-mels (also the in-memory path of the API and the service)."""
        results = self.score_spectrograms(specs)
        how = self.config.window.aggregate
        seconds = self.config.features.hop_length / self.config.audio.sample_rate
        return ClipScores(
            clips=clips,
            scores={
                "svdd": np.array([r.aggregate(how)["svdd"] for r in results], dtype=np.float64)
            },
            windows=[{"svdd": r.windows["svdd"]} for r in results],
            window_starts=[r.starts * seconds for r in results],
        )

    def _state(self) -> dict[str, Any]:
        model, scaler = self._fitted()
        return {
            "format": STATE_FORMAT,
            "model_args": model_args(self.config),
            "weights": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "scaler": scaler.to_dict(),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"not an AuM state (format {state.get('format')!r}, expected {STATE_FORMAT!r})"
            )
        model = AudioMamba(**state["model_args"])
        model.load_state_dict(state["weights"])
        self.model, self.scaler = model.eval(), Scaler.from_dict(state["scaler"])


@register_system("aum")
def build_aum(config: Config) -> AuMSystem:
    return AuMSystem(config)
