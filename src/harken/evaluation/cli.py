"""``harken evaluate``: official DCASE Task 2 figures of any system's submission files.

Torch-free, so organizers' and other teams' submissions can be scored on any machine.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from harken.errors import ScoreFileError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate official-format score CSVs against ground truth",
        description=(
            "Compute the official DCASE Task 2 metrics (AUC-S, AUC-T, pAUC per machine type and "
            "section, harmonic means, the official score; precision/recall/F1 when decision files "
            "are present) of the anomaly_score_<machine>_section_<XX>_test.csv files in SCORES_DIR, "
            "with stratified-bootstrap confidence intervals."
        ),
    )
    p.add_argument(
        "scores_dir",
        type=Path,
        metavar="SCORES_DIR",
        help="folder of anomaly_score_*/decision_result_* CSVs",
    )
    p.add_argument(
        "--ground-truth",
        "-g",
        type=Path,
        required=True,
        metavar="GT",
        help="organizers' ground truth (folder with ground_truth_data/ [and ground_truth_domain/]) "
        "or a dataset root whose <machine>/test/ clips have labelled names (detected)",
    )
    p.add_argument(
        "--out",
        "-o",
        type=Path,
        metavar="DIR",
        help="write evaluation.csv, evaluation.md and evaluation.json here",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for confidence intervals (0: none; default 1000)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument(
        "--confidence", type=float, default=0.95, help="interval coverage (default 0.95)"
    )
    p.add_argument(
        "--compare",
        type=Path,
        metavar="SCORES_DIR2",
        help="a second system's score folder: both tables side by side plus the paired difference "
        "(SCORES_DIR2 minus SCORES_DIR) with intervals from the same resamples",
    )
    p.add_argument(
        "--diagnostics",
        action="store_true",
        help="also print within-domain AUCs and the domain offset per machine type and section "
        "(diagnostics, not official metrics; written as diagnostics.md/.csv with --out)",
    )
    p.add_argument(
        "--digits",
        type=int,
        default=3,
        help="decimals in the printed table (files keep full precision)",
    )
    p.set_defaults(func=run)


def _system_names(a: Path, b: Path | None) -> tuple[str, str]:
    name_a = a.resolve().name or str(a)
    if b is None:
        return name_a, ""
    name_b = b.resolve().name or str(b)
    if name_a == name_b:
        return f"{name_a} (A)", f"{name_b} (B)"
    return name_a, name_b


def run(args: argparse.Namespace) -> int:
    from harken.evaluation.bootstrap import bootstrap_ci, compare_systems
    from harken.evaluation.evaluate import evaluate_directory
    from harken.evaluation.groundtruth import load_ground_truth
    from harken.evaluation.tables import format_table, write_tables

    if args.bootstrap < 0:
        raise ScoreFileError(f"--bootstrap must be 0 or more, got {args.bootstrap}")
    if not 0.0 < args.confidence < 1.0:
        raise ScoreFileError(f"--confidence must be between 0 and 1, got {args.confidence}")
    truth = load_ground_truth(args.ground_truth)
    name_a, name_b = _system_names(args.scores_dir, args.compare)
    results = [evaluate_directory(args.scores_dir, truth, name=name_a)]
    if args.compare is not None:
        results.append(evaluate_directory(args.compare, truth, name=name_b))
    comparisons = []
    for r in results:
        if args.bootstrap > 0:
            bootstrap_ci(r, args.bootstrap, args.seed, args.confidence)
    if len(results) == 2:
        comparisons.append(
            compare_systems(results[0], results[1], args.bootstrap, args.seed, args.confidence)
        )
    sys.stdout.write(format_table(results, "text", comparisons=comparisons, digits=args.digits))
    if args.out is not None:
        paths = write_tables(args.out, results, comparisons=comparisons, digits=args.digits)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    if args.diagnostics:
        _print_diagnostics(results, args.out, args.digits)
    return 0


def _print_diagnostics(results: list, out: Path | None, digits: int) -> None:
    from harken.atomic import atomic_write_text
    from harken.evaluation.diagnostics import (
        diagnostics_csv,
        domain_diagnostics,
        format_diagnostics,
    )

    for r in results:
        rows = domain_diagnostics(r)
        sys.stdout.write(f"\nDomain diagnostics of {r.name} (not official metrics)\n\n{format_diagnostics(rows, digits)}")
        if out is not None:
            stem = "diagnostics" if r is results[0] else "diagnostics_compare"
            atomic_write_text(out / f"{stem}.md", format_diagnostics(rows, digits))
            atomic_write_text(out / f"{stem}.csv", diagnostics_csv(rows))
