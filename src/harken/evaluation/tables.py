"""Table 1 of the report (machines x AUC-S / AUC-T / pAUC, hmean, amean, TOTAL (Ω)) as text,
Markdown, CSV and JSON, for one system or several side by side, with paired differences.

All renderers read the figures from ``EvaluationResult.figures()`` and the intervals from
``result.bootstrap`` / ``PairedComparison`` by the same keys, so the four formats cannot
disagree.  Text and Markdown round to ``digits``; CSV and JSON keep full precision.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harken.atomic import atomic_write_text
from harken.evaluation.bootstrap import PairedComparison
from harken.evaluation.metrics import TABLE_METRICS, EvaluationResult, hmean

COLUMN_TITLES = {"auc_source": "AUC-S", "auc_target": "AUC-T", "pauc": "pAUC"}
TOTAL_LABEL = "TOTAL (Ω)"
FORMATS = ("text", "markdown", "csv", "json")
SUFFIXES = {"text": ".txt", "markdown": ".md", "csv": ".csv", "json": ".json"}

Results = EvaluationResult | Sequence[EvaluationResult] | Mapping[str, EvaluationResult]


@dataclass(frozen=True)
class _Row:
    label: str
    keys: dict[str, str]  # metric -> figure key
    kind: str  # "machine" | "section" | "summary" | "total"
    machine: str = ""
    section: str = ""


def _named(results: Results) -> list[tuple[str, EvaluationResult]]:
    if isinstance(results, EvaluationResult):
        items = [(results.name or "system", results)]
    elif isinstance(results, Mapping):
        items = [(str(k), v) for k, v in results.items()]
    else:
        items = [(r.name or f"system {i + 1}", r) for i, r in enumerate(results)]
    if not items:
        raise ValueError("no results to tabulate")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise ValueError(f"system names must differ: {names}")
    return items


def _rows(results: Sequence[EvaluationResult]) -> list[_Row]:
    sections: dict[str, set[str]] = {}
    for r in results:
        for s in r.sections:
            sections.setdefault(s.machine, set()).add(s.section)
    rows: list[_Row] = []
    for machine in sorted(sections):
        secs = sorted(sections[machine])
        if len(secs) == 1:
            keys = {m: f"{machine}/{secs[0]}/{m}" for m in TABLE_METRICS}
            rows.append(_Row(machine, keys, "machine", machine, secs[0]))
            continue
        rows.append(
            _Row(machine, {m: f"machine/{machine}/{m}" for m in TABLE_METRICS}, "machine", machine)
        )
        for s in secs:
            keys = {m: f"{machine}/{s}/{m}" for m in TABLE_METRICS}
            rows.append(_Row(f"  section {s}", keys, "section", machine, s))
    rows.append(_Row("hmean", {m: f"hmean/{m}" for m in TABLE_METRICS}, "summary"))
    rows.append(_Row("amean", {m: f"amean/{m}" for m in TABLE_METRICS}, "summary"))
    # The paper prints the official score under the middle column, spanning all three.
    rows.append(_Row(TOTAL_LABEL, {"auc_target": "official_score"}, "total"))
    return rows


def _fmt(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _cell(
    value: float | None, ci: tuple[float, float] | None, digits: int, signed: bool = False
) -> str:
    text = _fmt(value, digits, signed)
    if value is not None and ci is not None:
        text += f" [{_fmt(ci[0], digits, signed)}, {_fmt(ci[1], digits, signed)}]"
    return text


def _grid(
    named: list[tuple[str, EvaluationResult]], digits: int, show_ci: bool
) -> tuple[list[str], list[list[str]]]:
    """Header cells (one per system x metric) and one list of cells per row."""
    rows = _rows([r for _, r in named])
    figures = [(r.figures(), r.bootstrap if show_ci else None) for _, r in named]
    body = []
    for row in rows:
        cells = [row.label]
        for fig, boot in figures:
            for m in TABLE_METRICS:
                key = row.keys.get(m)
                value = fig.get(key) if key else None
                ci = boot.ci(key) if (boot is not None and key) else None
                cells.append(_cell(value, ci, digits) if key else "")
        body.append(cells)
    header = [COLUMN_TITLES[m] for _ in named for m in TABLE_METRICS]
    return header, body


def _diff_grid(comp: PairedComparison, rows: list[_Row], digits: int) -> list[list[str]]:
    body = []
    for row in rows:
        cells = [row.label]
        for m in TABLE_METRICS:
            key = row.keys.get(m)
            cells.append(
                _cell(comp.differences.get(key), comp.ci(key), digits, signed=True) if key else ""
            )
        if row.kind == "total" and "official_score" in comp.p_not_better:
            cells.append(f"P(Δ≤0) = {comp.p_not_better['official_score']:.3f}")
        body.append(cells)
    return body


def _decision_rows(result: EvaluationResult, digits: int) -> tuple[list[str], list[list[str]]]:
    cols = [
        (f"{t}-{d[0].upper()}", f"{m}_{d}")
        for m, t in (("precision", "P"), ("recall", "R"), ("f1", "F1"))
        for d in ("source", "target")
    ]
    body = []
    for s in result.sections:
        label = (
            s.machine
            if len({x.section for x in result.sections if x.machine == s.machine}) == 1
            else f"{s.machine} {s.section}"
        )
        body.append([label] + [_fmt(getattr(s, attr), digits) for _, attr in cols])
    values = {
        attr: [getattr(s, attr) for s in result.sections if getattr(s, attr) is not None]
        for _, attr in cols
    }
    body.append(
        ["hmean"] + [_fmt(hmean(values[a]) if values[a] else None, digits) for _, a in cols]
    )
    body.append(
        ["amean"]
        + [_fmt(sum(values[a]) / len(values[a]) if values[a] else None, digits) for _, a in cols]
    )
    return [t for t, _ in cols], body


def _diff_note(comp: PairedComparison) -> str:
    if not comp.intervals:
        return "; no bootstrap intervals"
    return (
        f"; [low, high]: {comp.confidence:.0%} interval from {comp.n_resamples} paired resamples, "
        f"seed {comp.seed}; P(Δ≤0): share of resamples where {comp.name_b} is not better"
    )


# --------------------------------------------------------------------------- text
def _align(lines: list[list[str]]) -> list[str]:
    widths = [
        max(len(line[i]) if i < len(line) else 0 for line in lines)
        for i in range(max(map(len, lines)))
    ]
    out = []
    for line in lines:
        cells = [c.ljust(widths[i]) for i, c in enumerate(line)]
        out.append("  ".join(cells).rstrip())
    return out


def _ci_note(named: list[tuple[str, EvaluationResult]], show_ci: bool) -> str:
    boots = [r.bootstrap for _, r in named if r.bootstrap is not None]
    if not show_ci or not boots:
        return ""
    b = boots[0]
    return (
        f"[low, high]: {b.confidence:.0%} percentile interval, stratified bootstrap, "
        f"{b.n_resamples} resamples, seed {b.seed}"
    )


def _render_text(
    named: list[tuple[str, EvaluationResult]],
    comparisons: Sequence[PairedComparison],
    digits: int,
    show_ci: bool,
) -> str:
    header, body = _grid(named, digits, show_ci)
    lines: list[list[str]] = []
    if len(named) > 1:
        group = ["System"]
        for name, _ in named:
            group += [name, "", ""]
        lines.append(group)
    lines.append(["Machine"] + header)
    lines.extend(body)
    aligned = _align(lines)
    rule = "-" * max(len(x) for x in aligned)
    title_lines = []
    if len(named) == 1:
        name, r = named[0]
        n_clips = sum(s.n_clips for s in r.sections)
        title_lines.append(
            f"{name}: {len(r.machine_names)} machine types, {len(r.sections)} sections, {n_clips} clips"
        )
    head_rows = 2 if len(named) > 1 else 1
    n_summary = 3
    out = (
        title_lines
        + [rule]
        + aligned[:head_rows]
        + [rule]
        + aligned[head_rows:-n_summary]
        + [rule]
        + aligned[-n_summary:]
        + [rule]
    )
    note = _ci_note(named, show_ci)
    if note:
        out.append(note)
    for name, r in named:
        if r.has_decisions:
            dh, db = _decision_rows(r, digits)
            block = _align([["Decisions" if len(named) == 1 else f"Decisions ({name})"] + dh, *db])
            dr = "-" * max(len(x) for x in block)
            out += ["", dr, block[0], dr, *block[1:-2], dr, *block[-2:], dr]
    rows = _rows([r for _, r in named])
    for comp in comparisons:
        lines = [["Machine"] + [f"Δ{COLUMN_TITLES[m]}" for m in TABLE_METRICS]] + _diff_grid(
            comp, rows, digits
        )
        block = _align(lines)
        dr = "-" * max(len(x) for x in block)
        out += [
            "",
            f"Paired difference {comp.label} (same clips{_diff_note(comp)})",
            dr,
            block[0],
            dr,
            *block[1:-3],
            dr,
            *block[-3:],
            dr,
        ]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- markdown
def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.strip().replace("|", "\\|") for c in cells) + " |"

    width = len(header)
    out = [line(header), "|" + "|".join(["---"] * width) + "|"]
    out += [line(row + [""] * (width - len(row))) for row in body]
    return out


def _render_markdown(
    named: list[tuple[str, EvaluationResult]],
    comparisons: Sequence[PairedComparison],
    digits: int,
    show_ci: bool,
) -> str:
    header, body = _grid(named, digits, show_ci)
    if len(named) > 1:
        header = [
            f"{name} {h}" for name, _ in named for h in [COLUMN_TITLES[m] for m in TABLE_METRICS]
        ]
    out = _md_table(["Machine"] + header, body)
    note = _ci_note(named, show_ci)
    if note:
        out += ["", note]
    for name, r in named:
        if r.has_decisions:
            dh, db = _decision_rows(r, digits)
            out += ["", f"Decisions ({name}): precision / recall / F1 per domain", ""]
            out += _md_table(["Machine"] + dh, db)
    rows = _rows([r for _, r in named])
    for comp in comparisons:
        out += [
            "",
            f"Paired difference {comp.label} (same clips{_diff_note(comp)})",
            "",
        ]
        out += _md_table(
            ["Machine"] + [f"Δ{COLUMN_TITLES[m]}" for m in TABLE_METRICS] + [""],
            _diff_grid(comp, rows, digits),
        )
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- CSV / JSON
CSV_COLUMNS = (
    "table",
    "system",
    "row",
    "machine",
    "section",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "p_not_better",
)


def _render_csv(
    named: list[tuple[str, EvaluationResult]], comparisons: Sequence[PairedComparison]
) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    rows = _rows([r for _, r in named])

    def num(x: float | None) -> str:
        return "" if x is None else repr(float(x))

    for name, r in named:
        fig = r.figures()
        for row in rows:
            for m, key in row.keys.items():
                if key not in fig:
                    continue
                ci = r.bootstrap.ci(key) if r.bootstrap is not None else None
                metric = "official_score" if row.kind == "total" else m
                writer.writerow(
                    [
                        "table1",
                        name,
                        row.label.strip(),
                        row.machine,
                        row.section,
                        metric,
                        num(fig[key]),
                        num(ci[0] if ci else None),
                        num(ci[1] if ci else None),
                        "",
                    ]
                )
        if r.has_decisions:
            for s in r.sections:
                for m in ("precision", "recall", "f1"):
                    for d in ("source", "target"):
                        v = getattr(s, f"{m}_{d}")
                        if v is not None:
                            writer.writerow(
                                [
                                    "decisions",
                                    name,
                                    s.machine,
                                    s.machine,
                                    s.section,
                                    f"{m}_{d}",
                                    num(v),
                                    "",
                                    "",
                                    "",
                                ]
                            )
    for comp in comparisons:
        for row in rows:
            for m, key in row.keys.items():
                if key not in comp.differences:
                    continue
                ci = comp.ci(key)
                metric = "official_score" if row.kind == "total" else m
                writer.writerow(
                    [
                        "difference",
                        comp.label,
                        row.label.strip(),
                        row.machine,
                        row.section,
                        metric,
                        num(comp.differences[key]),
                        num(ci[0] if ci else None),
                        num(ci[1] if ci else None),
                        num(comp.p_not_better.get(key)),
                    ]
                )
    return buf.getvalue()


def to_json_obj(results: Results, comparisons: Sequence[PairedComparison] = ()) -> dict[str, Any]:
    """``{"systems": {name: result.to_dict()}, "comparisons": [...]}`` (one schema for 1 or n systems)."""
    named = _named(results)
    return {
        "systems": {name: {**r.to_dict(), "system": name} for name, r in named},
        "comparisons": [c.to_dict() for c in comparisons],
    }


def format_table(
    results: Results,
    fmt: str = "text",
    *,
    comparisons: Sequence[PairedComparison] = (),
    digits: int = 3,
    show_ci: bool = True,
) -> str:
    """Table 1 of one or several systems (``fmt``: text, markdown, csv or json)."""
    named = _named(results)
    if fmt == "text":
        return _render_text(named, comparisons, digits, show_ci)
    if fmt == "markdown":
        return _render_markdown(named, comparisons, digits, show_ci)
    if fmt == "csv":
        return _render_csv(named, comparisons)
    if fmt == "json":
        return json.dumps(to_json_obj(results, comparisons), indent=2, default=_json_default) + "\n"
    raise ValueError(f"unknown table format {fmt!r}; choose from {', '.join(FORMATS)}")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_tables(
    out_dir: str | Path,
    results: Results,
    *,
    comparisons: Sequence[PairedComparison] = (),
    stem: str = "evaluation",
    formats: Sequence[str] = ("csv", "markdown", "json"),
    digits: int = 3,
) -> dict[str, Path]:
    """Write the table in each format to ``out_dir/<stem>.<suffix>`` atomically; returns the paths."""
    paths: dict[str, Path] = {}
    for fmt in formats:
        path = Path(out_dir) / f"{stem}{SUFFIXES[fmt]}"
        atomic_write_text(path, format_table(results, fmt, comparisons=comparisons, digits=digits))
        paths[fmt] = path
    return paths
