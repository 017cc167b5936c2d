#!/usr/bin/env bash
# Set up a virtual environment (CPU torch from the pinned wheel) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
# OpenMP threads that spin while waiting starve the subprocesses some tests start (DDP, kill-and-resume).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
