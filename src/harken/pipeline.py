"""Run-level steps shared by the CLI commands, the Python API and the benchmark.

A *run directory* holds ``config.yaml``, ``model.pt`` (the fitted detector: weights, SVDD
center, scaling, thresholds, config, versions), ``checkpoints/`` (per-epoch training state,
for resume), ``logs/`` and, after testing, ``test/``.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from harken.atomic import atomic_write_json, atomic_write_text
from harken.config import Config
from harken.errors import DatasetError

log = logging.getLogger(__name__)


def save_config(path: Path, config: Config) -> None:
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def discover_clips(root: str | Path) -> list[Any]:
    from harken.data.dataset import discover

    clips = discover(root)
    if not clips:
        raise DatasetError("no clips found under this root", path=root)
    return clips


def train_run(
    config: Config,
    clips: Sequence[Any],
    run_dir: str | Path,
    *,
    progress: bool = True,
    resume: bool = False,
    cache_dir: str | Path | None = None,
    skip_bad_clips: bool = False,
) -> Any:
    """Fit the configured system on the training clips and write ``run_dir/model.pt``.

    A training clip whose audio cannot be used stops the run with an error naming it, unless
    ``skip_bad_clips``: then it is left out with a warning and listed in ``run_dir/skipped.csv``.
    """
    from harken.systems import create_system
    from harken.training import distributed as D
    from harken.training.checkpoint import save_detector

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    info = D.DistInfo() if "RANK" not in __import__("os").environ else D.setup("cpu" if config.train.device == "cpu" else "auto")
    if info.is_main and not (resume and (run_dir / "config.yaml").exists()):
        # A resumed run keeps the config it was started with until training succeeds (a
        # refused resume must not leave a config.yaml that disagrees with the checkpoints).
        save_config(run_dir / "config.yaml", config)
    detector = create_system(config.system, config)
    if cache_dir is not None:
        detector.cache_dir = Path(cache_dir)
    train = [c for c in clips if c.split in ("train", "supplemental") and c.label == "normal"]
    if not config.train.include_supplemental:
        train = [c for c in train if c.split == "train"]
    if skip_bad_clips:
        train, skipped = drop_bad_clips(detector, train, what="training", progress=progress and info.is_main)
        if info.is_main:
            write_skipped(run_dir / "skipped.csv", skipped)
    finished = False
    try:
        detector.fit(train, run_dir=run_dir, progress=progress and info.is_main, resume=resume)
        if info.is_main:  # under DDP every rank holds the same model; one writes it
            save_config(run_dir / "config.yaml", config)
            save_detector(run_dir / "model.pt", detector)
            log.info("wrote %s", run_dir / "model.pt")
        finished = True
    finally:
        D.teardown(info, wait=finished)
    return detector


def drop_bad_clips(
    detector: Any, clips: Sequence[Any], *, what: str = "", progress: bool = False
) -> tuple[list[Any], list[tuple[Any, str]]]:
    """The clips whose audio loads, and ``(clip, problem)`` for each one left out.

    Used by ``--skip-bad-clips``.  Every skipped clip gets a HarkenWarning naming the file and
    the problem.  Features are computed through the detector's cache where it has one, so the
    kept clips are not decoded a second time; otherwise each clip is decoded once here.
    """
    import os
    import warnings

    from harken.errors import AudioError, HarkenWarning

    kept, skipped = list(clips), []
    if hasattr(detector, "clip_features") and "RANK" not in os.environ:
        while kept:
            try:
                detector.clip_features(kept, progress=progress)
                break
            except AudioError as exc:
                bad = {i for i, c in enumerate(kept) if exc.path is not None and Path(c.path) == exc.path}
                if not bad:
                    raise
                skipped += [(kept[i], str(exc)) for i in sorted(bad)]
                kept = [c for i, c in enumerate(kept) if i not in bad]
    else:
        from harken.data.audio import load_audio

        good = []
        for clip in kept:
            try:
                load_audio(clip.path, detector.config.audio)
            except AudioError as exc:
                skipped.append((clip, str(exc)))
            else:
                good.append(clip)
        kept = good
    for _, problem in skipped:
        warnings.warn(f"skipped {what + ' ' if what else ''}clip: {problem}", HarkenWarning, stacklevel=2)
    if not kept:
        raise DatasetError(f"no usable {what + ' ' if what else ''}clips: all {len(skipped)} were skipped")
    return kept, skipped


def write_skipped(path: Path, skipped: Sequence[tuple[Any, str]]) -> None:
    """``file,problem`` rows of the clips ``--skip-bad-clips`` left out (header only if none)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "problem"])
    for clip, problem in skipped:
        writer.writerow([str(clip.path), problem])
    atomic_write_text(path, buffer.getvalue())


