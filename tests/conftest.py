"""Fixtures shared by the whole suite.  Kept small and stable: many test modules depend on them.

No torch import here, so the torch-free tests (names, metrics, evaluate) run without PyTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# The shared synthetic data set: three machine types with different sound kinds (tonal /
# rotating, geared, impulsive), enough clips for a model to fit, small enough to build in a
# few seconds once per session.
SYNTH_PARAMS: dict[str, Any] = {
    "machines": ("fan", "gearbox", "valve"),
    "seed": 0,
    "n_train_source": 24,
    "n_train_target": 6,
    "n_test": 6,  # per domain x label cell
    "duration": 2.0,
}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def synth_params() -> dict[str, Any]:
    """The parameters ``synth_root`` was built with (a copy: tests may not change the set)."""
    return dict(SYNTH_PARAMS)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a small synthetic DCASE-2025-layout data set, built once per session.

    Shared by every test that asks for it: treat it as read-only (copy it to change it).
    """
    from harken.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "data"
    return synthesize(root, progress=False, **SYNTH_PARAMS)


@pytest.fixture(scope="session")
def mimii_dir() -> Path:
    """Four real MIMII fan clips (8-channel WAVE_FORMAT_EXTENSIBLE); see shared/audio/README.md."""
    path = REPO_ROOT.parent / "shared" / "audio" / "mimii_fan_id_00"
    if not path.is_dir():
        pytest.skip(
            f"real MIMII sample clips not found at {path} (CI puts shared/ beside the clone)"
        )
    return path
