"""Command modules of the ``harken`` CLI that drive whole runs (train, test, demo, benchmark)."""