@dataclass
class TestOutput:
    clips: list[Any]
    scores: dict[str, np.ndarray]
    decisions: np.ndarray
    results: dict[str, Any] = field(default_factory=dict)  # score kind -> EvaluationResult


def test_run(
    detector: Any,
    clips: Sequence[Any],
    out_dir: str | Path,
    *,
    progress: bool = True,
    bootstrap: int = 0,
    seed: int = 0,
    skip_bad_clips: bool = False,
    data_root: str | Path | None = None,
) -> TestOutput:
    """Score the test clips; write scores, official submission files and result tables.

    A test clip whose audio cannot be used stops with an error naming it, unless
    ``skip_bad_clips``: then it is left out with a warning and listed in ``out_dir/skipped.csv``
    (the submission files and result tables then cover the other clips only).
    """
    from harken.evaluation.evaluate import ScoreRecord, evaluate_arrays
    from harken.evaluation.submission import write_submission
    from harken.evaluation.tables import write_tables

    out_dir = Path(out_dir)
    test = [c for c in clips if c.split == "test"]
    if not test:
        raise DatasetError("no test clips found")
    if skip_bad_clips:
        test, skipped = drop_bad_clips(detector, test, what="test", progress=progress)
        write_skipped(out_dir / "skipped.csv", skipped)
    scored = detector.score_clips(test, progress=progress)
    kind = detector.decision_kind
    decisions = detector.decide(test, scored.scores[kind])
    kinds = list(scored.scores)

    # every kind, one row per clip
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file_name", "machine", "section", "domain", "label", *kinds, "decision", "threshold"])
    for i, c in enumerate(test):
        writer.writerow(
            [c.file_name, c.machine, c.section, c.domain or "", c.label]
            + [repr(float(scored.scores[k][i])) for k in kinds]
            + [int(decisions[i]), repr(detector.threshold_for(c.machine, c.section))]
        )
    atomic_write_text(out_dir / "scores.csv", buffer.getvalue())
    # Where the scored audio is, so `harken report` can show latents and reconstructions.
    root = Path(data_root) if data_root is not None else Path(os.path.commonpath([str(c.path.parent.parent.parent) for c in test]))
    cache = getattr(detector, "cache_dir", None)
    atomic_write_json(
        out_dir / "meta.json",
        {"data_root": str(root.resolve()), "cache_dir": None if cache is None else str(Path(cache).resolve()), "decision_kind": kind},
    )

    groups: dict[tuple[str, str], list[int]] = {}
    for i, c in enumerate(test):
        groups.setdefault((c.machine, c.section), []).append(i)
    for (machine, section), idx in sorted(groups.items()):
        names = [test[i].file_name for i in idx]
        write_submission(out_dir / "submission", machine, section, names, scored.scores[kind][idx], decisions[idx])
        for k in kinds:
            write_submission(out_dir / "by_kind" / k, machine, section, names, scored.scores[k][idx])

    output = TestOutput(test, scored.scores, decisions)
    if all(c.label in ("normal", "anomaly") for c in test):
        for k in kinds:
            records = [
                ScoreRecord(c.machine, c.section, c.file_name, c.domain, c.label, float(scored.scores[k][i]), int(decisions[i]) if k == kind else None)
                for i, c in enumerate(test)
            ]
            result = evaluate_arrays(records, name=f"{detector.name}:{k}")
            if bootstrap > 0:
                from harken.evaluation.bootstrap import bootstrap_ci

                bootstrap_ci(result, n_resamples=bootstrap, seed=seed)  # stored in result.bootstrap
            output.results[k] = result
            write_tables(out_dir, result, stem="results" if k == kind else f"results_{k}")
        from harken.evaluation.diagnostics import write_diagnostics

        write_diagnostics(out_dir, output.results)
    else:
        log.info("test clips have no labels (evaluation set): wrote scores and submission files only")
    return output
