"""The ``harken`` command line.

Each subcommand lives beside the stage of the data flow it drives and exposes
``register(subparsers)``, which adds its parser and sets ``func``.  Only the module of the
command being run is imported, so ``harken score --onnx`` and ``harken evaluate`` work in an
install without PyTorch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from harken.errors import HarkenError

# command name -> (module that registers it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("harken.commands.demo", "synthesize a small dataset, train, test and report (the main job)"),
    "synth": ("harken.data.synth", "write a synthetic machine-sound dataset in the DCASE 2025 layout"),
    "data": ("harken.data.cli", "inspect a DCASE-layout dataset (data summary ROOT)"),
    "train": ("harken.commands.train", "train a system on a dataset"),
    "test": ("harken.commands.test", "score a dataset's test clips with a trained run; write submission files and results"),
    "evaluate": ("harken.evaluation.cli", "evaluate official-format score CSVs against ground truth"),
    "benchmark": ("harken.commands.benchmark", "train and test several systems on the same data, side by side"),
    "score": ("harken.deploy.score_cli", "score WAV/FLAC files or folders with a trained run or an ONNX model"),
    "export": ("harken.deploy.export", "export a trained run to ONNX"),
    "serve": ("harken.deploy.serve", "serve a trained run over HTTP"),
    "report": ("harken.report.cli", "write an HTML report with plots for one or more runs"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harken",
        description="Unsupervised anomalous sound detection for machine condition monitoring.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return parser


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``command`` only that subcommand's module is imported."""
    parser = _top_parser()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = build_parser(command) if command else _listing_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except HarkenError as exc:
        print(f"harken {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"harken {args.command}: interrupted", file=sys.stderr)
        return 130


def _listing_parser() -> argparse.ArgumentParser:
    parser = _top_parser()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
