"""Stratified sampler: balance per epoch and per DDP rank, determinism, odd data layouts."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

from harken.config import Config
from harken.training.sampler import StratifiedSampler


def dcase_like(
    n_machines: int = 3, n_source: int = 99, n_target: int = 1
) -> tuple[list[str], list[str]]:
    """DCASE proportions (990 : 10) scaled down, clips of machines interleaved."""
    machines, domains = [], []
    for m in range(n_machines):
        machines += [f"m{m}"] * (n_source + n_target)
        domains += ["source"] * n_source + ["target"] * n_target
    return machines, domains


def stratum_counts(
    sampler: StratifiedSampler,
    pairs: list[tuple[int, bool]],
    machines: list[str],
    domains: list[str],
) -> Counter:
    return Counter((machines[i], domains[i], "pseudo" if p else "normal") for i, p in pairs)


def test_strata_and_default_epoch_size() -> None:
    machines, domains = dcase_like(n_machines=3, n_source=20, n_target=4)
    s = StratifiedSampler(machines, domains, pseudo_fraction=0.5, seed=0)
    assert s.n_strata == 3 * 2 * 2
    sizes = s.stratum_sizes()
    assert sizes[("m0", "source", "normal")] == 20 and sizes[("m0", "target", "normal")] == 4
    assert sizes[("m1", "source", "pseudo")] == 10 and sizes[("m1", "target", "pseudo")] == 2
    # default: every clip of the largest normal stratum (20) once -> 12 strata x 20 draws
    assert s.epoch_size == len(s) == 240
    assert len(list(s)) == 240


def test_every_epoch_is_exactly_balanced() -> None:
    machines, domains = dcase_like()
    s = StratifiedSampler(machines, domains, seed=3)
    for epoch in range(3):
        s.set_epoch(epoch)
        pairs = list(s)
        counts = stratum_counts(s, pairs, machines, domains)
        assert len(counts) == 12
        assert set(counts.values()) == {len(pairs) // 12}


def test_consecutive_blocks_hold_each_stratum_once() -> None:
    machines, domains = dcase_like(n_machines=2, n_source=10, n_target=3)
    s = StratifiedSampler(machines, domains, seed=1, epoch_size=80)
    rows = s.rank_sequence()
    blocks = rows[:, 2].reshape(-1, s.n_strata)
    for block in blocks:
        assert sorted(block.tolist()) == list(range(s.n_strata))
    # so any batch is balanced within one item per stratum
    for start in range(0, len(rows) - 16, 16):
        counts = Counter(rows[start : start + 16, 2].tolist())
        assert max(counts.values()) - min(counts.get(k, 0) for k in range(s.n_strata)) <= 1


def test_within_stratum_draws_are_without_replacement() -> None:
    machines, domains = dcase_like(n_machines=2, n_source=30, n_target=3)
    s = StratifiedSampler(machines, domains, seed=2, use_pseudo=False)
    pairs = list(s)  # 4 strata x 30 draws
    source_m0 = [i for i, _ in pairs if machines[i] == "m0" and domains[i] == "source"]
    assert sorted(source_m0) == [i for i in range(33) if domains[i] == "source"]  # each once
    target_m0 = Counter(i for i, _ in pairs if machines[i] == "m0" and domains[i] == "target")
    assert sorted(target_m0.values()) == [10, 10, 10]  # 30 draws cycle evenly over 3 clips


def test_pseudo_seeds_fraction_fixed_and_only_source_of_pseudo_draws() -> None:
    machines, domains = dcase_like(n_machines=2, n_source=40, n_target=3)
    s = StratifiedSampler(machines, domains, pseudo_fraction=0.25, seed=5)
    seeds = np.nonzero(s.pseudo_seeds)[0]
    per_group = Counter((machines[i], domains[i]) for i in seeds)
    assert per_group == {
        ("m0", "source"): 10,
        ("m0", "target"): 1,
        ("m1", "source"): 10,
        ("m1", "target"): 1,
    }
    for epoch in range(2):
        s.set_epoch(epoch)
        drawn = {i for i, p in s if p}
        assert drawn <= set(seeds.tolist())
    again = StratifiedSampler(machines, domains, pseudo_fraction=0.25, seed=5)
    assert np.array_equal(again.pseudo_seeds, s.pseudo_seeds)
    other = StratifiedSampler(machines, domains, pseudo_fraction=0.25, seed=6)
    assert not np.array_equal(other.pseudo_seeds, s.pseudo_seeds)


def test_no_pseudo_strata_when_disabled() -> None:
    machines, domains = dcase_like()
    for kwargs in ({"use_pseudo": False}, {"pseudo_fraction": 0.0}):
        s = StratifiedSampler(machines, domains, **kwargs)
        assert s.n_strata == 6 and not any(p for _, p in s) and not s.pseudo_seeds.any()


def test_machine_without_target_clips() -> None:
    machines = ["fan"] * 12 + ["valve"] * 8
    domains = ["source"] * 10 + ["target"] * 2 + ["source"] * 8
    s = StratifiedSampler(machines, domains, seed=0)
    assert s.n_strata == 6  # fan: 2 domains x 2 classes; valve: source x 2 classes
    assert not any(m == "valve" and d == "target" for m, d, _ in s.strata)
    counts = stratum_counts(s, list(s), machines, domains)
    assert len(counts) == 6 and len(set(counts.values())) == 1


def test_deterministic_by_seed_and_epoch() -> None:
    machines, domains = dcase_like()
    a = StratifiedSampler(machines, domains, seed=4)
    b = StratifiedSampler(machines, domains, seed=4)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    a.set_epoch(1)
    assert list(a) == list(b)
    assert list(StratifiedSampler(machines, domains, seed=5)) != list(
        StratifiedSampler(machines, domains, seed=4)
    )


def test_ddp_ranks_are_disjoint_balanced_slices() -> None:
    machines, domains = dcase_like()
    world = 3
    ranks = [
        StratifiedSampler(machines, domains, seed=7, world_size=world, rank=r, epoch_size=1000)
        for r in range(world)
    ]
    for s in ranks:
        s.set_epoch(2)
    lengths = {len(s) for s in ranks}
    assert len(lengths) == 1  # no rank waits for another at a collective
    n = lengths.pop()
    assert n % 12 == 0 and n * world >= 1000
    glob = ranks[0].global_sequence().reshape(-1, 12, 3)
    union = Counter()
    for r, s in enumerate(ranks):
        rows = s.rank_sequence()
        assert np.array_equal(rows, glob[r::world].reshape(-1, 3))  # its own positions only
        pairs = list(s)
        counts = stratum_counts(s, pairs, machines, domains)
        assert len(counts) == 12 and set(counts.values()) == {n // 12}
        union.update(pairs)
    whole = Counter((int(c), bool(p)) for c, p, _ in ranks[0].global_sequence())
    assert union == whole  # the ranks' slices partition the global epoch


def test_epoch_size_rounds_up_to_whole_blocks() -> None:
    machines, domains = dcase_like()
    s = StratifiedSampler(machines, domains, epoch_size=100, world_size=2, rank=0)
    assert len(s) == 5 * 12  # ceil(100 / (12 * 2)) = 5 blocks of 12 strata on each rank
    assert s.epoch_size == 2 * 5 * 12


def test_from_config() -> None:
    machines, domains = dcase_like(n_machines=2, n_source=20, n_target=2)
    config = Config()
    config.augment.fraction = 0.25
    config.train.epoch_size = 48
    config.train.seed = 9
    s = StratifiedSampler.from_config(machines, domains, config, rank=1, world_size=2)
    assert s.stratum_sizes()[("m0", "source", "pseudo")] == 5 and s.seed == 9
    assert len(s) == 3 * 8 and s.rank == 1  # ceil(48 / (8 strata x 2 ranks)) = 3 blocks
    config.loss.use_pseudo = False
    assert StratifiedSampler.from_config(machines, domains, config).n_strata == 4


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="domains"):
        StratifiedSampler(["a", "b"], ["source"])
    with pytest.raises(ValueError, match="no training clips"):
        StratifiedSampler([], [])
    with pytest.raises(ValueError, match="rank"):
        StratifiedSampler(["a"], ["source"], rank=2, world_size=2)
    with pytest.raises(ValueError, match="pseudo_fraction"):
        StratifiedSampler(["a"], ["source"], pseudo_fraction=1.5)


class PairDataset(Dataset):
    def __init__(self, n: int) -> None:
        self.domain = torch.arange(n) % 2

    def __len__(self) -> int:
        return len(self.domain)

    def __getitem__(self, key: tuple[int, bool]) -> tuple[torch.Tensor, torch.Tensor, bool]:
        clip, is_pseudo = key
        return torch.full((2, 3), float(clip)), self.domain[clip], is_pseudo


def test_drives_a_dataloader() -> None:
    machines, domains = dcase_like(n_machines=2, n_source=6, n_target=2)
    s = StratifiedSampler(machines, domains, seed=0)
    loader = DataLoader(PairDataset(len(machines)), batch_size=8, sampler=s)
    seen = 0
    for x, domain, is_pseudo in loader:
        assert x.shape[1:] == (2, 3) and is_pseudo.dtype == torch.bool
        assert torch.equal(domain, x[:, 0, 0].long() % 2)  # the clip index reached the dataset
        seen += x.shape[0]
    assert seen == len(s)


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 30), st.integers(0, 5)), min_size=1, max_size=4),
    world=st.integers(1, 4),
    fraction=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    epoch_size=st.integers(0, 300),
)
def test_balance_property(
    sizes: list[tuple[int, int]], world: int, fraction: float, epoch_size: int
) -> None:
    machines, domains = [], []
    for m, (n_source, n_target) in enumerate(sizes):
        machines += [f"m{m}"] * (n_source + n_target)
        domains += ["source"] * n_source + ["target"] * n_target
    samplers = [
        StratifiedSampler(
            machines,
            domains,
            pseudo_fraction=fraction,
            epoch_size=epoch_size,
            world_size=world,
            rank=r,
        )
        for r in range(world)
    ]
    expected_strata = sum(1 + (t > 0) for _, t in sizes) * (2 if fraction > 0 else 1)
    for s in samplers:
        assert s.n_strata == expected_strata
        counts = stratum_counts(s, list(s), machines, domains)
        assert len(counts) == expected_strata and len(set(counts.values())) == 1
        assert len(s) * world >= max(epoch_size, 1)
