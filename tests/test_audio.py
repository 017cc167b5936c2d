"""Audio loading: every subtype, channel policy, resampling, and every kind of bad input."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harken.config import AudioConfig
from harken.data.audio import audio_info, load_audio, load_audio_bytes
from harken.errors import AudioError, ConfigError, HarkenWarning

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MIMII_NORMAL = SHARED / "audio" / "mimii_fan_id_00" / "normal" / "00000000.wav"
SR = 16000


def sine(freq: float, sr: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float64)


def no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", HarkenWarning)
        return fn(*args, **kwargs)


def peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)])


# ---------------------------------------------------------------------------- subtypes
@pytest.mark.parametrize(
    ("fmt", "subtype", "tol"),
    [
        ("WAV", "PCM_U8", 1 / 64),
        ("WAV", "PCM_16", 1 / 2**14),
        ("WAV", "PCM_24", 1 / 2**22),
        ("WAV", "PCM_32", 1e-7),
        ("WAV", "FLOAT", 1e-7),
        ("WAV", "DOUBLE", 1e-7),
        ("WAVEX", "PCM_16", 1 / 2**14),
        ("WAVEX", "FLOAT", 1e-7),
        ("FLAC", "PCM_16", 1 / 2**14),
        ("FLAC", "PCM_24", 1 / 2**22),
    ],
)
def test_every_subtype_round_trips_within_quantization(tmp_path: Path, fmt: str, subtype: str, tol: float) -> None:
    x = sine(440, SR, 0.25)
    path = tmp_path / ("clip.flac" if fmt == "FLAC" else "clip.wav")
    sf.write(path, x, SR, format=fmt, subtype=subtype)
    assert sf.info(path).subtype == subtype and sf.info(path).format == fmt
    y = no_warnings(load_audio, path)
    assert y.dtype == np.float32 and y.ndim == 1 and y.shape == x.shape
    assert np.max(np.abs(y - x)) <= tol
    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.frames, info.subtype) == (SR, 1, len(x), subtype)
    assert info.duration == pytest.approx(0.25)


# ---------------------------------------------------------------------------- channels
@pytest.fixture(scope="module")
def mimii() -> tuple[Path, np.ndarray]:
    if not MIMII_NORMAL.is_file():
        pytest.skip(f"shared MIMII clips not present at {MIMII_NORMAL}")
    data, sr = sf.read(MIMII_NORMAL, dtype="float32", always_2d=True)
    assert sr == SR
    return MIMII_NORMAL, data


def test_real_mimii_file_is_8_channel_wavex(mimii: tuple[Path, np.ndarray]) -> None:
    path, data = mimii
    info = audio_info(path)
    assert (info.channels, info.sample_rate, info.format, info.frames) == (8, SR, "WAVEX", 160000)
    assert data.shape == (160000, 8)


@pytest.mark.parametrize("index", [0, 5, 7])
def test_channel_select_takes_that_channel(mimii: tuple[Path, np.ndarray], index: int) -> None:
    path, data = mimii
    y = load_audio(path, AudioConfig(channel="select", channel_index=index))
    assert y.shape == (160000,) and y.dtype == np.float32
    np.testing.assert_array_equal(y, data[:, index])


def test_channel_mean_averages_all_channels(mimii: tuple[Path, np.ndarray]) -> None:
    path, data = mimii
    y = load_audio(path, AudioConfig(channel="mean"))
    np.testing.assert_allclose(y, data.astype(np.float64).mean(axis=1), atol=1e-7)
    assert not np.allclose(y, data[:, 0])  # the channels really differ


def test_out_of_range_channel_index_names_the_file(mimii: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = mimii
    with pytest.raises(AudioError, match=rf"{path}: audio.channel_index 8 is out of range.*8 channel"):
        load_audio(path, AudioConfig(channel_index=8))
    mono = tmp_path / "mono.wav"
    sf.write(mono, sine(100, SR, 0.1), SR)
    with pytest.raises(AudioError, match="mono.wav: audio.channel_index 1"):
        load_audio(mono, AudioConfig(channel_index=1))


def test_stereo_select_and_mean_on_a_synthetic_file(tmp_path: Path) -> None:
    left, right = sine(200, SR, 0.1, 0.25), sine(300, SR, 0.1, 0.5)
    path = tmp_path / "st.wav"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, AudioConfig(channel_index=1)), right, atol=1e-7)
    np.testing.assert_allclose(load_audio(path, AudioConfig(channel="mean")), (left + right) / 2, atol=1e-7)


# ---------------------------------------------------------------------------- resampling
@pytest.mark.parametrize(("sr", "freq"), [(44100, 1000.0), (8000, 440.0), (48000, 3000.0)])
def test_other_rates_are_resampled_preserving_length_and_frequency(tmp_path: Path, sr: int, freq: float) -> None:
    path = tmp_path / f"s{sr}.wav"
    sf.write(path, sine(freq, sr, 1.0), sr, subtype="FLOAT")
    y = no_warnings(load_audio, path)
    assert y.dtype == np.float32
    assert abs(len(y) - SR) <= 1
    assert peak_hz(y, SR) == pytest.approx(freq, abs=2.0)
    # amplitude is preserved away from the edges
    assert np.max(np.abs(y[1000:-1000])) == pytest.approx(0.5, abs=0.02)


def test_resample_refuse_names_both_rates(tmp_path: Path) -> None:
    path = tmp_path / "s44.wav"
    sf.write(path, sine(440, 44100, 0.1), 44100)
    with pytest.raises(AudioError, match=r"s44\.wav: sample rate is 44100 Hz, expected 16000 Hz"):
        load_audio(path, AudioConfig(resample="refuse"))
    assert len(load_audio(path, AudioConfig(sample_rate=44100, resample="refuse"))) == 4410


# ---------------------------------------------------------------------------- bad input
def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _wav_bytes(x: np.ndarray, sr: int = SR, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="nope.wav: no such file"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="is a folder"):
        load_audio(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.wav", b"")
    with pytest.raises(AudioError, match=r"empty\.wav: empty file \(0 bytes\)"):
        load_audio(path)
    with pytest.raises(AudioError, match="empty file"):
        audio_info(path)


def test_zero_length_audio(tmp_path: Path) -> None:
    path = _write(tmp_path / "zero.wav", _wav_bytes(np.zeros(0)))
    with pytest.raises(AudioError, match=r"zero\.wav: zero-length audio"):
        load_audio(path)


def test_truncated_wav_is_refused(tmp_path: Path) -> None:
    whole = _wav_bytes(sine(440, SR, 0.5))
    path = _write(tmp_path / "cut.wav", whole[: len(whole) // 2])
    assert sf.info(path).frames > 0  # libsndfile alone would return the half that is there
    with pytest.raises(AudioError, match=r"cut\.wav: truncated WAV: its data chunk declares 16000 bytes"):
        load_audio(path)
    with pytest.raises(AudioError, match="truncated WAV"):
        audio_info(path)
    with pytest.raises(AudioError, match="upload.wav: truncated WAV"):
        load_audio_bytes(whole[:-2], name="upload.wav")


def test_truncated_flac_is_refused(tmp_path: Path) -> None:
    whole = _wav_bytes(np.random.default_rng(0).uniform(-0.5, 0.5, SR), fmt="FLAC")
    path = _write(tmp_path / "cut.flac", whole[: len(whole) // 2])
    with pytest.raises(AudioError, match=r"cut\.flac: truncated"):
        load_audio(path)


@pytest.mark.parametrize(
    "content",
    [b"<html><body>404 Not Found</body></html>", b"hello world, this is not audio\n" * 10, b"RIFF\x00\x00"],
)
def test_non_audio_with_a_wav_name(tmp_path: Path, content: bytes) -> None:
    path = _write(tmp_path / "page.wav", content)
    with pytest.raises(AudioError, match=r"page\.wav: not a readable audio file \(libsndfile: "):
        load_audio(path)
    with pytest.raises(AudioError, match="not a readable audio file"):
        audio_info(path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "locked.wav", _wav_bytes(sine(440, SR, 0.1)))
    path.chmod(0)
    try:
        with pytest.raises(AudioError, match=r"locked\.wav: cannot read the file \(permission denied\)"):
            load_audio(path)
        with pytest.raises(AudioError, match="permission denied"):
            audio_info(path)
    finally:
        path.chmod(0o644)


def test_permission_error_while_opening_is_an_audio_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The chmod test above is skipped when running as root (CI containers); this one always
    # exercises the same path by making open() fail as it would on an unreadable file.
    import harken.data.audio as audio_module

    path = _write(tmp_path / "locked.wav", _wav_bytes(sine(440, SR, 0.1)))

    def denied(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(audio_module, "open", denied, raising=False)
    with pytest.raises(AudioError, match=r"locked\.wav: cannot read the file \(permission denied\)"):
        load_audio(path)
    with pytest.raises(AudioError, match="permission denied"):
        audio_info(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_samples_refused_by_default(tmp_path: Path, bad: float) -> None:
    x = sine(440, SR, 0.1)
    x[[10, 20]] = bad
    path = _write(tmp_path / "nan.wav", _wav_bytes(x, subtype="FLOAT"))
    with pytest.raises(AudioError, match=r"nan\.wav: 2 NaN/Inf sample\(s\)"):
        load_audio(path)
    with pytest.warns(HarkenWarning, match=r"nan\.wav: 2 NaN/Inf sample\(s\) replaced by 0"):
        y = load_audio(path, AudioConfig(nonfinite="zero"))
    assert np.all(np.isfinite(y)) and y[10] == 0.0 and y[20] == 0.0
    assert y[11] == pytest.approx(x[11], abs=1e-7)


def test_nonfinite_in_an_unused_channel_does_not_matter(tmp_path: Path) -> None:
    x = np.stack([sine(440, SR, 0.1), sine(440, SR, 0.1)], axis=1)
    x[5, 1] = np.nan
    path = _write(tmp_path / "c.wav", _wav_bytes(x, subtype="FLOAT"))
    assert np.all(np.isfinite(no_warnings(load_audio, path)))
    with pytest.raises(AudioError, match="1 NaN/Inf"):
        load_audio(path, AudioConfig(channel="mean"))


def test_silent_audio_loads_with_a_warning(tmp_path: Path) -> None:
    path = _write(tmp_path / "silence.wav", _wav_bytes(np.zeros(1600)))
    with pytest.warns(HarkenWarning, match=r"silence\.wav: silent audio"):
        y = load_audio(path)
    assert y.shape == (1600,) and np.all(y == 0) and np.all(np.isfinite(y))


def test_clipped_audio_warns(tmp_path: Path) -> None:
    clipped = np.clip(sine(100, SR, 0.5, amp=3.0), -1.0, 1.0)
    path = _write(tmp_path / "loud.wav", _wav_bytes(clipped))
    with pytest.warns(HarkenWarning, match=r"loud\.wav: clipped audio: \d+\.\d% of samples at full scale"):
        load_audio(path)
    # a clean full-scale sine is not clipping
    no_warnings(load_audio, _write(tmp_path / "fs.wav", _wav_bytes(sine(100, SR, 0.5, amp=1.0), subtype="FLOAT")))


def test_implausible_header_rate(tmp_path: Path) -> None:
    path = _write(tmp_path / "slow.wav", _wav_bytes(sine(1, 100, 1.0), sr=100))
    with pytest.raises(AudioError, match=r"slow\.wav: implausible sample rate 100 Hz"):
        load_audio(path)


def test_invalid_config_is_a_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "ok.wav", _wav_bytes(sine(440, SR, 0.1)))
    for cfg in (
        AudioConfig(channel="left"),
        AudioConfig(channel_index=-1),
        AudioConfig(resample="linear"),
        AudioConfig(nonfinite="ignore"),
        AudioConfig(sample_rate=0),
    ):
        with pytest.raises(ConfigError):
            load_audio(path, cfg)


# ---------------------------------------------------------------------------- uploads
def test_load_audio_bytes_matches_load_audio(tmp_path: Path) -> None:
    data = _wav_bytes(sine(1000, 44100, 0.5), sr=44100, subtype="PCM_24")
    path = _write(tmp_path / "u.wav", data)
    np.testing.assert_array_equal(load_audio_bytes(data, name="u.wav"), load_audio(path))
    with pytest.raises(AudioError, match=r"^up\.wav: empty upload"):
        load_audio_bytes(b"", name="up.wav")
    with pytest.raises(AudioError, match=r"^up\.wav: not a readable audio file"):
        load_audio_bytes(b"GIF89a" + bytes(100), name="up.wav")


def test_data_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import harken.data, harken.data.audio, harken.data.dataset, harken.data.names, harken.data.cli\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------------------- property tests
def _must_be_array_or_audio_error(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "fuzz.wav"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HarkenWarning)
        for load in (lambda: load_audio(path), lambda: load_audio_bytes(data, name="fuzz.wav")):
            try:
                y = load()
            except AudioError:
                continue
            assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.ndim == 1 and y.size > 0


_SEEDS = [
    _wav_bytes(np.random.default_rng(1).uniform(-0.5, 0.5, (300, 2)), subtype=sub, fmt=fmt)
    for fmt, sub in [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("WAVEX", "PCM_24"), ("WAV", "PCM_U8"), ("FLAC", "PCM_16")]
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2048))
def test_random_bytes_give_audio_or_audio_error(tmp_path: Path, data: bytes) -> None:
    _must_be_array_or_audio_error(data, tmp_path)


@st.composite
def mutated_wavs(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    # header bytes are the interesting ones; mutate there mostly, anywhere sometimes
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.one_of(st.integers(0, 79), st.integers(0, len(data) - 1)))
        data[pos] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return bytes(data if cut is None else data[:cut])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutated_wavs())
def test_mutated_and_truncated_wavs_give_audio_or_audio_error(tmp_path: Path, data: bytes) -> None:
    _must_be_array_or_audio_error(data, tmp_path)
