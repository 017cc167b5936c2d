"""Property-based tests (hypothesis) for the readers of outside input not covered elsewhere.

tests/test_names.py already fuzzes the clip-name parser with arbitrary text and generated valid
names, tests/test_audio.py the WAV path with random and mutated bytes.  Here:

* the score / decision CSV readers (harken evaluate's input): arbitrary text and bytes give a
  result or ScoreFileError, written files read back exactly, and a mutated submission is either
  refused naming the file or evaluates exactly as before (never a shifted or dropped row);
* the attributes-CSV and organizers' ground-truth readers: a result or their documented error;
* clip-name *records* (not text): refused with ClipNameError, or format -> parse round-trips;
* well-formed audio of any rate, channel count, subtype and content (NaN/Inf anywhere) under
  any AudioConfig: AudioError, or finite float32 mono samples of the expected length;
* config overrides: a Config or ConfigError.

Bounded: at most 200 examples each, no deadline, so CI stays fast.
"""

from __future__ import annotations

import csv
import io
import math
import string
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harken.config import AudioConfig, load_config
from harken.data.audio import load_audio, load_audio_bytes
from harken.data.dataset import read_attributes_csv
from harken.data.names import SCHEMES, ClipName, format_clip_name, parse_clip_name
from harken.errors import (
    AudioError,
    ClipNameError,
    ConfigError,
    DatasetError,
    HarkenWarning,
    ScoreFileError,
)
from harken.evaluation.evaluate import evaluate_directory
from harken.evaluation.groundtruth import GroundTruthSection, load_ground_truth
from harken.evaluation.submission import (
    format_decisions,
    format_scores,
    read_decisions,
    read_scores,
    write_submission,
)

FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SMALL = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Text that looks like CSV: separators, quotes, line breaks of every kind, numbers and words.
CSV_PIECES = st.sampled_from(
    [",", ",", "\n", "\n", "\r\n", "\r", '"', " ", "\t", "\x00", "\x0b", "\u2028", "\ufeff",
     "nan", "inf", "-inf", "1e309", "0x10", "1_000", "0", "1", "-0.5", "3.25", "1e-3",
     "a.wav", "section_00_0001.wav", "test/b.wav", "file_name", "score", "é", "\u00a0"]
)  # fmt: skip
CSV_TEXT = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(CSV_PIECES, st.text(string.printable, max_size=8)), max_size=60).map(
        "".join
    ),
)


def _write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", newline="")
    else:
        path.write_bytes(data)
    return path


# ============================================================================ score CSV readers
@FUZZ
@given(text=CSV_TEXT)
def test_score_reader_returns_finite_scores_or_a_score_file_error(
    tmp_path: Path, text: str
) -> None:
    path = _write(tmp_path, "anomaly_score_fan_section_00_test.csv", text)
    try:
        scores = read_scores(path)
    except ScoreFileError as err:
        assert str(path) in str(err)
        return
    assert scores and all(isinstance(v, float) and math.isfinite(v) for v in scores.values())
    assert all(name and "/" not in name and "\\" not in name for name in scores)
    # every non-blank line is a row: nothing was dropped on the way (a quoted field may span lines)
    lines = text.encode("utf-8").decode("utf-8-sig").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    assert len(scores) == len(lines) or ('"' in text and len(scores) < len(lines))


@FUZZ
@given(text=CSV_TEXT)
def test_decision_reader_returns_zeros_and_ones_or_a_score_file_error(
    tmp_path: Path, text: str
) -> None:
    path = _write(tmp_path, "decision_result_fan_section_00_test.csv", text)
    try:
        decisions = read_decisions(path)
    except ScoreFileError as err:
        assert str(path) in str(err)
        return
    assert decisions and set(decisions.values()) <= {0, 1}


@SMALL
@given(data=st.binary(max_size=400))
def test_score_reader_on_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    path = _write(tmp_path, "anomaly_score_fan_section_00_test.csv", data)
    try:
        read_scores(path)
        read_decisions(path)
    except ScoreFileError as err:
        assert str(path) in str(err)


