"""Clip file-name parser: every official naming, exact round trip, strict refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harken.data.names import (
    DCASE,
    DCASE2020,
    DCASE2020_HIDDEN,
    DCASE_HIDDEN,
    DCASE_HIDDEN_LABEL,
    MIMII,
    SUPPLEMENTAL,
    SUPPLEMENTAL_DOMAIN,
    SUPPLEMENTAL_SPLIT,
    ClipName,
    attribute_pairs,
    format_clip_name,
    mimii_relative_path,
    parse_clip_name,
)
from harken.errors import ClipNameError

# name -> (scheme, section, domain, split, label, index, attributes_raw, pairs, kind)
VALID = {
    # DCASE 2020 development / additional training
    "normal_id_00_00000000.wav": (DCASE2020, "00", None, None, "normal", 0, None, (), None),
    "anomaly_id_06_00000012.wav": (DCASE2020, "06", None, None, "anomaly", 12, None, (), None),
    # DCASE 2020 evaluation test (hidden label)
    "id_05_00000000.wav": (DCASE2020_HIDDEN, "05", None, None, "unknown", 0, None, (), None),
    # DCASE 2021 train with an odd attribute token count
    "section_00_source_train_normal_0000_strength_1_ambient.wav": (
        DCASE, "00", "source", "train", "normal", 0, "strength_1_ambient", (), None,
    ),
    # DCASE 2021 test names have no attributes
    "section_01_target_test_anomaly_0042.wav": (
        DCASE, "01", "target", "test", "anomaly", 42, None, (), None,
    ),
    # DCASE 2022
    "section_02_source_test_normal_0003_vel_6_loc_A.wav": (
        DCASE, "02", "source", "test", "normal", 3, "vel_6_loc_A",
        (("vel", "6"), ("loc", "A")), None,
    ),
    # DCASE 2023-2025 with attributes, hidden attributes, and an empty attribute slot
    "section_00_source_train_normal_0000_car_A1_spd_28V_mic_1.wav": (
        DCASE, "00", "source", "train", "normal", 0, "car_A1_spd_28V_mic_1",
        (("car", "A1"), ("spd", "28V"), ("mic", "1")), None,
    ),
    "section_00_target_test_anomaly_0012_noAttribute.wav": (
        DCASE, "00", "target", "test", "anomaly", 12, "noAttribute", (), None,
    ),
    "section_00_target_train_normal_0009_.wav": (
        DCASE, "00", "target", "train", "normal", 9, "", (), None,
    ),
    "section_00_source_train_normal_0001_m-n_W.flac": (
        DCASE, "00", "source", "train", "normal", 1, "m-n_W", (("m-n", "W"),), None,
    ),
    # DCASE 2021 evaluation test: domain known, label hidden
    "section_03_source_test_0000.wav": (
        DCASE_HIDDEN_LABEL, "03", "source", "test", "unknown", 0, None, (), None,
    ),
    # DCASE 2022-2025 evaluation test: everything hidden
    "section_00_0199.wav": (DCASE_HIDDEN, "00", None, "test", "unknown", 199, None, (), None),
    # DCASE 2025 supplemental: clean machine sound and noise-only, three published forms
    "section_00_machine_0001_.wav": (
        SUPPLEMENTAL, "00", None, "supplemental", "normal", 1, "", (), "machine",
    ),
    "section_00_noise_0100_.wav": (
        SUPPLEMENTAL, "00", None, "supplemental", "normal", 100, "", (), "noise",
    ),
    "section_00_machine_source_0000_noAttribute.wav": (
        SUPPLEMENTAL_DOMAIN, "00", "source", "supplemental", "normal", 0, "noAttribute", (), "machine",
    ),
    "section_00_source_supplemental_noise_0007_mic_1.wav": (
        SUPPLEMENTAL_SPLIT, "00", "source", "supplemental", "normal", 7, "mic_1", (("mic", "1"),), "noise",
    ),
    # names without an extension (as in some CSV rows) and upper-case extensions
    "section_00_0001": (DCASE_HIDDEN, "00", None, "test", "unknown", 1, None, (), None),
    "section_00_source_test_normal_0000_x.WAV": (
        DCASE, "00", "source", "test", "normal", 0, "x", (), None,
    ),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_names_parse_and_round_trip(name: str) -> None:
    scheme, section, domain, split, label, index, raw, pairs, kind = VALID[name]
    c = parse_clip_name(name)
    assert (c.scheme, c.section, c.domain, c.split, c.label, c.index) == (
        scheme, section, domain, split, label, index,
    )
    assert c.attributes_raw == raw
    assert c.attributes == pairs
    assert c.kind == kind
    assert format_clip_name(c) == name
    assert c.file_name == name
    assert parse_clip_name(format_clip_name(c)) == c


def test_clip_name_is_frozen() -> None:
    c = parse_clip_name("section_00_0000.wav")
    with pytest.raises(AttributeError):
        c.index = 3  # type: ignore[misc]


def test_mimii_names_take_section_and_label_from_folders(tmp_path: Path) -> None:
    normal = parse_clip_name("00000007.wav", path=tmp_path / "fan" / "id_04" / "normal" / "00000007.wav")
    assert (normal.scheme, normal.section, normal.label, normal.index) == (MIMII, "04", "normal", 7)
    assert normal.domain is None and normal.split is None
    abnormal = parse_clip_name("00000000.wav", path="pump/id_00/abnormal/00000000.wav")
    assert abnormal.label == "anomaly"
    assert format_clip_name(abnormal) == "00000000.wav"
    assert mimii_relative_path(abnormal) == "id_00/abnormal/00000000.wav"


@pytest.mark.parametrize(
    "path", [None, "fan/id_00/00000000.wav", "fan/train/00000000.wav", "fan/id_0/normal/00000000.wav"]
)
def test_mimii_names_outside_their_folders_are_refused(path: str | None) -> None:
    with pytest.raises(ClipNameError, match="00000000.wav"):
        parse_clip_name("00000000.wav", path=path)


BAD = [
    "",
    "foo.wav",
    "section_0_source_train_normal_0000.wav",  # one-digit section
    "section_00_Source_train_normal_0000.wav",  # case matters
    "section_00_source_valid_normal_0000.wav",  # unknown split
    "section_00_source_train_broken_0000.wav",  # unknown label
    "section_00_source_train_normal_.wav",  # no index
    "section_00_source_train_normal_00a1.wav",
    "section_00_domain_train_normal_0000.wav",
    "section_00_0000_.wav",  # hidden names have no attribute slot
    "section_00_machine.wav",
    "section_00_vibration_0000.wav",  # unknown supplemental kind
    "section_00_source_supplemental_normal_0000.wav",
    "section_00_source_train_normal_0000.mp3",
    "section_00_source_train_normal_0000_1.5V",  # a dot, no audio extension
    "train/section_00_source_train_normal_0000.wav",  # a path, not a name
    "section_00_source_train_normal_0000_a\nb.wav",
    "section_٠٠_0000.wav",  # Arabic-Indic digits
    "section_00_" + "1" * 19 + ".wav",  # absurdly long index
    ".wav",
    "normal_id_00.wav",
]


@pytest.mark.parametrize("name", BAD)
def test_names_that_fit_no_pattern_are_refused_naming_the_name(name: str) -> None:
    with pytest.raises(ClipNameError) as info:
        parse_clip_name(name)
    assert isinstance(info.value, ValueError)
    assert repr(name) in str(info.value)


def test_error_names_the_file_path_when_given() -> None:
    with pytest.raises(ClipNameError, match=r"^/data/fan/train/foo\.wav: "):
        parse_clip_name("foo.wav", path="/data/fan/train/foo.wav")


@pytest.mark.parametrize(
    ("raw", "pairs"),
    [
        (None, ()),
        ("", ()),
        ("noAttribute", ()),
        ("a_1", (("a", "1"),)),
        ("a_1_b", ()),
        ("_1", ()),  # empty key
        ("a_", (("a", ""),)),
    ],
)
def test_attribute_pairs(raw: str | None, pairs: tuple[tuple[str, str], ...]) -> None:
    assert attribute_pairs(raw) == pairs


@pytest.mark.parametrize(
    "kwargs",
    [
        {"section": "0"},
        {"index": -1},
        {"index": 12345, "index_width": 4},
        {"domain": None},
        {"split": "supplemental"},
        {"label": "unknown"},
        {"kind": "machine"},
        {"extension": ".mp3"},
        {"attributes_raw": "a/b"},
        {"attributes_raw": "1.5V", "extension": ""},
        {"scheme": "nope"},
    ],
)
def test_inconsistent_records_are_refused(kwargs: dict) -> None:
    base = dict(
        scheme=DCASE, section="00", domain="source", split="train", label="normal",
        index=0, index_width=4, attributes_raw=None, kind=None, extension=".wav",
    )
    with pytest.raises(ClipNameError):
        ClipName(**{**base, **kwargs})


# ------------------------------------------------------------------------ property tests
@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_any_text_parses_or_raises_clip_name_error(text: str) -> None:
    try:
        c = parse_clip_name(text)
    except ClipNameError:
        return
    assert format_clip_name(c) == text


_SECTION = st.from_regex(r"[0-9]{2}", fullmatch=True)
_INDEX = st.from_regex(r"[0-9]{1,8}", fullmatch=True)
_TOKEN = st.from_regex(r"[A-Za-z0-9.\-]{0,6}", fullmatch=True)
_ATTRS = st.one_of(
    st.just(""),
    st.just("_"),
    st.just("_noAttribute"),
    st.lists(_TOKEN, min_size=1, max_size=8).map(lambda ts: "_" + "_".join(ts)),
)
_EXT = st.sampled_from([".wav", ".flac", ".WAV"])
_DOMAIN = st.sampled_from(["source", "target"])
_KIND = st.sampled_from(["machine", "noise"])


@st.composite
def valid_names(draw: st.DrawFn) -> str:
    sec, idx, ext = draw(_SECTION), draw(_INDEX), draw(_EXT)
    form = draw(st.integers(0, 7))
    if form == 0:
        label = draw(st.sampled_from(["normal", "anomaly"]))
        split = draw(st.sampled_from(["train", "test"]))
        return f"section_{sec}_{draw(_DOMAIN)}_{split}_{label}_{idx}{draw(_ATTRS)}{ext}"
    if form == 1:
        return f"section_{sec}_{draw(_DOMAIN)}_test_{idx}{ext}"
    if form == 2:
        return f"section_{sec}_{idx}{ext}"
    if form == 3:
        return f"section_{sec}_{draw(_KIND)}_{idx}{draw(_ATTRS)}{ext}"
    if form == 4:
        return f"section_{sec}_{draw(_KIND)}_{draw(_DOMAIN)}_{idx}{draw(_ATTRS)}{ext}"
    if form == 5:
        return f"section_{sec}_{draw(_DOMAIN)}_supplemental_{draw(_KIND)}_{idx}{draw(_ATTRS)}{ext}"
    if form == 6:
        return f"{draw(st.sampled_from(['normal', 'anomaly']))}_id_{sec}_{idx}{ext}"
    return f"id_{sec}_{idx}{ext}"


@settings(max_examples=200, deadline=None)
@given(valid_names())
def test_generated_valid_names_round_trip(name: str) -> None:
    c = parse_clip_name(name)
    assert format_clip_name(c) == name
    assert parse_clip_name(format_clip_name(c)) == c


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[0-9]{1,8}", fullmatch=True), _SECTION, st.sampled_from(["normal", "abnormal"]))
def test_generated_mimii_names_round_trip(stem: str, section: str, folder: str) -> None:
    name = stem + ".wav"
    c = parse_clip_name(name, path=f"fan/id_{section}/{folder}/{name}")
    again = parse_clip_name(format_clip_name(c), path="fan/" + mimii_relative_path(c))
    assert format_clip_name(c) == name and again == c
