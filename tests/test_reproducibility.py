"""Same seed and data, same results: training twice on the CPU gives the same bits.

Two ``harken train`` runs with one seed, each with its own fresh feature cache, must write
byte-identical cache entries, bit-identical model files (weights, SVDD center, scaling,
thresholds, score statistics) and byte-identical ``harken test`` scores and submission files.
A third run with another seed must differ, so the comparison is not vacuous.  Everything random
in training derives from ``(train.seed, epoch, step)`` (see harken.training.loop).  The scoring
backend is the default (``score.backend=auto``), the path users get.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from harken.cli import main
from harken.data.dataset import discover
from harken.errors import HarkenWarning
from harken.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

TINY = [
    "train.epochs=3",
    "train.epoch_size=48",
    "train.batch_size=16",
    "window.frames=32",
    "window.test_hop=16",
    "model.channels=[4,8]",
    "model.latent_dim=8",
    "model.domain_hidden=8",
    "features.n_mels=32",
    "train.log_tensorboard=false",
    "train.device=cpu",
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Runs ``a`` and ``b`` (seed 0, separate caches) and ``other`` (seed 1), trained and tested."""
    tmp = tmp_path_factory.mktemp("repro")
    root = tmp / "data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HarkenWarning)
        clips = discover(synth_root, machines=["fan", "gearbox"])
    counts: dict[tuple, int] = {}
    for clip in clips:  # 6 source + 2 target training clips, 2 test clips per cell
        key = (clip.machine, clip.split, clip.domain, clip.label)
        limit = 6 if key[1:3] == ("train", "source") else 2
        if counts.get(key, 0) < limit:
            counts[key] = counts.get(key, 0) + 1
            out = root / clip.machine / clip.split / clip.path.name
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(clip.path, out)
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("other", 1)):
        run, cache = tmp / name, tmp / f"cache-{name}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            argv = ["--data", str(root), "--cache", str(cache), "--no-progress"]
            assert (
                main(
                    [
                        "train",
                        *argv,
                        "--out",
                        str(run),
                        "--config",
                        "demo",
                        *TINY,
                        f"train.seed={seed}",
                    ]
                )
                == 0
            )
            assert main(["test", *argv, "--run", str(run), "--bootstrap", "0"]) == 0
        out[name] = run
        out[f"cache-{name}"] = cache
    return out


def _model(run: Path) -> dict:
    state = load_checkpoint(run / "model.pt", kind="detector")["detector"]
    for row in state.pop("history"):  # per-epoch losses are compared; timings are not results
        assert set(row) >= {"epoch", "loss", "val_auc"}
    return state


def _flat(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        out: dict[str, object] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}/{key}"))
        return out
    if isinstance(tree, list) and tree and isinstance(tree[0], (dict, list)):
        return {
            k: v for i, item in enumerate(tree) for k, v in _flat(item, f"{prefix}[{i}]").items()
        }
    return {prefix: tree}


def _same(x: object, y: object) -> bool:
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    return x == y


def test_the_same_seed_trains_the_same_model_bit_for_bit(runs: dict[str, Path]) -> None:
    a, b = _flat(_model(runs["a"])), _flat(_model(runs["b"]))
    assert list(a) == list(b)
    differing = [key for key in a if not _same(a[key], b[key])]
    assert not differing, differing
    assert any(
        isinstance(v, torch.Tensor) and v.numel() > 100 for v in a.values()
    )  # weights were compared


def test_the_same_seed_gives_the_same_losses_and_scores(runs: dict[str, Path]) -> None:
    def losses(run: Path) -> list:
        history = load_checkpoint(run / "model.pt", kind="detector")["detector"]["history"]
        return [{k: v for k, v in row.items() if not k.endswith("_seconds")} for row in history]

    assert losses(runs["a"]) == losses(runs["b"])
    for relative in (
        "test/scores.csv",
        *sorted(
            str(p.relative_to(runs["a"])) for p in (runs["a"] / "test" / "submission").iterdir()
        ),
    ):
        assert (runs["a"] / relative).read_bytes() == (runs["b"] / relative).read_bytes(), relative


def test_features_are_computed_to_the_same_bytes(runs: dict[str, Path]) -> None:
    first = {p.relative_to(runs["cache-a"]): p for p in runs["cache-a"].rglob("*.npy")}
    second = {p.relative_to(runs["cache-b"]): p for p in runs["cache-b"].rglob("*.npy")}
    assert first and set(first) == set(second)
    for key, path in first.items():
        assert path.read_bytes() == second[key].read_bytes(), key


def test_another_seed_gives_another_model(runs: dict[str, Path]) -> None:
    a, other = _flat(_model(runs["a"])), _flat(_model(runs["other"]))
    weights = [
        k
        for k, v in a.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel() > 1
    ]
    assert any(not _same(a[k], other[k]) for k in weights)
    assert (runs["a"] / "test" / "scores.csv").read_bytes() != (
        runs["other"] / "test" / "scores.csv"
    ).read_bytes()


def test_cache_and_in_memory_paths_give_the_same_features_in_one_process(
    synth_root: Path, tmp_path: Path
) -> None:
    """The cache computes under torch.inference_mode, field scoring and the service under
    torch.no_grad, both in one process (the Python API, ``harken score`` on a data set): the
    second must neither fail nor differ (it once hit "Inplace update to inference tensor")."""
    import numpy as np

    from harken.config import load_config
    from harken.data.audio import load_audio
    from harken.features.cache import FeatureCache
    from harken.features.logmel import LogMel

    config = load_config("demo", ["features.n_mels=32"])
    path = sorted((synth_root / "fan" / "test").glob("*.wav"))[0]
    cached = np.asarray(
        FeatureCache(tmp_path, config.audio, config.features).get(path), dtype=np.float32
    )
    wave = torch.from_numpy(load_audio(path, config.audio))
    logmel = LogMel(config.features, config.audio.sample_rate)
    with torch.no_grad():
        field = logmel(wave)[0].numpy()
    with torch.inference_mode():
        again = logmel(wave)[0].numpy()
    assert np.array_equal(field, again)
    assert np.array_equal(cached, field.astype(config.features.cache_dtype).astype(np.float32))
