"""Official DCASE Task 2 evaluation (torch-free).

The public names are imported lazily so that ``harken.evaluation.threshold`` (used by every
trained detector) does not pull in scikit-learn and the metric code.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvaluationResult": "harken.evaluation.metrics",
    "MachineResult": "harken.evaluation.metrics",
    "SectionData": "harken.evaluation.metrics",
    "SummaryRow": "harken.evaluation.metrics",
    "evaluate_sections": "harken.evaluation.metrics",
    "ScoreRecord": "harken.evaluation.evaluate",
    "evaluate_arrays": "harken.evaluation.evaluate",
    "evaluate_directory": "harken.evaluation.evaluate",
    "load_ground_truth": "harken.evaluation.groundtruth",
    "read_scores": "harken.evaluation.submission",
    "read_decisions": "harken.evaluation.submission",
    "write_submission": "harken.evaluation.submission",
    "fit_gamma_threshold": "harken.evaluation.threshold",
    "BootstrapResult": "harken.evaluation.bootstrap",
    "PairedComparison": "harken.evaluation.bootstrap",
    "bootstrap_ci": "harken.evaluation.bootstrap",
    "compare_systems": "harken.evaluation.bootstrap",
    "format_table": "harken.evaluation.tables",
    "write_tables": "harken.evaluation.tables",
    "to_json_obj": "harken.evaluation.tables",
    "ThresholdWarning": "harken.evaluation.threshold",
    "GroundTruthSection": "harken.evaluation.groundtruth",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'harken.evaluation' has no attribute {name!r}")
