"""What harken's training loops share: validation set, center batches, logs and resume checks.

The CAE-DANN-SVDD loop (:mod:`harken.training.loop`) and the Audio Mamba system
(:mod:`harken.systems.aum.system`) hold out the same validation clips, make the same
pseudo-anomalous copies, write the same logs and refuse the same unsafe resumes.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harken.atomic import atomic_open
from harken.augment.pseudo import PseudoAnomalyMaker
from harken.config import Config
from harken.errors import CheckpointError
from harken.features.scaling import Scaler
from harken.features.windows import center_crop, fit_length
from harken.training.checkpoint import plain


def center_batches(
    train_feats: Sequence[np.ndarray], scaler: Scaler, config: Config, device: torch.device
) -> Iterator[torch.Tensor]:
    """Scaled center crops of the normal training clips, in batches, for the SVDD center."""
    frames, policy = config.window.frames, config.window.short_clip
    batch = max(1, min(64, config.train.batch_size))
    for start in range(0, len(train_feats), batch):
        crops = [center_crop(fit_length(np.asarray(f, dtype=np.float32), frames, policy), frames) for f in train_feats[start : start + batch]]
        x = torch.from_numpy(np.stack(crops)).to(device)
        yield scaler.transform(x).unsqueeze(1)


def validation_set(
    clips: Sequence[Any], features: Sequence[np.ndarray], val_idx: Sequence[int], config: Config
) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Held-out normal clips and one pseudo-anomalous copy of each (fixed seed)."""
    specs: list[np.ndarray] = []
    labels: list[int] = []
    groups: list[str] = []
    if not val_idx:
        return specs, np.zeros(0), groups
    maker = PseudoAnomalyMaker.from_config(config.augment)
    gen = torch.Generator().manual_seed(config.train.seed * 31 + 17)
    for i in val_idx:
        spec = np.asarray(features[i], dtype=np.float32)
        specs.append(spec)
        labels.append(0)
        groups.append(f"{clips[i].machine}/{clips[i].section}")
    for i in val_idx:
        spec = torch.from_numpy(np.asarray(features[i], dtype=np.float32)).unsqueeze(0)
        specs.append(maker(spec, gen)[0].numpy())
        labels.append(1)
        groups.append(f"{clips[i].machine}/{clips[i].section}")
    return specs, np.asarray(labels), groups


#: config fields a resumed run may change: they do not alter what the finished epochs computed
RESUME_MAY_CHANGE = (
    "train.epochs", "train.device", "train.num_workers", "train.threads", "train.log_tensorboard", "score.batch_size",
)


def data_key(clips: Sequence[Any]) -> str:
    """A digest of the training clip list (machine, section, domain, file name), for resume."""
    text = "\n".join(sorted(f"{c.machine}/{c.section}/{c.domain}/{c.path.name}" for c in clips))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def check_resumable(checkpoint: dict[str, Any], config: Config, clips: Sequence[Any], path: Path) -> None:
    """Refuse (CheckpointError) to resume from another configuration's or data set's checkpoint.

    Continuing with other settings would load weights of the wrong shape (a bare traceback) or,
    worse, quietly mix two runs into one model.  Only :data:`RESUME_MAY_CHANGE` may differ
    (e.g. ``train.epochs`` to train longer).
    """
    old, new = _flat(checkpoint.get("config", {})), _flat(plain(config.to_dict()))
    changed = [k for k in sorted(old.keys() & new.keys()) if k not in RESUME_MAY_CHANGE and old[k] != new[k]]
    if changed:
        shown = "; ".join(f"{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now" for k in changed[:4])
        more = f" (and {len(changed) - 4} more)" if len(changed) > 4 else ""
        raise CheckpointError(
            f"cannot resume: the run was started with another configuration ({shown}{more}); resume "
            "with the same settings or train into a new --out folder",
            path=path,
        )
    stored = checkpoint.get("training", {}).get("data_key")
    if stored is not None and stored != data_key(clips):
        raise CheckpointError(
            f"cannot resume: the run was started on another set of training clips (now {len(clips)} "
            "clips); resume with the same data or train into a new --out folder",
            path=path,
        )


def write_csv_log(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite the whole log atomically, so a resumed run never duplicates an epoch's row."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
