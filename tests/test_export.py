"""``harken export`` (ONNX) and the torch-free runtime: checker, metadata, parity with PyTorch.

Parity is measured on real recordings (the four MIMII fan clips, 10 s, channel 0) and on
synthetic clips of three machine types: the ONNX graph (log-mel, scaling, autoencoder, score,
windows and aggregation all inside) must give the PyTorch path's clip and window scores to
1e-5 relative for the reconstruction and svdd kinds (measured: about 1e-7) and 1e-4 for the
mahalanobis kind, whose shrunk precision matrix magnifies the float32 differences of the
features (measured: about 1.5e-5); see docs/FIELD_USE.md.  The shared run decides by
``mahalanobis`` (configs/demo.yaml).
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf

import test_api
from harken.api import AnomalyDetector, as_clips, features
from harken.cli import main
from harken.data.dataset import discover
from harken.deploy.export import OUTPUT_NAMES, export_run, sidecar_path
from harken.deploy.onnx_runtime import OnnxScorer
from harken.errors import ConfigError
from harken.training.checkpoint import load_detector, save_detector

feature_cache = test_api.feature_cache
field_run = test_api.field_run
REL = 1e-4  # parity bound on the shared run's (mahalanobis) clip and window scores, relative to the largest
REL_PLAIN = 1e-5  # the same bound for the reconstruction and svdd kinds


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory, field_run: Path) -> Path:
    """The default export (dynamo exporter, STFT operator, waveform input) of the shared run."""
    out = tmp_path_factory.getbasetemp() / "field-use" / "export" / "model.onnx"
    if not sidecar_path(out).is_file():
        assert main(["export", "--run", str(field_run), "--format", "onnx", str(out)]) == 0
    return out


def parity_inputs(synth_root: Path, mimii_dir: Path) -> list:
    synth = [c for c in discover(synth_root) if c.split == "test"]
    picked = [next(c for c in synth if c.machine == m and c.label == label) for m in ("fan", "gearbox", "valve") for label in ("normal", "anomaly")]
    return picked + as_clips(mimii_dir, machine="fan")


def max_rel_diff(a: list[float], b: list[float]) -> float:
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a_ - b_)) / np.max(np.abs(b_)))


def test_export_metadata_and_checker(exported: Path, field_run: Path, synth_params: dict) -> None:
    onnx.checker.check_model(str(exported), full_check=True)
    model = onnx.load(str(exported))
    wave_input, group_input = model.graph.input
    assert group_input.name == "group"  # the mahalanobis statistics are per machine type and section
    dims = wave_input.type.tensor_type.shape.dim
    assert wave_input.name == "waveform" and len(dims) == 2
    assert all(d.dim_param and not d.dim_value for d in dims)  # dynamic batch and length
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)

    meta = json.loads(sidecar_path(exported).read_text())
    detector = load_detector(field_run)
    assert meta["thresholds"] == detector.threshold_
    assert set(meta["thresholds"]) == {"*", *(f"{m}/00" for m in synth_params["machines"])}
    assert meta["machine_types"] == sorted(synth_params["machines"])
    assert meta["sections"] == {m: ["00"] for m in synth_params["machines"]}
    assert meta["sample_rate"] == 16000 and meta["features"]["hop_length"] == 156
    assert meta["window"]["frames"] == 64 and meta["window"]["test_hop"] == 32
    assert meta["score_kind"] == "mahalanobis" and meta["input_names"] == ["waveform", "group"]
    assert meta["stft"] == "fft" and meta["exporter"] == "dynamo"
    assert meta["model_sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest()
    assert datetime.fromisoformat(meta["exported_at"]).tzinfo is not None
    assert meta["score_stats"] == detector.score_stats_ and meta["harken_version"]
    assert meta["parity"]["checked"] and meta["parity"]["max_rel_diff_score"] < REL


def test_parity_with_pytorch_on_real_and_synthetic_clips(exported: Path, field_run: Path, synth_root: Path, mimii_dir: Path, tmp_path: Path) -> None:
    clips = parity_inputs(synth_root, mimii_dir)
    short = tmp_path / "short.wav"  # 0.3 s: 31 frames, tiled to one 64-frame window in both paths
    sf.write(short, sf.read(clips[0].path, dtype="float32")[0][:4800], 16000, subtype="FLOAT")
    clips += as_clips([short], machine="valve")
    torch_results = AnomalyDetector.load(field_run).score_details(clips)
    onnx_results = OnnxScorer(exported).score_clips(clips)
    assert [r.ok for r in onnx_results] == [True] * len(clips)
    assert max_rel_diff([r.score for r in onnx_results], [r.score for r in torch_results]) < REL
    for o, t in zip(onnx_results, torch_results, strict=True):
        assert (o.machine, o.section, o.threshold, o.threshold_key) == (t.machine, t.section, t.threshold, t.threshold_key)
        assert o.window_starts == t.window_starts and len(o.window_scores) == len(t.window_scores)
        assert max_rel_diff(o.window_scores, t.window_scores) < REL
        assert o.decision == t.decision or abs(t.score - t.threshold) < 1e-6 * t.threshold
    assert len(onnx_results[-1].window_scores) == 1 and len(onnx_results[-2].window_scores) == 32
    for kind in ("reconstruction", "svdd"):  # every graph also returns the plain clip scores
        assert max_rel_diff([r.scores[kind] for r in onnx_results], [r.scores[kind] for r in torch_results]) < REL_PLAIN


def test_onnx_scoring_runs_without_torch(exported: Path, field_run: Path, mimii_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"
        "from harken.cli import main\n"
        f"rc = main(['score', '--onnx', {str(exported)!r}, {str(mimii_dir)!r}, '--machine', 'fan', '--out', {str(out)!r}])\n"
        "loaded = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "print('RC', rc, 'TORCH', sys.modules.get('torch') is not None or len(loaded) > 1)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "RC 0 TORCH False" in proc.stdout
    with open(out / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    torch_scores = AnomalyDetector.load(field_run).decision_function(mimii_dir, machine="fan")
    assert len(rows) == 4
    assert max_rel_diff([float(r["score"]) for r in rows], list(torch_scores)) < REL
    assert json.loads((out / "scores.json").read_text())["backend"] == "onnxruntime"


def test_features_input_graph(field_run: Path, synth_root: Path, tmp_path: Path) -> None:
    (path,) = export_run(field_run, tmp_path / "feat.onnx", inputs="features", exporter="torchscript", verify=False)
    scorer = OnnxScorer(path)
    assert scorer.meta["input_names"] == ["features", "group"] and scorer.meta["stft"] is None
    clips = [c for c in discover(synth_root) if c.split == "test"][:3]
    det = AnomalyDetector.load(field_run)
    waves = [sf.read(c.path, dtype="float32")[0] for c in clips]
    got = scorer.score_features(clips, features(det.detector_, waves))
    want = det.score_details(clips)
    assert max_rel_diff([r.score for r in got], [r.score for r in want]) < REL
    with pytest.raises(ConfigError, match="log-mel features"):
        scorer.score_waveforms(clips, waves)


def test_per_machine_fused_run_exports_one_graph_per_machine(field_run: Path, synth_root: Path, tmp_path: Path) -> None:
    detector = load_detector(field_run)
    detector.config.train.setting = "per_machine"
    detector.config.score.kind = "fused"
    shared = detector.models.pop("all")
    detector.models = {"fan": shared, "valve": shared}
    detector.scalers = {"fan": detector.scalers["all"], "valve": detector.scalers["all"]}
    save_detector(tmp_path / "pm" / "model.pt", detector)
    paths = export_run(tmp_path / "pm", tmp_path / "model.onnx", exporter="torchscript", verify=False)
    assert [p.name for p in paths] == ["model.fan.onnx", "model.valve.onnx"]
    fan = OnnxScorer(paths[0])
    assert fan.meta["machine_types"] == ["fan"] and fan.meta["setting"] == "per_machine"
    assert fan.kind == "fused" and fan.meta["input_names"] == ["waveform", "group"]
    assert fan.meta["fused_groups"] == list(detector.score_stats_)
    clips = [c for c in discover(synth_root) if c.split == "test" and c.machine == "fan"][:2]
    clips += as_clips(sorted((synth_root / "valve" / "test").glob("*.wav"))[:1], machine="fan", section=7)  # unseen: '*' stats
    got = fan.score_clips(clips)
    want = AnomalyDetector.load(tmp_path / "pm").score_details(clips)
    np.testing.assert_allclose([r.score for r in got], [r.score for r in want], rtol=1e-4, atol=1e-4)
    assert [r.threshold_key for r in got] == ["fan/00", "fan/00", "*"]
    with pytest.raises(ConfigError, match="no model for machine type"):
        export_run(tmp_path / "pm", tmp_path / "x.onnx", machine="pump", exporter="torchscript")


def test_mahalanobis_run_exports_its_residual_statistics(field_run: Path, synth_root: Path, tmp_path: Path) -> None:
    """The residual Gaussians travel as graph buffers indexed by the ``group`` input."""
    detector = load_detector(field_run)
    detector.config.score.kind = "mahalanobis"
    save_detector(tmp_path / "m" / "model.pt", detector)
    (path,) = export_run(tmp_path / "m", tmp_path / "m.onnx", exporter="torchscript", verify=False)
    scorer = OnnxScorer(path)
    assert scorer.kind == "mahalanobis" and scorer.meta["input_names"] == ["waveform", "group"]
    assert scorer.meta["fused_groups"] == list(detector.gaussians)
    clips = [c for c in discover(synth_root) if c.split == "test" and c.machine in ("fan", "valve")][::7][:4]
    got = scorer.score_clips(clips)
    want = AnomalyDetector.load(tmp_path / "m").score_details(clips)
    assert max_rel_diff([r.score for r in got], [r.score for r in want]) < 1e-4
    assert max_rel_diff(got[0].window_scores, want[0].window_scores) < 1e-4
