"""``harken synth``: DCASE 2025 layout and naming, formats, determinism, anomalies, domain shift."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from harken.cli import main
from harken.data import synth
from harken.errors import ConfigError, DatasetError

# The DCASE 2021-2025 labelled clip name: section_XX_<domain>_<split>_<label>_NNNN_<attributes>.wav
# where <attributes> is key_value pairs joined by "_" (values may hold "." as in volt_2.5), or
# "noAttribute" where the organizers hide them.  Written from the task description, not from
# harken's own parser, so the two check each other.
_TOKEN = r"[A-Za-z0-9.\-]+"
NAME_RE = re.compile(
    rf"section_(?P<section>[0-9]{{2}})_(?P<domain>source|target)_(?P<split>train|test)_"
    rf"(?P<label>normal|anomaly)_(?P<index>[0-9]{{4}})_"
    rf"(?P<attrs>noAttribute|{_TOKEN}_{_TOKEN}(?:_{_TOKEN}_{_TOKEN})*)\.wav"
)


def _pairs(attrs: str) -> tuple[tuple[str, str], ...]:
    tokens = attrs.split("_")
    return tuple(zip(tokens[0::2], tokens[1::2], strict=True))


def _wavs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.wav"))


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_machine_types_are_the_dcase_2025_development_set() -> None:
    assert synth.MACHINES == ("ToyCar", "ToyTrain", "bearing", "fan", "gearbox", "slider", "valve")
    assert set(synth.ANOMALY_KINDS) == set(synth.MACHINES)


def test_layout_and_names(synth_root: Path, synth_params: dict[str, Any]) -> None:
    machines = synth_params["machines"]
    assert sorted(p.name for p in synth_root.iterdir()) == sorted(machines)
    for m in machines:
        visible = sorted(p.name for p in (synth_root / m).iterdir() if not p.name.startswith("."))
        assert visible == ["attributes_00.csv", "test", "train"]
        for split in ("train", "test"):
            for p in (synth_root / m / split).iterdir():
                match = NAME_RE.fullmatch(p.name)
                assert match, p
                assert match["split"] == split
                assert match["section"] == "00"
                if split == "train":
                    assert match["label"] == "normal"


def test_counts_per_cell_and_contiguous_indices(
    synth_root: Path, synth_params: dict[str, Any]
) -> None:
    expected = {
        ("train", "source", "normal"): synth_params["n_train_source"],
        ("train", "target", "normal"): synth_params["n_train_target"],
    }
    for domain in ("source", "target"):
        for label in ("normal", "anomaly"):
            expected[("test", domain, label)] = synth_params["n_test"]
    for m in synth_params["machines"]:
        cells: dict[tuple[str, str, str], list[int]] = {}
        for p in _wavs(synth_root / m):
            g = NAME_RE.fullmatch(p.name)
            assert g
            cells.setdefault((g["split"], g["domain"], g["label"]), []).append(int(g["index"]))
        assert {k: len(v) for k, v in cells.items()} == expected, m
        for key, indices in cells.items():
            assert sorted(indices) == list(range(len(indices))), (m, key)


def test_attributes_csv_matches_the_files(synth_root: Path, synth_params: dict[str, Any]) -> None:
    for m in synth_params["machines"]:
        with open(synth_root / m / "attributes_00.csv", encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
        header, body = rows[0], rows[1:]
        width = (len(header) - 1) // 2
        assert header == ["file_name"] + [f"d{i}{s}" for i in range(1, width + 1) for s in "pv"]
        assert 1 <= width <= 3
        files = {f"{m}/{p.parent.name}/{p.name}" for p in _wavs(synth_root / m)}
        assert [r[0] for r in body] == sorted(
            files, key=lambda f: (f.split("/")[1] != "train", f)
        ), "rows: train then test, each sorted, one per file"
        for row in body:
            assert len(row) == len(header)
            attrs = NAME_RE.fullmatch(row[0].split("/")[-1])["attrs"]  # type: ignore[index]
            cells = [c for c in row[1:] if c]
            assert tuple(zip(cells[0::2], cells[1::2], strict=True)) == _pairs(attrs)


def test_every_file_parses_and_discovers(synth_root: Path, synth_params: dict[str, Any]) -> None:
    names = pytest.importorskip("harken.data.names")
    for p in _wavs(synth_root):
        parsed = names.parse_clip_name(p.name)
        g = NAME_RE.fullmatch(p.name)
        assert g
        assert (parsed.section, parsed.domain, parsed.split, parsed.label, parsed.index) == (
            g["section"],
            g["domain"],
            g["split"],
            g["label"],
            int(g["index"]),
        )
        assert parsed.attributes == _pairs(g["attrs"])
        assert names.format_clip_name(parsed) == p.name
    dataset = pytest.importorskip("harken.data.dataset")
    clips = dataset.discover(synth_root)
    assert len(clips) == len(_wavs(synth_root))
    assert {c.machine for c in clips} == set(synth_params["machines"])


def test_audio_format(synth_root: Path, synth_params: dict[str, Any]) -> None:
    frames = int(synth_params["duration"] * 16000)
    for p in _wavs(synth_root):
        info = sf.info(str(p))
        assert (info.samplerate, info.channels, info.format, info.subtype, info.frames) == (
            16000,
            1,
            "WAV",
            "PCM_16",
            frames,
        ), p
    audio, _ = sf.read(str(_wavs(synth_root)[0]), dtype="float32")
    assert 0.005 < float(np.sqrt(np.mean(audio**2))) < 0.5  # a sensible recording level
    assert np.max(np.abs(audio)) < 1.0


def test_each_clip_is_a_pure_function_of_its_identity(synth_root: Path) -> None:
    """Order and parallelism cannot matter: a clip rendered alone equals the file on disk."""
    for p in [_wavs(synth_root / "gearbox")[3], _wavs(synth_root / "valve")[-1]]:
        g = NAME_RE.fullmatch(p.name)
        assert g
        machine = p.parent.parent.name
        rng = synth.clip_rng(0, machine, g["split"], g["domain"], g["label"], int(g["index"]))
        audio, attrs = synth.render_clip(
            machine, duration=2.0, domain=g["domain"], anomaly=g["label"] == "anomaly", rng=rng
        )
        assert synth.attribute_string(attrs) == g["attrs"]
        assert synth.wav_bytes(audio, 16000) == p.read_bytes()


def test_same_seed_same_bytes_other_seed_other_audio(tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(
        machines=["slider", "ToyCar"],
        n_train_source=2,
        n_train_target=1,
        n_test=1,
        duration=0.5,
        progress=False,
    )
    a = _digest(synth.synthesize(tmp_path / "a", seed=7, **kw))
    b = _digest(synth.synthesize(tmp_path / "b", seed=7, workers=2, **kw))
    c = _digest(synth.synthesize(tmp_path / "c", seed=8, **kw))
    assert a == b
    assert len(a) == 2 * (2 + 1 + 4) + 2 * 2  # clips + CSV and marker per machine
    wav_a = {h for k, h in a.items() if k.endswith(".wav")}
    wav_c = {h for k, h in c.items() if k.endswith(".wav")}
    assert not wav_a & wav_c


def test_strength_zero_is_normal_and_strength_scales_the_fault() -> None:
    for machine in synth.MACHINES:
        for kind in synth.ANOMALY_KINDS[machine]:

            def render(
                anomaly: bool, strength: float, machine: str = machine, kind: str = kind
            ) -> np.ndarray:
                return synth.render_clip(
                    machine,
                    duration=1.0,
                    anomaly=anomaly,
                    strength=strength,
                    anomaly_kind=kind,
                    rng=11,
                )[0]

            normal = render(False, 1.0)
            assert np.array_equal(render(True, 0.0), normal), (machine, kind)
            rms = np.sqrt(np.mean(normal**2))
            weak = np.sqrt(np.mean((render(True, 0.5) - normal) ** 2)) / rms
            strong = np.sqrt(np.mean((render(True, 3.0) - normal) ** 2)) / rms
            assert strong > 0.05, (machine, kind, strong)
            assert strong > weak, (machine, kind, weak, strong)


def test_every_fault_is_audible_at_strength_one() -> None:
    """Each fault raises the mel band it affects most by at least 3 dB (clip mean power).

    The calibration rule of ``synth._FAULT_GAIN``: measured here on 4-s source-domain clips,
    a normal rendering against the same clip with the fault, averaged over three clips.
    """
    from harken.config import FeatureConfig
    from harken.features.logmel import logmel_numpy

    features = FeatureConfig()
    for machine in synth.MACHINES:
        for kind in synth.ANOMALY_KINDS[machine]:
            change = []
            for seed in range(3):
                pair = [
                    synth.render_clip(machine, duration=4.0, anomaly=a, anomaly_kind=kind, rng=seed)[0]
                    for a in (False, True)
                ]
                power = [np.mean(10 ** (logmel_numpy(y, features, 16000) / 10), axis=1) for y in pair]
                change.append(10 * np.log10(power[1] / power[0]))
            assert np.max(np.mean(change, axis=0)) >= 3.0, (machine, kind)


def test_anomaly_span_confines_the_fault() -> None:
    kw: dict[str, Any] = dict(duration=3.0, anomaly_kind="tooth", rng=5, attributes={"volt": "1.5"})
    normal, attrs = synth.render_clip("gearbox", anomaly=False, **kw)
    spanned, attrs2 = synth.render_clip("gearbox", anomaly=True, anomaly_span=(1.0, 2.0), **kw)
    assert attrs == attrs2 and dict(attrs)["volt"] == "1.5"
    # 16 kHz: before 0.9 s, inside 1.1-1.9 s, after 2.1 s
    before, inside, after = slice(0, 14400), slice(17600, 30400), slice(33600, None)
    # the background and microphone act on the whole clip, so "equal" means within float error
    assert np.allclose(spanned[before], normal[before], atol=1e-4)
    assert np.allclose(spanned[after], normal[after], atol=1e-4)
    assert np.sqrt(np.mean((spanned[inside] - normal[inside]) ** 2)) > 0.1 * np.sqrt(
        np.mean(normal[inside] ** 2)
    )


def _band_levels(y: np.ndarray) -> np.ndarray:
    """Mean log power in 16 equal-width bands: a cheap spectral fingerprint."""
    spec = np.abs(np.fft.rfft(y.reshape(-1, 1024) * np.hanning(1024), axis=1)) ** 2
    bands = spec[:, :512].reshape(spec.shape[0], 16, 32).mean(axis=(0, 2))
    return 10 * np.log10(bands + 1e-12)


def test_domains_differ_measurably() -> None:
    """Source and target normal clips differ more than clips within a domain (domain shift)."""
    for machine in synth.MACHINES:
        feats = {
            d: np.array(
                [
                    _band_levels(synth.render_clip(machine, duration=1.024, domain=d, rng=i)[0])
                    for i in range(6)
                ]
            )
            for d in synth.DOMAINS
        }
        gap = np.abs(feats["source"].mean(0) - feats["target"].mean(0))
        spread = np.sqrt((feats["source"].var(0) + feats["target"].var(0)) / 2) + 1e-6
        assert np.max(gap / spread) > 2.0, machine
        # and the attributes say which domain's operating conditions a clip was made under
        for key, src, tgt in synth._SPECS[machine].attributes:
            for d, options in (("source", src), ("target", tgt)):
                _, attrs = synth.render_clip(machine, duration=0.1, domain=d, rng=1)
                assert dict(attrs)[key] in options


def test_rerun_keeps_replaces_or_refuses(tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(
        machines=["valve"], n_train_source=2, n_train_target=1, n_test=1, duration=0.25
    )
    root = synth.synthesize(tmp_path / "d", progress=False, **kw)
    first = _digest(root)
    synth.synthesize(root, progress=False, **kw)  # same parameters: kept untouched
    assert _digest(root) == first
    synth.synthesize(root, progress=False, **{**kw, "n_train_source": 1})  # replaced, no leftovers
    assert len(list((root / "valve" / "train").iterdir())) == 2
    foreign = tmp_path / "foreign"
    (foreign / "valve" / "train").mkdir(parents=True)
    (foreign / "valve" / "train" / "mine.wav").write_bytes(b"")
    with pytest.raises(DatasetError, match="did not write"):
        synth.synthesize(foreign, progress=False, **kw)
    synth.synthesize(foreign, progress=False, overwrite=True, **kw)
    assert not (foreign / "valve" / "train" / "mine.wav").exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"machines": ["pump"]},
        {"machines": []},
        {"n_test": -1},
        {"n_train_source": 10000},
        {"duration": 0.0},
        {"strength": -1.0},
        {"sample_rate": 4000},
    ],
)
def test_bad_arguments_are_config_errors(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        synth.synthesize(tmp_path / "x", progress=False, **kwargs)


def test_render_clip_rejects_unknown_attributes() -> None:
    with pytest.raises(ConfigError):
        synth.render_clip("fan", duration=0.1, attributes={"rpm": "9999"})
    with pytest.raises(ConfigError):
        synth.render_clip("fan", duration=0.1, attributes={"colour": "red"})
    with pytest.raises(ConfigError):
        synth.render_clip("fan", duration=0.1, domain="elsewhere")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["synth", str(out), "--machines", "bearing,toycar", "--seed", "3", "--train-source", "2",
            "--train-target", "1", "--test-per-cell", "1", "--duration", "0.25", "--strength", "2",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert len(_wavs(out / "ToyCar")) == 7 and len(_wavs(out / "bearing")) == 7
    (out / "slider" / "test").mkdir(parents=True)
    (out / "slider" / "test" / "x.txt").write_text("not ours")
    assert main(["synth", str(out), "--machines", "slider", "--no-progress"]) == 1
    assert "did not write" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["synth", str(out), "--machines", "pump"])