CLIP_NAMES = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters=',"/\\'),
    min_size=1,
    max_size=30,
)
FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)


@FUZZ
@given(
    rows=st.lists(
        st.tuples(CLIP_NAMES, FINITE, st.integers(0, 1)),
        min_size=1,
        max_size=20,
        unique_by=lambda r: r[0],
    )
)
def test_written_score_files_read_back_exactly_or_are_refused_when_written(
    tmp_path: Path, rows: list[tuple[str, float, int]]
) -> None:
    names = [r[0] for r in rows]
    try:
        score_text = format_scores(names, [r[1] for r in rows])
        decision_text = format_decisions(names, [r[2] for r in rows])
    except ScoreFileError:  # a name no CSV row can carry (line breaks, surrounding space...)
        return
    scores = read_scores(_write(tmp_path, "s.csv", score_text))
    decisions = read_decisions(_write(tmp_path, "d.csv", decision_text))
    assert list(scores) == names and list(decisions) == names  # same clips, same order
    assert [scores[n] for n in names] == [r[1] for r in rows]  # the same floats, bit for bit
    assert [decisions[n] for n in names] == [r[2] for r in rows]


# ---------------------------------------------------------------------------- evaluate, mutated
def _ground_truth(n: int) -> dict:
    """One machine/section with ``n`` clips per domain, alternating normal/anomalous."""
    names = tuple(f"section_00_{i:04d}.wav" for i in range(2 * n))
    labels = np.array([i % 2 for i in range(2 * n)])
    domains = np.array([0] * n + [1] * n)
    return {("fan", "00"): GroundTruthSection("fan", "00", names, labels, domains, "<test>")}


MUTATIONS = (
    "shuffle",
    "drop",
    "duplicate",
    "extra",
    "rename",
    "text value",
    "blank line",
    "header",
    "nan",
    "swap values",
)


@SMALL
@given(
    scores=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=8, max_size=8),
    mutation=st.sampled_from(MUTATIONS),
    index=st.integers(0, 7),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_mutated_submission_is_refused_or_evaluates_exactly_as_before(
    tmp_path: Path, scores: list[float], mutation: str, index: int, seed: int
) -> None:
    truth = _ground_truth(4)
    names = list(truth[("fan", "00")].clip_names)
    directory = Path(tempfile.mkdtemp(dir=tmp_path))
    write_submission(directory, "fan", "00", names, scores)
    before = evaluate_directory(directory, truth, with_evaluator_ci95=False).to_dict()
    path = directory / "anomaly_score_fan_section_00_test.csv"
    lines = path.read_text().splitlines(keepends=True)
    rng = np.random.default_rng(seed)
    if mutation == "shuffle":
        lines = [lines[i] for i in rng.permutation(len(lines))]
    elif mutation == "drop":
        del lines[index]
    elif mutation == "duplicate":
        lines.insert(int(rng.integers(0, len(lines) + 1)), lines[index])
    elif mutation == "extra":
        lines.insert(int(rng.integers(0, len(lines) + 1)), "section_00_9999.wav,0.5\n")
    elif mutation == "rename":
        lines[index] = "x" + lines[index]
    elif mutation == "text value":
        lines[index] = lines[index].split(",")[0] + ",high\n"
    elif mutation == "blank line":
        lines.insert(int(rng.integers(0, len(lines))), "\n")
    elif mutation == "header":
        lines.insert(0, "file_name,anomaly_score\n")
    elif mutation == "nan":
        lines[index] = lines[index].split(",")[0] + ",nan\n"
    else:  # two clips' scores exchanged: a different submission, a legitimately different result
        j = (index + 1 + int(rng.integers(0, 7))) % 8
        a, b = lines[index].split(","), lines[j].split(",")
        lines[index], lines[j] = f"{a[0]},{b[1]}", f"{b[0]},{a[1]}"
    path.write_text("".join(lines))
    try:
        after = evaluate_directory(directory, truth, with_evaluator_ci95=False).to_dict()
    except ScoreFileError as err:
        assert mutation not in ("shuffle", "swap values"), err  # those are valid files
        assert str(path) in str(err)
        return
    assert mutation in ("shuffle", "swap values"), f"{mutation} was accepted"
    if mutation == "shuffle":  # rows are joined by clip name, never by position
        assert after == before


