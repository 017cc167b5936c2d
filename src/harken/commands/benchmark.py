"""``harken benchmark``: train and test several systems on the same data, side by side.

Every system sees the same clips, the same training/test split and the same official metrics;
the table follows the report's Table 1 layout, with stratified-bootstrap intervals for each
system and paired differences (each system minus the first) on shared resamples.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

DEFAULT_SYSTEMS = "cae-dann,ae-baseline,ae-baseline-mahala,aum"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("benchmark", help="train and test several systems side by side", description=__doc__)
    p.add_argument("--data", default=None, help="dataset root (default: synthesize the demo set into OUT/data)")
    p.add_argument("--systems", default=DEFAULT_SYSTEMS, help=f"comma-separated registered systems (default {DEFAULT_SYSTEMS})")
    p.add_argument("--out", default="harken-benchmark", help="output folder (runs, tables)")
    p.add_argument("--config", default="demo", help="base config for every system (default: demo sizes)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="feature cache directory (default OUT/cache)")
    p.add_argument("--report", action="store_true", help="also write the HTML report comparing the runs")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides for every system")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harken.config import load_config
    from harken.evaluation.bootstrap import compare_systems
    from harken.evaluation.tables import format_table, write_tables
    from harken.pipeline import discover_clips, test_run, train_run
    from harken.systems import create_system

    log = logging.getLogger("harken.benchmark")
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out / "cache"
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    base = load_config(args.config, [f"train.seed={args.seed}", *args.overrides])
    for name in systems:  # unknown names fail before any training
        create_system(name, base)
    if args.data is None:
        from harken.commands.demo import (
            DEMO_DURATION,
            DEMO_MACHINES,
            DEMO_TEST_PER_CELL,
            DEMO_TRAIN_SOURCE,
            DEMO_TRAIN_TARGET,
        )
        from harken.data.synth import synthesize

        data = synthesize(out / "data", machines=list(DEMO_MACHINES), seed=args.seed, n_train_source=DEMO_TRAIN_SOURCE, n_train_target=DEMO_TRAIN_TARGET, n_test=DEMO_TEST_PER_CELL, duration=DEMO_DURATION)
    else:
        data = Path(args.data)
    clips = discover_clips(data)
    results, timings, cpu_times = {}, {}, {}
    for name in systems:
        t0, c0 = time.perf_counter(), time.process_time()
        config = load_config(args.config, [f"system={name}", f"train.seed={args.seed}", *args.overrides])
        run_dir = out / "runs" / name
        detector = train_run(config, clips, run_dir, progress=not args.no_progress, cache_dir=cache)
        output = test_run(detector, clips, run_dir / "test", progress=not args.no_progress, bootstrap=args.bootstrap, seed=args.seed, data_root=data)
        results[name] = output.results[detector.decision_kind]
        results[name].name = name
        timings[name] = time.perf_counter() - t0
        cpu_times[name] = time.process_time() - c0  # all threads; judges wall time on a shared machine
        log.info("%s: trained and tested in %.0f s (CPU %.0f s)", name, timings[name], cpu_times[name])
    first = systems[0]
    comparisons = [compare_systems(results[first], results[n], n_resamples=args.bootstrap, seed=args.seed) for n in systems[1:]]
    write_tables(out, results, comparisons=comparisons, stem="benchmark")
    print(format_table(results, "text", comparisons=comparisons))
    print("time per system (train + test): " + ", ".join(f"{n} {t:.0f} s (CPU {cpu_times[n]:.0f} s)" for n, t in timings.items()))
    print(f"wrote {out / 'benchmark.md'}, .csv, .json")
    if args.report:
        from harken.report.cli import write_report

        print(f"report: {write_report([out / 'runs' / n for n in systems], out / 'report' / 'report.html')}")
    return 0
