"""Domain diagnostics: within-domain AUCs and the domain offset, checked by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from harken.evaluation.diagnostics import diagnostics_csv, format_diagnostics, section_diagnostics
from harken.evaluation.metrics import SectionData


def _section(scores: list[float], labels: list[int], domains: list[int]) -> SectionData:
    names = tuple(f"clip_{i}.wav" for i in range(len(scores)))
    return SectionData("fan", "00", names, np.array(labels), np.array(domains), np.array(scores))


def test_a_domain_offset_is_separated_from_detection() -> None:
    # Source: normals 1, 2; anomalies 3, 4.  Target: normals 10, 11; anomalies 12, 9.
    # Every clip of the target domain scores above every source clip: the offset is total.
    data = _section(
        scores=[1, 2, 3, 4, 10, 11, 12, 9],
        labels=[0, 0, 1, 1, 0, 0, 1, 1],
        domains=[0, 0, 0, 0, 1, 1, 1, 1],
    )
    d = section_diagnostics(data)
    assert d.within_source == 1.0  # both anomalies above both normals: 4 of 4 pairs
    # target pairs (anomaly, normal): (12,10) (12,11) win, (9,10) (9,11) lose -> 2 of 4
    assert d.within_target == 0.5
    assert d.domain_offset == 1.0  # 10, 11 above 1, 2 in all 4 pairs


def test_ties_count_half_and_missing_cells_give_nan() -> None:
    data = _section(scores=[1, 2, 2, 5], labels=[0, 0, 1, 1], domains=[0, 0, 0, 0])
    d = section_diagnostics(data)
    # pairs (anomaly, normal): (2,1) win, (2,2) tie = 1/2, (5,1) win, (5,2) win -> 3.5 / 4
    assert d.within_source == 3.5 / 4
    assert math.isnan(d.within_target) and math.isnan(d.domain_offset)  # no target clips
    table = format_diagnostics([d])
    assert "| fan | 00 | 0.875 | — | — |" in table
    assert diagnostics_csv([d]).splitlines()[1] == "fan,00,0.875,nan,nan"


def test_harken_test_writes_the_diagnostics(tmp_path: Path) -> None:
    from harken.evaluation.diagnostics import write_diagnostics
    from harken.evaluation.evaluate import ScoreRecord, evaluate_arrays

    records = [
        ScoreRecord("fan", "00", f"section_00_{dom}_test_{lab}_{i:04d}.wav", dom, lab, s, None)
        for i, (dom, lab, s) in enumerate(
            [("source", "normal", 1.0), ("source", "anomaly", 3.0), ("target", "normal", 10.0), ("target", "anomaly", 12.0)]
        )
    ]
    write_diagnostics(tmp_path, {"reconstruction": evaluate_arrays(records, name="x")})
    text = (tmp_path / "diagnostics.md").read_text()
    assert "## reconstruction" in text and "| fan | 00 | 1.000 | 1.000 | 1.000 |" in text
    assert (tmp_path / "diagnostics.csv").read_text().splitlines()[1] == "reconstruction,fan,00,1.0,1.0,1.0"
