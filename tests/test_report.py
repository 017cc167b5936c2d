"""``harken report`` on a tiny synthetic run: every section, embedded images, PNGs, compare.

The run is made once per session (two machine types, one-second clips, a narrow CAE trained for
two short epochs on 64-frame windows) in the demo layout ``BASE/data`` + ``BASE/run``, and
reused by ``test_report_browser.py`` through :func:`report_run` (it caches on disk under
pytest's base temp directory, since the two modules cannot share one fixture instance).
"""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

SECTIONS = ("results", "roc", "scores", "latents", "reconstructions", "training")
MACHINES = ("fan", "valve")
OVERRIDES = [
    "window.frames=64",
    "window.test_hop=32",
    "train.epochs=2",
    "train.epoch_size=32",
    "train.batch_size=16",
    "train.device=cpu",
    "train.num_workers=0",
    "train.log_tensorboard=false",
    "model.channels=[4,8,8,8]",
    "model.latent_dim=16",
    "model.domain_hidden=16",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def report_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run directory, report.html) of the tiny run, built on first use in this session."""
    base = tmp_path_factory.getbasetemp() / "harken-report"
    run_dir = base / "run"
    html = run_dir / "report" / "report.html"
    if html.is_file():
        return run_dir, html
    from harken.config import load_config
    from harken.data.synth import synthesize
    from harken.pipeline import discover_clips, test_run, train_run
    from harken.report.cli import write_report

    shutil.rmtree(base, ignore_errors=True)
    data = synthesize(
        base / "data",
        machines=list(MACHINES),
        seed=0,
        n_train_source=8,
        n_train_target=2,
        n_test=4,
        duration=1.0,
        progress=False,
    )
    config = load_config("demo", OVERRIDES)
    clips = discover_clips(data)
    detector = train_run(config, clips, run_dir, progress=False, cache_dir=base / "cache")
    test_run(detector, clips, run_dir / "test", progress=False, bootstrap=200, seed=0)
    # No data root given: the report must find BASE/data beside BASE/run (the demo layout).
    written = write_report([run_dir], cache_dir=base / "cache", top=1)
    assert written == html
    return run_dir, html


@pytest.fixture(scope="session")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return report_run(tmp_path_factory)


def _sections(html: str) -> dict[str, str]:
    parts = re.split(r'<section id="', html)[1:]
    return {p.split('"', 1)[0]: p for p in parts}


def _embedded_pngs(text: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    ]


def test_report_has_every_section_with_embedded_images(tiny_report: tuple[Path, Path]) -> None:
    run_dir, path = tiny_report
    html = path.read_text(encoding="utf-8")
    sections = _sections(html)
    for sid in SECTIONS:
        assert sid in sections, f"section {sid} missing"
    # nothing was skipped: the model, the data (found beside the run) and the history were all there
    assert 'class="note"' not in html, re.findall(r'<p class="note">(.*?)</p>', html)
    for sid in ("roc", "scores", "latents", "training"):
        assert _embedded_pngs(sections[sid]), f"no image in section {sid}"
    assert len(_embedded_pngs(sections["reconstructions"])) == len(
        MACHINES
    )  # top=1 per machine type

    # every embedded image is a PNG written beside the page, byte for byte
    on_disk = {p.name: p.read_bytes() for p in path.parent.glob("*.png")}
    expected = {"roc.png", "scores.png", "latents.png", "training.png"} | {
        f"recon-{m}-1.png" for m in MACHINES
    }
    assert set(on_disk) == expected
    embedded = _embedded_pngs(html)
    assert len(embedded) == len(on_disk)
    assert sorted(embedded) == sorted(on_disk.values())
    assert all(png.startswith(PNG_MAGIC) for png in embedded)

    # self-contained: no external resource of any kind
    assert not re.search(r'(src|href)="(?!data:|#)', html)
    assert "<script" not in html


def test_results_table_matches_the_run_with_its_intervals(tiny_report: tuple[Path, Path]) -> None:
    run_dir, path = tiny_report
    html = path.read_text(encoding="utf-8")
    stored = next(
        iter(json.loads((run_dir / "test" / "results.json").read_text())["systems"].values())
    )
    table = _sections(html)["results"]
    total = re.search(r'<tr class="total">(.*?)</tr>', table).group(1)
    lo, hi = stored["bootstrap"]["intervals"]["official_score"]
    assert f"{stored['official_score']:.3f}" in total
    assert f"[{lo:.3f}, {hi:.3f}]" in total  # the interval harken test stored, reused
    for machine in MACHINES:
        row = re.search(rf"<tr class=\"machine\"><td>{machine}</td>(.*?)</tr>", table).group(1)
        section = next(s for s in stored["sections"] if s["machine"] == machine)
        cells = re.findall(r"<td>(.*?)</td>", row)
        for cell, metric in zip(cells, ("auc_source", "auc_target", "pauc"), strict=True):
            assert cell.startswith(f"{section[metric]:.3f} ")
            assert 'class="ci"' in cell
    assert "200 resamples" in table


def test_reconstruction_errors_are_the_scores_the_test_gave(tiny_report: tuple[Path, Path]) -> None:
    """The report's reconstruction of a clip is the computation that scored it."""
    from harken.data.dataset import discover
    from harken.report.model_views import clip_spectrograms, reconstruct_clip
    from harken.training.checkpoint import load_detector

    run_dir, _ = tiny_report
    detector = load_detector(run_dir)
    detector.cache_dir = run_dir.parent / "cache"
    with open(run_dir / "test" / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    clips = {
        (c.machine, c.file_name): c for c in discover(run_dir.parent / "data", splits=["test"])
    }
    for row in rows[:3]:
        clip = clips[(row["machine"], row["file_name"])]
        (spec,) = clip_spectrograms(detector, [clip])
        rec = reconstruct_clip(detector, clip.machine, spec)
        assert rec.input_db.shape == rec.recon_db.shape == rec.error.shape
        assert np.isclose(rec.frame_seconds, 156 / 16000)
        assert np.mean(rec.window_errors) == pytest.approx(float(row["reconstruction"]), rel=1e-4)


def test_mel_axis_uses_the_band_centre_frequencies() -> None:
    librosa = pytest.importorskip("librosa")
    from harken.config import Config
    from harken.report.model_views import mel_centers_hz

    config = Config()
    centres = mel_centers_hz(config)
    expected = librosa.mel_frequencies(n_mels=config.features.n_mels + 2, fmin=0.0, fmax=8000.0)[
        1:-1
    ]
    np.testing.assert_allclose(centres, expected, rtol=1e-9)


def test_compare_runs_side_by_side_with_paired_differences(
    tiny_report: tuple[Path, Path], tmp_path: Path
) -> None:
    """Through the CLI: the run against a second one (the same clips decided on the SVDD score,
    tested without intervals, no model file), both moved away from their data."""
    from harken.cli import main
    from harken.evaluation.bootstrap import compare_systems
    from harken.report.runs import load_run

    run_dir, _ = tiny_report
    ref, other = tmp_path / "a" / "run", tmp_path / "b" / "svdd-run"
    shutil.copytree(run_dir, ref, ignore=shutil.ignore_patterns("report", "checkpoints"))
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("report", "checkpoints"))
    for run in (ref, other):  # moved away from their data: no record of where it is
        (run / "test" / "meta.json").unlink(missing_ok=True)
    (other / "test" / "results.json").unlink()  # no stored intervals: the report computes them
    config = (other / "config.yaml").read_text()
    (other / "config.yaml").write_text(config.replace("kind: mahalanobis", "kind: svdd"))
    (other / "model.pt").unlink()  # no model: history from logs/*.csv, no latents
    out = tmp_path / "cmp" / "report.html"
    out.parent.mkdir()
    (out.parent / "recon-fan-9.png").write_bytes(PNG_MAGIC)  # left by an earlier report
    (out.parent / "photo.png").write_bytes(PNG_MAGIC)  # the user's own file

    argv = ["report", "--run", str(ref), "--compare", str(other), "--out", str(out)]
    assert main([*argv, "--top", "1", "--bootstrap", "100", "--no-progress"]) == 0
    html = out.read_text(encoding="utf-8")
    sections = _sections(html)

    a = load_run(ref, label="run", bootstrap=0)
    b = load_run(other, label="svdd-run", bootstrap=0, load_model=False)
    assert (a.kind, b.kind) == ("mahalanobis", "svdd")  # configs/demo.yaml decides by mahalanobis
    comp = compare_systems(a.result, b.result, n_resamples=100, seed=0)
    total = re.search(r'<tr class="total">(.*?)</tr>', sections["comparison"]).group(1)
    assert f"{comp.differences['official_score']:+.3f}" in total
    lo, hi = comp.intervals["official_score"]
    assert f"[{lo:+.3f}, {hi:+.3f}]" in total
    assert f"{comp.p_not_better['official_score']:.3f}" in total

    # both runs in the table and in every figure section, one column each
    assert "<th colspan=3>run</th>" in html and "<th colspan=3>svdd-run</th>" in html
    for sid in ("roc", "scores", "latents", "reconstructions", "training"):
        assert "repeat(2, minmax(0, 1fr))" in sections[sid]
    assert len(_embedded_pngs(sections["training"])) == 2  # the second from logs/*.csv
    # what could not be drawn says why, instead of failing the report
    latents = sections["latents"]
    assert "<img" not in latents
    assert "pass --data ROOT" in latents and "the model could not be loaded" in latents
    assert "no model.pt" in html and "computed here (100 stratified resamples" in html
    names = {p.name for p in out.parent.glob("*.png")}
    expected = {f"run{i}-{n}.png" for i in (1, 2) for n in ("roc", "scores", "training")}
    assert names == expected | {"differences.png", "photo.png"}


