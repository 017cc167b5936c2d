"""``harken train --data ROOT --config CONFIG --out RUN [section.field=value ...]``."""

from __future__ import annotations

import argparse


def add_config_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--config", default=default, help="YAML config file or bundled name (paper, demo)")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.field=value", help="override any config field, e.g. train.epochs=5"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a system on a dataset", description=__doc__)
    p.add_argument("--data", required=True, help="dataset root (DCASE Task 2 layout)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--cache", default=None, help="feature cache directory (default $HARKEN_CACHE_DIR or ~/.cache/harken/features)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--skip-bad-clips",
        action="store_true",
        help="leave out training clips whose audio cannot be used (empty, truncated, not audio, NaN...) "
        "with a warning each and a list in RUN/skipped.csv, instead of stopping at the first",
    )
    add_config_args(p, default="paper")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harken.config import load_config
    from harken.pipeline import discover_clips, train_run

    config = load_config(args.config, args.overrides)
    clips = discover_clips(args.data)
    train_run(config, clips, args.out, progress=not args.no_progress, resume=args.resume, cache_dir=args.cache, skip_bad_clips=args.skip_bad_clips)
    return 0
