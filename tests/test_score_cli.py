"""``harken score --run``: files and folders, failures, machine/section, outputs, timelines."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import test_api
from harken.cli import main
from harken.data.dataset import discover
from harken.data.synth import render_clip, wav_bytes
from harken.training.checkpoint import load_detector

# the run the documented API snippet trains, shared with the other field-use tests
feature_cache = test_api.feature_cache
field_run = test_api.field_run
expected_starts = test_api.expected_starts


def score(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["score", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_folder_and_failures(field_run: Path, synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "fan" / "test"
    folder.mkdir(parents=True)
    clips = [c for c in discover(synth_root) if c.split == "test" and c.machine == "fan"][:3]
    for c in clips:
        shutil.copy(c.path, folder / c.path.name)
    (folder / "section_00_0098.wav").write_bytes(b"")  # empty
    (folder / "section_00_0099.wav").write_text("<html>not audio</html>")  # wrong content
    out = tmp_path / "out"
    rc, stdout, stderr = score(capsys, "--run", str(field_run), str(folder), str(tmp_path / "nowhere.wav"), "--out", str(out))

    assert rc == 3
    assert "3 of 6 input(s) could not be scored" in stderr
    assert "section_00_0098.wav: empty file (0 bytes)" in stderr
    assert "section_00_0099.wav:" in stderr and "nowhere.wav: no such file or folder" in stderr
    rows = read_csv(out / "scores.csv")
    assert [Path(r["file"]).name for r in rows] == sorted([c.path.name for c in clips] + ["section_00_0098.wav", "section_00_0099.wav"]) + ["nowhere.wav"]
    good = [r for r in rows if not r["error"]]
    assert len(good) == 3 and all(r["machine"] == "fan" and r["section"] == "00" for r in good)

    # scores equal the system's own (feature-cache) scoring of the same clips, the harken test path
    detector = load_detector(field_run)
    own = dict(zip((c.path.name for c in clips), detector.decision_function(clips), strict=True))
    threshold = detector.threshold_["fan/00"]
    for r in good:
        assert float(r["score"]) == pytest.approx(own[Path(r["file"]).name], rel=1e-6)
        assert float(r["threshold"]) == threshold and r["threshold_key"] == "fan/00"
        assert int(r["decision"]) == int(float(r["score"]) > threshold)
        assert int(r["n_windows"]) == 6 and float(r["duration_s"]) == 2.0

    data = json.loads((out / "scores.json").read_text())
    assert data["n_files"] == 6 and data["n_failed"] == 3 and data["backend"] == "pytorch"
    assert [c["file"] for c in data["clips"]] == [r["file"] for r in rows]
    timeline = read_csv(out / "timeline.csv")
    first = [t for t in timeline if t["file"] == good[0]["file"]]
    np.testing.assert_allclose([float(t["start_s"]) for t in first], expected_starts(32000))
    assert float(good[0]["score"]) == pytest.approx(np.mean([float(t["score"]) for t in first]), rel=1e-9)
    assert "ANOMALY" in stdout or "normal" in stdout
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_names_without_a_pattern_need_machine(field_run: Path, synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = sorted((synth_root / "valve" / "test").glob("*.wav"))[0]
    odd = tmp_path / "valve 3 - monday.wav"
    shutil.copy(src, odd)
    rc, _, stderr = score(capsys, "--run", str(field_run), str(odd))
    assert rc == 3 and "pass --machine" in stderr

    rc, stdout, _ = score(capsys, "--run", str(field_run), str(odd), "--machine", "valve", "--section", "1", "--out", str(tmp_path / "o"))
    assert rc == 0
    (row,) = read_csv(tmp_path / "o" / "scores.csv")
    assert (row["machine"], row["section"], row["threshold_key"]) == ("valve", "01", "*")
    assert "(*)" in stdout  # the table says the global threshold decided

    rc, _, stderr = score(capsys, "--run", str(field_run), str(odd), "--machine", "pump")
    assert rc == 0 and "pump not among the model's" in stderr

    ogg = tmp_path / "valve.ogg"
    sf.write(ogg, sf.read(src, dtype="float32")[0], 16000, format="OGG", subtype="VORBIS")
    rc, _, stderr = score(capsys, "--run", str(field_run), str(ogg), "--machine", "valve")
    assert rc == 3 and "valve.ogg: not a .wav or .flac file (.ogg)" in stderr


def test_multichannel_real_clips_use_channel_0(field_run: Path, mimii_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wav = mimii_dir / "normal" / "00000000.wav"
    mono = tmp_path / "ch0.wav"
    data, rate = sf.read(wav, dtype="int16")
    sf.write(mono, data[:, 0], rate, subtype="PCM_16")
    rc, _, _ = score(capsys, "--run", str(field_run), str(mimii_dir), str(mono), "--machine", "fan", "--out", str(tmp_path / "o"))
    assert rc == 0
    rows = read_csv(tmp_path / "o" / "scores.csv")
    assert len(rows) == 5
    # 10 s: 1 + 160000 // 156 = 1026 frames -> windows every 32 frames to 960, plus 962: 32
    assert all(int(r["n_windows"]) == len(expected_starts(160000)) == 32 for r in rows)
    by_name = {Path(r["file"]).parent.name + "/" + Path(r["file"]).name: float(r["score"]) for r in rows}
    assert by_name["normal/00000000.wav"] == by_name[f"{tmp_path.name}/ch0.wav"]


def test_long_recording_timeline_places_the_inserted_anomaly(
    field_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    span = (12.0, 14.0)
    audio, _ = render_clip("fan", duration=20.0, anomaly=True, strength=3.0, anomaly_kind="blade", anomaly_span=span, rng=1)
    path = tmp_path / "fan_line3.wav"
    path.write_bytes(wav_bytes(audio, 16000))
    rc, stdout, _ = score(capsys, "--run", str(field_run), str(path), "--machine", "fan", "--out", str(tmp_path / "o"))
    assert rc == 0
    windows = read_csv(tmp_path / "o" / "timeline.csv")
    starts = np.array([float(w["start_s"]) for w in windows])
    ends = np.array([float(w["end_s"]) for w in windows])
    values = np.array([float(w["score"]) for w in windows])
    # 20 s: 2052 frames -> starts 0, 32, ..., 1984 and the end-aligned 1988: 64 windows
    np.testing.assert_allclose(starts, expected_starts(320000))
    assert len(starts) == 64 and starts[-1] == pytest.approx(1988 * 156 / 16000)
    np.testing.assert_allclose(ends - starts, 64 * 156 / 16000)
    overlaps = (ends > span[0]) & (starts < span[1])
    peak = int(np.argmax(values))
    assert overlaps[peak], f"peak window at {starts[peak]:.2f} s is outside the anomaly {span}"
    assert values[overlaps].max() > 1.15 * values[~overlaps].max()
    assert f"at {starts[peak]:.2f} s" in stdout
    (row,) = read_csv(tmp_path / "o" / "scores.csv")
    assert float(row["score"]) == pytest.approx(values.mean(), rel=1e-9)  # window.aggregate = mean
    assert float(row["peak_start_s"]) == pytest.approx(starts[peak])
