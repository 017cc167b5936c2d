"""The Python API (harken.api): the README snippet, input forms, persistence, shared code path.

The run every field-use test scores with is the one the documented snippet trains
(``field_run``): tests/test_score_cli.py, test_export.py and test_serve.py import the fixture,
and the trained run is kept in the session's base temp folder so it is trained once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harken.api import AnomalyDetector, as_clips
from harken.data.dataset import discover
from harken.errors import AudioError, ClipNameError, ConfigError

REPO = Path(__file__).resolve().parents[1]
SNIPPET_MARK = "<!-- snippet: api"
HOP, SR, FRAMES, TEST_HOP = 156, 16000, 64, 32  # the snippet's feature/window settings

_SNIPPET_NAMESPACE: dict[str, Any] = {}


def api_snippet() -> str:
    """The ```python block after the snippet marker in docs/FIELD_USE.md, verbatim."""
    text = (REPO / "docs" / "FIELD_USE.md").read_text(encoding="utf-8")
    after = text[text.index(SNIPPET_MARK) :]
    start = after.index("```python\n") + len("```python\n")
    return after[start : after.index("```", start)]


def run_snippet(workdir: Path, synth_root: Path) -> dict[str, Any]:
    """Run the snippet in ``workdir`` with ``data`` pointing at the synthetic set."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").symlink_to(synth_root, target_is_directory=True)
    old_cwd, old_cache = os.getcwd(), os.environ.get("HARKEN_CACHE_DIR")
    os.environ["HARKEN_CACHE_DIR"] = str(workdir / "cache")
    namespace: dict[str, Any] = {"__name__": "field_use_snippet"}
    try:
        os.chdir(workdir)
        exec(compile(api_snippet(), "docs/FIELD_USE.md", "exec"), namespace)
    finally:
        os.chdir(old_cwd)
        if old_cache is None:
            os.environ.pop("HARKEN_CACHE_DIR", None)
        else:
            os.environ["HARKEN_CACHE_DIR"] = old_cache
    return namespace


@pytest.fixture(autouse=True)
def feature_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Dataset-clip features go to the session's cache, never to ~/.cache."""
    path = tmp_path_factory.getbasetemp() / "field-use" / "cache"
    monkeypatch.setenv("HARKEN_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def field_run(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    """The run folder the documented snippet writes (trained once per session)."""
    work = tmp_path_factory.getbasetemp() / "field-use"
    run = work / "run"
    if not (run / "model.pt").is_file():
        _SNIPPET_NAMESPACE.update(run_snippet(work, synth_root))
    return run


def expected_starts(n_samples: int) -> np.ndarray:
    """Window starts in seconds by hand: frames = 1 + n // hop; every TEST_HOP, last end-aligned."""
    frames = 1 + n_samples // HOP
    last = max(frames, FRAMES) - FRAMES
    starts = list(range(0, last + 1, TEST_HOP))
    if starts[-1] != last:
        starts.append(last)
    return np.array(starts) * HOP / SR


def test_readme_snippet(field_run: Path, synth_root: Path, synth_params: dict[str, Any], tmp_path: Path) -> None:
    ns = _SNIPPET_NAMESPACE or run_snippet(tmp_path / "fresh", synth_root)
    det, scores, flags, timeline = ns["det"], ns["scores"], ns["flags"], ns["timeline"]
    test = [c for c in discover(synth_root) if c.split == "test"]
    assert len(test) == len(synth_params["machines"]) * 4 * synth_params["n_test"]
    assert scores.shape == (len(test),) and np.all(np.isfinite(scores))
    assert set(det.threshold_) == {"*", *(f"{m}/00" for m in synth_params["machines"])}
    by_hand = np.array([s > det.threshold_[f"{c.machine}/{c.section}"] for s, c in zip(scores, test, strict=True)])
    np.testing.assert_array_equal(flags, by_hand.astype(int))
    # a 2-s clip: 1 + 32000 // 156 = 206 frames -> windows at 0, 32, 64, 96, 128 and 142
    np.testing.assert_allclose([s for s, _ in timeline], expected_starts(32000))
    assert len(expected_starts(32000)) == 6
    assert (field_run / "model.pt").is_file() and (field_run / "config.yaml").is_file()


def test_load_gives_the_same_scores_and_inputs_agree(field_run: Path, synth_root: Path, tmp_path: Path) -> None:
    det = AnomalyDetector.load(field_run)
    test = [c for c in discover(synth_root) if c.split == "test"][:3]
    from_clips = det.decision_function(test)
    from_paths = det.decision_function([c.path for c in test])
    np.testing.assert_array_equal(from_clips, from_paths)
    # the detector's own cache-based scoring (the harken test path) gives the same numbers
    own = det.detector_.decision_function(test)
    np.testing.assert_allclose(from_clips, own, rtol=1e-6)
    # a folder: every WAV/FLAC below it (recursively, sorted, hidden files skipped)
    folder = tmp_path / "site"
    (folder / "b" / "fan" / "test").mkdir(parents=True)
    names = ["a.wav", "b/fan/test/" + test[1].path.name, "b/fan/test/._hidden.wav"]
    for name, clip in zip(names, test, strict=True):
        (folder / name).write_bytes(clip.path.read_bytes())
    (folder / "notes.txt").write_text("not scored")
    results = det.score_details(folder, machine="fan")
    assert [Path(r.source).relative_to(folder).as_posix() for r in results] == names[:2]
    assert [r.score for r in results] == pytest.approx(list(from_clips[:2]), rel=1e-6)
    assert all(r.machine == "fan" and r.section == "00" and r.threshold_key == "fan/00" for r in results)


def test_clip_score_is_the_configured_aggregate_of_window_scores(field_run: Path, synth_root: Path) -> None:
    det = AnomalyDetector.load(field_run)
    clip = sorted((synth_root / "valve" / "test").glob("*.wav"))[0]
    (r,) = det.score_details([clip])
    assert det.detector_.config.window.aggregate == "mean"
    assert r.score == pytest.approx(float(np.mean(r.window_scores)), rel=1e-9)
    assert r.decision == int(r.score > r.threshold)
    # fused: each kind standardized by the training statistics of valve/00, then weighted
    det.detector_.config.score.kind = "fused"
    (f,) = det.score_details([clip])
    stats = det.detector_.score_stats_["valve/00"]
    w = det.detector_.config.score.fused_weights
    by_hand = sum(wk * (f.scores[k] - stats[k][0]) / stats[k][1] for wk, k in zip(w, ("reconstruction", "svdd"), strict=True)) / sum(w)
    assert f.score == pytest.approx(by_hand, rel=1e-9)
    # linear in the window scores, so the mean of per-window fused scores is the clip's
    assert f.score == pytest.approx(float(np.mean(f.window_scores)), rel=1e-6, abs=1e-9)


def test_machine_and_section_resolution(field_run: Path, synth_root: Path, tmp_path: Path) -> None:
    det = AnomalyDetector.load(field_run)
    odd = tmp_path / "recording from site 7.wav"
    src = sorted((synth_root / "fan" / "test").glob("*.wav"))[0]
    odd.write_bytes(src.read_bytes())
    with pytest.raises(ClipNameError, match="--machine"):
        det.score_details([odd])
    (r,) = det.score_details([odd], machine="fan")
    assert (r.machine, r.section, r.threshold_key) == ("fan", "00", "fan/00")
    assert r.threshold == det.threshold_["fan/00"]
    (r1,) = det.score_details([odd], machine="fan", section=1)  # not calibrated: global threshold
    assert (r1.section, r1.threshold_key, r1.threshold) == ("01", "*", det.threshold_["*"])
    with pytest.raises(ConfigError):
        det.score_details([odd], machine="fan", section="abc")


def test_unreadable_inputs_raise_or_are_kept(field_run: Path, synth_root: Path, tmp_path: Path) -> None:
    det = AnomalyDetector.load(field_run)
    bad = tmp_path / "fan" / "test" / "section_00_0001.wav"
    bad.parent.mkdir(parents=True)
    bad.write_text("not audio")
    good = sorted((synth_root / "fan" / "test").glob("*.wav"))[0]
    with pytest.raises(AudioError):
        det.decision_function([good, bad])
    results = det.score_details([good, bad, tmp_path / "missing.wav"], errors="keep")
    assert [r.ok for r in results] == [True, False, False]
    assert results[1].machine == "fan" and "not" in (results[1].error or "").lower()
    assert "no such file" in (results[2].error or "")


def test_config_overrides_and_params() -> None:
    est = AnomalyDetector("demo", train__epochs=3, window__frames=32)
    config = est.resolved_config()
    assert (config.train.epochs, config.window.frames, config.system) == (3, 32, "cae-dann")
    assert config.window.test_hop == 64  # from demo.yaml, untouched
    est.set_params(train__epochs=5, system="ae-baseline")
    assert est.get_params()["train__epochs"] == 5 and est.resolved_config().system == "ae-baseline"
    with pytest.raises(ConfigError):
        AnomalyDetector("demo", epochs=3).resolved_config()
    with pytest.raises(ConfigError):
        AnomalyDetector("demo", train__no_such_field=1).resolved_config()
    with pytest.raises(RuntimeError, match="not fitted"):
        AnomalyDetector().predict(["x.wav"])


def test_save_as_file_and_folder(field_run: Path, tmp_path: Path) -> None:
    det = AnomalyDetector.load(field_run)
    assert det.save(tmp_path / "m.pt") == tmp_path / "m.pt"
    det.save(tmp_path / "run2")
    assert (tmp_path / "run2" / "config.yaml").is_file()
    again = AnomalyDetector.load(tmp_path / "m.pt")
    assert again.threshold_ == det.threshold_ and again.score_kind_ == "mahalanobis"


@pytest.mark.filterwarnings("ignore::harken.errors.HarkenWarning")
def test_dataset_root_without_test_clips_is_an_error(tmp_path: Path, synth_root: Path) -> None:
    root = tmp_path / "only-train"
    (root / "fan" / "train").mkdir(parents=True)
    src = sorted((synth_root / "fan" / "train").glob("*.wav"))[0]
    (root / "fan" / "train" / src.name).write_bytes(src.read_bytes())
    from harken.errors import DatasetError

    with pytest.raises(DatasetError, match="no test clips"):
        as_clips(root)
