"""The CAE-DANN-SVDD training loop (Algorithm 1 of the report), in one readable function.

Per batch: stratified draws of normal crops and pseudo-anomaly seeds, corruption of the seeds
on the device, scaling to [0, 1], then step 1 (domain classifier on detached latents) and
step 2 (autoencoder on alpha * L_recon + L_SVDD + L_adv through the GRL).  Per epoch:
validation AUC on held-out normals and their pseudo-anomalies, ReduceLROnPlateau on it, the
best model kept, and an atomic checkpoint from which the run resumes.

Everything random is a function of ``(train.seed, epoch, step)``: the sampler, the crops,
the corruptions, and the global torch generator (dropout) reseeded every epoch.  A run
resumed from the checkpoint of epoch k therefore continues exactly as the uninterrupted run
would have (bit for bit on CPU).

DDP switches on from torchrun's environment (:mod:`harken.training.distributed`): each rank
draws its own balanced slice of every epoch, ``train.batch_size`` is the global batch, the
SVDD center is averaged over all ranks, BatchNorm statistics are per rank with rank 0's
buffers broadcast at every forward (DDP's default; ``train.sync_batchnorm`` switches to
SyncBatchNorm), and only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from harken.augment.pseudo import PseudoAnomalyMaker
from harken.config import Config
from harken.errors import CheckpointError, ConfigError, DatasetError
from harken.evaluation.threshold import fit_gamma_threshold
from harken.features.scaling import Scaler, ScalerModule
from harken.features.windows import fit_length
from harken.scoring import score_spectrograms
from harken.speed import retain_freed_memory, set_threads
from harken.systems.cae_dann.loss import train_step
from harken.systems.cae_dann.torch_model import CAEDANN, CAEResidualScorer, CAEScorer, init_center
from harken.training import distributed as D
from harken.training.checkpoint import load_checkpoint, save_checkpoint
from harken.training.data import DOMAINS, CropDataset, NumberedSampler, collate, split_validation
from harken.training.runs import RESUME_MAY_CHANGE, check_resumable, data_key  # noqa: F401 (re-exported)
from harken.training.runs import center_batches as _center_batches
from harken.training.runs import validation_set as _validation_set
from harken.training.runs import write_csv_log as _write_csv
from harken.training.sampler import StratifiedSampler

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: CAEDANN
    scaler: Scaler
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_auc: float = float("nan")
    val_thresholds: dict[str, float] = field(default_factory=dict)


def model_args(config: Config) -> dict[str, Any]:
    """Constructor arguments of :class:`CAEDANN` for this config (stored in checkpoints)."""
    m = config.model
    return {
        "n_mels": config.features.n_mels,
        "frames": config.window.frames,
        "channels": list(m.channels),
        "latent_dim": m.latent_dim,
        "domain_hidden": m.domain_hidden,
        "domain_dropout": m.domain_dropout,
        "grl_lambda": m.grl_lambda,
    }


class ScaledScorer(torch.nn.Module):
    """dB windows ``[B, n_mels, frames]`` -> both scores: scaling + the CAE scorer, as one module.

    With ``residual=True`` the residual statistics come as a third output (see
    :class:`CAEResidualScorer`); :attr:`output_names` names the outputs either way.
    """

    def __init__(self, model: CAEDANN, scaler: Scaler, *, residual: bool = False) -> None:
        super().__init__()
        self.scale = ScalerModule(scaler)
        self.scorer = CAEResidualScorer(model) if residual else CAEScorer(model)
        self.output_names = self.scorer.output_names

    def forward(self, x_db: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.scorer(self.scale(x_db).unsqueeze(1))


def window_scorer(
    model: CAEDANN,
    scaler: Scaler,
    channels_last: bool = True,
    *,
    backend: str = "torch",
    precision: str = "fp32",
    device: torch.device | str | None = None,
    residual: bool = False,
):
    """A :data:`harken.scoring.WindowScorer` for ``model`` in eval mode.

    The scorer works on a copy (BatchNorm folded; or an ONNX Runtime session with
    ``backend="onnxruntime"``/``"auto"``): later changes to ``model`` do not reach it, and
    ``model``'s training mode is left alone.  See :func:`harken.speed.build_window_scorer`.
    """
    from harken.speed import build_window_scorer

    device = torch.device(device) if device is not None else next(model.parameters()).device
    module = ScaledScorer(model, scaler, residual=residual)
    example = torch.zeros(1, model.autoencoder.n_mels, model.autoencoder.frames)
    return build_window_scorer(
        module, module.output_names, example,
        device=device, backend=backend, precision=precision, channels_last=channels_last,
    )


def config_window_scorer(
    model: CAEDANN, scaler: Scaler, config: Config, device: torch.device | str | None = None, *, residual: bool = False
):
    """:func:`window_scorer` with the ``score`` section's backend and precision."""
    sc = config.score
    return window_scorer(model, scaler, backend=sc.backend, precision=sc.precision, device=device, residual=residual)


