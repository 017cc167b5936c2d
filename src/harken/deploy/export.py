"""``harken export --run RUN --format onnx OUT``: one ONNX graph from waveform to clip score.

The graph (:class:`ClipGraph`) holds every step between audio samples and the decision score:

    waveform [B, T] --LogMel--> dB log-mel [B, n_mels, L] --round to features.cache_dtype-->
    --fit to one window (window.short_clip)--> windows [B*n, n_mels, frames] every test_hop
    --ScalerModule--> [0, 1] --CAE--> reconstruction, svdd per window --aggregate--> clip scores

with dynamic batch (B) and length (T) axes.  The number of windows n follows from T inside the
graph (``harken.features.windows.window_starts``: every ``test_hop`` frames, the last one
aligned to the end), so one graph scores a 1-s clip and a 2-min recording alike.  ``--input
features`` exports the graph from the dB log-mel on, for a runtime that computes its own
features.

What is not in the graph, and why:

* **Thresholds and the decision** depend on the machine type and section, which a waveform
  does not carry: they are in the JSON sidecar ``OUT.json`` (every key, ``"*"`` the fallback)
  and :mod:`harken.deploy.onnx_runtime` applies them.
* **The fused and mahalanobis scores** need statistics of the clip's machine type and section
  (training-score means and deviations; the residual Gaussian's domain means and precision
  matrix): the graph holds them as tables and takes an extra int64 input ``group`` [B] (the row
  of ``fused_groups`` in the sidecar; ``"*"`` for an unseen one).  Graphs of the other kinds
  have no such input.
* **``window.short_clip="error"``** cannot raise inside a graph: the graph tiles a short clip
  as ``"repeat"`` would, and the runtime wrapper refuses it before running (the sidecar says
  which policy applies).  ``"repeat"`` and ``"pad"`` are in the graph.
* **Audio decoding, channel selection and resampling** stay outside (any runtime has its
  own); the sidecar gives the rate and channel policy.

A ``per_machine`` run has one model per machine type: each is exported to its own graph
(``OUT`` with ``.<machine>`` before the suffix, or only ``--machine M``); a generalized run
gives one graph for all.

The exporter is PyTorch's dynamo-based ``torch.onnx.export`` (``torch.stft`` becomes the ONNX
``STFT`` operator, opset 18); ``--stft conv`` builds the STFT from Conv instead, for runtimes
without ``STFT``; ``--exporter torchscript`` uses the older TorchScript exporter (faster to run,
deprecated by PyTorch, always conv STFT).  After writing, the graph is checked with
``onnx.checker`` and compared with PyTorch through onnxruntime on a test signal.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import logging
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import harken
from harken.atomic import atomic_write_bytes, atomic_write_json
from harken.config import Config
from harken.errors import ConfigError, HarkenError
from harken.features.logmel import LogMel
from harken.training.loop import ScaledScorer

log = logging.getLogger(__name__)

FORMAT = "harken-onnx"
FORMAT_VERSION = 1
OPSET = 18
EXPORTERS = ("dynamo", "torchscript")
INPUTS = ("waveform", "features")
OUTPUT_NAMES = ("score", "window_scores", "window_start_frames", "reconstruction", "svdd")
KINDS = ("reconstruction", "svdd")


class ClipGraph(nn.Module):
    """Waveform (or dB log-mel) batch to clip scores, window scores and window starts.

    Outputs, in :data:`OUTPUT_NAMES` order: ``score [B]`` (the decision kind's clip score),
    ``window_scores [B, n]`` (the decision kind per window), ``window_start_frames [n]``
    (int64; seconds = frames * hop_length / sample_rate), and the raw clip scores
    ``reconstruction [B]`` and ``svdd [B]``.  The body has no Python branch on data: lengths
    become index arithmetic, so the exporter captures one graph for every input length.
    """

    stats_mean: Tensor
    stats_std: Tensor
    fused_weights: Tensor
    maha_means: Tensor
    maha_precision: Tensor

    def __init__(
        self,
        model: nn.Module,
        scaler: Any,
        config: Config,
        *,
        kind: str,
        inputs: str = "waveform",
        stft: str = "fft",
        score_stats: dict[str, dict[str, list[float]]] | None = None,
        gaussians: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if inputs not in INPUTS:
            raise ConfigError(f"--input must be one of {INPUTS}, got {inputs!r}")
        self.inputs = inputs
        self.logmel = LogMel(config.features, config.audio.sample_rate, stft=stft) if inputs == "waveform" else None
        self.mahalanobis = kind == "mahalanobis"
        self.scorer = ScaledScorer(model, scaler, residual=self.mahalanobis)
        self.frames = int(config.window.frames)
        self.hop = int(config.window.test_hop)
        self.aggregate = config.window.aggregate
        self.pad = config.window.short_clip == "pad"
        self.round_half = config.features.cache_dtype == "float16"
        self.kind = kind
        self.fused = kind == "fused"
        self.groups: list[str] = []
        if self.fused:
            if not score_stats:
                raise ConfigError("the fused score needs the run's training score statistics")
            self.groups = list(score_stats)
            mean = [[score_stats[g][k][0] for k in KINDS] for g in self.groups]
            std = [[score_stats[g][k][1] for k in KINDS] for g in self.groups]
            weights = list(config.score.fused_weights)[: len(KINDS)]
            weights += [0.0] * (len(KINDS) - len(weights))
            self.register_buffer("stats_mean", torch.tensor(mean, dtype=torch.float32))
            self.register_buffer("stats_std", torch.tensor(std, dtype=torch.float32))
            self.register_buffer("fused_weights", torch.tensor(weights, dtype=torch.float32))
        if self.mahalanobis:
            if not gaussians:
                raise ConfigError("the mahalanobis score needs the run's residual statistics")
            self.groups = list(gaussians)
            # two domain means per group; a group fitted on one domain repeats its mean
            means = [np.resize(gaussians[g].means, (2, gaussians[g].means.shape[1])) for g in self.groups]
            self.register_buffer("maha_means", torch.tensor(np.stack(means), dtype=torch.float32))
            precision = np.stack([gaussians[g].precision for g in self.groups])
            self.register_buffer("maha_precision", torch.tensor(precision, dtype=torch.float32))

    @property
    def grouped(self) -> bool:
        """Whether the graph takes the ``group`` input."""
        return self.fused or self.mahalanobis

    def forward(self, x: Tensor, group: Tensor | None = None) -> tuple[Tensor, ...]:
        spec = self.logmel(x) if self.logmel is not None else x
        if self.round_half:
            # The model was trained and calibrated on float16 cached features.
            spec = spec.to(torch.float16).to(torch.float32)
        batch, n_mels = spec.shape[0], spec.shape[1]
        index, valid, starts = self._window_index(spec)
        windows = spec[:, :, index]  # [B, n_mels, n, frames]
        if self.pad:
            floor = spec.amin(dim=(1, 2), keepdim=True).unsqueeze(-1)
            windows = torch.where(valid, windows, floor)
        windows = windows.permute(0, 2, 1, 3).reshape(-1, n_mels, self.frames)
        outputs = self.scorer(windows)
        recon, svdd = outputs[0], outputs[1]
        recon = recon.reshape(batch, -1)
        svdd = svdd.reshape(batch, -1)
        clip_recon, clip_svdd = self._reduce(recon), self._reduce(svdd)
        if self.fused:
            assert group is not None
            mean, std = self.stats_mean[group], self.stats_std[group]  # [B, 2]
            w = self.fused_weights
            total = torch.clamp(w.sum(), min=1e-12)

            def fuse(r: Tensor, s: Tensor) -> Tensor:
                shape = (-1,) + (1,) * (r.dim() - 1)
                zr = (r - mean[:, 0].reshape(shape)) / std[:, 0].reshape(shape)
                zs = (s - mean[:, 1].reshape(shape)) / std[:, 1].reshape(shape)
                return (w[0] * zr + w[1] * zs) / total

            window_scores, score = fuse(recon, svdd), fuse(clip_recon, clip_svdd)
        elif self.mahalanobis:
            assert group is not None
            # in float64: the shrunk precision matrix is ill-conditioned, and float32 would
            # cost the distance about four significant digits
            v = outputs[2].reshape(batch, recon.shape[1], -1).double()  # [B, n, D]
            diff = v.unsqueeze(2) - self.maha_means[group].double().unsqueeze(1)  # [B, n, 2, D]
            d2 = torch.einsum("bnkd,bde,bnke->bnk", diff, self.maha_precision[group].double(), diff)
            window_scores = d2.amin(dim=2).float()
            score = self._reduce(window_scores)
        elif self.kind == "svdd":
            window_scores, score = svdd, clip_svdd
        else:
            window_scores, score = recon, clip_recon
        return score, window_scores, starts, clip_recon, clip_svdd

    def _reduce(self, values: Tensor) -> Tensor:
        return values.amax(dim=1) if self.aggregate == "max" else values.mean(dim=1)

    def _window_index(self, spec: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Frame indices ``[n, frames]`` of every window, whether each is a real frame, and starts.

        Equals ``fit_length`` + ``window_starts`` of :mod:`harken.features.windows`: a clip of
        L frames is first brought to ``Lp = max(L, frames)`` (frame p of a tiled clip is frame
        ``p mod L``; a padded one has no frame there); windows start every ``hop`` frames and
        the last start ``Lp - frames`` is always included, which is ``min(i * hop, last)`` for
        ``i < ceil(last / hop) + 1``.
        """
        if torch.jit.is_tracing():  # the TorchScript exporter records tensor arithmetic only
            length: Any = torch._shape_as_tensor(spec)[2]
            padded = torch.clamp(length, min=self.frames)
        else:
            length = spec.shape[2]
            padded = torch.sym_max(length, self.frames)
        last = padded - self.frames
        count = (last + self.hop - 1) // self.hop + 1
        starts = torch.arange(count) * self.hop
        starts = torch.minimum(starts, last) if isinstance(last, Tensor) else torch.clamp(starts, max=last)
        frames = starts[:, None] + torch.arange(self.frames)[None, :]
        length_t = length if isinstance(length, Tensor) else torch.ones((), dtype=torch.int64) * length
        if self.pad:
            valid = frames < length_t
            index = torch.minimum(frames, length_t - 1)
        else:
            valid = torch.ones((), dtype=torch.bool)
            index = torch.remainder(frames, length_t)
        return index, valid, starts


# ----------------------------------------------------------------------------- export
def export_run(
    run: str | Path,
    out: str | Path,
    *,
    inputs: str = "waveform",
    stft: str = "fft",
    exporter: str = "dynamo",
    machine: str | None = None,
    verify: bool = True,
) -> list[Path]:
    """Export a trained run; returns the ONNX files written (each with its ``.json`` sidecar)."""
    from harken.api import load_run

    if exporter not in EXPORTERS:
        raise ConfigError(f"--exporter must be one of {EXPORTERS}, got {exporter!r}")
    detector = load_run(run)
    if not hasattr(detector, "models") or not hasattr(detector, "scalers"):
        raise ConfigError(f"system {detector.name!r} has no ONNX export (only cae-dann has)")
    out = Path(out)
    tags = list(detector.models)
    if machine is not None:
        tag = machine if machine in detector.models else None
        if tag is None:
            if len(tags) == 1:
                tag = tags[0]
            else:
                raise ConfigError(f"no model for machine type {machine!r}; the run has {', '.join(tags)}")
        tags = [tag]
    written = []
    for tag in tags:
        path = out if len(tags) == 1 else out.with_name(f"{out.stem}.{tag}{out.suffix or '.onnx'}")
        written.append(
            _export_one(detector, tag, path, run=Path(run), inputs=inputs, stft=stft, exporter=exporter, verify=verify)
        )
    return written


def _export_one(
    detector: Any, tag: str, path: Path, *, run: Path, inputs: str, stft: str, exporter: str, verify: bool
) -> Path:
    config: Config = detector.config
    kind = detector.decision_kind
    model = detector.models[tag].cpu().eval()
    graph = ClipGraph(
        model, detector.scalers[tag], config, kind=kind, inputs=inputs,
        stft="conv" if exporter == "torchscript" else stft, score_stats=detector.score_stats_,
        gaussians=getattr(detector, "gaussians", None),
    ).eval()  # fmt: skip
    example, names, dynamic = _example(graph, config)
    data = _to_onnx(graph, example, names, dynamic, exporter)
    atomic_write_bytes(path, data)
    _check(path)
    sidecar = sidecar_path(path)
    meta = _metadata(detector, tag, path, data, run=run, graph=graph, names=names, exporter=exporter)
    if verify:
        meta["parity"] = _verify(graph, path, example, names)
    atomic_write_json(sidecar, meta)
    log.debug("wrote %s and %s", path, sidecar)
    return path


def sidecar_path(path: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``: the metadata travels beside the graph."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _example(graph: ClipGraph, config: Config) -> tuple[tuple[Tensor, ...], list[str], dict[str, Any]]:
    gen = torch.Generator().manual_seed(0)
    sr = config.audio.sample_rate
    if graph.inputs == "waveform":
        x = 0.05 * torch.randn(2, 3 * sr, generator=gen)
        names = ["waveform"]
    else:
        frames = max(3 * graph.frames, 3 * sr // config.features.hop_length)
        x = -60.0 + 10.0 * torch.randn(2, config.features.n_mels, frames, generator=gen)
        names = ["features"]
    example: tuple[Tensor, ...] = (x,)
    if graph.grouped:
        example = (x, torch.zeros(2, dtype=torch.int64))
        names.append("group")
    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("length", min=1, max=2**31 - 1)
    dynamic: dict[str, Any] = {"x": {0: batch, (1 if graph.inputs == "waveform" else 2): length}}
    if graph.grouped:
        dynamic["group"] = {0: batch}
    return example, names, dynamic


def _to_onnx(graph: ClipGraph, example: tuple[Tensor, ...], names: list[str], dynamic: dict[str, Any], exporter: str) -> bytes:
    # The exporter's own log lines (initializer deduplication, "torchvision is not installed")
    # would bury the summary; its failures raise.
    for name in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(
                graph, example, dynamo=True, input_names=names, output_names=list(OUTPUT_NAMES),
                dynamic_shapes=dynamic, opset_version=OPSET, external_data=False,
                verbose=False, optimize=True,
            )  # fmt: skip
            assert program is not None
            return program.model_proto.SerializeToString()
        import io

        buffer = io.BytesIO()
        axes = {names[0]: {0: "batch", (1 if graph.inputs == "waveform" else 2): "length"}}
        if graph.grouped:
            axes["group"] = {0: "batch"}
        axes.update({"score": {0: "batch"}, "window_scores": {0: "batch", 1: "windows"}, "window_start_frames": {0: "windows"}})
        axes.update({"reconstruction": {0: "batch"}, "svdd": {0: "batch"}})
        torch.onnx.export(
            graph, example, buffer, dynamo=False, input_names=names, output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes, opset_version=17,
        )  # fmt: skip
        return buffer.getvalue()


def _check(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001 - any checker failure means a broken export
        raise HarkenError(f"exported graph fails onnx.checker: {exc}", path=path) from None


def _verify(graph: ClipGraph, path: Path, example: tuple[Tensor, ...], names: list[str]) -> dict[str, Any]:
    """PyTorch vs onnxruntime on a test signal of another length than the export example."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"checked": False, "reason": "onnxruntime not installed"}
    x = example[0]
    gen = torch.Generator().manual_seed(1)
    if graph.inputs == "waveform":
        x = 0.05 * torch.randn(3, x.shape[1] + 1234, generator=gen)
    else:
        x = -60.0 + 10.0 * torch.randn(3, x.shape[1], x.shape[2] + 17, generator=gen)
    feed_t = (x,) if not graph.grouped else (x, torch.zeros(3, dtype=torch.int64))
    with torch.no_grad():
        ref = [t.numpy() for t in graph(*feed_t)]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUT_NAMES), {n: t.numpy() for n, t in zip(names, feed_t, strict=True)})
    score_diff = float(np.max(np.abs(got[0] - ref[0])))
    scale = float(np.max(np.abs(ref[0])))
    return {
        "checked": True,
        "signal": "seeded Gaussian noise" if graph.inputs == "waveform" else "seeded Gaussian dB features",
        "shape": list(x.shape),
        "max_abs_diff_score": score_diff,
        "max_rel_diff_score": score_diff / scale if scale > 0 else score_diff,
        "max_abs_diff_window_scores": float(np.max(np.abs(got[1] - ref[1]))),
        "window_starts_equal": bool(np.array_equal(got[2], ref[2])),
    }


def _metadata(
    detector: Any, tag: str, path: Path, data: bytes, *, run: Path, graph: ClipGraph, names: list[str], exporter: str
) -> dict[str, Any]:
    config: Config = detector.config
    machines = sorted({k.split("/")[0] for k in detector.threshold_ if "/" in k})
    sections: dict[str, list[str]] = {}
    for key in detector.threshold_:
        if "/" in key:
            m, s = key.split("/", 1)
            sections.setdefault(m, []).append(s)
    covered = machines if tag not in machines else [tag]
    history = list(detector.history_)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "harken_version": harken.__version__,
        "torch_version": torch.__version__,
        "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "exporter": exporter,
        "opset": OPSET if exporter == "dynamo" else 17,
        "source_run": str(run),
        "model_file": path.name,
        "model_sha256": hashlib.sha256(data).hexdigest(),
        "system": detector.name,
        "setting": config.train.setting,
        "model_group": tag,
        "machine_types": covered,
        "sections": {m: sorted(sections.get(m, [])) for m in covered},
        "input": graph.inputs,
        "input_names": names,
        "output_names": list(OUTPUT_NAMES),
        "sample_rate": config.audio.sample_rate,
        "audio": asdict(config.audio),
        "features": asdict(config.features),
        "stft": graph.logmel.stft if graph.logmel is not None else None,
        "window": asdict(config.window),
        "short_clip_in_graph": "pad" if graph.pad else "repeat",
        "score_kind": graph.kind,
        "score_kinds": list(KINDS),
        "thresholds": {k: float(v) for k, v in detector.threshold_.items()},
        "score_stats": detector.score_stats_,
        "fused_weights": list(config.score.fused_weights),
        "fused_groups": graph.groups,
        "threshold_quantile": config.score.threshold_quantile,
        "training": {
            "epochs": len([h for h in history if h.get("tag", tag) == tag]),
            "last_epoch": {k: v for k, v in (history[-1] if history else {}).items() if isinstance(v, (int, float, str))},
        },
    }


# ----------------------------------------------------------------------------- CLI
def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a trained run to ONNX",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True, help="run directory (or its model.pt)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (onnx)")
    p.add_argument("--input", default="waveform", choices=INPUTS, help="graph input: waveform samples (default) or dB log-mel features")
    p.add_argument("--stft", default="fft", choices=["fft", "conv"], help="STFT as the ONNX STFT operator (fft) or as Conv (conv)")
    p.add_argument("--exporter", default="dynamo", choices=EXPORTERS, help="PyTorch ONNX exporter (default dynamo)")
    p.add_argument("--machine", default=None, help="per_machine runs: export only this machine type's model")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime parity check")
    p.add_argument("out", metavar="OUT", help="ONNX file to write (metadata goes to OUT.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    paths = export_run(
        args.run, args.out, inputs=args.input, stft=args.stft, exporter=args.exporter,
        machine=args.machine, verify=not args.no_verify,
    )  # fmt: skip
    for path in paths:
        meta = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        size = path.stat().st_size / 1e6
        print(f"wrote {path} ({size:.1f} MB, input {meta['input']}, score {meta['score_kind']}, "
              f"machine types {', '.join(meta['machine_types'])}) and {sidecar_path(path).name}")  # fmt: skip
        parity = meta.get("parity", {})
        if parity.get("checked"):
            print(
                f"  onnx.checker: ok; onnxruntime vs PyTorch on {parity['signal']} {parity['shape']}: "
                f"max abs diff {parity['max_abs_diff_score']:.3g} (relative {parity['max_rel_diff_score']:.3g})"
            )
    return 0