def test_missing_matplotlib_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from harken.errors import HarkenError
    from harken.report.cli import write_report

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"harken\[plot\]") as info:
        write_report([tmp_path])
    assert isinstance(info.value, HarkenError)  # the CLI prints it without a traceback


def test_systems_without_latents_are_skipped_not_failed() -> None:
    from harken.report.model_views import autoencoder_support

    class Baseline:
        name = "ae-baseline"
        models = None

    assert "no autoencoder latents" in autoencoder_support(Baseline())
    assert autoencoder_support(None) == "the model is not available"


def test_a_run_without_test_scores_is_refused(tmp_path: Path) -> None:
    from harken.report.cli import write_report
    from harken.report.runs import ReportError

    with pytest.raises(ReportError, match="harken test"):
        write_report([tmp_path])


def test_umap_without_umap_learn_fails_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from harken.errors import HarkenError
    from harken.report.cli import write_report

    monkeypatch.setitem(sys.modules, "umap", None)
    with pytest.raises(HarkenError, match="umap-learn"):
        write_report([tmp_path], projection="umap")  # not even the run is read


def test_domain_diagnostics_are_the_ones_harken_test_wrote(tiny_report: tuple[Path, Path]) -> None:
    run_dir, path = tiny_report
    table = re.search(r'<table class="diagnostics">(.*?)</table>', _sections(path.read_text(encoding="utf-8"))["results"]).group(1)
    kind = json.loads((run_dir / "test" / "meta.json").read_text())["decision_kind"]
    written = [r.split(",") for r in (run_dir / "test" / "diagnostics.csv").read_text().splitlines()[1:] if r.startswith(kind + ",")]
    assert written
    for _, machine, section, *values in written:
        row = re.search(rf"<tr><td>{machine} {section}</td>(.*?)</tr>", table).group(1)
        cells = re.findall(r"<td>(.*?)</td>", row)
        assert cells == [("–" if v == "nan" else f"{float(v):.3f}") for v in values]