def _autocast_dtype(precision: str, device: torch.device | str = "cpu") -> torch.dtype | None:
    from harken.speed import autocast_dtype

    return autocast_dtype(precision, device)


def _seed_everything(seed: int, epoch: int) -> None:
    torch.manual_seed(seed * 100_003 + epoch)


def train_cae(
    clips: Sequence[Any],
    features: Sequence[np.ndarray],
    config: Config,
    *,
    run_dir: Path | None = None,
    tag: str = "all",
    progress: bool = True,
    resume: bool = False,
) -> TrainResult:
    """Train one CAE-DANN-SVDD model on normal training ``clips`` (dB log-mel ``features``)."""
    tc, lc = config.train, config.loss
    if tc.selection not in ("best", "last"):
        raise ConfigError(f"train.selection must be 'best' or 'last', got {tc.selection!r}")
    info = D.setup("cuda" if tc.device.startswith("cuda") or (tc.device == "auto" and torch.cuda.is_available()) else "cpu")
    device = D.resolve_device(tc.device, info)
    set_threads(tc.threads)
    if tc.retain_memory and device.type == "cpu":
        retain_freed_memory()
    autocast_dtype = _autocast_dtype(tc.precision, device)
    main = info.is_main

    # ---------------------------------------------------------------- data
    if config.window.short_clip == "error":  # refuse a too-short clip by name, before any work
        for clip, spec in zip(clips, features, strict=True):
            fit_length(spec, config.window.frames, "error", path=getattr(clip, "path", None))
    index = list(range(len(clips)))
    train_idx, val_idx = split_validation([_Indexed(i, clips[i]) for i in index], tc.val_fraction, tc.seed)
    train_idx = [c.i for c in train_idx]
    val_idx = [c.i for c in val_idx]
    if not train_idx:
        raise DatasetError("no training clips left after the validation hold-out")
    train_feats = [features[i] for i in train_idx]
    scaler = Scaler.fit(train_feats, config.scaling)
    machines = [clips[i].machine for i in train_idx]
    domains = [clips[i].domain for i in train_idx]
    domain_ids = [DOMAINS.get(d, 0) for d in domains]

    sampler = StratifiedSampler(
        machines,
        domains,
        pseudo_fraction=config.augment.fraction,
        use_pseudo=lc.use_pseudo,
        epoch_size=tc.epoch_size,
        seed=tc.seed,
        rank=info.rank,
        world_size=info.world_size,
    )
    local_batch = max(1, tc.batch_size // info.world_size)
    dataset = CropDataset(train_feats, domain_ids, config.window.frames, short_clip=config.window.short_clip, seed=tc.seed)
    loader = DataLoader(
        dataset,
        batch_size=local_batch,
        sampler=NumberedSampler(sampler),
        collate_fn=collate,
        num_workers=tc.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=len(sampler) >= local_batch,
        persistent_workers=False,
    )
    maker = PseudoAnomalyMaker.from_config(config.augment) if lc.use_pseudo else None
    val_specs, val_labels, val_groups = _validation_set(clips, features, val_idx, config)

    # ---------------------------------------------------------------- model
    torch.manual_seed(tc.seed)
    model = CAEDANN(**model_args(config)).to(device)
    if tc.sync_batchnorm and info.enabled:
        if device.type == "cpu":  # PyTorch's SyncBatchNorm refuses CPU tensors mid-training
            raise ConfigError("train.sync_batchnorm=true needs GPU ranks; CPU ranks keep per-rank BatchNorm statistics")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ae_opt = torch.optim.AdamW(model.autoencoder.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    clf_opt = torch.optim.AdamW(model.domain_classifier.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    plateau = dict(mode="max", factor=tc.plateau_factor, patience=tc.plateau_patience)
    ae_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(ae_opt, **plateau)
    clf_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(clf_opt, **plateau)

    ckpt_path = None if run_dir is None else Path(run_dir) / "checkpoints" / f"{tag}-last.pt"
    start_epoch, history = 0, []
    best = {"auc": -math.inf, "epoch": -1, "state": None, "thresholds": {}}
    resuming = resume and ckpt_path is not None and ckpt_path.exists()
    if info.enabled and resume:
        seen = D.all_gather_object(resuming, info)
        if any(seen) and not all(seen):
            missing = [r for r, ok in enumerate(seen) if not ok]
            raise CheckpointError(
                f"--resume under DDP: rank(s) {missing} cannot read the checkpoint; the run "
                "directory must be on a file system that every node shares",
                path=ckpt_path,
            )
    if resuming:
        checkpoint = load_checkpoint(ckpt_path, kind="training", map_location=device)
        check_resumable(checkpoint, config, clips, ckpt_path)
        state = checkpoint["training"]
        model.load_state_dict(state["model"])
        ae_opt.load_state_dict(state["ae_opt"])
        clf_opt.load_state_dict(state["clf_opt"])
        ae_sched.load_state_dict(state["ae_sched"])
        clf_sched.load_state_dict(state["clf_sched"])
        start_epoch, history = int(state["epoch"]) + 1, list(state["history"])
        best = {"auc": float(state["best_auc"]), "epoch": int(state["best_epoch"]), "state": state["best_model"], "thresholds": dict(state["best_thresholds"])}
        if main:
            log.info("resumed %s from %s at epoch %d", tag, ckpt_path, start_epoch)
    else:
        # Under DDP each rank encodes its share of the clips and the sums are all-reduced.
        center_batches = _center_batches(train_feats[info.rank :: info.world_size], scaler, config, device)
        init_center(model, center_batches, eps=lc.center_eps, all_reduce=(lambda t: D.all_reduce_sum(t, info)) if info.enabled else None)

    autoencoder, classifier = model.autoencoder, model.domain_classifier
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        autoencoder = DDP(model.autoencoder, device_ids=ids)
        classifier = DDP(model.domain_classifier, device_ids=ids)
    if tc.compile:
        # After the DDP wrap (DDP's graph-break optimizer splits at bucket boundaries).  Compile
        # time is paid in the first steps; docs/SPEED.md says when it pays.
        autoencoder = torch.compile(autoencoder)

    writer = _tensorboard(run_dir, tag) if (main and tc.log_tensorboard and run_dir is not None) else None
    scale = ScalerModule(scaler).to(device)

    # ---------------------------------------------------------------- epochs
    for epoch in range(start_epoch, tc.epochs):
        _seed_everything(tc.seed, epoch)
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        n_steps, t0, t_data = 0, time.perf_counter(), 0.0
        bar = tqdm(total=len(loader), desc=f"{tag} epoch {epoch + 1}/{tc.epochs}", disable=not (progress and main), leave=False)
        t_fetch = time.perf_counter()
        for step, (x_db, domain, is_pseudo) in enumerate(loader):
            x_db = x_db.to(device, non_blocking=True)
            is_pseudo = is_pseudo.to(device)
            t_data += time.perf_counter() - t_fetch
            if maker is not None and bool(is_pseudo.any()):
                gen = torch.Generator(device=device).manual_seed(tc.seed * 1_000_003 + epoch * 10_007 + step)
                idx = is_pseudo.nonzero(as_tuple=True)[0]
                x_db[idx] = maker(x_db[idx], gen)
            x = scale(x_db).unsqueeze(1)
            logs = train_step(
                model, x, domain, is_pseudo, lc, ae_opt, clf_opt,
                autocast_dtype=autocast_dtype, channels_last=tc.channels_last,
                autoencoder=autoencoder, classifier=classifier,
            )
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            n_steps += 1
            bar.set_postfix({k: f"{logs[k]:.4f}" for k in ("loss", "recon", "svdd", "adv") if k in logs})
            bar.update(1)
            t_fetch = time.perf_counter()
        bar.close()
        train_time = time.perf_counter() - t0

        D.broadcast_buffers(model, info)  # rank 0's BatchNorm statistics everywhere (the model it saves)
        val_auc, val_scores = _validate(model, scaler, val_specs, val_labels, config, device, info)
        val_auc = float(D.broadcast_object(val_auc, info))
        metric = val_auc if not math.isnan(val_auc) else -float(sums.get("loss", 0.0) / max(n_steps, 1))
        # Every rank must step its schedulers and pick the best epoch on the same number (the
        # loss fallback differs per rank), or the ranks' learning rates drift apart.
        metric = float(D.broadcast_object(metric, info))
        ae_sched.step(metric)
        clf_sched.step(metric)
        row = {"tag": tag, "epoch": epoch + 1, **{k: v / max(n_steps, 1) for k, v in sums.items()}}
        row.update(val_auc=val_auc, lr=ae_opt.param_groups[0]["lr"], epoch_seconds=train_time, data_seconds=t_data)
        history.append(row)
        if metric > best["auc"] or tc.selection == "last":
            best = {
                "auc": metric,
                "epoch": epoch + 1,
                "state": {k: v.detach().clone().cpu() for k, v in model.state_dict().items()},
                "thresholds": _val_thresholds(val_scores, val_labels, val_groups, config),
            }
        if main:
            log.info(
                "%s epoch %d/%d loss %.4f val_auc %.4f lr %.2e (%.1fs, data %.1fs)",
                tag, epoch + 1, tc.epochs, row.get("loss", float("nan")), val_auc, row["lr"], train_time, t_data,
            )
            if run_dir is not None:
                _write_csv(Path(run_dir) / "logs" / f"{tag}.csv", history)
            if writer is not None:
                for k, v in row.items():
                    if isinstance(v, float):
                        writer.add_scalar(f"{tag}/{k}", v, epoch + 1)
                writer.flush()
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
                            "ae_opt": ae_opt.state_dict(),
                            "clf_opt": clf_opt.state_dict(),
                            "ae_sched": ae_sched.state_dict(),
                            "clf_sched": clf_sched.state_dict(),
                            "history": history,
                            "best_auc": best["auc"],
                            "best_epoch": best["epoch"],
                            "best_model": best["state"],
                            "best_thresholds": best["thresholds"],
                        },
                    },
                    kind="training",
                )
        D.barrier(info)

    if writer is not None:
        writer.close()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return TrainResult(model, scaler, history, best["epoch"], best["auc"], best["thresholds"])


