"""What the report knows about a run directory, read back from the files the pipeline wrote.

The report works from ``RUN/test/scores.csv`` (every score kind, decision and threshold per
clip) rather than from the submission files, because that one file carries the ground truth,
the domains and the thresholds side by side.  The figures are recomputed from it with
:func:`harken.evaluation.evaluate.evaluate_arrays`, the same call ``harken test`` makes, so the
report's table equals ``RUN/test/results.*`` and keeps the per-clip data that bootstrap
intervals and paired comparisons need.  Intervals already stored in ``results.json`` are
reused as they are (same clips, same seed, same numbers); a run tested without them gets them
computed here.

The fitted detector (``RUN/model.pt``) is optional: without PyTorch, or for a damaged file,
the latent projection and the reconstructions are skipped with a note, and the training
curves fall back to ``RUN/logs/*.csv``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from harken.errors import HarkenError, ScoreFileError

log = logging.getLogger(__name__)

#: columns of ``RUN/test/scores.csv`` around the score kinds (see ``harken.pipeline.test_run``)
LEADING = ("file_name", "machine", "section", "domain", "label")
TRAILING = ("decision", "threshold")
#: files in ``RUN/test/`` where the data root and feature cache of the test may be recorded
META_FILES = ("meta.json", "metadata.json", "run.json")


class ReportError(HarkenError):
    """A run directory lacks what the report needs (no test scores, unreadable files)."""


@dataclass
class ScoredClip:
    """One row of ``scores.csv``."""

    file_name: str
    machine: str
    section: str
    domain: str | None
    label: str
    scores: dict[str, float]
    decision: int | None
    threshold: float | None


@dataclass
class RunData:
    """One run as the report sees it; ``notes`` collects what had to be skipped and why."""

    path: Path
    label: str
    system: str
    kind: str
    kinds: list[str]
    config: dict[str, Any]
    clips: list[ScoredClip]
    result: Any = None  # EvaluationResult, None for unlabelled test clips
    history: list[dict[str, Any]] = field(default_factory=list)
    history_source: str = ""
    detector: Any = None
    data_root: Path | None = None
    cache_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return self.result is not None

    def scores(self, kind: str | None = None) -> np.ndarray:
        k = kind or self.kind
        return np.array([c.scores[k] for c in self.clips], dtype=np.float64)

    def groups(self) -> list[tuple[str, str]]:
        """(machine, section) pairs in table order."""
        return sorted({(c.machine, c.section) for c in self.clips})

    def group_label(self, machine: str, section: str) -> str:
        sections = {c.section for c in self.clips if c.machine == machine}
        return machine if len(sections) == 1 else f"{machine} section {section}"

    def test_meta(self) -> dict[str, Any]:
        return read_test_meta(self.path)


def read_scores_csv(path: Path) -> tuple[list[str], list[ScoredClip]]:
    """Score kinds and rows of a ``scores.csv``; a malformed file names the row."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = list(reader)
    except OSError as exc:
        raise ReportError(f"cannot read the test scores ({exc.strerror})", path=path) from None
    if header is None or tuple(header[: len(LEADING)]) != LEADING or len(header) < len(LEADING) + 1:
        raise ScoreFileError(
            f"not a harken scores.csv: the header must start with {', '.join(LEADING)}", path=path
        )
    tail = [h for h in TRAILING if h in header]
    kinds = [h for h in header[len(LEADING) :] if h not in TRAILING]
    if not kinds:
        raise ScoreFileError("no score columns", path=path)
    col = {name: i for i, name in enumerate(header)}
    clips = []
    for n, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ScoreFileError(
                f"row {n} has {len(row)} cells, the header {len(header)}", path=path
            )
        try:
            scores = {k: float(row[col[k]]) for k in kinds}
            decision = (
                int(row[col["decision"]]) if "decision" in tail and row[col["decision"]] else None
            )
            threshold = (
                float(row[col["threshold"]])
                if "threshold" in tail and row[col["threshold"]]
                else None
            )
        except ValueError as exc:
            raise ScoreFileError(f"row {n}: {exc}", path=path) from None
        clips.append(
            ScoredClip(
                file_name=row[0],
                machine=row[1],
                section=row[2],
                domain=row[3] or None,
                label=row[4],
                scores=scores,
                decision=decision,
                threshold=threshold if threshold is None or math.isfinite(threshold) else None,
            )
        )
    if not clips:
        raise ScoreFileError("no scored clips", path=path)
    return kinds, clips


