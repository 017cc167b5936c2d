"""Official DCASE Task 2 submission files: strict readers and atomic writers.

Format (the organizers' evaluator and every challenge submission):

* ``anomaly_score_<machine>_section_<XX>_test.csv``: no header, one ``file_name,score`` row per
  test clip (higher = more anomalous);
* ``decision_result_<machine>_section_<XX>_test.csv``: no header, ``file_name,0|1``
  (1 = anomalous).

The evaluator pairs rows by sorted position and checks only counts, so a wrong clip name in a
submission silently shifts every score by one clip.  The readers here refuse anything they
cannot read unambiguously (header rows, blank or short rows, duplicated clips, NaN/inf scores,
decisions other than 0/1) and name the file, row and clip, so no row is ever dropped quietly.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harken.atomic import atomic_write_text
from harken.errors import ScoreFileError

SCORE_PREFIX = "anomaly_score_"
DECISION_PREFIX = "decision_result_"
_NAME_RE = re.compile(
    r"^(anomaly_score|decision_result)_(?P<machine>.+)_section_(?P<section>\d{2})_test\.csv$"
)


def score_file_name(machine: str, section: str | int) -> str:
    return f"{SCORE_PREFIX}{machine}_section_{_section_text(section)}_test.csv"


def decision_file_name(machine: str, section: str | int) -> str:
    return f"{DECISION_PREFIX}{machine}_section_{_section_text(section)}_test.csv"


def _section_text(section: str | int) -> str:
    text = f"{int(section):02d}" if isinstance(section, int) else str(section)
    if not re.fullmatch(r"\d{2}", text):
        raise ValueError(f"section must be two digits, got {section!r}")
    return text


def parse_submission_name(file_name: str) -> tuple[str, str, str] | None:
    """``(kind, machine, section)`` of an official file name (kind "score" / "decision"), else None."""
    m = _NAME_RE.match(file_name)
    if m is None:
        return None
    kind = "score" if m.group(1) == "anomaly_score" else "decision"
    return kind, m.group("machine"), m.group("section")


@dataclass
class SubmissionFiles:
    machine: str
    section: str
    scores: Path | None = None
    decisions: Path | None = None


def find_submission_files(directory: str | Path) -> dict[tuple[str, str], SubmissionFiles]:
    """Score and decision files of a submission directory, keyed by (machine, section).

    Other files (results, JSON, READMEs) are ignored, but a file that starts like a submission
    file and does not follow the naming (e.g. the DCASE 2021 ``..._source_test.csv``) is an
    error: ignoring it would evaluate a machine without telling the user why it is missing.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ScoreFileError("not a directory of score files", path=directory)
    found: dict[tuple[str, str], SubmissionFiles] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or not path.name.startswith((SCORE_PREFIX, DECISION_PREFIX)):
            continue
        parsed = parse_submission_name(path.name)
        if parsed is None:
            raise ScoreFileError(
                "file name does not follow the official format "
                "anomaly_score_<machine>_section_<XX>_test.csv / decision_result_<machine>_section_<XX>_test.csv",
                path=path,
            )
        kind, machine, section = parsed
        entry = found.setdefault((machine, section), SubmissionFiles(machine, section))
        setattr(entry, "scores" if kind == "score" else "decisions", path)
    for entry in found.values():
        if entry.scores is None:
            raise ScoreFileError(
                f"decision file without its score file {score_file_name(entry.machine, entry.section)}",
                path=entry.decisions,
            )
    return found


