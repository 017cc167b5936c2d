"""Field use of a trained model: scoring files, ONNX export, a torch-free runtime, a service.

This package module holds what every field-use path shares and is torch-free, so that
``harken score --onnx`` runs in an install without PyTorch:

* :class:`FieldClip`, the record of a file scored outside a dataset, and :func:`field_clip`,
  which decides which machine type and section a file is scored as (its DCASE / MIMII name,
  or ``--machine`` / ``--section``);
* :func:`collect_audio_files`, the recursive expansion of files and folders given on a command
  line, keeping unreadable arguments as failures rather than stopping;
* :class:`ClipScore`, one scored recording with its window timeline (or the reason it could
  not be scored), and the writers of the terminal table, CSV and JSON outputs.

The PyTorch path (:mod:`harken.api`) and the ONNX path (:mod:`harken.deploy.onnx_runtime`) both
produce :class:`ClipScore` records, so ``harken score --run`` and ``harken score --onnx`` print
and write exactly the same columns.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harken.atomic import atomic_write_json, atomic_write_text
from harken.errors import ClipNameError, ConfigError

AUDIO_SUFFIXES = (".wav", ".flac")
#: the threshold of a machine type and section not seen in training (see harken.systems.base)
GLOBAL_KEY = "*"
_SECTION = re.compile(r"[0-9]{1,2}", re.ASCII)


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class FieldClip:
    """A recording scored outside a dataset: where it is and what it is scored as.

    It carries the attributes the detectors read from a :class:`~harken.data.dataset.Clip`
    (``path``, ``machine``, ``section``, ``domain``, ``split``, ``label``), so it can stand in
    for one; ``path`` is None for an upload held in memory, ``name`` labels it in every output.
    """

    path: Path | None
    machine: str
    section: str
    name: str
    domain: str | None = None
    split: str = "test"
    label: str = "unknown"

    @property
    def file_name(self) -> str:
        return Path(self.name).name


def normalize_section(section: str | int | None) -> str | None:
    """``"00"`` from ``0``, ``"0"`` or ``"00"``: thresholds are keyed by two-digit sections."""
    if section is None:
        return None
    text = str(section).strip()
    if not _SECTION.fullmatch(text):
        raise ConfigError(f"section must be a number from 00 to 99, got {section!r}")
    return f"{int(text):02d}"


def field_clip(
    path: str | Path,
    *,
    machine: str | None = None,
    section: str | int | None = None,
) -> FieldClip:
    """The machine type and section ``path`` is scored as.

    A DCASE or MIMII name gives the section (and the folder layout the machine type, as
    :func:`harken.data.dataset.clip_from_path` reads it); ``machine`` / ``section`` override
    them.  A name that fits no pattern says nothing, so it needs ``machine`` (the section then
    defaults to ``00``): guessing a machine type would silently pick the wrong threshold.
    """
    from harken.data.dataset import clip_from_path

    path = Path(path)
    section = normalize_section(section)
    try:
        clip = clip_from_path(path, machine=machine)
    except ClipNameError as exc:
        if machine is None:
            reason = str(exc).removeprefix(f"{path}: ")
            raise ClipNameError(
                f"cannot tell the machine type and section from this name ({reason}); "
                "pass --machine (and --section, default 00) to score it",
                path=path,
            ) from None
        return FieldClip(path, machine, section or "00", str(path))
    return FieldClip(
        path,
        clip.machine,
        section or clip.section,
        str(path),
        domain=clip.domain,
        split=clip.split,
        label=clip.label,
    )


def collect_audio_files(paths: Iterable[str | Path]) -> list[tuple[Path, str | None]]:
    """Files to score, in the order given, folders expanded recursively (sorted).

    Each entry is ``(path, problem)``; ``problem`` is None for a file to score and the reason
    otherwise (a missing path, a folder without WAV/FLAC files), so one bad argument is
    reported with the others instead of ending the run.  Hidden files (``._x.wav`` from macOS
    archives) are skipped inside folders.  A file named explicitly must be ``.wav`` or
    ``.flac`` too (any case): libsndfile would also decode OGG or AIFF, but the model was only
    ever checked on what the data sets ship, and the service accepts the same two.
    """
    out: list[tuple[Path, str | None]] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in AUDIO_SUFFIXES
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                out.append((path, "folder holds no .wav or .flac files"))
            for p in found:
                if p not in seen:
                    seen.add(p)
                    out.append((p, None))
        elif path.exists():
            if path.suffix.lower() not in AUDIO_SUFFIXES:
                out.append((path, f"not a .wav or .flac file ({path.suffix or 'no extension'})"))
            elif path not in seen:
                seen.add(path)
                out.append((path, None))
        else:
            out.append((path, "no such file or folder"))
    return out


# ----------------------------------------------------------------------------- results
@dataclass
class ClipScore:
    """One recording's score, decision and window timeline, or why it could not be scored.

    ``score`` is the clip score of the model's decision kind (``kind``): the configured
    aggregate (``window.aggregate``) of the window scores, fused kinds standardized as in
    training.  ``window_scores`` are that kind per window, starting at ``window_starts``
    seconds and ``window_seconds`` long; a clip as long as one window has one.
    ``threshold_key`` says which threshold decided (``"fan/00"``, or ``"*"`` for a machine
    type or section the model was not calibrated on).
    """

    source: str
    machine: str | None = None
    section: str | None = None
    kind: str = ""
    score: float | None = None
    threshold: float | None = None
    threshold_key: str | None = None
    decision: int | None = None
    duration_s: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    window_starts: list[float] = field(default_factory=list)
    window_scores: list[float] = field(default_factory=list)
    window_seconds: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def timeline(self) -> list[tuple[float, float]]:
        """``(start in seconds, window score)`` pairs along the recording."""
        return list(zip(self.window_starts, self.window_scores, strict=True))

    def peak(self) -> tuple[float, float] | None:
        """``(start, score)`` of the highest-scoring window (the first on ties)."""
        if not self.window_scores:
            return None
        i = max(range(len(self.window_scores)), key=self.window_scores.__getitem__)
        return self.window_starts[i], self.window_scores[i]

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.source,
            "machine": self.machine,
            "section": self.section,
            "kind": self.kind,
            "score": self.score,
            "threshold": self.threshold,
            "threshold_key": self.threshold_key,
            "decision": self.decision,
            "duration_s": self.duration_s,
            "scores": dict(self.scores),
            "window_seconds": self.window_seconds,
            "timeline": [{"start_s": s, "score": v} for s, v in self.timeline],
            "error": self.error,
        }

    @classmethod
    def failed(cls, source: str, reason: str, clip: Any | None = None) -> ClipScore:
        return cls(
            source=source,
            machine=getattr(clip, "machine", None),
            section=getattr(clip, "section", None),
            error=reason,
        )


def threshold_key(thresholds: dict[str, float], machine: str | None, section: str | None) -> str:
    """The key :meth:`Detector.threshold_for` falls back along: ``machine/section``, else ``*``."""
    key = f"{machine}/{section}"
    return key if key in thresholds else GLOBAL_KEY


def error_text(exc: BaseException) -> str:
    """An exception as one line for a table cell or a JSON field (the path prefix dropped)."""
    path = getattr(exc, "path", None)
    text = str(exc)
    if path is not None:
        text = text.removeprefix(f"{path}: ")
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


# ----------------------------------------------------------------------------- output
_LEVELS = " .:-=+*#%@"


def sparkline(values: Sequence[float], width: int = 64) -> str:
    """An ASCII strip of ``values`` (max-pooled to ``width``): where along a recording it peaks."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return ""
    if len(vals) > width:
        step = len(vals) / width
        vals = [max(vals[int(i * step) : max(int((i + 1) * step), int(i * step) + 1)]) for i in range(width)]
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(_LEVELS[min(len(_LEVELS) - 1, int((v - lo) / span * (len(_LEVELS) - 1) + 0.5))] for v in vals)


