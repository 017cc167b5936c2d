"""FeatureCache: computes once, keyed by audio bytes and configuration, never serves a corrupt
or stale entry, and stays within the DCASE-scale disk budget."""

from __future__ import annotations

import os
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import harken.features.cache as cache_module
from harken.config import AudioConfig, FeatureConfig
from harken.errors import AudioError, HarkenWarning
from harken.features.cache import CACHE_DIR_NAME, FeatureCache, cache_dir_for
from harken.features.logmel import logmel_numpy

SR = 16000
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MIMII = SHARED / "audio" / "mimii_fan_id_00" / "normal" / "00000000.wav"


def write_clip(path: Path, seed: int, seconds: float = 1.0, freq: float = 440.0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    y = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, y.astype(np.float32), SR, subtype="PCM_16")
    return path


def expected_features(path: Path, features: FeatureConfig | None = None) -> np.ndarray:
    # Independent of the cache: read with soundfile, features of the module under its own test.
    y, sr = sf.read(path, dtype="float32", always_2d=True)
    return logmel_numpy(np.ascontiguousarray(y[:, 0]), features or FeatureConfig(), sr)


@pytest.fixture
def clips(tmp_path: Path) -> list[Path]:
    return [
        write_clip(tmp_path / "audio" / f"clip_{i}.wav", seed=i, freq=300 + 100 * i)
        for i in range(4)
    ]


