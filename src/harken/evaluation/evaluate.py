"""Entry points: evaluate a directory of submission files, or scores held in memory.

Both end in :func:`harken.evaluation.metrics.evaluate_sections`, so ``harken evaluate``, the
``test`` command and the benchmark compute every figure by the same code.  Scores are paired
with the ground truth by joining on clip name (the evaluator pairs by sorted position, which
silently misaligns a file with one wrong name); any missing, extra or duplicated clip is an
error naming the file and the clip.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from harken.errors import ScoreFileError
from harken.evaluation.groundtruth import GroundTruth, GroundTruthSection, load_ground_truth
from harken.evaluation.metrics import (
    NO_DOMAIN,
    SOURCE,
    TARGET,
    EvaluationResult,
    SectionData,
    evaluate_sections,
)
from harken.evaluation.submission import (
    find_submission_files,
    read_submission,
    score_file_name,
)


class ScoreRecord(NamedTuple):
    """One scored test clip, as the train/test code hands it over.

    ``domain``: "source" / "target" / None (or 0 / 1); ``label``: "normal" / "anomaly" (or 0 / 1);
    ``decision``: 0 / 1 or None when the system made no decisions.
    """

    machine: str
    section: str
    file_name: str
    domain: str | int | None
    label: str | int
    score: float
    decision: int | None = None


def evaluate_directory(
    scores_dir: str | Path,
    ground_truth: str | Path | GroundTruth,
    *,
    name: str | None = None,
    with_evaluator_ci95: bool = True,
) -> EvaluationResult:
    """Evaluate the official-format score (and decision) files in ``scores_dir``.

    ``ground_truth``: a path (organizers' layout or labelled dataset root, detected) or an
    already loaded :data:`GroundTruth`.  Every machine/section of the ground truth needs a score
    file and every score file needs ground truth.  Decisions are optional, but all or none.
    ``with_evaluator_ci95`` reproduces the evaluator's "official score ci95" line as well.
    """
    scores_dir = Path(scores_dir)
    gt = ground_truth if isinstance(ground_truth, dict) else load_ground_truth(ground_truth)
    files = find_submission_files(scores_dir)
    for key, entry in sorted(files.items()):
        if key not in gt:
            known = sorted({m for m, _ in gt})
            same_machine = sorted(s for m, s in gt if m == key[0])
            detail = (
                f"the ground truth has sections {', '.join(same_machine)} of {key[0]}"
                if same_machine
                else f"the ground truth knows only machine types {', '.join(known)}"
            )
            raise ScoreFileError(
                f"no ground truth for {key[0]} section {key[1]} ({detail})", path=entry.scores
            )
    missing = [key for key in sorted(gt) if key not in files]
    if missing:
        machine, section = missing[0]
        more = f" (and {len(missing) - 1} more machine/section)" if len(missing) > 1 else ""
        raise ScoreFileError(
            f"missing score file {score_file_name(machine, section)} for {machine} section {section}"
            f" of the ground truth{more}",
            path=scores_dir,
        )
    with_decisions = sorted(key for key, e in files.items() if e.decisions is not None)
    if with_decisions and len(with_decisions) != len(files):
        lacking = next(e for key, e in sorted(files.items()) if e.decisions is None)
        raise ScoreFileError(
            "decision files are optional but must be given for every score file or for none; "
            f"no decision file for {lacking.scores.name if lacking.scores else lacking.machine}",
            path=scores_dir,
        )
    sections = []
    for key in sorted(gt):
        entry = files[key]
        scores, decisions = read_submission(entry)
        sections.append(_join(gt[key], scores, decisions, str(entry.scores)))
    return evaluate_sections(
        sections,
        name=scores_dir.name if name is None else name,
        with_evaluator_ci95=with_evaluator_ci95,
    )


def _join(
    truth: GroundTruthSection,
    scores: Mapping[str, float],
    decisions: Mapping[str, int] | None,
    origin: str,
) -> SectionData:
    """Align one section's scores with its ground truth by clip name, refusing any mismatch."""
    names = truth.clip_names
    missing = [c for c in names if c not in scores]
    wanted = set(names)
    extra = [c for c in scores if c not in wanted]
    if missing or extra:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} clip(s) of the ground truth have no score, e.g. {missing[0]}"
            )
        if extra:
            parts.append(f"{len(extra)} clip(s) are not in the ground truth, e.g. {extra[0]}")
        raise ScoreFileError(
            f"{truth.machine} section {truth.section}: "
            + "; ".join(parts)
            + f" (ground truth: {truth.origin})",
            path=origin,
        )
    if not truth.labels.any() or truth.labels.all():
        raise ScoreFileError(
            f"{truth.machine} section {truth.section}: the ground truth needs both normal and "
            "anomalous clips to compute an AUC",
            path=truth.origin,
        )
    return SectionData(
        machine=truth.machine,
        section=truth.section,
        clip_names=names,
        labels=truth.labels,
        domains=truth.domains,
        scores=np.array([scores[c] for c in names], dtype=np.float64),
        decisions=None if decisions is None else np.array([decisions[c] for c in names]),
        origin=origin,
    )


