"""Speed of the stratified bootstrap: 9 machine types x 200 clips, 1000 resamples.

    .venv/bin/python benchmarks/bootstrap.py
"""

from __future__ import annotations

import time

import numpy as np

from harken.evaluation.bootstrap import bootstrap_ci, compare_systems
from harken.evaluation.evaluate import ScoreRecord, evaluate_arrays


def records(rng: np.random.Generator, shift: float) -> list[ScoreRecord]:
    out = []
    for m in range(9):
        for domain in ("source", "target"):
            for label in ("normal", "anomaly"):
                for i in range(50):
                    score = rng.normal(shift if label == "anomaly" else 0.0)
                    out.append(ScoreRecord(f"m{m}", "00", f"{domain}_{label}_{i:04d}.wav", domain, label, float(score)))
    return out


def main() -> None:
    a = evaluate_arrays(records(np.random.default_rng(0), 1.0))
    b = evaluate_arrays(records(np.random.default_rng(0), 1.2))
    t0 = time.perf_counter()
    bootstrap_ci(a, n_resamples=1000, seed=0)
    t1 = time.perf_counter()
    compare_systems(a, b, n_resamples=1000, seed=0)
    t2 = time.perf_counter()
    print("| what | seconds |\n|---|---|")
    print(f"| bootstrap CI, 9 x 200 clips, 1000 resamples | {t1 - t0:.2f} |")
    print(f"| paired comparison, same size | {t2 - t1:.2f} |")


if __name__ == "__main__":
    main()
