"""The HTML report: tables, ROC curves, score distributions, latents, reconstructions, training.

``write_report([run_dir])`` (or ``harken report --run RUN``) writes one self-contained page;
see ``docs/REPORT.md``.  Plotting needs the ``plot`` extra (matplotlib), imported only when a
report is written, so importing this package costs nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["write_report"]


def __getattr__(name: str) -> Any:
    # Lazy: `harken report --help` and `import harken.report` must not import matplotlib or torch.
    if name == "write_report":
        from harken.report.cli import write_report

        return write_report
    raise AttributeError(name)
