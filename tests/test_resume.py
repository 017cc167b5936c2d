"""Crash safety: atomic writes everywhere, kill-and-resume to the same model, caches that heal.

* Every file harken writes goes through :mod:`harken.atomic` (a static scan of src/harken),
  and an interrupted write (the rename failing, an exception mid-write, a real SIGKILL) leaves
  the previous file as it was, with each writer harken has.
* ``harken train`` killed with SIGKILL at a random moment after its first checkpoint, then
  ``--resume``d, ends in the model an uninterrupted run makes, bit for bit (weights, thresholds,
  score statistics, test scores).  Both runs are real subprocesses; the kill is real.
* A feature-cache build killed mid-write leaves only complete entries (plus ``.tmp`` leftovers
  that nothing reads); a truncated entry or a leftover temporary file is detected and rebuilt.
"""

from __future__ import annotations

import ast
import csv
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from harken import atomic
from harken.atomic import atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_text
from harken.config import load_config
from harken.data.dataset import discover
from harken.errors import HarkenWarning
from harken.features.cache import FeatureCache
from harken.training.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[1] / "src" / "harken"
TINY = [
    "train.epochs=6",
    "train.epoch_size=64",
    "train.batch_size=16",
    "window.frames=32",
    "window.test_hop=32",
    "model.channels=[4,8]",
    "model.latent_dim=8",
    "model.domain_hidden=8",
    "features.n_mels=32",
    "train.log_tensorboard=false",
    "train.device=cpu",
    "train.threads=1",
    "score.backend=torch",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


# ============================================================================ every writer is atomic
#: names a write may target without being a path: in-memory buffers and atomic_open handles
HANDLES = {"buffer", "buf", "fh", "handle", "stream"}


def non_atomic_writes(source: str) -> list[str]:
    """Calls in ``source`` that write a file directly rather than through harken.atomic."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        args, kw = node.args, {k.arg: k.value for k in node.keywords}
        problem = None
        if name in ("open", "io.open", "os.fdopen", "gzip.open", "bz2.open", "lzma.open") or (
            name.endswith(".open") and name != "wave.open"
        ):
            mode = args[1] if len(args) > 1 else kw.get("mode")
            if mode is not None and not (
                isinstance(mode, ast.Constant) and not set("wax+") & set(str(mode.value))
            ):
                problem = "opens a file for writing"
        elif name.endswith((".write_text", ".write_bytes")):
            problem = "writes a path directly"
        elif name in (
            "torch.save",
            "json.dump",
            "pickle.dump",
            "np.save",
            "numpy.save",
            "np.savez",
            "wave.open",
        ) or name.endswith((".savefig", ".to_csv")):
            target = (
                args[1]
                if name in ("torch.save", "json.dump", "pickle.dump") and len(args) > 1
                else (args[0] if args else None)
            )
            if not (isinstance(target, ast.Name) and target.id in HANDLES):
                problem = "saves to a path"
        elif name in ("os.rename", "shutil.copy", "shutil.copyfile", "shutil.copy2", "shutil.move"):
            problem = "renames or copies without fsync"
        if problem:
            found.append(f"line {node.lineno}: {problem}: {ast.unparse(node)[:90]}")
    return found


def test_the_scan_finds_non_atomic_writes() -> None:
    bad = """
open(p, "w"); open(p, mode="ab"); Path(p).write_text("x"); torch.save(d, "m.pt")
np.save(path, a); fig.savefig(out_path); json.dump(obj, open_file); os.rename(a, b)
"""
    good = """
open(p); open(p, "rb"); torch.save(d, buffer); np.save(fh, a); fig.savefig(buffer, format="png")
with atomic_open(p, "w") as handle: json.dump(obj, handle)
"""
    assert len(non_atomic_writes(bad)) == 8
    assert non_atomic_writes(good) == []


def test_every_writer_in_harken_goes_through_harken_atomic() -> None:
    offenders = {}
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "atomic.py":
            continue
        found = non_atomic_writes(path.read_text(encoding="utf-8"))
        if found:
            offenders[str(path.relative_to(SRC))] = found
    assert not offenders, offenders


# ============================================================================ interrupted writes
def _writers(tmp: Path) -> dict:
    """name -> (file it writes, function writing version ``v`` of it) for each writer harken has."""
    from harken.deploy import ClipScore, write_outputs
    from harken.evaluation.submission import write_submission
    from harken.pipeline import save_config
    from harken.training.loop import _write_csv

    cache = FeatureCache(tmp / "cache")
    return {
        "checkpoint / model.pt": (
            tmp / "model.pt",
            lambda v: save_checkpoint(
                tmp / "model.pt", {"v": torch.full((100,), float(v))}, kind="detector"
            ),
        ),
        "feature cache entry": (
            cache._entry_file("ab" * 16),
            lambda v: cache._store("ab" * 16, np.full((128, 4), float(v), np.float32), "x.wav"),
        ),
        "submission score file": (
            tmp / "anomaly_score_fan_section_00_test.csv",
            lambda v: write_submission(tmp, "fan", "00", ["a.wav", "b.wav"], [float(v), 1.0]),
        ),
        "training log": (tmp / "log.csv", lambda v: _write_csv(tmp / "log.csv", [{"epoch": v}])),
        "run config": (
            tmp / "config.yaml",
            lambda v: save_config(tmp / "config.yaml", load_config(None, [f"train.seed={v}"])),
        ),
        "harken score outputs": (
            tmp / "out" / "scores.csv",
            lambda v: write_outputs(tmp / "out", [ClipScore(source=f"{v}.wav", error="x")], {}),
        ),
        "json": (tmp / "x.json", lambda v: atomic_write_json(tmp / "x.json", {"v": v})),
    }


WRITERS = [
    "checkpoint / model.pt",
    "feature cache entry",
    "submission score file",
    "training log",
    "run config",
    "harken score outputs",
    "json",
]


class _FullDisk:
    """A file handle whose first write stores half its data, then fails as on a full disk."""

    def __init__(self, handle) -> None:  # noqa: ANN001
        self._handle = handle

    def write(self, data):  # noqa: ANN001, ANN201
        self._handle.write(data[: max(1, len(data) // 2)])
        raise OSError(28, "No space left on device")

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._handle, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self._handle.__exit__(*exc)


def _leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*.tmp")]


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("failure", ["rename fails", "write fails midway"])
def test_an_interrupted_write_leaves_the_old_file_intact(
    writer: str, failure: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, write = _writers(tmp_path)[writer]
    write(1)
    old = path.read_bytes()
    if failure == "rename fails":  # the process dies between writing and renaming

        def broken_replace(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(atomic.os, "replace", broken_replace)
    else:  # the disk fills up halfway through the data
        real_fdopen = os.fdopen
        monkeypatch.setattr(atomic.os, "fdopen", lambda *a, **k: _FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(OSError, match="No space left"):
        write(2)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert _leftovers(tmp_path) == []  # the temporary file is removed


def test_a_sigkilled_writer_leaves_the_old_file_and_only_a_tmp(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    atomic_write_bytes(target, b"old" * 1000)
    code = textwrap.dedent(
        f"""
        import time
        from harken.atomic import atomic_open
        with atomic_open({str(target)!r}, "wb") as fh:
            fh.write(b"new" * 1000)
            fh.flush()
            print("writing", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=ENV)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old" * 1000
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert (
        len(leftovers) == 1
        and leftovers[0].startswith(".model.pt.")
        and leftovers[0].endswith(".tmp")
    )


def test_atomic_files_get_the_permissions_a_plain_open_gives(tmp_path: Path) -> None:
    new = tmp_path / "new.txt"
    atomic_write_text(new, "x")
    umask = os.umask(0o022)
    os.umask(umask)
    assert new.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    existing = tmp_path / "existing.txt"
    existing.write_text("old")
    existing.chmod(0o640)
    with atomic_open(existing, "w") as fh:
        fh.write("new")
    assert existing.stat().st_mode & 0o777 == 0o640 and existing.read_text() == "new"


# ============================================================================ kill and resume
def copy_subset(src: Path, dst: Path, plan: dict[str, tuple[int, int, int]]) -> Path:
    """``plan``: machine -> (source train, target train, test clips per domain x label)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HarkenWarning)
        clips = discover(src, machines=list(plan))
    taken: dict[tuple, int] = {}
    for clip in clips:
        n_source, n_target, n_test = plan[clip.machine]
        key = (clip.machine, clip.split, clip.domain, clip.label)
        wanted = {("train", "source"): n_source, ("train", "target"): n_target}.get(
            (clip.split, clip.domain), n_test
        )
        if taken.get(key, 0) < wanted:
            taken[key] = taken.get(key, 0) + 1
            out = dst / clip.machine / clip.split / clip.path.name
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(clip.path, out)
    return dst


@pytest.fixture(scope="module")
def small_data(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small copy of the shared data set and a feature cache already filled for TINY."""
    tmp = tmp_path_factory.mktemp("resume")
    root = copy_subset(synth_root, tmp / "data", {"fan": (8, 2, 2), "valve": (8, 2, 2)})
    config = load_config("demo", TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HarkenWarning)
        paths = [c.path for c in discover(root)]
    FeatureCache(tmp / "cache", config.audio, config.features).build(paths, progress=False)
    return root, tmp / "cache"


def _train_cmd(root: Path, cache: Path, out: Path, *, resume: bool = False) -> list[str]:
    return [
        sys.executable, "-m", "harken", "train", "--data", str(root), "--out", str(out), "--config", "demo",
        "--cache", str(cache), "--no-progress", *(["--resume"] if resume else []), *TINY,
    ]  # fmt: skip


def _detector_state(run: Path) -> dict:
    state = load_checkpoint(run / "model.pt", kind="detector")["detector"]
    state.pop("history")  # holds wall-clock epoch times
    return state


def _assert_same(a: object, b: object, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _test_scores(run: Path, root: Path, cache: Path) -> bytes:
    from harken.pipeline import discover_clips, test_run
    from harken.training.checkpoint import load_detector

    detector = load_detector(run)
    detector.cache_dir = cache
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test_run(detector, discover_clips(root), run / "test", progress=False)
    return (run / "test" / "scores.csv").read_bytes()


def test_sigkill_then_resume_gives_the_uninterrupted_model_bit_for_bit(
    small_data: tuple[Path, Path], tmp_path: Path
) -> None:
    root, cache = small_data
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # Both runs at once (one core each): the uninterrupted reference and the one to kill.
    reference = subprocess.Popen(
        _train_cmd(root, cache, straight),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    victim = subprocess.Popen(
        _train_cmd(root, cache, killed),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = killed / "checkpoints" / "all-last.pt"
    # Wait for the first two checkpoints (each is a new inode: atomic replace) to time one
    # epoch, then kill at a random moment of the next two and a half.
    seen, times = None, []
    deadline = time.monotonic() + 240
    while len(times) < 2:
        assert victim.poll() is None, "training exited before its second checkpoint"
        assert time.monotonic() < deadline, "no checkpoints after 240 s"
        try:
            inode = checkpoint.stat().st_ino
        except FileNotFoundError:
            inode = None
        if inode is not None and inode != seen:
            seen = inode
            times.append(time.monotonic())
        time.sleep(0.005)
    epoch = times[1] - times[0]
    time.sleep(random.Random(7).uniform(0.0, 2.5) * epoch)
    assert victim.poll() is None, "training finished before the kill: make the run longer"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert not (killed / "model.pt").exists()
    epochs_done = int(load_checkpoint(checkpoint, kind="training")["training"]["epoch"]) + 1
    assert 2 <= epochs_done <= 6

    resumed = subprocess.run(
        _train_cmd(root, cache, killed, resume=True),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed all from {checkpoint} at epoch {epochs_done}" in resumed.stderr
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]

    _assert_same(_detector_state(straight), _detector_state(killed), "model.pt")
    with open(killed / "logs" / "all.csv", newline="") as fh:  # each epoch logged once
        assert [int(row["epoch"]) for row in csv.DictReader(fh)] == [1, 2, 3, 4, 5, 6]
    assert _test_scores(straight, root, cache) == _test_scores(killed, root, cache)


def test_resume_refuses_another_configuration_or_data(
    small_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from harken.cli import main

    root, cache = small_data
    run = tmp_path / "run"
    common = [
        "train",
        "--data",
        str(root),
        "--out",
        str(run),
        "--config",
        "demo",
        "--cache",
        str(cache),
        "--no-progress",
    ]
    base = [o for o in TINY if not o.startswith(("train.epochs", "train.epoch_size"))] + [
        "train.epoch_size=16"
    ]
    short = [*base, "train.epochs=1"]
    torch_threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main([*common, *short]) == 0
            config_before = (run / "config.yaml").read_text()
            capsys.readouterr()
            # another window size: would be a size-mismatch traceback without the check
            assert main([*common, "--resume", *short, "window.frames=64"]) == 1
            err = capsys.readouterr().err
            assert "Traceback" not in err
            assert (
                "cannot resume: the run was started with another configuration (window.frames: 32 in the checkpoint, 64 now)"
                in err
            )
            assert (
                run / "config.yaml"
            ).read_text() == config_before  # the run's record is untouched
            # another clip list: one training clip fewer
            data2 = tmp_path / "data2"
            shutil.copytree(root, data2)
            next(iter(sorted((data2 / "fan" / "train").glob("*.wav")))).unlink()
            assert main([*common[:2], str(data2), *common[3:], "--resume", *short]) == 1
            err = capsys.readouterr().err
            assert "cannot resume: the run was started on another set of training clips" in err
            # more epochs on the same data and settings: allowed
            assert main([*common, "--resume", *base, "train.epochs=2"]) == 0
    finally:
        torch.set_num_threads(torch_threads)
    with open(run / "logs" / "all.csv", newline="") as fh:
        assert [int(row["epoch"]) for row in csv.DictReader(fh)] == [1, 2]


# ============================================================================ the feature cache
def test_a_cache_build_killed_mid_write_leaves_only_whole_entries(
    small_data: tuple[Path, Path], tmp_path: Path
) -> None:
    root, full_cache = small_data
    cache_dir = tmp_path / "cache"
    code = textwrap.dedent(
        f"""
        import sys, warnings
        from pathlib import Path
        warnings.simplefilter("ignore")
        from harken.config import load_config
        from harken.data.dataset import discover
        from harken.features.cache import FeatureCache
        config = load_config("demo", {TINY!r})
        paths = [c.path for c in discover({str(root)!r})]
        FeatureCache({str(cache_dir)!r}, config.audio, config.features).build(paths, progress=False, batch_size=1)
        print("done", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not any(cache_dir.rglob("*.npy")):
        assert proc.poll() is None, "the build finished or failed before the first entry"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    time.sleep(random.Random(3).uniform(0.0, 0.01))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    config = load_config("demo", TINY)
    cache = FeatureCache(cache_dir, config.audio, config.features)
    written = [p for p in cache.dir.rglob("*.npy")]
    paths = [c.path for c in discover(root)]
    assert 1 <= len(written) < len(paths), "the kill did not land mid-build"
    for entry in written:  # a complete, valid array under every final name
        cache._validated(entry)
    with warnings.catch_warnings():
        warnings.simplefilter("error", HarkenWarning)  # nothing corrupt to warn about
        rebuilt = cache.build(paths, progress=False)
    reference = FeatureCache(full_cache, config.audio, config.features).build(paths, progress=False)
    for a, b in zip(rebuilt, reference, strict=True):
        assert np.array_equal(a, b)
    assert cache.computed == len(paths) - len(written)  # the finished entries were reused


def test_a_truncated_entry_is_detected_and_rebuilt(
    small_data: tuple[Path, Path], tmp_path: Path
) -> None:
    root, _ = small_data
    clip = sorted((root / "fan" / "train").glob("*.wav"))[0]
    config = load_config("demo", TINY)
    cache = FeatureCache(tmp_path / "cache", config.audio, config.features)
    good = np.array(cache.get(clip))
    entry = cache.entry_path(clip)
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) - 100])  # a copy cut short, written without harken.atomic
    with pytest.warns(
        HarkenWarning, match=re.escape(str(entry)) + ": .*; deleting it and recomputing"
    ):
        again = np.array(FeatureCache(tmp_path / "cache", config.audio, config.features).get(clip))
    assert np.array_equal(again, good)
    assert entry.read_bytes() == data


def test_a_leftover_temporary_file_is_never_read(
    small_data: tuple[Path, Path], tmp_path: Path
) -> None:
    root, _ = small_data
    clip = sorted((root / "fan" / "train").glob("*.wav"))[0]
    config = load_config("demo", TINY)
    cache = FeatureCache(tmp_path / "cache", config.audio, config.features)
    entry = cache.entry_path(clip)
    entry.parent.mkdir(parents=True)
    half = entry.parent / f".{entry.name}.k1ll3d.tmp"  # what a SIGKILL mid-write leaves
    half.write_bytes(
        b"\x93NUMPY\x01\x00v\x00{'descr': '<f2', 'fortran_order': False, 'shape': (32, 9999), }"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", HarkenWarning)
        spec = np.asarray(cache.get(clip))
    assert spec.shape[0] == 32 and np.isfinite(spec).all() and cache.computed == 1
    assert entry.is_file()
