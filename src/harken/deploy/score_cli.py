"""``harken score``: score WAV/FLAC files and folders with a trained run or an ONNX model.

    harken score --run RUN PATH... [--machine M] [--section S] [--out DIR] [--timeline]
    harken score --onnx MODEL.onnx PATH... [same options]

Each file is scored as the machine type and section its DCASE/MIMII name and folder say, or
as ``--machine`` / ``--section`` say (a name that fits no pattern needs ``--machine``).  The
terminal gets a table (score, threshold, decision, number of windows) and, for recordings
longer than one model window, a timeline strip with the peak window; ``--out DIR`` writes
``scores.csv``, ``timeline.csv`` and ``scores.json``.  A file that cannot be scored is
reported with its reason and skipped; the exit status is then 3 (0 when all were scored).

``--onnx`` scores with onnxruntime alone: this module and the ONNX path import no PyTorch,
so it runs in an edge install (``pip install harken[onnx]``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import harken
from harken.deploy import ClipScore, format_table, write_outputs

#: exit status when some inputs could not be scored (0: all scored; 1: a usage/model error)
EXIT_SOME_FAILED = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "score",
        help="score WAV/FLAC files or folders with a trained run or an ONNX model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--run", help="run directory (or its model.pt) written by harken train")
    model.add_argument("--onnx", help="ONNX model written by harken export (its .json sidecar beside it)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="WAV/FLAC files or folders (searched recursively)")
    p.add_argument("--machine", default=None, help="machine type to score as (needed for names that fit no DCASE/MIMII pattern)")
    p.add_argument("--section", default=None, help="section to score as (two digits; default: from the name, else 00)")
    p.add_argument("--out", default=None, help="write scores.csv, timeline.csv and scores.json here")
    p.add_argument("--timeline", action="store_true", help="print every window's start time and score")
    p.add_argument("--quiet", action="store_true", help="print no table (errors still go to stderr)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.onnx:
        results, meta = _score_onnx(args)
    else:
        results, meta = _score_torch(args)
    if not args.quiet:
        print(format_table(results, timeline=args.timeline))
    if args.out:
        for path in write_outputs(args.out, results, meta):
            if not args.quiet:
                print(f"wrote {path}")
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"harken score: {len(failed)} of {len(results)} input(s) could not be scored:", file=sys.stderr)
        for r in failed:
            print(f"  {r.source}: {r.error}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0


def _score_torch(args: argparse.Namespace) -> tuple[list[ClipScore], dict[str, Any]]:
    from harken.api import as_clips, load_run, score_clips

    detector = load_run(args.run)
    clips = as_clips(list(args.paths), machine=args.machine, section=args.section, errors="keep")
    _warn_unknown_machines(clips, {k.split("/")[0] for k in detector.threshold_ if "/" in k})
    results = score_clips(detector, clips)
    window = detector.config.window
    seconds = detector.config.features.hop_length / detector.config.audio.sample_rate
    meta = {
        "harken_version": harken.__version__,
        "backend": "pytorch",
        "model": str(Path(args.run)),
        "system": detector.name,
        "score_kind": detector.decision_kind,
        "aggregate": window.aggregate,
        "window_seconds": window.frames * seconds,
        "hop_seconds": window.test_hop * seconds,
    }
    return results, meta


def _score_onnx(args: argparse.Namespace) -> tuple[list[ClipScore], dict[str, Any]]:
    from harken.api import as_clips
    from harken.deploy.onnx_runtime import OnnxScorer

    scorer = OnnxScorer(args.onnx)
    clips = as_clips(list(args.paths), machine=args.machine, section=args.section, errors="keep")
    _warn_unknown_machines(clips, set(scorer.machine_types))
    results = scorer.score_clips(clips)
    meta = {
        "harken_version": harken.__version__,
        "backend": "onnxruntime",
        "model": str(Path(args.onnx)),
        "system": scorer.meta.get("system"),
        "score_kind": scorer.kind,
        "aggregate": scorer.window["aggregate"],
        "window_seconds": scorer.window_seconds,
        "hop_seconds": scorer.hop_seconds,
        "exported_from_harken": scorer.meta.get("harken_version"),
    }
    return results, meta


def _warn_unknown_machines(clips: list[Any], known: set[str]) -> None:
    unknown = sorted({c.machine for c in clips if not isinstance(c, ClipScore)} - known)
    if unknown and known:
        print(
            f"harken score: warning: machine type(s) {', '.join(unknown)} not among the model's "
            f"({', '.join(sorted(known))}); their global threshold '*' decides (pass --machine to set it)",
            file=sys.stderr,
        )
