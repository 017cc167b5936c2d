"""``harken data summary ROOT``: what a DCASE-layout dataset holds, before training on it.

Prints clip counts per machine type x section x domain x split x label, so a missing archive,
a folder of misnamed clips or a machine without target-domain training data shows up before a
long run rather than after.  Dataset warnings are printed as ``harken data: warning: ...``
lines on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from harken.data.dataset import discover, format_summary, summary
from harken.data.names import SPLITS


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "data",
        help="inspect a DCASE-layout dataset (data summary ROOT)",
        description="Inspect a DCASE Task 2 / MIMII dataset on disk.",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    s = sub.add_parser(
        "summary",
        help="count clips per machine x section x domain x split x label",
        description="Find every clip under ROOT (any DCASE 2020-2025 or MIMII layout) and "
        "count them per machine type x section x domain x split x label.",
    )
    s.add_argument("root", type=Path, metavar="ROOT", help="dataset root, or one machine folder")
    s.add_argument("--machines", nargs="+", metavar="MACHINE", help="only these machine types")
    s.add_argument("--splits", nargs="+", choices=SPLITS, help="only these splits")
    s.add_argument(
        "--check-content",
        action="store_true",
        help="also refuse clips with identical bytes (reads every file)",
    )
    s.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    s.set_defaults(func=_summary)

    def _help(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_help)
    return parser


def _summary(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            clips = discover(
                args.root,
                machines=args.machines,
                splits=args.splits,
                check_content=args.check_content,
            )
        finally:  # warnings before an error often explain it
            for w in caught:
                print(f"harken data: warning: {w.message}", file=sys.stderr)
    rows = summary(clips)
    if args.json:
        print(json.dumps([r._asdict() for r in rows], indent=2))
    else:
        sys.stdout.write(format_summary(rows))
    return 0
