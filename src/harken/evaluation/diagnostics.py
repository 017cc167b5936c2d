"""Domain diagnostics: what the official AUC-S and AUC-T mix together, taken apart.

The official AUC of a domain compares that domain's normal clips with the anomalous clips of
*both* domains.  A score that sees every fault but runs higher on one domain's clips (a noisier
room, too few training clips of that domain) therefore reads as poor, even below-chance,
detection in the other domain.  These figures separate the two effects, per machine type and
section:

* ``within_source`` / ``within_target``: normal against anomalous clips *of that domain only*
  (can the score see the faults?);
* ``domain_offset``: the AUC of target-domain normal clips against source-domain normal clips
  (0.5: no offset; 1.0: every target normal scores above every source normal).

They are diagnostics, not the challenge's metrics: harken's official tables never use them.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from harken.atomic import atomic_write_text
from harken.evaluation.metrics import EvaluationResult, SectionData

SOURCE, TARGET = 0, 1


@dataclass(frozen=True)
class DomainDiagnostics:
    machine: str
    section: str
    within_source: float
    within_target: float
    domain_offset: float


def _auc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """ROC AUC of ``positives`` scored above ``negatives``; NaN when either side is empty."""
    if len(negatives) == 0 or len(positives) == 0:
        return math.nan
    labels = np.r_[np.zeros(len(negatives)), np.ones(len(positives))]
    return float(roc_auc_score(labels, np.r_[negatives, positives]))


def section_diagnostics(data: SectionData) -> DomainDiagnostics:
    def pick(domain: int, label: int) -> np.ndarray:
        return data.scores[(data.domains == domain) & (data.labels == label)]

    return DomainDiagnostics(
        machine=data.machine,
        section=data.section,
        within_source=_auc(pick(SOURCE, 0), pick(SOURCE, 1)),
        within_target=_auc(pick(TARGET, 0), pick(TARGET, 1)),
        domain_offset=_auc(pick(SOURCE, 0), pick(TARGET, 0)),
    )


def domain_diagnostics(result: EvaluationResult) -> list[DomainDiagnostics]:
    """One row per machine type and section of ``result`` (which keeps its aligned scores)."""
    return [section_diagnostics(d) for d in result.data]


HEADERS = ("machine", "section", "within-source AUC", "within-target AUC", "domain offset (AUC target vs source normals)")


def _fmt(value: float, digits: int) -> str:
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def format_diagnostics(rows: list[DomainDiagnostics], digits: int = 3) -> str:
    """A Markdown table of the rows."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in rows:
        cells = [r.machine, r.section, *(_fmt(v, digits) for v in (r.within_source, r.within_target, r.domain_offset))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_CSV_HEADER = ["machine", "section", "within_source_auc", "within_target_auc", "domain_offset_auc"]


def _csv_row(r: DomainDiagnostics) -> list[str]:
    return [r.machine, r.section, *(repr(v) for v in (r.within_source, r.within_target, r.domain_offset))]


def diagnostics_csv(rows: list[DomainDiagnostics]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_CSV_HEADER)
    writer.writerows(_csv_row(r) for r in rows)
    return buffer.getvalue()


def write_diagnostics(out_dir: Path, results: dict[str, EvaluationResult]) -> None:
    """``diagnostics.md`` / ``.csv`` in ``out_dir``: one table per score kind (``results`` keys)."""
    named = {kind: domain_diagnostics(result) for kind, result in results.items()}
    intro = (
        "# Domain diagnostics (not official metrics)\n\n"
        "Within-domain AUC: normal against anomalous clips of one domain. Domain offset: target-domain "
        "normals against source-domain normals (0.5 = none). See harken.evaluation.diagnostics.\n\n"
    )
    parts = [f"## {kind}\n\n{format_diagnostics(rows)}" for kind, rows in named.items()]
    atomic_write_text(out_dir / "diagnostics.md", intro + "\n".join(parts))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["score_kind", *_CSV_HEADER])
    writer.writerows([kind, *_csv_row(r)] for kind, rows in named.items() for r in rows)
    atomic_write_text(out_dir / "diagnostics.csv", buffer.getvalue())