# ============================================================================ other CSV readers
@FUZZ
@given(text=CSV_TEXT)
def test_attributes_csv_reader_returns_rows_or_a_dataset_error(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, "attributes_00.csv", "file_name,d1p,d1v\n" + text)
    try:
        rows = read_attributes_csv(path)
    except DatasetError as err:
        assert str(path) in str(err)
        return
    assert len({(r.folder, r.stem) for r in rows}) == len(rows)  # no clip described twice
    for row in rows:
        assert row.stem and all(key for key, _ in row.pairs)


@SMALL
@given(labels=CSV_TEXT, domains=st.one_of(st.none(), CSV_TEXT))
def test_organizers_ground_truth_reader_returns_sections_or_a_score_file_error(
    tmp_path_factory: pytest.TempPathFactory, labels: str, domains: str | None
) -> None:
    root = tmp_path_factory.mktemp("gt")
    name = "ground_truth_fan_section_00_test.csv"
    (root / "ground_truth_data").mkdir()
    _write(root / "ground_truth_data", name, labels)
    if domains is not None:
        (root / "ground_truth_domain").mkdir()
        _write(root / "ground_truth_domain", name, domains)
    try:
        truth = load_ground_truth(root)
    except (ScoreFileError, DatasetError) as err:
        assert str(root) in str(err)
        return
    section = truth[("fan", "00")]
    assert (
        len(section.clip_names)
        == len(set(section.clip_names))
        == len(section.labels)
        == len(section.domains)
    )
    assert set(section.labels.tolist()) <= {0, 1} and set(section.domains.tolist()) <= {-1, 0, 1}


# ============================================================================ clip-name records
@FUZZ
@given(
    scheme=st.sampled_from(SCHEMES),
    section=st.one_of(st.from_regex(r"[0-9]{2}", fullmatch=True), st.text(max_size=3)),
    domain=st.sampled_from([None, "source", "target", "other"]),
    split=st.sampled_from([None, "train", "test", "supplemental", "x"]),
    label=st.sampled_from(["normal", "anomaly", "unknown", "bad"]),
    index=st.integers(-2, 10**8),
    width=st.integers(0, 20),
    attrs=st.one_of(st.none(), st.text(max_size=20)),
    kind=st.sampled_from([None, "machine", "noise", "x"]),
    extension=st.sampled_from([".wav", ".flac", ".WAV", "", ".mp3"]),
)
def test_clip_name_records_are_refused_or_round_trip(
    scheme: str, section: str, domain: str | None, split: str | None, label: str, index: int,
    width: int, attrs: str | None, kind: str | None, extension: str,
) -> None:  # fmt: skip
    try:
        record = ClipName(
            scheme, section, domain, split, label, index, width, attrs, kind, extension
        )
    except ClipNameError:
        return
    name = format_clip_name(record)
    path = f"fan/id_{record.section}/{'abnormal' if record.label == 'anomaly' else 'normal'}/{name}"
    assert parse_clip_name(name, path=path) == record
    assert format_clip_name(parse_clip_name(name, path=path)) == name


