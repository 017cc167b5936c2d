"""How the demo model's scores respond to fault strength on the synthetic set.

    .venv/bin/python benchmarks/strength.py --out /tmp/strength [--strengths 1,2,3] [overrides]

Trains the demo configuration once (``harken demo``'s data: 5 machine types, 60 source and 6
target training clips, 4-s clips), then tests it on test sets rendered at each fault strength.
Normal clips depend only on the seed, so every test set has the same normal clips and the same
training set; only the anomalous clips get stronger.  For every strength and score kind it
prints the official TOTAL score and, per machine type (with a simple model-free reference
detector beside the model's scores), two diagnostic AUCs that the official
table mixes together:

* ``within``: normal against anomalous clips of the same domain (can the score see the fault?);
* ``official``: AUC-S / AUC-T as DCASE defines them (normals of one domain against the anomalies
  of both), where a domain offset in the score also counts.

Appends the table to ``benchmarks/RESULTS.md`` unless ``--no-append``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import append_results, load, machine, markdown_table, pick_device  # noqa: I001
from sklearn.metrics import roc_auc_score

from harken.commands.demo import (
    DEMO_DURATION,
    DEMO_MACHINES,
    DEMO_TEST_PER_CELL,
    DEMO_TRAIN_SOURCE,
    DEMO_TRAIN_TARGET,
)
from harken.config import load_config
from harken.data.synth import synthesize
from harken.pipeline import discover_clips, test_run, train_run

KINDS = ("reconstruction", "svdd", "fused", "mahalanobis")
REFERENCE = "reference: band mean/std Mahalanobis"


def reference_scores(detector, train: list, test: list) -> np.ndarray:
    """A simple, model-free reference detector, to show how findable the faults are.

    Each clip becomes the mean and standard deviation of every log-mel band; the score is the
    Mahalanobis distance to the nearer of its machine type's two domain means (training clips
    only; covariance pooled over both domains' residuals, lightly shrunk).
    """
    clips = train + test
    vectors = {}
    for c, f in zip(clips, detector.clip_features(clips, progress=False), strict=True):
        x = np.asarray(f, dtype=np.float64)
        vectors[id(c)] = np.r_[x.mean(axis=1), x.std(axis=1)]

    def vec(c) -> np.ndarray:
        return vectors[id(c)]

    out = np.zeros(len(test))
    for kind in sorted({c.machine for c in test}):
        by_domain = {d: np.stack([vec(c) for c in train if c.machine == kind and c.domain == d]) for d in ("source", "target")}
        means = {d: v.mean(axis=0) for d, v in by_domain.items()}
        resid = np.concatenate([v - means[d] for d, v in by_domain.items()])
        cov = np.cov(resid.T)
        cov += 1e-3 * np.trace(cov) / len(cov) * np.eye(len(cov))
        prec = np.linalg.inv(cov)
        for i, c in enumerate(test):
            if c.machine == kind:
                v = vec(c)
                out[i] = min(float((v - m) @ prec @ (v - m)) for m in means.values())
    return out


def _auc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    return float(roc_auc_score(labels, np.r_[normal, anomalous]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="harken-strength")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strengths", default="1,2,3")
    parser.add_argument("--no-append", action="store_true")
    parser.add_argument("overrides", nargs="*", help="config overrides on top of configs/demo.yaml")
    args = parser.parse_args(argv)
    out = Path(args.out)
    strengths = [float(s) for s in args.strengths.split(",")]
    load_before = load()
    t0 = time.perf_counter()
    roots = {}
    for s in strengths:
        roots[s] = synthesize(
            out / f"data-{s:g}", machines=list(DEMO_MACHINES), seed=args.seed, n_train_source=DEMO_TRAIN_SOURCE,
            n_train_target=DEMO_TRAIN_TARGET, n_test=DEMO_TEST_PER_CELL, duration=DEMO_DURATION, strength=s, progress=False,
        )
    config = load_config("demo", [f"train.seed={args.seed}", *args.overrides])
    detector = train_run(config, discover_clips(roots[strengths[0]]), out / "run", progress=False, cache_dir=out / "cache")
    totals, per_machine = [], []
    for s in strengths:
        clips = discover_clips(roots[s])
        result = test_run(detector, clips, out / f"test-{s:g}", progress=False, data_root=roots[s])
        test, scores = result.clips, dict(result.scores)
        scores[REFERENCE] = reference_scores(detector, [c for c in clips if c.split == "train"], test)
        totals.append([f"{s:g}", *(f"{result.results[k].official_score:.3f}" for k in KINDS)])
        for name in sorted({c.machine for c in test}):
            row = [f"{s:g}", name]
            for kind in (*KINDS, REFERENCE):
                v = scores[kind]
                pick = {
                    (d, lab): np.array([v[i] for i, c in enumerate(test) if c.machine == name and c.domain == d and c.label == lab])
                    for d in ("source", "target") for lab in ("normal", "anomaly")
                }
                anomalies = np.r_[pick["source", "anomaly"], pick["target", "anomaly"]]
                row.append(
                    f"{_auc(pick['source', 'normal'], pick['source', 'anomaly']):.2f} / "
                    f"{_auc(pick['target', 'normal'], pick['target', 'anomaly']):.2f}"
                )
                row.append(f"{_auc(pick['source', 'normal'], anomalies):.2f} / {_auc(pick['target', 'normal'], anomalies):.2f}")
            per_machine.append(row)
    seconds = time.perf_counter() - t0
    t1 = markdown_table(["strength", *(f"TOTAL (Ω), {k}" for k in KINDS)], totals)
    t2 = markdown_table(
        ["strength", "machine", *(f"{k}: {what} S / T" for k in (*KINDS, REFERENCE) for what in ("within", "official"))], per_machine
    )
    print(t1)
    print(t2)
    print(f"{seconds:.0f} s")
    if not args.no_append:
        body = (
            "Demo configuration trained once on the strength-1 training set (the normal clips are the "
            "same at every strength); test sets with faults at each strength. "
            f"Total {seconds:.0f} s.\n\n{t1}\n\nPer machine type: AUC within each domain (normal vs "
            "anomalous clips of that domain) and the official AUC-S / AUC-T (normals of one domain vs "
            f"anomalies of both):\n\n{t2}\n"
        )
        append_results(
            "Score response to fault strength (benchmarks/strength.py)", body, machine(pick_device("cpu")), load_before, load()
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