@pytest.fixture
def load_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every audio decode the cache does."""
    calls: list[str] = []
    real = cache_module.load_audio

    def counting(path, config=None):
        calls.append(str(path))
        return real(path, config)

    monkeypatch.setattr(cache_module, "load_audio", counting)
    return calls


def test_get_computes_float16_memmap_equal_to_logmel(tmp_path, clips):
    cache = FeatureCache(tmp_path / "cache", AudioConfig(), FeatureConfig())
    spec = cache.get(clips[0])
    assert isinstance(spec, np.memmap) and spec.dtype == np.float16
    assert spec.shape == (128, 1 + SR // 156)
    want = expected_features(clips[0])
    # float16 keeps 11 significant bits: half a unit in the last place is at most 2**-5 dB
    # for |values| below 64 dB, 2**-4 below 128.
    np.testing.assert_allclose(spec.astype(np.float32), want, atol=2**-4, rtol=0)
    assert not spec.flags.writeable


def test_second_get_is_a_hit(tmp_path, clips, load_calls):
    cache = FeatureCache(tmp_path / "cache")
    first = np.array(cache.get(clips[0]))
    entry = cache.entry_path(clips[0])
    mtime = entry.stat().st_mtime_ns
    assert load_calls == [str(clips[0])] and cache.computed == 1
    again = cache.get(clips[0])
    # A new instance (another process, a later run) hits too.
    other = FeatureCache(tmp_path / "cache").get(clips[0])
    assert load_calls == [str(clips[0])] and cache.computed == 1
    assert entry.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(other, first)


def test_copy_of_the_same_bytes_shares_the_entry(tmp_path, clips, load_calls):
    cache = FeatureCache(tmp_path / "cache")
    copy = tmp_path / "elsewhere" / "renamed.wav"
    copy.parent.mkdir()
    copy.write_bytes(clips[1].read_bytes())
    cache.get(clips[1])
    cache.get(copy)
    assert len(load_calls) == 1
    assert cache.entry_path(copy) == cache.entry_path(clips[1])


def test_changed_audio_bytes_invalidate(tmp_path, clips, load_calls):
    cache = FeatureCache(tmp_path / "cache")
    before = np.array(cache.get(clips[0]))
    old_entry = cache.entry_path(clips[0])
    write_clip(clips[0], seed=99, freq=2000.0)  # same name and length, new sound
    after = np.array(cache.get(clips[0]))
    assert len(load_calls) == 2
    assert cache.entry_path(clips[0]) != old_entry
    np.testing.assert_allclose(after.astype(np.float32), expected_features(clips[0]), atol=2**-4)
    assert np.abs(after.astype(np.float32) - before.astype(np.float32)).max() > 10.0


@pytest.mark.parametrize(
    ("audio", "features"),
    [
        (AudioConfig(), replace(FeatureConfig(), hop_length=160)),
        (AudioConfig(), replace(FeatureConfig(), n_mels=64)),
        (AudioConfig(), replace(FeatureConfig(), amin=1e-8)),
        (AudioConfig(channel="mean"), FeatureConfig()),
    ],
)
def test_changed_config_invalidates(tmp_path, clips, load_calls, audio, features):
    root = tmp_path / "cache"
    FeatureCache(root).get(clips[0])
    changed = FeatureCache(root, audio, features)
    spec = changed.get(clips[0])
    assert len(load_calls) == 2 and changed.computed == 1
    assert changed.dir != FeatureCache(root).dir
    np.testing.assert_allclose(
        spec.astype(np.float32), expected_features(clips[0], features), atol=2**-4
    )


@pytest.mark.parametrize("damage", ["half", "header", "garbage", "appended", "wrong_shape"])
def test_corrupt_entry_is_detected_and_rebuilt(tmp_path, clips, load_calls, damage):
    cache = FeatureCache(tmp_path / "cache")
    good = np.array(cache.get(clips[2]))
    entry = cache.entry_path(clips[2])
    data = entry.read_bytes()
    if damage == "half":  # a copy or write cut short
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "header":
        entry.write_bytes(data[:60])
    elif damage == "garbage":  # right size and header, NaN bit patterns where numbers were
        entry.write_bytes(data[:128] + b"\xff" * (len(data) - 128))
    elif damage == "appended":
        entry.write_bytes(data + b"\x00" * 100)
    else:
        np.save(entry, np.zeros((64, 10), dtype=np.float16))
    fresh = FeatureCache(tmp_path / "cache")
    with pytest.warns(HarkenWarning, match="recomputing"):
        rebuilt = fresh.get(clips[2])
    assert fresh.computed == 1 and len(load_calls) == 2
    np.testing.assert_array_equal(rebuilt, good)
    assert entry.stat().st_size == len(data)


def test_build_batches_preserves_order_and_computes_only_missing(tmp_path, clips, load_calls):
    cache = FeatureCache(tmp_path / "cache")
    cache.get(clips[1])
    load_calls.clear()
    short = write_clip(tmp_path / "audio" / "short.wav", seed=7, seconds=0.5)
    paths = [clips[3], clips[1], short, clips[0], clips[3], clips[2]]
    out = cache.build(paths, progress=False, batch_size=2)
    # clips[1] was cached; clips[3] listed twice is computed once.
    assert sorted(load_calls) == sorted(str(p) for p in [clips[3], short, clips[0], clips[2]])
    assert [o.shape[1] for o in out] == [103, 103, 52, 103, 103, 103]
    for path, spec in zip(paths, out, strict=True):
        # Batched results equal per-clip results (computed independently of the cache).
        np.testing.assert_allclose(spec.astype(np.float32), expected_features(path), atol=2**-4)
    load_calls.clear()
    assert len(cache.build(paths, progress=False)) == 6 and load_calls == []


def test_build_threads_agree_and_restore_torch_threads(tmp_path, clips):
    one = FeatureCache(tmp_path / "one").build(clips, workers=1, progress=False)
    cache = FeatureCache(tmp_path / "three")
    threads = torch.get_num_threads()
    out = cache.build(clips, workers=3, progress=False, batch_size=1)
    assert torch.get_num_threads() == threads
    assert cache.computed == len(clips)
    for a, b in zip(out, one, strict=True):
        np.testing.assert_array_equal(a, b)


def test_unreadable_audio_names_the_file(tmp_path, clips):
    cache = FeatureCache(tmp_path / "cache")
    bad = tmp_path / "audio" / "not_audio.wav"
    bad.write_text("<html>this is not a wav file</html>")
    with pytest.raises(AudioError, match="not_audio.wav"):
        cache.get(bad)
    with pytest.raises(AudioError, match="not_audio.wav"):
        cache.build([clips[0], bad], progress=False)
    with pytest.raises(AudioError, match="missing.wav"):
        cache.get(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="not_audio.wav"):
        cache.build([bad, clips[1]], workers=2, progress=False, batch_size=1)


def test_real_multichannel_audio(tmp_path):
    cache = FeatureCache(tmp_path / "cache", AudioConfig(channel="select", channel_index=0))
    spec = cache.get(MIMII)
    assert spec.shape == (128, 1026)
    np.testing.assert_allclose(spec.astype(np.float32), expected_features(MIMII), atol=2**-4)


def test_size_and_clear(tmp_path, clips):
    root = tmp_path / "cache"
    cache = FeatureCache(root)
    cache.build(clips, progress=False)
    FeatureCache(root, features=replace(FeatureConfig(), n_mels=64)).get(clips[0])
    files = [p for p in root.rglob("*") if p.is_file()]
    assert cache.size_bytes() == sum(p.stat().st_size for p in files)
    entries = [p for p in files if p.suffix == ".npy"]
    assert len(entries) == 5
    # One 1-s entry: a 128-byte .npy header and 128 x 103 float16 values.
    assert cache.entry_path(clips[0]).stat().st_size == 128 + 128 * 103 * 2
    mine = root / "notes.txt"
    mine.write_text("not the cache's")
    cache.clear()
    assert cache.size_bytes() == 0
    assert mine.exists()
    assert cache.get(clips[0]).shape == (128, 103)


def test_dcase_scale_fits_in_three_gigabytes(tmp_path):
    # 8,400 ten-second clips at the default features: 128 x 1026 float16 + header each.
    clip = write_clip(tmp_path / "ten.wav", seed=1, seconds=10.0)
    cache = FeatureCache(tmp_path / "cache")
    assert cache.get(clip).shape == (128, 1026)
    per_clip = cache.entry_path(clip).stat().st_size
    assert per_clip == 128 + 128 * 1026 * 2 == 262_784
    assert per_clip * 8400 < 3e9  # 2.21 GB


def test_racy_files_are_rehashed(tmp_path, clips):
    # A file modified within RACY_SECONDS of hashing is not trusted by stat alone: rewriting it
    # inside the file system's timestamp granularity (same size, maybe same mtime) is still seen.
    cache = FeatureCache(tmp_path / "cache")
    first = cache.content_key(clips[0])
    stat = clips[0].stat()
    write_clip(clips[0], seed=42)
    os.utime(clips[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.content_key(clips[0]) != first


def test_default_location_helper(tmp_path):
    assert cache_dir_for(tmp_path) == tmp_path / CACHE_DIR_NAME


def test_no_warning_on_clean_hits(tmp_path, clips):
    cache = FeatureCache(tmp_path / "cache")
    cache.build(clips, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.build(clips, progress=False)