def _fmt(value: float | None, digits: int = 6) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}"


def format_table(results: Sequence[ClipScore], *, timeline: bool = False) -> str:
    """The terminal view: one row per file, a timeline strip for multi-window recordings."""
    rows = [("file", "machine", "section", "score", "threshold", "decision", "windows")]
    for r in results:
        if r.ok:
            decision = "ANOMALY" if r.decision else "normal"
            rows.append(
                (
                    r.source,
                    r.machine or "-",
                    r.section or "-",
                    _fmt(r.score),
                    _fmt(r.threshold) + ("" if r.threshold_key != GLOBAL_KEY else " (*)"),
                    decision,
                    str(len(r.window_scores)),
                )
            )
        else:
            rows.append((r.source, r.machine or "-", r.section or "-", "-", "-", "ERROR", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    extra: list[str] = []
    for r in results:
        if r.ok and len(r.window_scores) > 1:
            peak = r.peak()
            assert peak is not None
            hop = r.window_starts[1] - r.window_starts[0] if len(r.window_starts) > 1 else 0.0
            extra.append(
                f"{r.source}: {len(r.window_scores)} windows of {_fmt(r.window_seconds, 3)} s every "
                f"{_fmt(hop, 3)} s; max {_fmt(peak[1])} at {peak[0]:.2f} s"
            )
            extra.append(f"  |{sparkline(r.window_scores)}|")
            if timeline:
                extra += [f"  {s:9.2f} s  {_fmt(v)}" for s, v in r.timeline]
    if extra:
        lines += ["", "timeline (score of each window along the recording):", *extra]
    if any(r.threshold_key == GLOBAL_KEY for r in results if r.ok):
        lines += ["", "(*) machine type/section not calibrated in training: the global threshold decided"]
    return "\n".join(lines)


SCORE_COLUMNS = (
    "file", "machine", "section", "kind", "score", "threshold", "threshold_key", "decision",
    "duration_s", "n_windows", "peak_start_s", "peak_score", "error",
)  # fmt: skip


def scores_csv(results: Sequence[ClipScore]) -> str:
    """One row per file; floats as ``repr`` so a reread gives the same number."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SCORE_COLUMNS)
    for r in results:
        peak = r.peak()
        writer.writerow(
            [
                r.source, r.machine or "", r.section or "", r.kind if r.ok else "",
                _repr(r.score), _repr(r.threshold), r.threshold_key or "",
                "" if r.decision is None else r.decision, _repr(r.duration_s),
                len(r.window_scores) if r.ok else "", _repr(peak[0] if peak else None),
                _repr(peak[1] if peak else None), r.error or "",
            ]
        )  # fmt: skip
    return buffer.getvalue()


def timeline_csv(results: Sequence[ClipScore]) -> str:
    """One row per window of every scored file: the timeline in long format."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "window", "start_s", "end_s", "score"])
    for r in results:
        length = r.window_seconds or 0.0
        for i, (start, value) in enumerate(r.timeline):
            writer.writerow([r.source, i, _repr(start), _repr(start + length), _repr(value)])
    return buffer.getvalue()


def _repr(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def write_outputs(out_dir: str | Path, results: Sequence[ClipScore], meta: dict[str, Any]) -> list[Path]:
    """``scores.csv``, ``timeline.csv`` and ``scores.json`` in ``out_dir``, each written atomically."""
    out = Path(out_dir)
    paths = [out / "scores.csv", out / "timeline.csv", out / "scores.json"]
    atomic_write_text(paths[0], scores_csv(results))
    atomic_write_text(paths[1], timeline_csv(results))
    atomic_write_json(
        paths[2],
        {**meta, "n_files": len(results), "n_failed": sum(not r.ok for r in results), "clips": [r.to_dict() for r in results]},
    )
    return paths
