"""The report as one self-contained HTML page.

Every image is an embedded ``data:image/png;base64`` URI and the style sheet is inline; the
page loads no script, font or file from anywhere, so it opens offline, survives being mailed
or attached to an issue, and cannot raise console errors of its own.  The PNGs are also
written beside the page for slides and papers.

Everything user-controlled (run names, file names, notes) is escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

import harken

METRICS = ("auc_source", "auc_target", "pauc")
TITLES = {"auc_source": "AUC-S", "auc_target": "AUC-T", "pauc": "pAUC"}

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1b1b1b; background: #fafafa; }
header { background: #20303f; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 2px 0; color: #cfd8e0; font-size: 13px; }
nav { background: #fff; border-bottom: 1px solid #ddd; padding: 8px 28px; position: sticky; top: 0; z-index: 1; }
nav a { margin-right: 16px; color: #20507f; text-decoration: none; font-size: 13px; }
main { padding: 8px 28px 40px; max-width: 1500px; }
section { background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; margin: 18px 0; padding: 6px 18px 14px; }
h2 { font-size: 18px; border-bottom: 1px solid #eee; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
p.why { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 4px 9px; text-align: right; white-space: nowrap; }
th { background: #f1f4f7; }
td:first-child, th:first-child { text-align: left; }
tr.summary td { background: #f8f8f8; }
tr.total td { background: #eef5ee; font-weight: 600; }
tr.section td:first-child { padding-left: 22px; color: #555; }
span.ci { color: #777; font-size: 12px; }
span.pos { color: #1a7f37; } span.neg { color: #b42318; }
.runs { display: grid; gap: 14px; }
figure { margin: 8px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; background: #fff; }
figcaption { color: #555; font-size: 12.5px; }
.note { color: #7a5a00; background: #fff8e1; border-left: 3px solid #e0b000; padding: 4px 10px; margin: 6px 0; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
header code { background: #34495e; color: #fff; }
th[colspan] { text-align: center; }
"""


@dataclass
class Image:
    """A PNG and where it was written beside the page."""

    name: str
    data: bytes
    alt: str
    caption: str = ""


@dataclass
class RunBlock:
    """One run's content of a figure section: images or a note saying why there are none."""

    label: str
    images: list[Image] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra_html: str = ""


@dataclass
class Section:
    id: str
    title: str
    why: str
    blocks: list[RunBlock] = field(default_factory=list)
    body_html: str = ""


# --------------------------------------------------------------------------- tables
def table_rows(results: Sequence[Any]) -> list[tuple[str, str, dict[str, str]]]:
    """(label, kind, metric -> figure key) rows in Table-1 order, for one or several results.

    Machines with one section show that section's figures; machines with several show their
    harmonic mean over sections, then each section.  ``official_score`` spans the last row.
    """
    sections: dict[str, set[str]] = {}
    for r in results:
        for s in r.sections:
            sections.setdefault(s.machine, set()).add(s.section)
    rows: list[tuple[str, str, dict[str, str]]] = []
    for machine in sorted(sections):
        secs = sorted(sections[machine])
        if len(secs) == 1:
            rows.append((machine, "machine", {m: f"{machine}/{secs[0]}/{m}" for m in METRICS}))
            continue
        rows.append((machine, "machine", {m: f"machine/{machine}/{m}" for m in METRICS}))
        rows += [
            (f"section {s}", "section", {m: f"{machine}/{s}/{m}" for m in METRICS}) for s in secs
        ]
    rows.append(("hmean", "summary", {m: f"hmean/{m}" for m in METRICS}))
    rows.append(("amean", "summary", {m: f"amean/{m}" for m in METRICS}))
    rows.append(("official score Ω (hmean of all)", "total", {"auc_target": "official_score"}))
    return rows