def read_test_meta(run: Path) -> dict[str, Any]:
    """Whatever ``harken test`` recorded about its inputs (``data_root``, ``cache_dir``)."""
    for name in META_FILES:
        path = run / "test" / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning("%s: unreadable, ignored", path)
                continue
            if isinstance(data, dict):
                return data
    return {}


def run_directory(path: str | Path) -> Path:
    """A run directory from the directory itself or its ``model.pt``."""
    p = Path(path)
    if p.is_file() and p.suffix == ".pt":
        p = p.parent
    if not p.is_dir():
        raise ReportError("no run directory here", path=p)
    if not (p / "test" / "scores.csv").is_file():
        raise ReportError(
            "this run has no test scores (test/scores.csv); run `harken test --run RUN --data ROOT` first",
            path=p,
        )
    return p


def load_run(
    path: str | Path,
    *,
    label: str | None = None,
    data_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    load_model: bool = True,
) -> RunData:
    """Read a tested run; ``data_root`` overrides the data root the run recorded."""
    run = run_directory(path)
    config: dict[str, Any] = {}
    if (run / "config.yaml").is_file():
        try:
            config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ReportError(f"invalid YAML: {exc}", path=run / "config.yaml") from None
    kinds, clips = read_scores_csv(run / "test" / "scores.csv")
    data = RunData(
        path=run,
        label=label or run.name,
        system=str(config.get("system", "unknown system")),
        kind=kinds[0],
        kinds=kinds,
        config=config,
        clips=clips,
    )
    if load_model:
        _load_detector(data)
    data.kind = _decision_kind(data)
    _load_history(data)
    _evaluate(data, bootstrap=bootstrap, seed=seed)
    meta = data.test_meta()
    data.data_root = _resolve_data_root(data, data_root, meta)
    data.cache_dir = _resolve_cache_dir(data, cache_dir, meta)
    return data


def _resolve_cache_dir(
    data: RunData, explicit: str | Path | None, meta: dict[str, Any]
) -> Path | None:
    """The feature cache the test filled, so the report reads features instead of recomputing.

    Given, recorded, the demo's ``OUT/cache`` beside ``OUT/run``, or the conventional
    ``<data root>/.harken-cache``; None leaves the system's default.  Any cache gives the same
    features (it is content-keyed), so a wrong guess costs time, never correctness.
    """
    if explicit is not None:
        return Path(explicit)
    if meta.get("cache_dir"):
        return Path(meta["cache_dir"])
    candidates = [data.path.parent / "cache"]
    if data.data_root is not None:
        try:
            from harken.features.cache import CACHE_DIR_NAME
        except ImportError:  # no torch: no model views, so no features to read
            return None
        candidates.append(data.data_root / CACHE_DIR_NAME)
    return next((c for c in candidates if c.is_dir()), None)


def _decision_kind(data: RunData) -> str:
    """The kind the run decided with: the detector's, else the configured one, else the first."""
    if data.detector is not None:
        kind = getattr(data.detector, "decision_kind", None)
        if kind in data.kinds:
            return str(kind)
    wanted = (data.config.get("score") or {}).get("kind")
    return str(wanted) if wanted in data.kinds else data.kinds[0]


def _load_detector(data: RunData) -> None:
    if not (data.path / "model.pt").is_file():
        data.notes.append("no model.pt in the run: no latents, reconstructions or detector history")
        return
    try:
        from harken.training.checkpoint import load_detector
    except ImportError as exc:
        data.notes.append(
            f"the model cannot be loaded without PyTorch ({exc}); install harken[torch]"
        )
        return
    try:
        data.detector = load_detector(data.path)
    except HarkenError as exc:
        data.notes.append(f"the model could not be loaded: {exc}")
    except ImportError as exc:  # a system's optional dependency (e.g. mambapy)
        data.notes.append(f"the model needs a missing package: {exc}")


