"""The bad-input matrix of docs/RELIABILITY.md, run end to end.

Every audio case goes through each layer that sees it: the data layer (``load_audio``), the
feature cache, ``harken train``, ``harken test``, ``harken score``, ``harken evaluate`` and the
HTTP service (a real uvicorn server on 127.0.0.1).  A refused case must give exit code 1 (3
for ``harken score``, which goes on with the other files) and one ``harken <cmd>: error:``
line naming the file and the problem, never a traceback, and must leave no model or cache
entry behind; an accepted case must give finite numbers, and the same number as the plain
16-bit file where the samples are the same (24-bit, float, WAVE_FORMAT_EXTENSIBLE, the first
channel of a stereo file).  Data-layer details of each case (every subtype, channel policy,
resampling, property tests) are in test_audio.py, test_dataset.py and test_names.py; the table
in docs/RELIABILITY.md points at both.

Unreadable files: CI runs as root, and chmod 000 does not stop root from reading, so the
permission error is simulated by making ``open`` raise PermissionError for that one path (as
test_audio.py does); ``test_real_chmod_000_when_not_root`` checks the real thing where the
suite is not root.
"""

from __future__ import annotations

import builtins
import contextlib
import csv
import io
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from harken.cli import main
from harken.config import AudioConfig, FeatureConfig
from harken.data.audio import load_audio
from harken.data.dataset import discover
from harken.errors import AudioError, HarkenWarning
from harken.features.cache import FeatureCache

pytestmark = pytest.mark.slow

SR = 16000
# A model small enough to train in a few seconds on 2 cores; the numbers it gives are not
# the point here, only that they are finite, reproducible and equal where the audio is.
TINY = [
    "train.epochs=2",
    "train.epoch_size=32",
    "train.batch_size=16",
    "window.frames=32",
    "window.test_hop=32",
    "model.channels=[4,8]",
    "model.latent_dim=8",
    "model.domain_hidden=8",
    "features.n_mels=32",
    "train.log_tensorboard=false",
    "train.device=cpu",
    "score.backend=torch",
]
FEATURES = FeatureConfig(n_mels=32)

# kind -> what the error says, lower-cased (every message also names the file)
REFUSED = {
    "empty": "empty file (0 bytes)",
    "truncated": "truncated wav",
    "not_audio": "not a readable audio file",
    "nan": "nan/inf sample(s)",
    "inf": "nan/inf sample(s)",
    "unreadable": "permission denied",
}
ACCEPTED = (
    "pcm_u8",
    "pcm_24",
    "float32",
    "wavex",
    "stereo",
    "rate_44k",
    "short",
    "silent",
    "clipped",
)
#: accepted files that hold exactly the samples of the 16-bit original (channel 0 for stereo)
LOSSLESS = ("pcm_24", "float32", "wavex", "stereo")
#: accepted files that warn, and what the warning says
WARNS = {"silent": "silent audio", "clipped": "clipped audio"}


