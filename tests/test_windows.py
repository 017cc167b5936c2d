"""Windows: short-clip policies, crops, and sliding windows that cover the whole clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harken.errors import AudioError
from harken.features.windows import (
    ShortClipError,
    center_crop,
    fit_length,
    frames_to_seconds,
    random_crop,
    sliding_windows,
    window_starts,
)


def spec_of(length: int, n_mels: int = 3) -> np.ndarray:
    # Band b, frame t holds 1000 * b + t: every value says where it came from.
    return (1000.0 * np.arange(n_mels)[:, None] + np.arange(length)[None, :]).astype(np.float32)


def test_fit_length_leaves_long_clips_alone():
    spec = spec_of(10)
    assert fit_length(spec, 10, "error") is spec
    assert fit_length(spec, 4, "repeat") is spec


def test_repeat_tiles_the_clip():
    out = fit_length(spec_of(4), 10, "repeat")
    assert out.shape == (3, 10)
    np.testing.assert_array_equal(out[0], [0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    np.testing.assert_array_equal(out[2], 2000 + np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1]))


def test_pad_uses_the_clip_minimum():
    spec = spec_of(4) - 50.0  # min is -50 (band 0, frame 0)
    out = fit_length(spec, 7, "pad")
    np.testing.assert_array_equal(out[:, :4], spec)
    np.testing.assert_array_equal(out[:, 4:], -50.0)


def test_error_policy_names_the_length_and_file():
    with pytest.raises(ShortClipError, match="4 frames") as info:
        fit_length(spec_of(4), 10, "error", path="clip.wav")
    assert isinstance(info.value, ValueError) and isinstance(info.value, AudioError)
    assert "clip.wav" in str(info.value)
    with pytest.raises(ValueError, match="short_clip"):
        fit_length(spec_of(4), 10, "loop")
    with pytest.raises(ShortClipError):
        fit_length(spec_of(0), 10, "repeat")


def test_torch_matches_numpy():
    for policy in ("repeat", "pad"):
        want = fit_length(spec_of(4), 10, policy)
        got = fit_length(torch.from_numpy(spec_of(4)), 10, policy)
        assert isinstance(got, torch.Tensor)
        np.testing.assert_array_equal(got.numpy(), want)
    windows, starts = sliding_windows(torch.from_numpy(spec_of(30)), 8, 5)
    want_w, want_s = sliding_windows(spec_of(30), 8, 5)
    np.testing.assert_array_equal(windows.numpy(), want_w)
    np.testing.assert_array_equal(starts, want_s)
    np.testing.assert_array_equal(
        center_crop(torch.from_numpy(spec_of(30)), 8).numpy(), center_crop(spec_of(30), 8)
    )


def test_random_crop_is_a_uniform_contiguous_slice():
    spec = spec_of(20)
    rng = np.random.default_rng(0)
    starts = []
    for _ in range(400):
        crop = random_crop(spec, 8, rng)
        assert crop.shape == (3, 8)
        start = int(crop[0, 0])
        np.testing.assert_array_equal(crop, spec[:, start : start + 8])
        starts.append(start)
    assert set(starts) == set(range(13))  # every start 0..T-frames reachable
    a = random_crop(spec, 8, np.random.default_rng(5))
    b = random_crop(spec, 8, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert random_crop(spec_of(5), 8, rng).shape == (3, 8)  # short clip: tiled first


def test_center_crop_by_hand():
    np.testing.assert_array_equal(center_crop(spec_of(10), 4)[0], [3, 4, 5, 6])
    np.testing.assert_array_equal(center_crop(spec_of(11), 4)[0], [3, 4, 5, 6])  # surplus 7: 3 left
    np.testing.assert_array_equal(center_crop(spec_of(4), 4)[0], [0, 1, 2, 3])


def test_sliding_windows_default_ten_second_clip():
    windows, starts = sliding_windows(spec_of(1026, n_mels=2), 1024, 512)
    np.testing.assert_array_equal(starts, [0, 2])  # 0, then the end-aligned window
    assert windows.shape == (2, 2, 1024)
    np.testing.assert_array_equal(windows[1, 0], np.arange(2, 1026))


def test_sliding_windows_by_hand():
    np.testing.assert_array_equal(window_starts(3000, 1024, 512), [0, 512, 1024, 1536, 1976])
    np.testing.assert_array_equal(window_starts(2048, 1024, 512), [0, 512, 1024])  # exact fit
    np.testing.assert_array_equal(window_starts(1024, 1024, 512), [0])
    windows, starts = sliding_windows(spec_of(500), 1024, 512)  # short: tiled, one window
    np.testing.assert_array_equal(starts, [0])
    assert windows.shape == (1, 3, 1024)
    with pytest.raises(ValueError, match="hop"):
        window_starts(3000, 1024, 0)
    with pytest.raises(ValueError, match="hop"):  # would skip frames 1024..1099
        window_starts(3000, 1024, 1100)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 400), st.integers(1, 100), st.floats(0.0, 1.0))
def test_sliding_windows_cover_every_frame(length, frames, hop_fraction):
    hop = max(1, round(hop_fraction * frames))
    spec = spec_of(length, n_mels=1)
    windows, starts = sliding_windows(spec, frames, hop)
    fitted = fit_length(spec, frames, "repeat")
    covered = np.zeros(fitted.shape[1], dtype=bool)
    for window, start in zip(windows, starts, strict=True):
        np.testing.assert_array_equal(window, fitted[:, start : start + frames])
        covered[start : start + frames] = True
    assert covered.all()
    assert starts[0] == 0 and starts[-1] == fitted.shape[1] - frames
    assert np.all(np.diff(starts) > 0) and np.all(np.diff(starts) <= hop)


def test_frames_to_seconds_by_hand():
    # Frame t is centered on sample t * hop: 512 * 156 / 16000 = 4.992 s.
    np.testing.assert_allclose(
        frames_to_seconds(np.array([0, 2, 512]), 156, 16000), [0.0, 0.0195, 4.992]
    )
    assert float(frames_to_seconds(10, 160, 16000)) == pytest.approx(0.1)