def _load_history(data: RunData) -> None:
    history = list(getattr(data.detector, "history_", None) or [])
    if history:
        data.history, data.history_source = history, "detector.history_ (model.pt)"
        return
    rows: list[dict[str, Any]] = []
    for path in sorted((data.path / "logs").glob("*.csv")):
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    rows.append({k: _number(v) for k, v in row.items()})
        except (OSError, csv.Error) as exc:
            data.notes.append(f"{path}: unreadable training log ({exc})")
    if rows:
        data.history, data.history_source = rows, "logs/*.csv"


def _number(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value


def _evaluate(data: RunData, *, bootstrap: int, seed: int) -> None:
    from harken.evaluation.evaluate import ScoreRecord, evaluate_arrays

    if not all(c.label in ("normal", "anomaly") for c in data.clips):
        data.notes.append(
            "the test clips have no labels (evaluation set): no table, ROC or paired comparison"
        )
        return
    has_decisions = all(c.decision is not None for c in data.clips)
    records = [
        ScoreRecord(
            c.machine,
            c.section,
            c.file_name,
            c.domain,
            c.label,
            c.scores[data.kind],
            c.decision if has_decisions else None,
        )
        for c in data.clips
    ]
    result = evaluate_arrays(records, name=data.label)
    stored = _stored_bootstrap(data)
    if stored is not None:
        result.bootstrap = stored
    elif bootstrap > 0:
        from harken.evaluation.bootstrap import bootstrap_ci

        bootstrap_ci(result, n_resamples=bootstrap, seed=seed)
        data.notes.append(
            f"the run's results had no confidence intervals: computed here ({bootstrap} stratified resamples, seed {seed})"
        )
    data.result = result


def _stored_bootstrap(data: RunData) -> Any:
    """The intervals ``harken test`` stored for the decision kind, if any."""
    from harken.evaluation.bootstrap import BootstrapResult

    path = data.path / "test" / "results.json"
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    systems = doc.get("systems") if isinstance(doc, dict) else None
    if not isinstance(systems, dict):
        return None
    for name, entry in systems.items():
        # results.json is written for the decision kind; its system name ends with ":<kind>"
        if ":" in str(name) and not str(name).endswith(f":{data.kind}"):
            continue
        boot = entry.get("bootstrap") if isinstance(entry, dict) else None
        if not isinstance(boot, dict) or not boot.get("intervals"):
            continue
        try:
            return BootstrapResult(
                n_resamples=int(boot["n_resamples"]),
                seed=boot.get("seed"),
                confidence=float(boot.get("confidence", 0.95)),
                intervals={k: (float(v[0]), float(v[1])) for k, v in boot["intervals"].items()},
            )
        except (KeyError, TypeError, ValueError, IndexError):
            return None
    return None


def _resolve_data_root(
    data: RunData, explicit: str | Path | None, meta: dict[str, Any]
) -> Path | None:
    """Where the test clips' audio is: given, recorded by ``harken test``, or the demo layout.

    ``harken demo`` writes ``OUT/data`` beside ``OUT/run``, so a sibling ``data`` folder that
    holds the first test clip is taken as well; anything else needs ``--data``.
    """
    if explicit is not None:
        return Path(explicit)
    recorded = meta.get("data_root") or meta.get("data")
    if recorded:
        return Path(recorded)
    sibling = data.path.parent / "data"
    first = data.clips[0]
    if (sibling / first.machine / "test" / first.file_name).is_file():
        return sibling
    return None


def unique_labels(paths: Sequence[Path]) -> list[str]:
    """Short, distinct display names: the folder names, lengthened by parents where they clash."""
    parts = [p.resolve().parts for p in paths]
    depth = 1
    while True:
        labels = ["/".join(ps[-depth:]) for ps in parts]
        if len(set(labels)) == len(labels) or depth >= max(len(ps) for ps in parts):
            break
        depth += 1
    if len(set(labels)) != len(labels):  # the same run given twice
        labels = [f"{label} ({i + 1})" for i, label in enumerate(labels)]
    return labels