# ----------------------------------------------------------------------------- making cases
def write_case(kind: str, path: Path, x: np.ndarray) -> None:
    """Write the ``kind`` variant of the 16-bit mono clip ``x`` (float samples) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":  # a copy cut short by a full disk
        buf = io.BytesIO()
        sf.write(buf, x, SR, subtype="PCM_16", format="WAV")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "not_audio":  # an HTML error page saved under a .wav name
        path.write_bytes(b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>\n")
    elif kind in ("nan", "inf"):  # a broken sensor
        y = x.copy()
        y[1000:1010] = np.nan if kind == "nan" else np.inf
        sf.write(path, y, SR, subtype="FLOAT")
    elif kind in ("unreadable", "pcm_16"):
        sf.write(path, x, SR, subtype="PCM_16")
    elif kind == "pcm_u8":
        sf.write(path, x, SR, subtype="PCM_U8")
    elif kind == "pcm_24":
        sf.write(path, x, SR, subtype="PCM_24")
    elif kind == "float32":
        sf.write(path, x, SR, subtype="FLOAT")
    elif kind == "wavex":
        sf.write(path, x, SR, subtype="PCM_16", format="WAVEX")
    elif kind == "stereo":
        sf.write(path, np.stack([x, 0.3 * x[::-1]], axis=1), SR, subtype="PCM_16")
    elif kind == "rate_44k":  # a firmware update changed the rate
        sf.write(path, resample_poly(x.astype(np.float64), 441, 160), 44100, subtype="FLOAT")
    elif kind == "short":  # 0.125 s: 13 frames, less than one 32-frame window
        sf.write(path, x[:2000], SR, subtype="PCM_16")
    elif kind == "silent":  # log of zero
        sf.write(path, np.zeros_like(x), SR, subtype="PCM_16")
    elif kind == "clipped":
        sf.write(path, np.clip(x * 60.0, -1.0, 1.0), SR, subtype="PCM_16")
    else:  # pragma: no cover
        raise ValueError(kind)


@contextlib.contextmanager
def denied(path: Path) -> Iterator[None]:
    """``open(path)`` raises PermissionError, as for a file without read permission."""
    real_open = builtins.open
    target = os.path.realpath(path)

    def guarded(file, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) == target:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    builtins.open = guarded
    try:
        yield
    finally:
        builtins.open = real_open


def maybe_denied(kind: str, path: Path) -> contextlib.AbstractContextManager[None]:
    return denied(path) if kind == "unreadable" else contextlib.nullcontext()


def clip_name(split: str, domain: str, label: str, index: int) -> str:
    return f"section_00_{domain}_{split}_{label}_{index:04d}_noAttribute.wav"


def copy_subset(src: Path, dst: Path, plan: dict[str, tuple[int, int, int]]) -> Path:
    """``plan``: machine -> (source train, target train, test clips per domain x label)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HarkenWarning)
        clips = discover(src, machines=list(plan))
    for machine, (n_source, n_target, n_test) in plan.items():
        taken: dict[tuple, int] = {}
        for clip in clips:
            if clip.machine != machine:
                continue
            key = (clip.split, clip.domain, clip.label)
            wanted = {("train", "source"): n_source, ("train", "target"): n_target}.get(
                (clip.split, clip.domain), n_test
            )
            if taken.get(key, 0) >= wanted:
                continue
            taken[key] = taken.get(key, 0) + 1
            out = dst / machine / clip.split / clip.path.name
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(clip.path, out)
        csv_path = src / machine / "attributes_00.csv"
        if csv_path.exists():
            shutil.copy(csv_path, dst / machine / "attributes_00.csv")
    return dst


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    """``harken ARGV`` in this process: exit code, stderr, warning messages."""
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(argv)
    return rc, capsys.readouterr().err, [str(w.message) for w in caught]