def _value(value: float | None, ci: tuple[float, float] | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    text = fmt.format(value)
    if signed:
        cls = (
            "pos"
            if (ci is not None and ci[0] > 0)
            else "neg"
            if (ci is not None and ci[1] < 0)
            else ""
        )
        text = f'<span class="{cls}">{text}</span>' if cls else text
    if ci is not None:
        text += f' <span class="ci">[{fmt.format(ci[0])}, {fmt.format(ci[1])}]</span>'
    return text


def results_table(named: Sequence[tuple[str, Any]]) -> str:
    """Table 1 with intervals, the systems side by side."""
    rows = table_rows([r for _, r in named])
    figures = [(r.figures(), r.bootstrap) for _, r in named]
    head1 = (
        "<tr><th rowspan=2>machine type</th>"
        + "".join(f"<th colspan=3>{escape(name)}</th>" for name, _ in named)
        + "</tr>"
    )
    head2 = "<tr>" + "".join(f"<th>{TITLES[m]}</th>" for _ in named for m in METRICS) + "</tr>"
    body = []
    for label, kind, keys in rows:
        cells = [f"<td>{escape(label)}</td>"]
        for fig, boot in figures:
            for m in METRICS:
                key = keys.get(m)
                if key is None:
                    cells.append("<td></td>")
                    continue
                ci = boot.ci(key) if boot is not None else None
                cells.append(f"<td>{_value(fig.get(key), ci)}</td>")
        body.append(f'<tr class="{kind}">' + "".join(cells) + "</tr>")
    return f'<table class="results">{head1}{head2}{"".join(body)}</table>'


def decisions_table(result: Any) -> str:
    """Precision / recall / F1 per domain of the 0/1 decisions (threshold on training scores)."""
    cols = [
        (f"{t}-{d[0].upper()}", f"{m}_{d}")
        for m, t in (("precision", "P"), ("recall", "R"), ("f1", "F1"))
        for d in ("source", "target")
    ]
    head = "<tr><th>machine type</th>" + "".join(f"<th>{t}</th>" for t, _ in cols) + "</tr>"
    body = []
    for s in result.sections:
        cells = "".join(
            "<td>–</td>" if getattr(s, a) is None else f"<td>{getattr(s, a):.3f}</td>"
            for _, a in cols
        )
        body.append(f"<tr><td>{escape(s.machine)} {escape(s.section)}</td>{cells}</tr>")
    return f'<table class="decisions">{head}{"".join(body)}</table>'


def diagnostics_table(result: Any) -> str:
    """Within-domain AUCs and the domain offset per section (harken.evaluation.diagnostics)."""
    from harken.evaluation.diagnostics import domain_diagnostics

    head = (
        "<tr><th>machine type</th><th>within-source AUC</th><th>within-target AUC</th>"
        "<th>domain offset</th></tr>"
    )
    body = []
    for d in domain_diagnostics(result):
        cells = "".join(
            "<td>–</td>" if math.isnan(v) else f"<td>{v:.3f}</td>"  # NaN: a domain without clips
            for v in (d.within_source, d.within_target, d.domain_offset)
        )
        body.append(f"<tr><td>{escape(d.machine)} {escape(d.section)}</td>{cells}</tr>")
    return f'<table class="diagnostics">{head}{"".join(body)}</table>'


def difference_table(comp: Any, rows: Sequence[tuple[str, str, dict[str, str]]]) -> str:
    """Paired differences B - A with intervals; green / red where the interval excludes 0."""
    head = (
        "<tr><th>machine type</th>"
        + "".join(f"<th>Δ{TITLES[m]}</th>" for m in METRICS)
        + "<th>P(Δ ≤ 0)</th></tr>"
    )
    body = []
    for label, kind, keys in rows:
        cells = [f"<td>{escape(label)}</td>"]
        for m in METRICS:
            key = keys.get(m)
            cells.append(
                "<td></td>"
                if key is None
                else f"<td>{_value(comp.differences.get(key), comp.ci(key), signed=True)}</td>"
            )
        p = comp.p_not_better.get("official_score") if kind == "total" else None
        cells.append(f"<td>{p:.3f}</td>" if p is not None else "<td></td>")
        body.append(f'<tr class="{kind}">' + "".join(cells) + "</tr>")
    return f'<table class="differences">{head}{"".join(body)}</table>'


# --------------------------------------------------------------------------- page
def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _image_html(img: Image) -> str:
    caption = f"<figcaption>{escape(img.caption)}</figcaption>" if img.caption else ""
    return f'<figure><img src="{data_uri(img.data)}" alt="{escape(img.alt)}">{caption}</figure>'


def _section_html(section: Section, n_runs: int) -> str:
    parts = [f'<section id="{section.id}"><h2>{escape(section.title)}</h2>']
    if section.why:
        parts.append(f'<p class="why">{escape(section.why)}</p>')
    parts.append(section.body_html)
    if section.blocks:
        cols = min(len(section.blocks), n_runs) or 1
        parts.append(
            f'<div class="runs" style="grid-template-columns: repeat({cols}, minmax(0, 1fr))">'
        )
        for block in section.blocks:
            parts.append("<div>")
            if n_runs > 1:
                parts.append(f"<h3>{escape(block.label)}</h3>")
            parts += [f'<p class="note">{escape(n)}</p>' for n in block.notes]
            parts.append(block.extra_html)
            parts += [_image_html(img) for img in block.images]
            parts.append("</div>")
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def page(
    title: str, runs_html: str, sections: Sequence[Section], n_runs: int, notes: Sequence[str]
) -> str:
    """The whole document."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{s.id}">{escape(s.title)}</a>' for s in sections)
    body = "\n".join(_section_html(s, n_runs) for s in sections)
    notes_html = ""
    if notes:
        items = "".join(f"<li>{escape(n)}</li>" for n in notes)
        notes_html = f'<section id="notes"><h2>Notes</h2><ul>{items}</ul></section>'
        nav += '<a href="#notes">Notes</a>'
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<link rel="icon" href="data:,">
<style>{CSS}</style>
</head>
<body>
<header><h1>{escape(title)}</h1>{runs_html}<p>harken {escape(harken.__version__)} · generated {now}</p></header>
<nav>{nav}</nav>
<main>
{body}
{notes_html}
</main>
</body>
</html>
"""
