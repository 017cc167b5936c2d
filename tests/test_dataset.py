"""Dataset discovery: every official layout, attributes CSVs, duplicates, summary and the CLI."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from harken.cli import main
from harken.data.dataset import (
    Clip,
    SummaryRow,
    clip_from_path,
    discover,
    format_summary,
    read_attributes_csv,
    summary,
)
from harken.errors import ClipNameError, DatasetError, HarkenWarning

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MIMII_DIR = SHARED / "audio" / "mimii_fan_id_00"
_TONE = (0.1 * np.sin(np.arange(160) / 3.0)).astype(np.float32)


def write_clip(path: Path, data: np.ndarray = _TONE, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr)
    return path


def make_machine(machine_dir: Path, *, target_train: bool = True, supplemental: bool = True) -> None:
    """A small DCASE 2025-style machine folder: 2 source + 1 target train, 4 test, 2 supplemental."""
    a = "car_A1_spd_28V_mic_1"
    for i in range(2):
        write_clip(machine_dir / "train" / f"section_00_source_train_normal_{i:04d}_{a}.wav")
    if target_train:
        write_clip(machine_dir / "train" / f"section_00_target_train_normal_0000_{a}.wav")
    for domain in ("source", "target"):
        for label in ("normal", "anomaly"):
            write_clip(machine_dir / "test" / f"section_00_{domain}_test_{label}_0000_{a}.wav")
    if supplemental:
        write_clip(machine_dir / "supplemental" / "section_00_machine_0000_.wav")
        write_clip(machine_dir / "supplemental" / "section_00_noise_0000_.wav")


def quiet_discover(*args, **kwargs) -> list[Clip]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", HarkenWarning)
        return discover(*args, **kwargs)


# ---------------------------------------------------------------------------- layouts
def test_flat_layout_finds_every_clip_with_fields_from_name_and_folder(tmp_path: Path) -> None:
    make_machine(tmp_path / "ToyCar")
    clips = quiet_discover(tmp_path)
    assert len(clips) == 9
    assert {c.machine for c in clips} == {"ToyCar"}
    train = [c for c in clips if c.split == "train"]
    assert [(c.domain, c.label, c.index) for c in train] == [
        ("source", "normal", 0), ("source", "normal", 1), ("target", "normal", 0),
    ]
    assert train[0].attributes == (("car", "A1"), ("spd", "28V"), ("mic", "1"))
    assert train[0].file_name == train[0].path.name
    supp = [c for c in clips if c.split == "supplemental"]
    assert sorted((c.kind, c.label) for c in supp) == [("machine", "normal"), ("noise", "normal")]
    assert sorted(c.label for c in clips if c.split == "test") == ["anomaly", "anomaly", "normal", "normal"]
    assert all(isinstance(c.path, Path) and c.path.is_file() for c in clips)


def test_result_is_sorted_and_deterministic(tmp_path: Path) -> None:
    make_machine(tmp_path / "fan")
    make_machine(tmp_path / "bearing")
    first = quiet_discover(tmp_path)
    assert first == quiet_discover(tmp_path)
    assert [c.machine for c in first] == sorted(c.machine for c in first)
    assert first[0].split == "train"


def test_dev_and_eval_raw_layouts_are_merged(tmp_path: Path) -> None:
    make_machine(tmp_path / "dev_data" / "raw" / "ToyCar")
    write_clip(tmp_path / "eval_data" / "raw" / "AutoTrash" / "train" / "section_00_source_train_normal_0000_id_A1.wav")
    write_clip(tmp_path / "eval_data" / "raw" / "AutoTrash" / "train" / "section_00_target_train_normal_0000_id_C1.wav")
    write_clip(tmp_path / "eval_data" / "raw" / "AutoTrash" / "test" / "section_00_0000.wav")
    clips = quiet_discover(tmp_path)
    assert {c.machine for c in clips} == {"ToyCar", "AutoTrash"}
    hidden = [c for c in clips if c.machine == "AutoTrash" and c.split == "test"]
    assert [(c.label, c.domain) for c in hidden] == [("unknown", None)]
    # the same machine type in dev and eval (2020-2022 style) merges under one name
    write_clip(tmp_path / "eval_data" / "raw" / "ToyCar" / "test" / "section_03_0000.wav")
    merged = quiet_discover(tmp_path, machines=["ToyCar"])
    assert {c.section for c in merged} == {"00", "03"}


def test_2020_layout_without_raw_folder(tmp_path: Path) -> None:
    base = tmp_path / "dev_data" / "fan"
    write_clip(base / "train" / "normal_id_00_00000000.wav")
    write_clip(base / "test" / "normal_id_00_00000000.wav")
    write_clip(base / "test" / "anomaly_id_00_00000000.wav")
    write_clip(tmp_path / "eval_data" / "fan" / "test" / "id_01_00000000.wav")
    clips = quiet_discover(tmp_path)
    assert [(c.split, c.section, c.label, c.domain) for c in clips] == [
        ("train", "00", "normal", None),
        ("test", "00", "anomaly", None),
        ("test", "00", "normal", None),
        ("test", "01", "unknown", None),
    ]


def test_2021_source_and_target_test_folders(tmp_path: Path) -> None:
    m = tmp_path / "gearbox"
    write_clip(m / "train" / "section_00_source_train_normal_0000_volt_1.0.wav")
    write_clip(m / "train" / "section_00_target_train_normal_0000_volt_1.5.wav")
    write_clip(m / "source_test" / "section_00_source_test_normal_0000.wav")
    write_clip(m / "target_test" / "section_03_target_test_0000.wav")
    clips = quiet_discover(tmp_path)
    tests = [c for c in clips if c.split == "test"]
    assert [(c.domain, c.label) for c in tests] == [("source", "normal"), ("target", "unknown")]


def test_root_may_be_a_single_machine_folder(tmp_path: Path) -> None:
    make_machine(tmp_path / "valve")
    clips = quiet_discover(tmp_path / "valve")
    assert len(clips) == 9 and {c.machine for c in clips} == {"valve"}


def test_flac_clips_are_found(tmp_path: Path) -> None:
    write_clip(tmp_path / "fan" / "train" / "section_00_source_train_normal_0000_.flac")
    write_clip(tmp_path / "fan" / "train" / "section_00_target_train_normal_0000_.FLAC")
    clips = quiet_discover(tmp_path)
    assert [c.path.suffix for c in clips] == [".flac", ".FLAC"]


def test_hidden_and_non_audio_files_are_skipped(tmp_path: Path) -> None:
    make_machine(tmp_path / "fan", supplemental=False)
    (tmp_path / "fan" / "train" / "._section_00_source_train_normal_0000_x.wav").write_bytes(b"\0")
    (tmp_path / "fan" / "train" / "notes.txt").write_text("hello")
    assert len(quiet_discover(tmp_path)) == 7


def test_mimii_layout_with_tiny_clips(tmp_path: Path) -> None:
    for folder in ("normal", "abnormal"):
        for i in range(2):
            write_clip(tmp_path / "pump" / "id_02" / folder / f"{i:08d}.wav")
    clips = quiet_discover(tmp_path)
    assert [(c.section, c.label, c.split, c.domain, c.index) for c in clips] == [
        ("02", "anomaly", "test", None, 0),
        ("02", "anomaly", "test", None, 1),
        ("02", "normal", "test", None, 0),
        ("02", "normal", "test", None, 1),
    ]
    assert quiet_discover(tmp_path / "pump") == clips


def test_real_mimii_clips_in_their_layout(tmp_path: Path) -> None:
    if not MIMII_DIR.is_dir():
        pytest.skip(f"shared MIMII clips not present at {MIMII_DIR}")
    for folder in ("normal", "abnormal"):
        (tmp_path / "fan" / "id_00").mkdir(parents=True, exist_ok=True)
        (tmp_path / "fan" / "id_00" / folder).symlink_to(MIMII_DIR / folder)
    clips = quiet_discover(tmp_path)
    assert len(clips) == 4
    assert _count_by_label(clips) == {("fan", "00", "anomaly"): 2, ("fan", "00", "normal"): 2}


def _count_by_label(clips: list[Clip]) -> dict:
    out: dict = {}
    for c in clips:
        out[(c.machine, c.section, c.label)] = out.get((c.machine, c.section, c.label), 0) + 1
    return out


# ---------------------------------------------------------------------------- filters
def test_machine_and_split_filters(tmp_path: Path) -> None:
    make_machine(tmp_path / "fan")
    make_machine(tmp_path / "valve")
    only = quiet_discover(tmp_path, machines=["valve"], splits=["test"])
    assert {(c.machine, c.split) for c in only} == {("valve", "test")} and len(only) == 4
    with pytest.raises(DatasetError, match="ToyDrone.*present: fan, valve"):
        discover(tmp_path, machines=["ToyDrone"])
    with pytest.raises(DatasetError, match="splits must be among"):
        discover(tmp_path, splits=["validation"])


# ---------------------------------------------------------------------------- refusals
def test_bad_clip_name_names_the_file(tmp_path: Path) -> None:
    make_machine(tmp_path / "fan")
    bad = write_clip(tmp_path / "fan" / "train" / "recording_1.wav")
    with pytest.raises(ClipNameError, match=str(bad)):
        discover(tmp_path)


def test_name_split_must_match_its_folder(tmp_path: Path) -> None:
    make_machine(tmp_path / "fan")
    moved = write_clip(tmp_path / "fan" / "train" / "section_00_source_test_normal_0009_x.wav")
    with pytest.raises(DatasetError, match=f"{moved}.*split 'test'.*'train' folder"):
        discover(tmp_path)


def test_name_domain_must_match_a_2021_domain_folder(tmp_path: Path) -> None:
    write_clip(tmp_path / "fan" / "source_test" / "section_00_target_test_normal_0000.wav")
    with pytest.raises(DatasetError, match="domain 'target'"):
        discover(tmp_path)


def test_wav_and_flac_of_one_clip_are_duplicates_naming_both(tmp_path: Path) -> None:
    make_machine(tmp_path / "fan")
    a = tmp_path / "fan" / "test" / "section_00_source_test_normal_0000_car_A1_spd_28V_mic_1.wav"
    b = write_clip(a.with_suffix(".flac"))
    with pytest.raises(DatasetError, match="duplicate clip") as info:
        discover(tmp_path)
    assert str(a) in str(info.value) and str(b) in str(info.value)


def test_same_index_with_other_attributes_is_a_duplicate(tmp_path: Path) -> None:
    make_machine(tmp_path / "fan")
    write_clip(tmp_path / "fan" / "train" / "section_00_source_train_normal_0000_car_B9.wav")
    with pytest.raises(DatasetError, match="duplicate clip"):
        discover(tmp_path)


def test_identical_content_is_refused_when_asked(tmp_path: Path) -> None:
    make_machine(tmp_path / "fan", supplemental=False)
    src = tmp_path / "fan" / "train" / "section_00_source_train_normal_0000_car_A1_spd_28V_mic_1.wav"
    copy = tmp_path / "fan" / "train" / "section_00_source_train_normal_0005_car_A1_spd_28V_mic_1.wav"
    shutil.copyfile(src, copy)
    assert len(quiet_discover(tmp_path)) == 8  # not checked by default
    # every fixture clip is the same tone: make the others differ first
    for i, p in enumerate(sorted((tmp_path / "fan").rglob("*.wav"))):
        if p not in (src, copy):
            write_clip(p, _TONE * (0.5 + 0.01 * i))
    with pytest.raises(DatasetError, match="identical content") as info:
        discover(tmp_path, check_content=True)
    assert str(src) in str(info.value) and str(copy) in str(info.value)


def test_empty_machine_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    make_machine(tmp_path / "fan")
    (tmp_path / "valve").mkdir()
    with pytest.raises(DatasetError, match=f"{tmp_path / 'valve'}: empty machine folder"):
        discover(tmp_path)


def test_machine_folder_with_empty_split_folders_is_an_error(tmp_path: Path) -> None:
    make_machine(tmp_path / "fan")
    (tmp_path / "valve" / "train").mkdir(parents=True)
    (tmp_path / "valve" / "test").mkdir()
    with pytest.raises(DatasetError, match=f"{tmp_path / 'valve'}: machine folder holds no"):
        discover(tmp_path)


def test_unrelated_folder_is_skipped_with_a_warning(tmp_path: Path) -> None:
    make_machine(tmp_path / "fan")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "scores.csv").write_text("a,b\n")
    with pytest.warns(HarkenWarning, match="results: skipped: not a machine folder"):
        clips = discover(tmp_path)
    assert {c.machine for c in clips} == {"fan"}


def test_root_without_any_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no machine folders"):
        discover(tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        discover(tmp_path / "missing")


def test_missing_target_training_clips_warn_but_load(tmp_path: Path) -> None:
    make_machine(tmp_path / "fan", target_train=False)
    make_machine(tmp_path / "valve")
    with pytest.warns(HarkenWarning, match="fan section 00: no target-domain training clips") as rec:
        clips = discover(tmp_path)
    assert len(rec) == 1
    assert len(clips) == 17
    quiet_discover(tmp_path, splits=["test"])  # no warning when training clips are not asked for


# ---------------------------------------------------------------------------- attributes CSV
CSV_HEADER = "file_name,d1p,d1v,d2p,d2v\n"


def _csv_machine(tmp_path: Path) -> Path:
    m = tmp_path / "bearing"
    write_clip(m / "train" / "section_00_source_train_normal_0000_noAttribute.wav")
    write_clip(m / "train" / "section_00_target_train_normal_0000_noAttribute.wav")
    write_clip(m / "test" / "section_00_source_test_anomaly_0000_noAttribute.wav")
    return m


def test_attributes_csv_overrides_name_attributes(tmp_path: Path) -> None:
    m = _csv_machine(tmp_path)
    (m / "attributes_00.csv").write_text(
        CSV_HEADER
        + "bearing/train/section_00_source_train_normal_0000_noAttribute.wav,vel,6,loc,A\n"
        + "section_00_target_train_normal_0000_noAttribute,vel,14,,\n"  # bare name, no suffix
        + "bearing/test/section_00_source_test_anomaly_0000_noAttribute.wav,noAttribute,,,\n"  # hidden
    )
    clips = quiet_discover(tmp_path)
    by_name = {c.file_name: c.attributes for c in clips}
    assert by_name["section_00_source_train_normal_0000_noAttribute.wav"] == (("vel", "6"), ("loc", "A"))
    assert by_name["section_00_target_train_normal_0000_noAttribute.wav"] == (("vel", "14"),)
    assert by_name["section_00_source_test_anomaly_0000_noAttribute.wav"] == ()


def test_csv_rows_for_missing_files_warn_naming_csv_and_row(tmp_path: Path) -> None:
    m = _csv_machine(tmp_path)
    (m / "attributes_00.csv").write_text(
        CSV_HEADER
        + "bearing/train/section_00_source_train_normal_0000_noAttribute.wav,vel,6,loc,A\n"
        + "bearing/train/section_00_target_train_normal_0000_noAttribute.wav,vel,6,loc,A\n"
        + "bearing/test/section_00_source_test_anomaly_0000_noAttribute.wav,vel,6,loc,A\n"
        + "bearing/train/section_00_source_train_normal_0077_noAttribute.wav,vel,6,loc,A\n"
    )
    with pytest.warns(HarkenWarning, match=r"attributes_00\.csv: 1 row\(s\) name files that are not on disk: row 5 \(bearing/train/section_00_source_train_normal_0077"):
        discover(tmp_path)
    # rows of a split that was not asked for are not "missing"
    quiet_discover(tmp_path, splits=["test"])


def test_clips_left_out_of_a_csv_warn_naming_the_clip(tmp_path: Path) -> None:
    m = _csv_machine(tmp_path)
    (m / "attributes_00.csv").write_text(
        CSV_HEADER + "bearing/train/section_00_source_train_normal_0000_noAttribute.wav,vel,6,loc,A\n"
    )
    with pytest.warns(HarkenWarning, match="1 clip\\(s\\) in folders it covers are not listed.*section_00_target_train_normal_0000"):
        clips = discover(tmp_path)
    # the test folder is not covered by this CSV at all: no complaint about it
    assert len(clips) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,d1p,d1v\nx.wav,a,1\n", "first column is file_name"),
        ("", "first column is file_name"),
        (CSV_HEADER + "section_00_source_train_normal_0000_noAttribute.wav,vel\n", "row 2.*pairs"),
        (CSV_HEADER + "section_00_source_train_normal_0000_noAttribute.wav,,6\n", "row 2.*no attribute name"),
        (
            CSV_HEADER
            + "section_00_source_train_normal_0000_noAttribute.wav,vel,6\n"
            + "bearing/section_00_source_train_normal_0000_noAttribute.wav,vel,7\n",
            "rows 2 and 3 both describe",
        ),
    ],
)
def test_malformed_attributes_csv_is_an_error_naming_it(tmp_path: Path, text: str, message: str) -> None:
    m = _csv_machine(tmp_path)
    (m / "attributes_00.csv").write_text(text)
    with pytest.raises(DatasetError, match=message) as info:
        discover(tmp_path)
    assert "attributes_00.csv" in str(info.value)


def test_read_attributes_csv_rows(tmp_path: Path) -> None:
    p = tmp_path / "attributes_00.csv"
    p.write_text("\ufefffile_name,d1p,d1v\r\nToyCar\\train\\a_0000.wav,car,A1,\r\n\r\n")
    rows = read_attributes_csv(p)
    assert [(r.number, r.folder, r.stem, r.pairs) for r in rows] == [(2, "train", "a_0000", (("car", "A1"),))]


# ---------------------------------------------------------------------------- single files
def test_clip_from_path(tmp_path: Path) -> None:
    p = write_clip(tmp_path / "fan" / "test" / "section_00_target_test_anomaly_0003_x_1.wav")
    c = clip_from_path(p)
    assert (c.machine, c.split, c.domain, c.label, c.index, c.attributes) == (
        "fan", "test", "target", "anomaly", 3, (("x", "1"),),
    )
    loose = write_clip(tmp_path / "uploads" / "section_00_0004.wav")
    assert clip_from_path(loose, machine="fan").machine == "fan"
    assert clip_from_path(loose).split == "test"


# ---------------------------------------------------------------------------- summary + CLI
def test_summary_counts_and_table(tmp_path: Path) -> None:
    make_machine(tmp_path / "fan")
    rows = summary(quiet_discover(tmp_path))
    assert SummaryRow("fan", "00", "source", "train", "normal", None, 2) in rows
    assert SummaryRow("fan", "00", None, "supplemental", "normal", "noise", 1) in rows
    assert sum(r.count for r in rows) == 9
    assert rows[0].split == "train"
    text = format_summary(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["machine", "section", "domain", "split", "label", "kind", "clips"]
    assert lines[-1].split() == ["total", "9"]
    assert any(line.split() == ["fan", "all", "9"] for line in lines)


def test_cli_data_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_machine(tmp_path / "fan", target_train=False)
    assert main(["data", "summary", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "fan" in out and out.splitlines()[-1].split() == ["total", "8"]
    assert "harken data: warning: fan section 00: no target-domain training clips" in err
    assert main(["data", "summary", str(tmp_path), "--json", "--splits", "test"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sum(r["count"] for r in rows) == 4 and {r["split"] for r in rows} == {"test"}


def test_cli_errors_are_one_line_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_machine(tmp_path / "fan")
    (tmp_path / "valve").mkdir()
    assert main(["data", "summary", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("harken data: error: ") and "empty machine folder" in err
    assert "Traceback" not in err
    assert main(["data"]) == 2