def error_line(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"harken {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and lose a lot on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base_clip(synth_root: Path) -> np.ndarray:
    """A real 16-bit synthetic fan clip (float samples) that every variant is made from."""
    path = sorted((synth_root / "fan" / "test").glob("section_00_source_test_normal_*.wav"))[0]
    x, sr = sf.read(path, dtype="float32")
    assert sr == SR and x.ndim == 1
    return x


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-input-cache")


@pytest.fixture(scope="module")
def clean_root(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small good data set (fan only) that single bad files are dropped into."""
    return copy_subset(synth_root, tmp_path_factory.mktemp("clean") / "data", {"fan": (4, 2, 2)})


@pytest.fixture(scope="module")
def messy(
    synth_root: Path, base_clip: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """A data set holding every accepted oddity at once, trained on and tested with the CLI.

    fan: the accepted audio variants among its training and test clips; valve: no
    target-domain training clips.  The copied attributes CSVs list clips that are not on disk
    (only a subset is copied) and leave out the variants.  Returns paths, exit codes, stderr
    and warnings of ``harken train`` and ``harken test``.
    """
    tmp = tmp_path_factory.mktemp("messy")
    root = copy_subset(synth_root, tmp / "data", {"fan": (6, 2, 2), "valve": (6, 0, 2)})
    variants: dict[str, dict[str, Path]] = {"train": {}, "test": {}}
    for split in ("train", "test"):
        for i, kind in enumerate(("pcm_16", *ACCEPTED)):
            label = "normal"
            path = root / "fan" / split / clip_name(split, "source", label, 900 + i)
            write_case(kind, path, base_clip)
            variants[split][kind] = path
    run, cache = tmp / "run", tmp / "cache"
    out: dict = {"root": root, "run": run, "cache": cache, "variants": variants}

    capture = io.StringIO()
    with contextlib.redirect_stderr(capture), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["train_rc"] = main(
            [
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
                *TINY,
            ]
        )
        out["train_err"] = capture.getvalue()
        out["train_warnings"] = [str(w.message) for w in caught]
        caught.clear()
        out["test_rc"] = main(
            [
                "test",
                "--run",
                str(run),
                "--data",
                str(root),
                "--cache",
                str(cache),
                "--bootstrap",
                "0",
                "--no-progress",
            ]
        )
        out["test_err"] = capture.getvalue()[len(out["train_err"]) :]
        out["test_warnings"] = [str(w.message) for w in caught]
    return out


def read_scores_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {row["file_name"]: row for row in csv.DictReader(fh)}


# ============================================================================ data layer + cache
@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_refused_audio_in_loader_and_cache(
    kind: str, base_clip: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "machine" / "train" / clip_name("train", "source", "normal", 7)
    write_case(kind, path, base_clip)
    cache = FeatureCache(tmp_path / "cache", AudioConfig(), FEATURES)
    with maybe_denied(kind, path):
        with pytest.raises(AudioError) as loaded:
            load_audio(path)
        with pytest.raises(AudioError) as cached:
            cache.get(path)
    for err in (loaded.value, cached.value):
        assert str(path) in str(err) and REFUSED[kind] in str(err).lower()
        assert err.path == path
    # nothing was stored for it: a later run cannot read a bad entry
    assert not any(p.suffix == ".npy" for p in (tmp_path / "cache").rglob("*"))


@pytest.mark.parametrize("kind", ACCEPTED)
def test_accepted_audio_in_loader_and_cache(
    kind: str, base_clip: np.ndarray, tmp_path: Path
) -> None:
    original = tmp_path / "original.wav"
    write_case("pcm_16", original, base_clip)
    path = tmp_path / f"{kind}.wav"
    write_case(kind, path, base_clip)
    cache = FeatureCache(tmp_path / "cache", AudioConfig(), FEATURES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wave = load_audio(path)
        spec = np.asarray(cache.get(path), dtype=np.float32)
    messages = [str(w.message) for w in caught if issubclass(w.category, HarkenWarning)]
    assert wave.dtype == np.float32 and wave.ndim == 1 and np.isfinite(wave).all()
    assert spec.shape[0] == FEATURES.n_mels and np.isfinite(spec).all()
    assert cache.entry_path(path).is_file()
    if kind in WARNS:
        assert any(str(path) in m and WARNS[kind] in m for m in messages), messages
    else:
        assert not messages, messages
    if kind in LOSSLESS:  # never a different number for the same samples
        assert np.array_equal(wave, load_audio(original))
        assert np.array_equal(spec, np.asarray(cache.get(original), dtype=np.float32))
    if kind == "silent":  # log of zero floors at amin: -100 dB, not -inf
        assert spec.min() == pytest.approx(-100.0, abs=0.01)
    if kind == "rate_44k":  # resampled to 16 kHz: as long as the original
        assert abs(len(wave) - len(base_clip)) <= 1


def test_refused_rate_with_resample_refuse(base_clip: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    write_case("rate_44k", path, base_clip)
    with pytest.raises(AudioError, match=r"sample rate is 44100 Hz, expected 16000 Hz") as err:
        load_audio(path, AudioConfig(resample="refuse"))
    assert str(path) in str(err.value)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads chmod-000 files"
)
def test_real_chmod_000_when_not_root(base_clip: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    write_case("pcm_16", path, base_clip)
    path.chmod(0)
    try:
        with pytest.raises(AudioError, match="permission denied"):
            load_audio(path)
        with pytest.raises(AudioError):
            FeatureCache(tmp_path / "cache", AudioConfig(), FEATURES).get(path)
    finally:
        path.chmod(0o644)


# ============================================================================ harken train
LAYOUT_CASES = (
    "name fits no pattern",
    "duplicate clip",
    "empty machine folder",
    "split folder without clips",
    "name and folder disagree",
    "malformed attributes CSV",
    "no data at all",
)


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_train_stops_at_a_bad_clip_naming_it(
    kind: str,
    clean_root: Path,
    base_clip: np.ndarray,
    cache_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "data"
    shutil.copytree(clean_root, root)
    bad = root / "fan" / "train" / clip_name("train", "source", "normal", 900)
    write_case(kind, bad, base_clip)
    run = tmp_path / "run"
    with maybe_denied(kind, bad):
        rc, err, _ = run_cli(
            [
                "train",
                "--data",
                str(root),
                "--out",
                str(run),
                "--config",
                "demo",
                "--cache",
                str(cache_dir),
                "--no-progress",
                *TINY,
            ],
            capsys,
        )
    assert rc == 1
    line = error_line(err, "train")
    assert str(bad) in line and REFUSED[kind] in line.lower()
    assert not (run / "model.pt").exists()


@pytest.mark.parametrize(
    ("kind", "overrides", "message"),
    [
        ("rate_44k", ["audio.resample=refuse"], "sample rate is 44100 Hz, expected 16000 Hz"),
        ("short", ["window.short_clip=error"], "shorter than one 32-frame window"),
    ],
    ids=["resample=refuse", "short_clip=error"],
)
def test_train_refuses_what_the_config_refuses_naming_the_file(
    kind: str,
    overrides: list[str],
    message: str,
    clean_root: Path,
    base_clip: np.ndarray,
    cache_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "data"
    shutil.copytree(clean_root, root)
    bad = root / "fan" / "train" / clip_name("train", "source", "normal", 900)
    write_case(kind, bad, base_clip)
    argv = ["train", "--data", str(root), "--out", str(tmp_path / "run"), "--config", "demo"]
    rc, err, _ = run_cli(
        [*argv, "--cache", str(cache_dir), "--no-progress", *TINY, *overrides], capsys
    )
    assert rc == 1
    line = error_line(err, "train")
    assert str(bad) in line and message in line


def test_train_skip_bad_clips_leaves_them_out_and_lists_them(
    clean_root: Path,
    base_clip: np.ndarray,
    cache_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "data"
    shutil.copytree(clean_root, root)
    bad = {}
    for i, kind in enumerate(("empty", "truncated", "nan", "unreadable")):
        bad[kind] = root / "fan" / "train" / clip_name("train", "source", "normal", 900 + i)
        write_case(kind, bad[kind], base_clip)
    run = tmp_path / "run"
    with denied(bad["unreadable"]):
        rc, err, caught = run_cli(
            [
                "train",
                "--data",
                str(root),
                "--out",
                str(run),
                "--config",
                "demo",
                "--cache",
                str(cache_dir),
                "--no-progress",
                "--skip-bad-clips",
                *TINY,
            ],
            capsys,
        )
    assert rc == 0, err
    assert "Traceback" not in err
    assert (run / "model.pt").is_file()
    with open(run / "skipped.csv", newline="") as fh:
        rows = {row["file"]: row["problem"] for row in csv.DictReader(fh)}
    assert set(rows) == {str(p) for p in bad.values()}
    for kind, path in bad.items():
        assert REFUSED[kind] in rows[str(path)].lower()
        assert any(m.startswith("skipped training clip: ") and str(path) in m for m in caught), (
            caught
        )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("name fits no pattern", "fits no DCASE Task 2"),
        ("duplicate clip", "duplicate clip"),
        ("empty machine folder", "empty machine folder"),
        ("split folder without clips", "holds no .wav/.flac clips"),
        ("name and folder disagree", "the clip name says split 'test'"),
        ("malformed attributes CSV", "attribute cells must come in name,value pairs"),
        ("no data at all", "no machine folders found"),
    ],
    ids=list(LAYOUT_CASES),
)
def test_train_and_test_refuse_a_broken_layout_naming_the_path(
    case: str,
    message: str,
    clean_root: Path,
    messy: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "data"
    shutil.copytree(clean_root, root)
    train = root / "fan" / "train"
    first = sorted(train.glob("*.wav"))[0]
    if case == "name fits no pattern":
        named = train / "recording 2024-05-01 12h00.wav"
        shutil.copy(first, named)
    elif case == "duplicate clip":  # the same clip uploaded twice, with other attributes
        named = train / first.name.replace(".wav", "_upload_2.wav")
        shutil.copy(first, named)
    elif case == "empty machine folder":
        named = root / "pump"
        named.mkdir()
    elif case == "split folder without clips":
        named = root / "pump"
        (named / "train").mkdir(parents=True)
    elif case == "name and folder disagree":
        named = train / clip_name("test", "source", "normal", 77)
        shutil.copy(first, named)
    elif case == "malformed attributes CSV":
        named = root / "fan" / "attributes_00.csv"
        named.write_text("file_name,d1p,d1v\nfan/train/x.wav,speed\n")
    else:
        shutil.rmtree(root)
        root.mkdir()
        named = root
    common = ["--data", str(root), "--no-progress"]
    rc, err, _ = run_cli(
        ["train", *common, "--out", str(tmp_path / "run"), "--config", "demo", *TINY], capsys
    )
    assert rc == 1
    line = error_line(err, "train")
    assert str(named) in line and message in line
    rc, err, _ = run_cli(
        [
            "test",
            "--run",
            str(messy["run"]),
            *common,
            "--out",
            str(tmp_path / "out"),
            "--bootstrap",
            "0",
        ],
        capsys,
    )
    assert rc == 1
    line = error_line(err, "test")
    assert str(named) in line and message in line


def test_train_accepts_odd_but_usable_data_with_warnings(messy: dict) -> None:
    assert messy["train_rc"] == 0, messy["train_err"]
    assert "Traceback" not in messy["train_err"]
    assert (messy["run"] / "model.pt").is_file()
    warned = messy["train_warnings"]
    variants = messy["variants"]["train"]
    for kind, text in WARNS.items():
        assert any(str(variants[kind]) in m and text in m for m in warned), (kind, warned)
    # valve has no target-domain training clips: allowed, with a warning naming machine and section
    assert any("valve section 00: no target-domain training clips" in m for m in warned), warned
    # the attributes CSVs name clips that were not copied, and leave out the variants
    fan_csv = str(messy["root"] / "fan" / "attributes_00.csv")
    assert any(m.startswith(fan_csv) and "name files that are not on disk" in m for m in warned), (
        warned
    )
    assert any(m.startswith(fan_csv) and "are not listed" in m for m in warned), warned


# ============================================================================ harken test
def test_test_scores_odd_but_usable_clips_and_lossless_ones_alike(messy: dict) -> None:
    assert messy["test_rc"] == 0, messy["test_err"]
    assert "Traceback" not in messy["test_err"]
    rows = read_scores_csv(messy["run"] / "test" / "scores.csv")
    variants = messy["variants"]["test"]
    kinds = [
        k
        for k in rows[variants["pcm_16"].name]
        if k not in ("file_name", "machine", "section", "domain", "label", "decision", "threshold")
    ]
    assert kinds
    for kind, path in variants.items():
        for k in kinds:
            assert np.isfinite(float(rows[path.name][k])), (kind, k)
    for kind in LOSSLESS:
        for k in kinds:
            assert float(rows[variants[kind].name][k]) == pytest.approx(
                float(rows[variants["pcm_16"].name][k]), rel=1e-6
            ), (kind, k)


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_test_stops_at_a_bad_clip_naming_it(
    kind: str,
    clean_root: Path,
    base_clip: np.ndarray,
    messy: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "data"
    shutil.copytree(clean_root, root)
    bad = root / "fan" / "test" / clip_name("test", "target", "anomaly", 900)
    write_case(kind, bad, base_clip)
    out = tmp_path / "out"
    with maybe_denied(kind, bad):
        rc, err, _ = run_cli(
            [
                "test",
                "--run",
                str(messy["run"]),
                "--data",
                str(root),
                "--out",
                str(out),
                "--cache",
                str(messy["cache"]),
                "--bootstrap",
                "0",
                "--no-progress",
            ],
            capsys,
        )
    assert rc == 1
    line = error_line(err, "test")
    assert str(bad) in line and REFUSED[kind] in line.lower()
    assert not (out / "scores.csv").exists()


def test_test_skip_bad_clips_then_evaluate_refuses_the_gap(
    clean_root: Path,
    base_clip: np.ndarray,
    messy: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "data"
    shutil.copytree(clean_root, root)
    bad = root / "fan" / "test" / clip_name("test", "target", "anomaly", 900)
    write_case("truncated", bad, base_clip)
    out = tmp_path / "out"
    rc, err, caught = run_cli(
        [
            "test",
            "--run",
            str(messy["run"]),
            "--data",
            str(root),
            "--out",
            str(out),
            "--cache",
            str(messy["cache"]),
            "--bootstrap",
            "0",
            "--no-progress",
            "--skip-bad-clips",
        ],
        capsys,
    )
    assert rc == 0, err
    assert any(m.startswith("skipped test clip: ") and str(bad) in m for m in caught), caught
    with open(out / "skipped.csv", newline="") as fh:
        assert [row["file"] for row in csv.DictReader(fh)] == [str(bad)]
    assert bad.name not in read_scores_csv(out / "scores.csv")
    # the submission lacks the clip, so the official evaluation refuses it rather than
    # computing an AUC over fewer clips than the ground truth has
    rc, err, _ = run_cli(
        ["evaluate", str(out / "submission"), "-g", str(root), "--bootstrap", "0"], capsys
    )
    assert rc == 1
    line = error_line(err, "evaluate")
    assert "1 clip(s) of the ground truth have no score, e.g. " + bad.name in line
    assert "anomaly_score_fan_section_00_test.csv" in line


# ============================================================================ harken evaluate
SCORE_FILE = "anomaly_score_fan_section_00_test.csv"
DECISION_FILE = "decision_result_fan_section_00_test.csv"


def _edit(path: Path, change) -> None:  # noqa: ANN001
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(change(lines)))


BOTH = (SCORE_FILE, DECISION_FILE)
# case -> (files changed, change of their lines, what the error says, the file it names)
EVALUATE_CASES = {
    "missing row": (
        BOTH,
        lambda ls: ls[1:],
        "1 clip(s) of the ground truth have no score, e.g. {first}",
        SCORE_FILE,
    ),
    "extra row": (
        BOTH,
        lambda ls: [*ls, "section_00_source_test_normal_9999_x.wav,0\n"],
        "1 clip(s) are not in the ground truth",
        SCORE_FILE,
    ),
    "duplicated row": (
        (SCORE_FILE,),
        lambda ls: [*ls, ls[0]],
        "clip {first} duplicated (first in row 1)",
        SCORE_FILE,
    ),
    "non-numeric score": (
        (SCORE_FILE,),
        lambda ls: [ls[0].split(",")[0] + ",high\n", *ls[1:]],
        "row 1: clip {first}: score 'high' is not a number",
        SCORE_FILE,
    ),
    "NaN score": (
        (SCORE_FILE,),
        lambda ls: [ls[0].split(",")[0] + ",nan\n", *ls[1:]],
        "score is 'nan', not a finite number",
        SCORE_FILE,
    ),
    "header row": (
        (SCORE_FILE,),
        lambda ls: ["file_name,score\n", *ls],
        "a header row?",
        SCORE_FILE,
    ),
    "blank row": (
        (SCORE_FILE,),
        lambda ls: [ls[0], "\n", *ls[1:]],
        "row 2: expected 2 fields",
        SCORE_FILE,
    ),
    "decision rows differ": (
        (DECISION_FILE,),
        lambda ls: ls[:-1],
        "clip list differs from the score file",
        DECISION_FILE,
    ),
    "decision not 0/1": (
        (DECISION_FILE,),
        lambda ls: [ls[0].split(",")[0] + ",0.5\n", *ls[1:]],
        "decision '0.5' is not 0 or 1",
        DECISION_FILE,
    ),
}


@pytest.mark.parametrize("case", sorted(EVALUATE_CASES))
def test_evaluate_refuses_bad_score_files_of_a_real_run(
    case: str, messy: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    submission = tmp_path / "submission"
    shutil.copytree(messy["run"] / "test" / "submission", submission)
    rc, err, _ = run_cli(
        ["evaluate", str(submission), "-g", str(messy["root"]), "--bootstrap", "0"], capsys
    )
    assert rc == 0, err  # the untouched files evaluate
    files, change, fragment, named = EVALUATE_CASES[case]
    first = (submission / SCORE_FILE).read_text().split(",", 1)[0]
    for file in files:
        _edit(submission / file, change)
    rc, err, _ = run_cli(
        ["evaluate", str(submission), "-g", str(messy["root"]), "--bootstrap", "0"], capsys
    )
    assert rc == 1
    line = error_line(err, "evaluate")
    assert str(submission / named) in line and fragment.format(first=first) in line, line


# ============================================================================ harken score
def test_score_reports_each_bad_file_and_scores_the_rest(
    base_clip: np.ndarray, messy: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {}
    for kind in ("pcm_16", *ACCEPTED, *sorted(REFUSED)):
        files[kind] = tmp_path / "in" / f"{kind}.wav"
        write_case(kind, files[kind], base_clip)
    out = tmp_path / "out"
    with denied(files["unreadable"]):
        rc, err, _ = run_cli(
            [
                "score",
                "--run",
                str(messy["run"]),
                "--machine",
                "fan",
                "--out",
                str(out),
                "--quiet",
                *map(str, files.values()),
            ],
            capsys,
        )
    assert rc == 3  # some inputs could not be scored; the others were
    assert "Traceback" not in err
    for kind, message in REFUSED.items():
        assert any(
            str(files[kind]) in line and message in line.lower() for line in err.splitlines()
        ), (kind, err)
    with open(out / "scores.csv", newline="") as fh:
        rows = {Path(row["file"]).stem: row for row in csv.DictReader(fh)}
    for kind in ("pcm_16", *ACCEPTED):
        assert not rows[kind]["error"] and np.isfinite(float(rows[kind]["score"])), (
            kind,
            rows[kind],
        )
    for kind in LOSSLESS:
        assert float(rows[kind]["score"]) == pytest.approx(
            float(rows["pcm_16"]["score"]), rel=1e-6
        ), kind
    for kind in REFUSED:
        assert rows[kind]["error"] and not rows[kind]["score"], (kind, rows[kind])
    # the same clip scores the same in `harken test` and `harken score`
    tested = read_scores_csv(messy["run"] / "test" / "scores.csv")[
        messy["variants"]["test"]["pcm_16"].name
    ]
    assert float(rows["pcm_16"]["score"]) == pytest.approx(
        float(tested[rows["pcm_16"]["kind"]]), rel=1e-6
    )


# ============================================================================ the service
@pytest.fixture(scope="module")
def server(messy: dict) -> Iterator[tuple[str, object]]:
    pytest.importorskip("fastapi")
    from harken.deploy.serve import Limits, build_service, serve_in_thread

    service = build_service(
        messy["run"], limits=Limits(max_body_bytes=400_000, max_seconds=5.0), max_wait_ms=0
    )
    srv, thread, port = serve_in_thread(service)
    try:
        yield f"http://127.0.0.1:{port}", service
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


SERVICE_STATUS = {
    "empty": (400, "empty_file"),
    "truncated": (422, "bad_audio"),
    "not_audio": (415, "unsupported_format"),
    "nan": (422, "bad_audio"),
    "inf": (422, "bad_audio"),
}


def _post(url: str, data: bytes, name: str, **fields: str) -> httpx.Response:
    return httpx.post(
        f"{url}/score", files={"file": (name, data, "audio/wav")}, data=fields, timeout=60
    )


def test_service_refuses_bad_uploads_with_a_status_and_reason(
    base_clip: np.ndarray, server, tmp_path: Path
) -> None:  # noqa: ANN001
    url, _ = server
    for kind, (status, code) in SERVICE_STATUS.items():
        path = tmp_path / f"{kind}.wav"
        write_case(kind, path, base_clip)
        r = _post(url, path.read_bytes(), path.name, machine="fan")
        assert r.status_code == status, (kind, r.text)
        body = r.json()
        assert body["error"] == code and body["detail"], (kind, body)
        if kind != "empty" and status == 422:
            assert REFUSED[kind] in body["detail"].lower(), (kind, body)


def test_service_scores_odd_uploads_like_harken_score(
    base_clip: np.ndarray, server, tmp_path: Path
) -> None:  # noqa: ANN001
    url, _ = server
    scores = {}
    for kind in ("pcm_16", *ACCEPTED):
        path = tmp_path / f"{kind}.wav"
        write_case(kind, path, base_clip)
        r = _post(url, path.read_bytes(), path.name, machine="fan")
        assert r.status_code == 200, (kind, r.text)
        scores[kind] = r.json()["score"]
        assert np.isfinite(scores[kind]), kind
    for kind in LOSSLESS:
        assert scores[kind] == pytest.approx(scores["pcm_16"], rel=1e-6), kind


def test_service_limits_body_and_duration(base_clip: np.ndarray, server, tmp_path: Path) -> None:  # noqa: ANN001
    url, _ = server
    long = tmp_path / "long.wav"  # 6 s: over the 5-s limit, under the body limit
    sf.write(long, np.tile(base_clip, 3), SR, subtype="PCM_U8")
    r = _post(url, long.read_bytes(), long.name, machine="fan")
    assert r.status_code == 413 and r.json()["error"] == "audio_too_long", r.text
    big = tmp_path / "big.wav"  # 0.5 MB body: over the 400-kB limit
    sf.write(big, np.tile(base_clip, 8), SR // 4, subtype="PCM_16")
    r = _post(url, big.read_bytes(), big.name, machine="fan")
    assert r.status_code == 413 and r.json()["error"] == "body_too_large", r.text
    r = httpx.post(
        f"{url}/score", content=b"x" * 100, headers={"content-type": "audio/wav"}, timeout=30
    )
    assert r.status_code == 415, r.text
    assert httpx.get(f"{url}/health", timeout=30).json()["status"] == "ok"  # still serving


def test_service_never_uses_a_path_from_the_request(
    base_clip: np.ndarray, server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    url, _ = server
    # A real file at the path the upload claims to be, with other audio in it: the service
    # must score the uploaded bytes and never open, read or write that path.
    decoy = tmp_path / "decoy.wav"
    write_case("silent", decoy, base_clip)
    before = decoy.read_bytes()
    upload = tmp_path / "upload.wav"
    write_case("pcm_16", upload, base_clip)
    opened: list[str] = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    reference = _post(url, upload.read_bytes(), "upload.wav", machine="fan").json()["score"]
    for claimed in (str(decoy), f"../../..{decoy}", f"..\\..\\{decoy.name}"):
        r = _post(url, upload.read_bytes(), claimed, machine="fan")
        assert r.status_code == 200, r.text
        assert r.json()["score"] == reference
        assert "/" not in r.json()["file"]
    monkeypatch.undo()
    assert not any(decoy.name in f for f in opened), opened
    assert decoy.read_bytes() == before
    r = _post(url, upload.read_bytes(), "upload.wav", machine="../fan")
    assert r.status_code == 400 and r.json()["error"] == "bad_machine"


# ============================================================================ more cases
def test_score_needs_a_machine_for_a_name_that_fits_no_pattern(
    base_clip: np.ndarray, messy: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = tmp_path / "recording 2024-05-01.wav"
    good = tmp_path / "fan" / "test" / clip_name("test", "source", "normal", 1)
    write_case("pcm_16", odd, base_clip)
    write_case("pcm_16", good, base_clip)
    rc, err, _ = run_cli(
        ["score", "--run", str(messy["run"]), "--quiet", str(odd), str(good)], capsys
    )
    assert rc == 3 and "Traceback" not in err
    assert any(str(odd) in line and "pass --machine" in line for line in err.splitlines()), err
    assert str(good) not in err  # the DCASE-named file was scored (as fan, section 00)


def test_short_clip_error_policy_names_the_clip_when_scoring(
    base_clip: np.ndarray, messy: dict, tmp_path: Path
) -> None:
    from harken.data.dataset import clip_from_path
    from harken.features.windows import ShortClipError
    from harken.training.checkpoint import load_detector

    short = tmp_path / "fan" / "test" / clip_name("test", "source", "normal", 3)
    write_case("short", short, base_clip)
    detector = load_detector(messy["run"])
    detector.cache_dir = messy["cache"]
    detector.config.window.short_clip = "error"
    with pytest.raises(ShortClipError, match="shorter than one 32-frame window") as err:
        detector.score_clips([clip_from_path(short)])
    assert str(short) in str(err.value)


def test_byte_identical_uploads_are_found_by_data_summary_check_content(
    clean_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    shutil.copytree(clean_root, root)
    first = sorted((root / "fan" / "train").glob("*.wav"))[0]
    copy = root / "fan" / "train" / clip_name("train", "source", "normal", 950)  # another name
    shutil.copy(first, copy)
    rc, err, _ = run_cli(["data", "summary", str(root)], capsys)
    assert rc == 0  # names differ: a plain summary (and train/test) sees two clips
    rc, err, _ = run_cli(["data", "summary", str(root), "--check-content"], capsys)
    assert rc == 1
    line = error_line(err, "data")
    assert str(first) in line and str(copy) in line and "identical content" in line