# --------------------------------------------------------------------------- reading
def read_rows(path: Path) -> list[tuple[int, str, str]]:
    """``(line number, clip, value)`` of a two-column, header-less CSV; refuses anything else."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ScoreFileError("file not found", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScoreFileError(f"cannot read: {exc}", path=path) from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()  # a trailing newline (or several) is not a row
    if not lines:
        raise ScoreFileError("file is empty", path=path)
    out: list[tuple[int, str, str]] = []
    for lineno, fields in enumerate(csv.reader(lines), start=1):
        if len(fields) != 2:
            shown = ",".join(fields)
            raise ScoreFileError(
                f"row {lineno}: expected 2 fields 'file_name,value', got {len(fields)}: {shown!r}",
                path=path,
            )
        clip, value = fields[0].strip(), fields[1].strip()
        if not clip:
            raise ScoreFileError(f"row {lineno}: empty clip name", path=path)
        out.append((lineno, _base_name(clip), value))
    return out


def _base_name(clip: str) -> str:
    # Some systems write "test/section_00_0001.wav"; the clip is identified by its base name.
    return clip.replace("\\", "/").rsplit("/", 1)[-1]


def check_duplicate(seen: dict[str, int], clip: str, lineno: int, path: Path) -> None:
    if clip in seen:
        raise ScoreFileError(
            f"row {lineno}: clip {clip} duplicated (first in row {seen[clip]})", path=path
        )
    seen[clip] = lineno


def read_scores(path: str | Path) -> dict[str, float]:
    """Clip name -> score, in file order.  Raises :class:`ScoreFileError` on any bad row."""
    path = Path(path)
    seen: dict[str, int] = {}
    scores: dict[str, float] = {}
    for lineno, clip, value in read_rows(path):
        check_duplicate(seen, clip, lineno, path)
        try:
            score = float(value)
        except ValueError:
            hint = " (a header row? the official format has none)" if lineno == 1 else ""
            raise ScoreFileError(
                f"row {lineno}: clip {clip}: score {value!r} is not a number{hint}", path=path
            ) from None
        if not math.isfinite(score):
            raise ScoreFileError(
                f"row {lineno}: clip {clip}: score is {value!r}, not a finite number", path=path
            )
        scores[clip] = score
    return scores


def read_decisions(path: str | Path) -> dict[str, int]:
    """Clip name -> 0/1 decision, in file order.  ``1.0`` is read as 1; anything but 0/1 is an error."""
    path = Path(path)
    seen: dict[str, int] = {}
    decisions: dict[str, int] = {}
    for lineno, clip, value in read_rows(path):
        check_duplicate(seen, clip, lineno, path)
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if number not in (0.0, 1.0):
            hint = (
                " (a header row? the official format has none)"
                if lineno == 1 and math.isnan(number)
                else ""
            )
            raise ScoreFileError(
                f"row {lineno}: clip {clip}: decision {value!r} is not 0 or 1{hint}", path=path
            )
        decisions[clip] = int(number)
    return decisions


def read_submission(files: SubmissionFiles) -> tuple[dict[str, float], dict[str, int] | None]:
    """Scores and (if present) decisions of one machine/section, with matching clip lists."""
    assert files.scores is not None
    scores = read_scores(files.scores)
    if files.decisions is None:
        return scores, None
    decisions = read_decisions(files.decisions)
    only_scores = [c for c in scores if c not in decisions]
    only_decisions = [c for c in decisions if c not in scores]
    if only_scores or only_decisions:
        parts = []
        if only_scores:
            parts.append(
                f"{len(only_scores)} clip(s) of {files.scores.name} missing here, e.g. {only_scores[0]}"
            )
        if only_decisions:
            parts.append(
                f"{len(only_decisions)} clip(s) not in {files.scores.name}, e.g. {only_decisions[0]}"
            )
        raise ScoreFileError(
            "clip list differs from the score file: " + "; ".join(parts), path=files.decisions
        )
    return scores, decisions


# --------------------------------------------------------------------------- writing
def _check_name(name: str) -> str:
    base = _base_name(str(name))
    # Non-printable characters include the other line breaks (\x1e, \u2028...) that would split
    # the row when the file is read back, and a BOM that the reader would strip.
    if not base or any(ch in base for ch in ',"') or not base.isprintable() or base != base.strip():
        raise ScoreFileError(f"clip name {name!r} cannot be written to a submission CSV")
    return base


def format_scores(clip_names: Sequence[str], scores: Sequence[float] | np.ndarray) -> str:
    """The text of an anomaly-score file: ``name,repr(float)`` rows, no header.

    ``repr`` is Python's shortest round-trip text, so reading the file back gives the exact
    float that was written (no rounding between a run's results and its submission).
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(values) != len(clip_names):
        raise ValueError(f"{len(clip_names)} clip names but {len(values)} scores")
    buf = io.StringIO()
    seen: set[str] = set()
    for name, score in zip(clip_names, values, strict=True):
        base = _check_name(name)
        if base in seen:
            raise ScoreFileError(f"clip {base} given twice")
        seen.add(base)
        if not math.isfinite(score):
            raise ScoreFileError(f"clip {base}: score {score!r} is not finite")
        buf.write(f"{base},{float(score)!r}\n")
    return buf.getvalue()


def format_decisions(clip_names: Sequence[str], decisions: Sequence[int] | np.ndarray) -> str:
    values = np.asarray(decisions).reshape(-1)
    if len(values) != len(clip_names):
        raise ValueError(f"{len(clip_names)} clip names but {len(values)} decisions")
    buf = io.StringIO()
    for name, d in zip(clip_names, values, strict=True):
        base = _check_name(name)
        if d not in (0, 1):
            raise ScoreFileError(f"clip {base}: decision {d!r} is not 0 or 1")
        buf.write(f"{base},{int(d)}\n")
    return buf.getvalue()


def write_submission(
    out_dir: str | Path,
    machine: str,
    section: str | int,
    clip_names: Sequence[str],
    scores: Sequence[float] | np.ndarray,
    decisions: Sequence[int] | np.ndarray | None = None,
) -> tuple[Path, Path | None]:
    """Write one machine/section's score (and decision) file atomically; returns their paths."""
    out_dir = Path(out_dir)
    score_text = format_scores(clip_names, scores)
    decision_text = None if decisions is None else format_decisions(clip_names, decisions)
    score_path = out_dir / score_file_name(machine, section)
    atomic_write_text(score_path, score_text)
    decision_path = None
    if decision_text is not None:
        decision_path = out_dir / decision_file_name(machine, section)
        atomic_write_text(decision_path, decision_text)
    return score_path, decision_path
