"""Every figure of the official DCASE 2024 Task 2 evaluator's golden outputs, reproduced.

The expected values are the evaluator's own (shared/dcase/golden/systems/*/expected.json, see
its README); the scores are read from the official-format CSVs by ``evaluate_directory``, the
function ``harken evaluate`` calls, so file reading, name joining and metrics are all covered.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harken.evaluation.evaluate import evaluate_directory
from harken.evaluation.metrics import EvaluationResult

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "dcase" / "golden"
GROUND_TRUTH = GOLDEN / "ground_truth"
SYSTEMS = sorted(p.name for p in (GOLDEN / "systems").iterdir()) if GOLDEN.is_dir() else []

pytestmark = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"golden files not found at {GOLDEN}")

TOP_LEVEL = (
    "official_score",
    "official_score_ci95",
    "official_score_amean",
    "auc_source_hmean",
    "auc_target_hmean",
    "auc_source_amean",
    "auc_target_amean",
    "pauc_hmean",
    "pauc_amean",
    "auc_amean",
)


def close(expected: float, got: float | None) -> bool:
    """1e-9 absolute, and relative 1e-6 for the ~1e-15 epsilon-floored means (README)."""
    if got is None or not math.isfinite(got):
        return False
    if abs(expected) < 1e-6:
        return abs(got - expected) <= 1e-6 * abs(expected)
    return abs(got - expected) <= 1e-9


def expected_figures(expected: dict) -> dict[str, float]:
    """Flatten expected.json into ``path -> value`` for every number it holds."""
    out: dict[str, float] = {k: expected[k] for k in TOP_LEVEL}
    for row, values in expected["overall"].items():
        for metric, v in values.items():
            out[f"overall.{row}.{metric}"] = v
    for machine, entry in expected["machines"].items():
        for key, v in entry.items():
            if key == "section":
                continue
            if isinstance(v, dict):
                for metric, vv in v.items():
                    out[f"machines.{machine}.{key}.{metric}"] = vv
            else:
                out[f"machines.{machine}.{key}"] = v
    return out


def got_figures(result: EvaluationResult, expected: dict) -> dict[str, float | None]:
    d = result.to_dict()
    out: dict[str, float | None] = {k: d[k] for k in TOP_LEVEL}
    for row, values in d["overall"].items():
        for metric, v in values.items():
            out[f"overall.{row}.{metric}"] = v
    for machine, entry in expected["machines"].items():
        section = result.section(machine, entry["section"]).to_dict()
        for key, v in entry.items():
            if key == "section":
                continue
            if isinstance(v, dict):
                for metric in v:
                    out[f"machines.{machine}.{key}.{metric}"] = section[key][metric]
            else:
                out[f"machines.{machine}.{key}"] = section[key]
    return out


@pytest.fixture(scope="module")
def results() -> dict[str, EvaluationResult]:
    return {name: evaluate_directory(GOLDEN / "systems" / name, GROUND_TRUTH) for name in SYSTEMS}


def test_all_six_systems_are_present():
    assert SYSTEMS == [
        "sys_a_random",
        "sys_b_good",
        "sys_c_ties",
        "sys_d_domain_shift",
        "sys_g_shuffled",
        "sys_h_degenerate_decisions",
    ]


@pytest.mark.parametrize("system", SYSTEMS)
def test_every_figure_matches_the_official_evaluator(
    system: str, results: dict[str, EvaluationResult]
):
    expected = json.loads((GOLDEN / "systems" / system / "expected.json").read_text())
    want = expected_figures(expected)
    got = got_figures(results[system], expected)
    # 10 top-level + 4 x 5 overall + 9 machines x (10 + 4 x 5) figures
    assert len(want) == 10 + 20 + 9 * 30
    wrong = {k: (v, got[k]) for k, v in want.items() if not close(v, got[k])}
    assert not wrong, f"{system}: {len(wrong)} figures differ, e.g. {list(wrong.items())[:5]}"
    # the machines and sections are exactly the ground truth's, nothing more
    assert sorted((r.machine, r.section) for r in results[system].sections) == sorted(
        (m, e["section"]) for m, e in expected["machines"].items()
    )


def test_published_official_scores(results: dict[str, EvaluationResult]):
    # The README's table of official scores, typed in independently of expected.json.
    published = {
        "sys_a_random": 0.5152219870211326,
        "sys_b_good": 0.773279610265933,
        "sys_c_ties": 0.7065835928046511,
        "sys_d_domain_shift": 0.6550437264156678,
        "sys_g_shuffled": 0.7421487164803265,
        "sys_h_degenerate_decisions": 0.7712501149982133,
    }
    for system, score in published.items():
        assert results[system].official_score == pytest.approx(score, abs=1e-12)


def test_constant_scores_give_half(results: dict[str, EvaluationResult]):
    # sys_c_ties: ToothBrush gives every clip the same score -> AUC = pAUC = 0.5 exactly.
    tb = results["sys_c_ties"].section("ToothBrush", "00")
    assert (tb.auc_source, tb.auc_target, tb.pauc) == (0.5, 0.5, 0.5)


def test_degenerate_decisions_are_zero_not_nan(results: dict[str, EvaluationResult]):
    scanner = results["sys_h_degenerate_decisions"].section("Scanner", "00")
    assert (
        scanner.precision_source == 0.0
        and scanner.recall_source == 0.0
        and scanner.f1_source == 0.0
    )
    hm = results["sys_h_degenerate_decisions"].overall["hmean"].precision
    assert hm is not None and 0.0 < hm < 1e-13  # the eps floor, not 0 and not NaN
