"""``harken test --run RUN --data ROOT``: scores, submission files and, with labels, the result table."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("test", help="score a dataset's test clips with a trained run", description=__doc__)
    p.add_argument("--run", required=True, help="run directory (or model.pt)")
    p.add_argument("--data", required=True, help="dataset root (DCASE Task 2 layout)")
    p.add_argument("--out", default=None, help="output directory (default RUN/test)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for confidence intervals (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="feature cache directory")
    p.add_argument("--report", action="store_true", help="also write the HTML report")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--skip-bad-clips",
        action="store_true",
        help="leave out test clips whose audio cannot be used, with a warning each and a list in "
        "OUT/skipped.csv (submission files and results then cover the other clips only)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harken.evaluation.tables import format_table
    from harken.pipeline import discover_clips, test_run
    from harken.training.checkpoint import load_detector

    run_path = Path(args.run)
    detector = load_detector(run_path)
    if args.cache:
        detector.cache_dir = Path(args.cache)
    out = Path(args.out) if args.out else (run_path if run_path.is_dir() else run_path.parent) / "test"
    output = test_run(detector, discover_clips(args.data), out, progress=not args.no_progress, bootstrap=args.bootstrap, seed=args.seed, skip_bad_clips=args.skip_bad_clips, data_root=args.data)
    kind = detector.decision_kind
    if kind in output.results:
        print(format_table(output.results[kind], "text"))
    print(f"wrote {out}")
    if args.report:
        from harken.report.cli import write_report

        print(f"report: {write_report([run_path if run_path.is_dir() else run_path.parent], data_root=args.data, cache_dir=args.cache)}")
    return 0
