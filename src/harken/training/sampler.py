"""Stratified oversampling: every epoch balanced over machine x domain x class, DDP aware.

Real DCASE training data has 990 source and 10 target clips per machine; drawn uniformly, a
batch of 256 would hold about 2.5 target clips and the domain classifier, the SVDD term and
the reconstruction would all be fitted to the source domain.  The report balances classes
(normal, synthetic anomaly) and domains (source, target) by stratified oversampling; for the
machine-generalized model the machine types are balanced too.

Design
------
* Items are the normal training clips, each with a machine and a domain (``None`` is a
  domain of its own, e.g. for MIMII names without one).
* A *stratum* is (machine, domain, class) with class ``normal`` or ``pseudo``.  Normal strata
  hold every clip of their (machine, domain) group.  Pseudo strata hold the *seed clips*:
  ``pseudo_fraction`` of each group (rounded, at least one), chosen once from ``seed`` and
  kept for every epoch; each draw of a seed is corrupted afresh by the augmentation.
* Only strata with at least one clip exist: a machine without target clips has no target
  strata, and the balance is over the strata that exist (such a machine then receives half
  the draws of a machine with both domains).
* The epoch is a sequence of *blocks*; a block is a random permutation of all strata, so any
  run of whole blocks holds every stratum equally often, and a batch of ``batch_size``
  consecutive draws is balanced to within one item per stratum.  Within a stratum clips are
  drawn without replacement (a reshuffled pass each time the stratum is exhausted), so the
  target clips cycle evenly instead of repeating at random.
* Epoch size: ``epoch_size`` draws over all ranks, rounded *up* to whole blocks on every
  rank.  ``0`` (default) means ``n_strata x`` the largest normal stratum: the largest group's
  clips are each seen once per epoch (and all smaller ones at least once).
* DDP: the global sequence of blocks is dealt round-robin to ranks (block ``i`` to rank
  ``i % world_size``), so the ranks' slices are disjoint, equally long (no rank waits at a
  collective) and each exactly balanced.
* Everything is a function of ``(seed, epoch)``: call :meth:`set_epoch` before each epoch, as
  with ``DistributedSampler``.

Using it with a Dataset
-----------------------
The sampler yields ``(clip_index, is_pseudo)`` pairs; ``clip_index`` indexes the lists given
to the constructor.  A map-style dataset accepts the pair as its key::

    class TrainSet(torch.utils.data.Dataset):
        def __getitem__(self, key):
            clip_index, is_pseudo = key
            x = random_crop(cache[clip_index])            # dB log-mel [n_mels, frames]
            return x, domain_id[clip_index], is_pseudo

    loader = DataLoader(TrainSet(...), batch_size=256, sampler=sampler, drop_last=True)

and the training loop corrupts the flagged items of each batch on device
(``x[is_pseudo] = maker(x[is_pseudo], generator)``) before scaling them to [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from harken.config import Config

NORMAL = "normal"
PSEUDO = "pseudo"

Stratum = tuple[Hashable, Hashable, str]


class StratifiedSampler(Sampler[tuple[int, bool]]):
    """Balanced (machine x domain x class) draws of ``(clip_index, is_pseudo)``; see the module doc.

    Parameters
    ----------
    machines, domains:
        Per training clip, its machine type and domain (equal lengths).
    pseudo_fraction:
        Fraction of each machine x domain group that seeds pseudo-anomalies
        (``augment.fraction``); ``0`` or ``use_pseudo=False`` gives normal strata only.
    epoch_size:
        Draws per epoch over all ranks (``train.epoch_size``); 0 for the default above.
    seed, rank, world_size:
        Randomness and the DDP slice this instance yields.
    """

    def __init__(
        self,
        machines: Sequence[Hashable],
        domains: Sequence[Hashable],
        *,
        pseudo_fraction: float = 0.5,
        use_pseudo: bool = True,
        epoch_size: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(machines) != len(domains):
            raise ValueError(f"{len(machines)} machines but {len(domains)} domains")
        if not machines:
            raise ValueError("no training clips to sample from")
        if not 0.0 <= pseudo_fraction <= 1.0:
            raise ValueError(f"pseudo_fraction must be in [0, 1], got {pseudo_fraction}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if epoch_size < 0:
            raise ValueError(f"epoch_size must be >= 0, got {epoch_size}")
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0

        groups: dict[tuple[Hashable, Hashable], list[int]] = {}
        for i, key in enumerate(zip(machines, domains, strict=True)):
            groups.setdefault(key, []).append(i)
        # Sorted by string form so the stratum order (hence the sequence) does not depend on
        # clip order in the input lists beyond the clip indices themselves.
        group_keys = sorted(groups, key=lambda k: (str(k[0]), str(k[1])))

        pick = np.random.default_rng([self.seed, 0])
        self.strata: list[Stratum] = []
        self._members: list[np.ndarray] = []
        self.pseudo_seeds = np.zeros(len(machines), dtype=bool)
        for machine, domain in group_keys:
            members = np.asarray(groups[(machine, domain)], dtype=np.int64)
            self.strata.append((machine, domain, NORMAL))
            self._members.append(members)
        if use_pseudo and pseudo_fraction > 0:
            for machine, domain in group_keys:
                members = np.asarray(groups[(machine, domain)], dtype=np.int64)
                n_seed = min(len(members), max(1, round(pseudo_fraction * len(members))))
                seeds = np.sort(pick.choice(members, size=n_seed, replace=False))
                self.pseudo_seeds[seeds] = True
                self.strata.append((machine, domain, PSEUDO))
                self._members.append(seeds)

        n_strata = len(self.strata)
        largest_normal = max(
            len(m) for s, m in zip(self.strata, self._members, strict=True) if s[2] == NORMAL
        )
        wanted = epoch_size if epoch_size > 0 else n_strata * largest_normal
        self.blocks_per_rank = max(1, math.ceil(wanted / (n_strata * self.world_size)))

    @classmethod
    def from_config(
        cls,
        machines: Sequence[Hashable],
        domains: Sequence[Hashable],
        config: Config,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> StratifiedSampler:
        """Sampler for a run: ``augment.fraction``, ``loss.use_pseudo``, ``train.epoch_size``
        and ``train.seed`` from ``config``."""
        return cls(
            machines,
            domains,
            pseudo_fraction=config.augment.fraction,
            use_pseudo=config.loss.use_pseudo,
            epoch_size=config.train.epoch_size,
            seed=config.train.seed,
            rank=rank,
            world_size=world_size,
        )

    # ------------------------------------------------------------------ sizes
    @property
    def n_strata(self) -> int:
        return len(self.strata)

    @property
    def epoch_size(self) -> int:
        """Draws per epoch over all ranks (after rounding up to whole blocks)."""
        return self.blocks_per_rank * self.n_strata * self.world_size

    def __len__(self) -> int:
        return self.blocks_per_rank * self.n_strata

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def stratum_sizes(self) -> dict[Stratum, int]:
        """Clips per stratum (the pseudo ones count seed clips)."""
        return {s: len(m) for s, m in zip(self.strata, self._members, strict=True)}

    # ------------------------------------------------------------------ sequence
    def global_sequence(self, epoch: int | None = None) -> np.ndarray:
        """All ranks' draws of an epoch, ``[epoch_size, 3]`` rows of
        ``(clip_index, is_pseudo, stratum_index)``, in global order (block ``i`` belongs to
        rank ``i % world_size``)."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, 1, epoch])
        n_blocks = self.blocks_per_rank * self.world_size
        order = np.argsort(rng.random((n_blocks, self.n_strata)), axis=1).reshape(-1)
        clips = np.empty(order.shape[0], dtype=np.int64)
        for s, members in enumerate(self._members):
            where = np.nonzero(order == s)[0]
            passes = math.ceil(len(where) / len(members))
            draws = np.concatenate([rng.permutation(members) for _ in range(passes)])
            clips[where] = draws[: len(where)]
        is_pseudo = np.array([self.strata[s][2] == PSEUDO for s in range(self.n_strata)])[order]
        return np.stack([clips, is_pseudo.astype(np.int64), order], axis=1)

    def rank_sequence(self, epoch: int | None = None) -> np.ndarray:
        """This rank's rows of :meth:`global_sequence` (its whole blocks, in order)."""
        seq = self.global_sequence(epoch).reshape(-1, self.n_strata, 3)
        return seq[self.rank :: self.world_size].reshape(-1, 3)

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        for clip, pseudo, _ in self.rank_sequence().tolist():
            yield int(clip), bool(pseudo)
