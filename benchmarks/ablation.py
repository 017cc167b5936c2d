"""Ablation of CAE-DANN-SVDD on the synthetic demo set: the full system against each switch.

    .venv/bin/python benchmarks/ablation.py --out /tmp/ablation [--seed 0] [extra overrides]

Trains the demo configuration four times on the same synthesized data (full system, no DANN,
no SVDD, no pseudo-anomalies), tests each with the official metrics, and prints a Markdown
table with bootstrap intervals and each variant's paired difference from the full system.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from harken.commands.demo import (
    DEMO_DURATION,
    DEMO_MACHINES,
    DEMO_TEST_PER_CELL,
    DEMO_TRAIN_SOURCE,
    DEMO_TRAIN_TARGET,
)
from harken.config import load_config
from harken.data.synth import synthesize
from harken.evaluation.bootstrap import compare_systems
from harken.evaluation.tables import format_table, write_tables
from harken.pipeline import discover_clips, test_run, train_run

VARIANTS = {
    "full": [],
    "no-dann": ["loss.use_dann=false"],
    "no-svdd": ["loss.use_svdd=false"],
    "no-pseudo": ["loss.use_pseudo=false"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="harken-ablation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-target", type=int, default=DEMO_TRAIN_TARGET, help="as harken demo")
    parser.add_argument("--strength", type=float, default=1.0, help="fault strength of the synthetic anomalies")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    out = Path(args.out)
    data = synthesize(out / "data", machines=list(DEMO_MACHINES), seed=args.seed, n_train_source=DEMO_TRAIN_SOURCE,
                      n_train_target=args.train_target, n_test=DEMO_TEST_PER_CELL, duration=DEMO_DURATION, strength=args.strength, progress=False)
    clips = discover_clips(data)
    results = {}
    for name, switches in VARIANTS.items():
        t0 = time.perf_counter()
        config = load_config("demo", [f"train.seed={args.seed}", *args.overrides, *switches])
        detector = train_run(config, clips, out / "runs" / name, progress=False, cache_dir=out / "cache")
        output = test_run(detector, clips, out / "runs" / name / "test", progress=False, bootstrap=1000, seed=args.seed)
        results[name] = output.results[detector.decision_kind]
        results[name].name = name
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    comparisons = [compare_systems(results["full"], results[n], n_resamples=1000, seed=args.seed) for n in VARIANTS if n != "full"]
    write_tables(out, results, comparisons=comparisons, stem="ablation")
    print(format_table(results, "markdown", comparisons=comparisons))
    summary = summary_table(results, comparisons)
    (out / "ablation_summary.md").write_text(summary + "\n", encoding="utf-8")
    print(summary)


def _ci(value: float, interval: tuple[float, float] | None, sign: bool = False) -> str:
    fmt = "{:+.3f}" if sign else "{:.3f}"
    text = fmt.format(value)
    return text if interval is None else f"{text} [{fmt.format(interval[0])}, {fmt.format(interval[1])}]"


def summary_table(results: dict, comparisons: list) -> str:
    """One row per variant: Ω and the harmonic means with 95% intervals, and Ω's paired difference."""
    rows = ["| variant | TOTAL (Ω) | AUC-S (hmean) | AUC-T (hmean) | pAUC (hmean) | ΔΩ vs full, paired | P(ΔΩ ≤ 0) |", "|---|---|---|---|---|---|---|"]
    by_name = {c.name_b: c for c in comparisons}
    for name, r in results.items():
        ci = r.bootstrap.ci if r.bootstrap is not None else (lambda key: None)
        c = by_name.get(name)
        delta = "—" if c is None else _ci(c.differences["official_score"], c.ci("official_score"), sign=True)
        p = "—" if c is None else f"{c.p_not_better['official_score']:.2f}"
        rows.append(
            f"| {name} | {_ci(r.official_score, ci('official_score'))} | {_ci(r.auc_source_hmean, ci('hmean/auc_source'))} "
            f"| {_ci(r.auc_target_hmean, ci('hmean/auc_target'))} | {_ci(r.pauc_hmean, ci('hmean/pauc'))} | {delta} | {p} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