@dataclass
class _Indexed:
    i: int
    clip: Any

    def __getattr__(self, name: str) -> Any:
        return getattr(self.clip, name)


def validation_kind(config: Config) -> str:
    """The score kind the validation AUC reads during training.

    The decision kind, except ``mahalanobis``: its residual statistics are fitted on the
    trained model, after training, so validation reads the report's Eq. 9 instead.
    """
    return "reconstruction" if config.score.kind == "mahalanobis" else config.score.kind


def _decision_values(scores: dict[str, np.ndarray], labels: np.ndarray, kind: str) -> np.ndarray:
    if kind != "fused":
        return scores[kind]
    normal = labels == 0
    parts = [(v - v[normal].mean()) / (v[normal].std() + 1e-12) for v in scores.values()]
    return np.mean(parts, axis=0)


def _validate(model, scaler, specs, labels, config, device, info: D.DistInfo | None = None) -> tuple[float, dict[str, np.ndarray]]:
    if not specs:
        return float("nan"), {}
    scorer = config_window_scorer(model, scaler, config, device)

    def score(part: list[np.ndarray]) -> list[Any]:
        return score_spectrograms(part, scorer, config.window, batch_size=config.score.batch_size, device=device)

    results = D.shard_map(score, specs, info or D.DistInfo())  # under DDP each rank scores a slice
    scores = {k: np.array([r.aggregate(config.window.aggregate)[k] for r in results]) for k in results[0].windows}
    values = _decision_values(scores, labels, validation_kind(config))
    if len(set(labels.tolist())) < 2 or not np.all(np.isfinite(values)):
        return float("nan"), scores
    return float(roc_auc_score(labels, values)), scores


def _val_thresholds(scores, labels, groups, config) -> dict[str, float]:
    """Provisional thresholds from held-out *normal* scores (used until final calibration)."""
    kind = validation_kind(config)
    if not scores or kind == "fused":
        return {}
    values = scores[kind]
    normal = labels == 0
    out = {"*": fit_gamma_threshold(values[normal], config.score.threshold_quantile)}
    for g in sorted(set(groups)):
        sel = normal & (np.asarray(groups) == g)
        if sel.sum() >= 2:
            out[g] = fit_gamma_threshold(values[sel], config.score.threshold_quantile)
    return out


def _tensorboard(run_dir: Path | None, tag: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard is an optional extra
        return None
    return SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))


def copy_model(model: CAEDANN) -> CAEDANN:
    return copy.deepcopy(model)