_LABELS = {"normal": 0, "anomaly": 1, "anomalous": 1, 0: 0, 1: 1}
_DOMAINS = {"source": SOURCE, "target": TARGET, None: NO_DOMAIN, 0: SOURCE, 1: TARGET}


def evaluate_arrays(
    records: Iterable[ScoreRecord | tuple[Any, ...]],
    *,
    name: str = "",
    with_evaluator_ci95: bool = False,
) -> EvaluationResult:
    """Evaluate in-memory scores: one record (machine, section, file name, domain, label,
    score[, decision]) per test clip.

    Records of a section are sorted by file name, so the result does not depend on the order
    the clips were scored in.  Labels must be known (normal / anomaly) for every clip.
    """
    grouped: dict[tuple[str, str], list[ScoreRecord]] = {}
    for raw in records:
        rec = raw if isinstance(raw, ScoreRecord) else ScoreRecord(*raw)
        section = f"{int(rec.section):02d}" if isinstance(rec.section, int) else str(rec.section)
        grouped.setdefault((str(rec.machine), section), []).append(rec)
    if not grouped:
        raise ScoreFileError("no scores to evaluate")
    sections = []
    for (machine, section), recs in sorted(grouped.items()):
        recs.sort(key=lambda r: r.file_name)
        names = [str(r.file_name) for r in recs]
        for a, b in zip(names, names[1:], strict=False):
            if a == b:
                raise ScoreFileError(f"{machine} section {section}: clip {a} scored twice")
        labels, domains, decisions = [], [], []
        for r in recs:
            label = _LABELS.get(r.label.lower() if isinstance(r.label, str) else _int_or(r.label))
            if label is None:
                raise ScoreFileError(
                    f"{machine} section {section}: clip {r.file_name} has label {r.label!r}; "
                    "only normal/anomaly clips can be evaluated"
                )
            domain = _DOMAINS.get(
                r.domain.lower() if isinstance(r.domain, str) else _int_or(r.domain), "bad"
            )
            if domain == "bad":
                raise ScoreFileError(
                    f"{machine} section {section}: clip {r.file_name} has domain {r.domain!r}"
                )
            if not np.isfinite(float(r.score)):
                raise ScoreFileError(
                    f"{machine} section {section}: clip {r.file_name} has score {r.score!r}"
                )
            labels.append(label)
            domains.append(domain)
            decisions.append(r.decision)
        has = [d is not None for d in decisions]
        if any(has) and not all(has):
            raise ScoreFileError(
                f"{machine} section {section}: some clips have decisions, others not"
            )
        if all(has) and any(d not in (0, 1) for d in decisions):
            bad = next(r for r in recs if r.decision not in (0, 1))
            raise ScoreFileError(
                f"{machine} section {section}: clip {bad.file_name} has decision {bad.decision!r}"
            )
        sections.append(
            SectionData(
                machine=machine,
                section=section,
                clip_names=tuple(names),
                labels=np.array(labels),
                domains=np.array(domains),
                scores=np.array([float(r.score) for r in recs]),
                decisions=np.array(decisions, dtype=np.int8) if all(has) else None,
            )
        )
    try:
        return evaluate_sections(sections, name=name, with_evaluator_ci95=with_evaluator_ci95)
    except ValueError as exc:
        raise ScoreFileError(str(exc)) from None


def _int_or(value: Any) -> Any:
    if value is None:
        return None
    try:
        return int(value) if float(value) == int(value) else value
    except (TypeError, ValueError):
        return value