# ============================================================================ audio content
@st.composite
def audio_files(draw: st.DrawFn) -> tuple[bytes, int, int, int, str]:
    rate = draw(st.sampled_from([1000, 8000, 16000, 22050, 44100, 48000]))
    channels = draw(st.integers(1, 4))
    frames = draw(st.integers(1, 600))
    fmt, subtype = draw(
        st.sampled_from(
            [("WAV", "PCM_16"), ("WAV", "PCM_U8"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "FLOAT"),
             ("WAV", "DOUBLE"), ("WAVEX", "PCM_16"), ("WAVEX", "FLOAT"), ("FLAC", "PCM_16")]
        )
    )  # fmt: skip
    kind = draw(st.sampled_from(["noise", "silent", "loud", "nonfinite"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.uniform(-0.5, 0.5, (frames, channels))
    if kind == "silent":
        x[:] = 0.0
    elif kind == "loud":
        x = x * 40.0
    elif kind == "nonfinite" and subtype in ("FLOAT", "DOUBLE"):
        bad = rng.integers(0, x.size, size=draw(st.integers(1, 5)))
        x.flat[bad] = rng.choice([np.nan, np.inf, -np.inf], size=len(bad))
    buf = io.BytesIO()
    sf.write(buf, x, rate, subtype=subtype, format=fmt)
    return buf.getvalue(), rate, channels, frames, kind


AUDIO_CONFIGS = st.builds(
    AudioConfig,
    sample_rate=st.sampled_from([8000, 16000]),
    channel=st.sampled_from(["select", "mean"]),
    channel_index=st.integers(0, 4),
    resample=st.sampled_from(["polyphase", "refuse"]),
    nonfinite=st.sampled_from(["error", "zero"]),
)


@FUZZ
@given(audio=audio_files(), config=AUDIO_CONFIGS)
def test_any_well_formed_audio_loads_finite_or_gives_an_audio_error(
    tmp_path: Path, audio: tuple[bytes, int, int, int, str], config: AudioConfig
) -> None:
    data, rate, channels, frames, kind = audio
    path = _write(tmp_path, "clip.wav", data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            wave = load_audio(path, config)
        except AudioError as err:
            assert str(path) in str(err)
            expected = (
                (config.channel == "select" and config.channel_index >= channels)
                or (rate != config.sample_rate and config.resample == "refuse")
                or (kind == "nonfinite" and config.nonfinite == "error")
            )
            assert expected, err
            return
    assert wave.dtype == np.float32 and wave.ndim == 1 and np.isfinite(wave).all()
    assert len(wave) == pytest.approx(frames * config.sample_rate / rate, abs=1.0)
    assert all(
        issubclass(w.category, HarkenWarning) and str(path) in str(w.message) for w in caught
    )
    assert not (config.channel == "select" and config.channel_index >= channels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HarkenWarning)
        assert np.array_equal(wave, load_audio_bytes(data, config, name=str(path)))


# ============================================================================ config overrides
KEYS = st.sampled_from(
    ["train.epochs", "train.lr", "train.seed", "window.frames", "window.short_clip", "model.channels",
     "audio.sample_rate", "score.kind", "train.nope", "nope.x", "train", "", "train.epochs.x"]
)  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(
        [
            "1",
            "0.5",
            "-3",
            "true",
            "[1, 2]",
            "{a: 1}",
            "",
            "null",
            ".nan",
            ".inf",
            "1e400",
            "[",
            "'",
            "x: y: z",
            "&a [*a]",
        ]
    ),
    st.text(max_size=12),
)


@FUZZ
@given(
    overrides=st.lists(
        st.one_of(st.tuples(KEYS, VALUES).map("=".join), st.text(max_size=15)), max_size=4
    )
)
def test_config_overrides_give_a_config_or_a_config_error(overrides: list[str]) -> None:
    try:
        config = load_config(None, overrides)
    except ConfigError:
        return
    assert isinstance(config.train.epochs, int) and math.isfinite(config.train.lr)


def test_the_csv_module_agrees_with_the_reader_on_plain_files(tmp_path: Path) -> None:
    """A sanity anchor for the properties above: an ordinary file reads as csv reads it."""
    text = "a.wav,1.5\nb.wav,-2\nc.wav,3e-3\n"
    path = _write(tmp_path, "s.csv", text)
    assert read_scores(path) == {row[0]: float(row[1]) for row in csv.reader(io.StringIO(text))}
