"""Official submission files: exact format on write, strict reading, exact round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harken.errors import ScoreFileError
from harken.evaluation.submission import (
    decision_file_name,
    find_submission_files,
    parse_submission_name,
    read_decisions,
    read_scores,
    read_submission,
    score_file_name,
    write_submission,
)


def test_file_names_follow_the_official_pattern():
    assert score_file_name("ToyCar", "00") == "anomaly_score_ToyCar_section_00_test.csv"
    assert decision_file_name("fan", 3) == "decision_result_fan_section_03_test.csv"
    assert parse_submission_name("anomaly_score_Toy_Car_section_01_test.csv") == (
        "score",
        "Toy_Car",
        "01",
    )
    assert parse_submission_name("decision_result_fan_section_00_test.csv") == (
        "decision",
        "fan",
        "00",
    )
    assert parse_submission_name("anomaly_score_fan_section_00_source_test.csv") is None
    with pytest.raises(ValueError):
        score_file_name("fan", "0")


def test_write_exact_official_text(tmp_path: Path):
    names = ["section_00_0001.wav", "section_00_0000.wav", "section_00_0002.wav"]
    scores = [0.1 + 0.2, -1.25, 1e-08]
    score_path, decision_path = write_submission(tmp_path, "fan", "00", names, scores, [1, 0, 1])
    assert score_path == tmp_path / "anomaly_score_fan_section_00_test.csv"
    assert decision_path == tmp_path / "decision_result_fan_section_00_test.csv"
    # no header, file order kept, Python's shortest round-trip float text, "\n" line ends
    assert score_path.read_bytes() == (
        b"section_00_0001.wav,0.30000000000000004\nsection_00_0000.wav,-1.25\nsection_00_0002.wav,1e-08\n"
    )
    assert (
        decision_path.read_bytes()
        == b"section_00_0001.wav,1\nsection_00_0000.wav,0\nsection_00_0002.wav,1\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        score_path.name,
        decision_path.name,
    ]  # no temp files


def test_round_trip_is_exact(tmp_path: Path):
    rng = np.random.default_rng(3)
    names = [f"section_01_source_test_anomaly_{i:04d}_a_1.wav" for i in range(50)]
    scores = np.concatenate(
        [
            rng.normal(size=45) * 10.0 ** rng.integers(-12, 12, size=45),
            [0.0, -0.0, 5e-324, 1e300, -7.0],
        ]
    )
    decisions = rng.integers(0, 2, size=50)
    sp, dp = write_submission(
        tmp_path, "ToyCar", "01", names, np.float32(1.0) * scores.astype(np.float64), decisions
    )
    read = read_scores(sp)
    assert list(read) == names
    assert [read[n] for n in names] == [float(s) for s in scores]  # bit-exact
    assert read_decisions(dp) == {n: int(d) for n, d in zip(names, decisions, strict=True)}


def test_write_without_decisions(tmp_path: Path):
    sp, dp = write_submission(tmp_path, "fan", "00", ["a.wav"], np.array([np.float64(2.5)]))
    assert dp is None and sp.read_text() == "a.wav,2.5\n"  # numpy scalars written as plain floats


@pytest.mark.parametrize(
    ("scores", "decisions", "message"),
    [
        ([float("nan"), 1.0], None, "not finite"),
        ([1.0, float("inf")], None, "not finite"),
        ([1.0, 2.0], [0, 2], "not 0 or 1"),
    ],
)
def test_write_refuses_bad_values(tmp_path: Path, scores, decisions, message):
    with pytest.raises(ScoreFileError, match=message):
        write_submission(tmp_path, "fan", "00", ["a.wav", "b.wav"], scores, decisions)
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_duplicate_and_unwritable_names(tmp_path: Path):
    with pytest.raises(ScoreFileError, match="twice"):
        write_submission(tmp_path, "fan", "00", ["a.wav", "a.wav"], [1.0, 2.0])
    with pytest.raises(ScoreFileError, match="cannot be written"):
        write_submission(tmp_path, "fan", "00", ["a,b.wav"], [1.0])
    with pytest.raises(ValueError):
        write_submission(tmp_path, "fan", "00", ["a.wav"], [1.0, 2.0])


def _file(tmp_path: Path, text: str, name: str = "anomaly_score_fan_section_00_test.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reader_accepts_the_official_variants(tmp_path: Path):
    # no trailing newline, CRLF, spaces around fields, a UTF-8 BOM, a directory prefix
    path = _file(tmp_path, "\ufeffa.wav,1\r\n b.wav , -0.0 \r\ntest/c.wav,3e2")
    assert read_scores(path) == {"a.wav": 1.0, "b.wav": -0.0, "c.wav": 300.0}
    dpath = _file(
        tmp_path, "a.wav,1\nb.wav,0.0\nc.wav,1.0\n", "decision_result_fan_section_00_test.csv"
    )
    assert read_decisions(dpath) == {"a.wav": 1, "b.wav": 0, "c.wav": 1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "file_name,score\na.wav,1\n",
            r"row 1: clip file_name: score 'score' is not a number \(a header row",
        ),
        ("a.wav,1\nb.wav,nan\n", "row 2: clip b.wav: score is 'nan', not a finite number"),
        ("a.wav,1\nb.wav,-inf\n", "row 2: clip b.wav: score is '-inf'"),
        ("a.wav,1\nb.wav,0x1p3\n", "row 2: clip b.wav: score '0x1p3' is not a number"),
        ("a.wav,1\nb.wav\n", "row 2: expected 2 fields"),
        ("a.wav,1\nb.wav,2,3\n", "row 2: expected 2 fields"),
        ("a.wav,1\n\nb.wav,2\n", "row 2: expected 2 fields"),
        ("a.wav,1\n,2\n", "row 2: empty clip name"),
        ("a.wav,1\nb.wav,2\na.wav,3\n", r"row 3: clip a.wav duplicated \(first in row 1\)"),
        ("", "file is empty"),
        ("\n\n", "file is empty"),
    ],
)
def test_score_reader_refuses(tmp_path: Path, text: str, message: str):
    path = _file(tmp_path, text)
    with pytest.raises(ScoreFileError, match=message) as err:
        read_scores(path)
    assert str(path) in str(err.value)  # every message names the file


@pytest.mark.parametrize("value", ["2", "-1", "0.5", "yes", "nan", ""])
def test_decision_reader_refuses_non_binary(tmp_path: Path, value: str):
    path = _file(tmp_path, f"a.wav,1\nb.wav,{value}\n", "decision_result_fan_section_00_test.csv")
    with pytest.raises(ScoreFileError, match="row 2: clip b.wav: decision .* is not 0 or 1"):
        read_decisions(path)


def test_missing_file_is_a_score_file_error(tmp_path: Path):
    with pytest.raises(ScoreFileError, match="not found"):
        read_scores(tmp_path / "nope.csv")


def test_decision_clip_list_must_match_scores(tmp_path: Path):
    write_submission(tmp_path, "fan", "00", ["a.wav", "b.wav"], [1.0, 2.0], [0, 1])
    _file(tmp_path, "a.wav,0\nc.wav,1\n", "decision_result_fan_section_00_test.csv")
    files = find_submission_files(tmp_path)[("fan", "00")]
    with pytest.raises(ScoreFileError, match="clip list differs from the score file") as err:
        read_submission(files)
    assert "b.wav" in str(err.value) and "c.wav" in str(err.value)
    assert "decision_result_fan_section_00_test.csv" in str(err.value)


def test_find_submission_files(tmp_path: Path):
    write_submission(tmp_path, "fan", "00", ["a.wav"], [1.0], [1])
    write_submission(tmp_path, "fan", "01", ["a.wav"], [1.0])
    (tmp_path / "expected.json").write_text("{}")  # other files are ignored
    found = find_submission_files(tmp_path)
    assert sorted(found) == [("fan", "00"), ("fan", "01")]
    assert found[("fan", "01")].decisions is None
    _file(tmp_path, "a.wav,1\n", "decision_result_pump_section_00_test.csv")
    with pytest.raises(ScoreFileError, match="decision file without its score file"):
        find_submission_files(tmp_path)
    (tmp_path / "decision_result_pump_section_00_test.csv").unlink()
    _file(tmp_path, "a.wav,1\n", "anomaly_score_fan_section_00_source_test.csv")
    with pytest.raises(ScoreFileError, match="does not follow the official format"):
        find_submission_files(tmp_path)
