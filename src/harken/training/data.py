"""Training inputs: the validation hold-out and random crops from cached features.

Validation protocol (no test clip or label is ever used): within every machine x section x
domain group of *normal training clips*, a seeded ``val_fraction`` of clips is held out (at
least one where the group has two or more clips, so the ten target clips of a DCASE machine
leave one for validation).  Validation scores those held-out normals and a pseudo-anomalous
copy of each (the same transforms training uses, drawn once from a fixed seed); the
validation AUC is their ROC AUC.  It drives ReduceLROnPlateau and best-model selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from harken.features.windows import center_crop, fit_length, random_crop

DOMAINS = {"source": 0, "target": 1, None: 0}


def split_validation(clips: Sequence[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Seeded per-(machine, section, domain) hold-out of normal training clips."""
    if fraction <= 0:
        return list(clips), []
    groups: dict[tuple, list[int]] = {}
    for i, clip in enumerate(clips):
        groups.setdefault((clip.machine, clip.section, clip.domain or ""), []).append(i)
    held: set[int] = set()
    rng = np.random.default_rng([seed, 7])
    for key in sorted(groups):
        members = groups[key]
        if len(members) < 2:
            continue
        n_val = min(len(members) - 1, max(1, round(fraction * len(members))))
        held.update(int(i) for i in rng.choice(members, size=n_val, replace=False))
    train = [c for i, c in enumerate(clips) if i not in held]
    val = [c for i, c in enumerate(clips) if i in held]
    return train, val


class CropDataset(Dataset):
    """Random ``frames``-long crops of cached dB log-mel features.

    Keys are the sampler's ``(clip_index, is_pseudo)`` pairs.  The crop position comes from a
    generator seeded by ``(seed, epoch, draw)`` where ``draw`` counts this epoch's requests,
    so an epoch is reproducible from the seed whatever the number of DataLoader workers
    (each key is fetched exactly once per epoch, in order, within a worker).
    """

    def __init__(
        self,
        features: Sequence[np.ndarray],
        domains: Sequence[int],
        frames: int,
        *,
        short_clip: str = "repeat",
        crop: str = "random",
        seed: int = 0,
    ) -> None:
        self.features = features
        self.domains = list(domains)
        self.frames = int(frames)
        self.short_clip = short_clip
        self.crop = crop
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, key: tuple[int, bool] | tuple[int, bool, int]) -> tuple[torch.Tensor, int, bool]:
        clip_index, is_pseudo, draw = key if len(key) == 3 else (*key, clip_index_hash(key))
        spec = fit_length(np.asarray(self.features[clip_index], dtype=np.float32), self.frames, self.short_clip)
        if self.crop == "random":
            rng = np.random.default_rng([self.seed, 3, self.epoch, int(draw)])
            window = random_crop(spec, self.frames, rng)
        else:
            window = center_crop(spec, self.frames)
        return torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32)), self.domains[clip_index], bool(is_pseudo)


def clip_index_hash(key: tuple[int, bool]) -> int:
    return int(key[0]) * 2 + int(bool(key[1]))


class NumberedSampler(torch.utils.data.Sampler):
    """Wraps the stratified sampler so each key carries its draw number within the epoch."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for draw, (clip_index, is_pseudo) in enumerate(self.sampler):
            yield clip_index, is_pseudo, draw


def collate(batch: list[tuple[torch.Tensor, int, bool]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.stack([b[0] for b in batch])
    domain = torch.tensor([b[1] for b in batch], dtype=torch.long)
    is_pseudo = torch.tensor([b[2] for b in batch], dtype=torch.bool)
    return x, domain, is_pseudo
