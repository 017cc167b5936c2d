"""The report's figures, drawn with matplotlib's object API on the Agg canvas.

No ``pyplot``: figures are built as :class:`matplotlib.figure.Figure` objects and rendered by
``FigureCanvasAgg``, so the report never touches the process-wide backend or pyplot's figure
registry (it can run inside a notebook, a server or a test without side effects, and without
a display).  matplotlib is the optional ``plot`` extra and is imported only here, lazily;
:func:`require_matplotlib` turns its absence into one clear error.

Colours are fixed per meaning across every figure: source blue, target orange, normal green,
anomaly red, so a reader learns them once.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harken.errors import HarkenError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from harken.report.model_views import Reconstruction
    from harken.report.runs import RunData

DOMAIN_COLORS = {"source": "#1f77b4", "target": "#ff7f0e", None: "#7f7f7f"}
LABEL_COLORS = {"normal": "#2ca02c", "anomaly": "#d62728"}
DPI = 100
PAUC_MAX_FPR = 0.1


class MissingDependencyError(HarkenError, ImportError):
    """An optional extra the report needs is not installed (caught by ``except ImportError`` too)."""


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "the HTML report draws its figures with matplotlib, which is not installed; "
            "install the plot extra: pip install 'harken[plot]'"
        ) from None


def new_figure(width: float, height: float) -> Figure:
    """A bare figure on its own Agg canvas (see :func:`grid_figure` for laid-out panels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def grid_figure(
    rows: int,
    cols: int,
    panel: tuple[float, float],
    *,
    left: float = 0.7,
    right: float = 0.2,
    bottom: float = 0.55,
    top: float = 0.4,
    gap: tuple[float, float] = (0.75, 0.85),
) -> tuple[Figure, list[Any]]:
    """A figure of ``rows x cols`` panels of a fixed size, margins and gaps in inches.

    Fixed margins instead of matplotlib's constrained layout: the layout engine measures every
    text box in extra draw passes and took most of the report's time on a 2-core machine, while
    these figures have known contents whose room can be reserved up front.
    """
    pw, ph = panel
    width = left + cols * pw + (cols - 1) * gap[0] + right
    height = bottom + rows * ph + (rows - 1) * gap[1] + top
    fig = new_figure(width, height)
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=gap[0] / pw,
        hspace=gap[1] / ph,
    )
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    return fig, axes


def to_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = max(1, min(max_cols, n))
    return math.ceil(n / cols), cols


def _panels(axes: list[Any], n: int) -> list[Any]:
    """The first ``n`` axes of a grid; the spare ones at the end are hidden."""
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


# --------------------------------------------------------------------------- ROC
def roc_figure(run: RunData) -> Figure:
    """Per machine/section: source normals vs all anomalies, target normals vs all anomalies.

    That pairing is the official AUC definition (an anomaly is an anomaly in either domain);
    the shaded band is where the pAUC is measured.
    """
    from sklearn.metrics import roc_curve

    groups = run.groups()
    rows, cols = _grid(len(groups))
    fig, axes = grid_figure(rows, cols, (2.7, 2.7), left=0.65, right=0.15, top=0.35)
    scores = run.scores()
    for ax, (machine, section) in zip(_panels(axes, len(groups)), groups, strict=True):
        idx = [i for i, c in enumerate(run.clips) if c.machine == machine and c.section == section]
        labels = np.array([run.clips[i].label == "anomaly" for i in idx])
        domains = np.array([run.clips[i].domain for i in idx], dtype=object)
        s = scores[idx]
        res = run.result.section(machine, section)
        ax.axvspan(
            0.0, PAUC_MAX_FPR, color="0.88", zorder=0, label=f"pAUC region (FPR ≤ {PAUC_MAX_FPR:g})"
        )
        ax.plot([0, 1], [0, 1], ls=":", color="0.55", lw=1)
        present = [d for d in ("source", "target") if d in set(domains)] or [None]
        for d in present:
            mask = labels | ((domains == d) & ~labels) if d is not None else np.ones(len(idx), bool)
            if not (~labels[mask]).any():
                continue
            fpr, tpr, _ = roc_curve(labels[mask], s[mask])
            value = res.auc_target if d == "target" else res.auc_source
            name = d or "all"
            ax.plot(
                fpr,
                tpr,
                color=DOMAIN_COLORS[d],
                lw=2,
                drawstyle="default",
                label=f"{name}: AUC {value:.3f}",
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"{run.group_label(machine, section)} (pAUC {res.pauc:.3f})", fontsize=10)
        ax.legend(loc="lower right", fontsize=7.5, framealpha=0.9)
    return fig


# --------------------------------------------------------------------------- scores
CELLS = (("source", "normal"), ("source", "anomaly"), ("target", "normal"), ("target", "anomaly"))


def score_figure(run: RunData) -> Figure:
    """Per machine/section, every clip's score in its (domain, label) cell, and the threshold.

    Points rather than histograms: a DCASE section has 50-100 clips per cell and the demo far
    fewer, too few for a histogram's shape to mean much, while each point is a real clip.  The
    bar spans the inter-quartile range, the tick is the median.
    """
    groups = run.groups()
    rows, cols = _grid(len(groups), 3)
    n_cells = max(
        len({(c.domain, c.label) for c in run.clips if (c.machine, c.section) == g}) for g in groups
    )
    panel = (3.0, 0.5 * n_cells + 0.3)
    fig, axes = grid_figure(rows, cols, panel, left=1.15, right=0.15, top=0.35, gap=(1.35, 0.85))
    scores = run.scores()
    rng = np.random.default_rng(0)
    for ax, (machine, section) in zip(_panels(axes, len(groups)), groups, strict=True):
        idx = [i for i, c in enumerate(run.clips) if c.machine == machine and c.section == section]
        cells = [
            (d, lab)
            for d, lab in CELLS
            if any(run.clips[i].domain == d and run.clips[i].label == lab for i in idx)
        ]
        others = sorted(
            {(run.clips[i].domain, run.clips[i].label) for i in idx} - set(cells), key=str
        )
        cells += others
        names = []
        for row, (d, lab) in enumerate(cells):
            values = np.array(
                [scores[i] for i in idx if run.clips[i].domain == d and run.clips[i].label == lab]
            )
            y = row + rng.uniform(-0.22, 0.22, size=len(values))
            color = LABEL_COLORS.get(lab, "#7f7f7f")
            marker = "o" if d != "target" else "D"
            ax.scatter(values, y, s=16, color=color, alpha=0.75, marker=marker, edgecolors="none")
            q1, med, q3 = np.percentile(values, [25, 50, 75])
            ax.plot([q1, q3], [row, row], color="0.2", lw=3, alpha=0.55, solid_capstyle="butt")
            ax.plot([med, med], [row - 0.3, row + 0.3], color="0.1", lw=1.5)
            names.append(f"{d or 'no domain'} {lab}\n(n={len(values)})")
        thresholds = sorted(
            {run.clips[i].threshold for i in idx if run.clips[i].threshold is not None}
        )
        for t in thresholds:
            ax.axvline(t, color="black", ls="--", lw=1.2)
        ax.set_yticks(range(len(cells)), names, fontsize=7.5)
        ax.set_ylim(len(cells) - 0.5, -0.5)
        ax.set_xlabel(f"anomaly score ({run.kind})")
        shown = ", ".join(f"{t:.4g}" for t in thresholds)
        suffix = f" — threshold {shown} (dashed)" if thresholds else ""
        ax.set_title(run.group_label(machine, section) + suffix, fontsize=9.5)
        ax.grid(axis="x", color="0.9")
    return fig


# --------------------------------------------------------------------------- latents
@dataclass
class LatentPanel:
    """One machine type's projected latents: a point per test window."""

    machine: str
    points: np.ndarray
    domains: list[str | None]
    labels: list[str]
    center: np.ndarray | None
    xlabel: str
    ylabel: str
    separability: float | None


def _view_limits(points: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis limits around the points (padded), so a far-away centre cannot squash the cloud."""
    out = []
    for axis in (0, 1):
        lo, hi = float(np.min(points[:, axis])), float(np.max(points[:, axis]))
        pad = 0.08 * (hi - lo) or 1e-3
        out.append((lo - pad, hi + pad))
    return out[0], out[1]


def _draw_center(
    ax: Any, center: np.ndarray, limits: tuple[tuple[float, float], tuple[float, float]]
) -> None:
    """The SVDD centre as a star; outside the view, a hollow star on the edge points its way."""
    (x0, x1), (y0, y1) = limits
    inside = x0 <= center[0] <= x1 and y0 <= center[1] <= y1
    if inside:
        ax.scatter(
            [center[0]],
            [center[1]],
            marker="*",
            s=170,
            color="black",
            label="SVDD centre c",
            zorder=3,
        )
        return
    mx, my = 0.03 * (x1 - x0), 0.03 * (y1 - y0)
    cx = min(max(center[0], x0 + mx), x1 - mx)
    cy = min(max(center[1], y0 + my), y1 - my)
    ax.scatter(
        [cx],
        [cy],
        marker="*",
        s=170,
        facecolors="white",
        edgecolors="black",
        label="SVDD centre c (off view, this way)",
        zorder=3,
    )


def latent_figure(panels: Sequence[LatentPanel], method: str) -> Figure:
    """Per machine type, the same 2-D map twice: coloured by domain, then by label."""
    fig, axes = grid_figure(
        len(panels), 2, (3.6, 2.9), left=0.75, right=0.15, top=0.8, gap=(0.8, 0.95)
    )
    for k, p in enumerate(panels):
        ax_d, ax_l = axes[2 * k], axes[2 * k + 1]
        domains = np.array([d or "none" for d in p.domains], dtype=object)
        labels = np.array(p.labels, dtype=object)
        for d in ("source", "target", "none"):
            m = domains == d
            if m.any():
                ax_d.scatter(
                    p.points[m, 0],
                    p.points[m, 1],
                    s=12,
                    alpha=0.65,
                    color=DOMAIN_COLORS.get(d if d != "none" else None),
                    edgecolors="none",
                    label=d,
                )
        others = sorted({str(x) for x in labels} - {"normal", "anomaly"})  # e.g. "unknown"
        for lab in ("normal", "anomaly", *others):
            m = labels == lab
            if m.any():
                ax_l.scatter(
                    p.points[m, 0],
                    p.points[m, 1],
                    s=12,
                    alpha=0.65,
                    color=LABEL_COLORS.get(lab, "#7f7f7f"),
                    edgecolors="none",
                    label=lab,
                )
        sep = (
            ""
            if p.separability is None
            else f"; domain separability {p.separability:.2f} (0.5 = overlap)"
        )
        limits = _view_limits(p.points)
        for ax, what in ((ax_d, "domain"), (ax_l, "label")):
            if p.center is not None:
                _draw_center(ax, p.center, limits)
            ax.set_xlim(*limits[0])
            ax.set_ylim(*limits[1])
            ax.set_xlabel(p.xlabel, fontsize=8)
            ax.set_ylabel(p.ylabel, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=7, loc="best", markerscale=1.2)
            ax.set_title(f"{p.machine}: by {what}" + (sep if what == "domain" else ""), fontsize=9)
    height = fig.get_figheight()
    fig.suptitle(
        f"{method} of the encoder's latents, one point per test window",
        fontsize=10,
        y=1 - 0.1 / height,
        va="top",
    )
    return fig


# --------------------------------------------------------------------------- reconstructions
def _hz_text(hz: float) -> str:
    return f"{hz / 1000:g}k" if hz >= 1000 else f"{hz:g}"


def _mel_axis(ax: Any, centers_hz: np.ndarray) -> None:
    """Label the mel-bin axis in Hz at round frequencies (placed by the bins' centre frequencies)."""
    candidates = [50, 100, 200, 500, 1000, 2000, 4000, 8000, 16000, 32000]
    lo, hi = float(centers_hz[0]), float(centers_hz[-1])
    bins = np.arange(len(centers_hz))
    min_gap = len(centers_hz) / 10.0  # keep labels apart where the mel scale is linear
    ticks: list[float] = []
    positions: list[float] = []
    for f in reversed(candidates):  # from the top, where the log part spaces them evenly
        if lo <= f <= hi:
            pos = float(np.interp(f, centers_hz, bins))
            if not positions or positions[-1] - pos >= min_gap:
                ticks.append(f)
                positions.append(pos)
    ax.set_yticks(positions, [_hz_text(f) for f in ticks])
    ax.set_ylabel("frequency (Hz, mel scale)")


def reconstruction_figure(rec: Reconstruction, centers_hz: np.ndarray, title: str) -> Figure:
    """Input, reconstruction and squared error of one clip, time in s and frequency in Hz.

    Input and reconstruction share one colour scale, so a band the model fails to reproduce
    looks different between them; the error map has its own.  ``title`` may hold a newline.
    """
    # inches: y label | panel | pad | colour bar | bar ticks and label | ... (explicit axes:
    # a colour bar taken from its panel would push into the next panel's label)
    panel_w, panel_h, bar_w, pad, after_bar, ylab = 3.4, 2.4, 0.12, 0.08, 0.75, 0.85
    bottom, top = 0.5, 0.85
    width = 3 * (ylab + panel_w + pad + bar_w + after_bar) - after_bar + 0.55
    height = bottom + panel_h + top
    fig = new_figure(width, height)
    n_mels, length = rec.input_db.shape
    dt = rec.frame_seconds
    extent = (-0.5 * dt, (length - 0.5) * dt, -0.5, n_mels - 0.5)
    vmin, vmax = np.percentile(rec.input_db, [1, 99.8])
    err_max = float(np.percentile(rec.error, 99.8)) or 1e-12
    panels = (
        (rec.input_db, "input log-mel (dB)", "magma", vmin, vmax, "dB"),
        (rec.recon_db, "reconstruction (dB)", "magma", vmin, vmax, "dB"),
        (rec.error, "squared error (scaled units)", "inferno", 0.0, err_max, "(x − x̂)²"),
    )
    x = 0.0
    for img, name, cmap, lo, hi, unit in panels:
        x += ylab
        ax = fig.add_axes((x / width, bottom / height, panel_w / width, panel_h / height))
        cax = fig.add_axes(
            ((x + panel_w + pad) / width, bottom / height, bar_w / width, panel_h / height)
        )
        x += panel_w + pad + bar_w + after_bar
        im = ax.imshow(
            img,
            origin="lower",
            aspect="auto",
            cmap=cmap,
            vmin=lo,
            vmax=hi,
            extent=extent,
            interpolation="nearest",
        )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("time (s)")
        _mel_axis(ax, centers_hz)
        bar = fig.colorbar(im, cax=cax)
        bar.set_label(unit, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9.5, y=1 - 0.08 / height, va="top")
    return fig


# --------------------------------------------------------------------------- training
SKIP_HISTORY = {"tag", "epoch", "epoch_seconds", "data_seconds"}


def history_metrics(history: Sequence[dict[str, Any]]) -> list[str]:
    """Every numeric column of the history but bookkeeping; losses first, then val_auc and lr."""
    keys: list[str] = []
    for row in history:
        for k, v in row.items():
            if k in SKIP_HISTORY or k in keys:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(k)
    tail = [k for k in ("val_auc", "lr") if k in keys]
    return [k for k in keys if k not in tail] + tail


def training_figure(history: Sequence[dict[str, Any]]) -> Figure:
    """One small panel per logged quantity (their scales differ by orders of magnitude)."""
    from matplotlib.ticker import MaxNLocator

    metrics = history_metrics(history)
    rows, cols = _grid(len(metrics), 4)
    fig, axes = grid_figure(
        rows, cols, (2.5, 1.8), left=0.65, right=0.15, bottom=0.5, top=0.3, gap=(0.75, 0.75)
    )
    tags = list(dict.fromkeys(str(r.get("tag", "")) for r in history))
    for ax, metric in zip(_panels(axes, len(metrics)), metrics, strict=True):
        for tag in tags:
            rows_t = [
                r
                for r in history
                if str(r.get("tag", "")) == tag and isinstance(r.get(metric), (int, float))
            ]
            x = [float(r.get("epoch", i + 1)) for i, r in enumerate(rows_t)]
            y = [float(r[metric]) for r in rows_t]
            ax.plot(x, y, marker="o", ms=3.5, lw=1.5, label=tag or None)
        if metric == "lr":
            values = [float(r["lr"]) for r in history if isinstance(r.get("lr"), (int, float))]
            if values and min(values) > 0:
                ax.set_yscale("log")
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(which="both", labelsize=7)
        ax.grid(color="0.92")
        if len(tags) > 1:
            ax.legend(fontsize=6.5)
    return fig


# --------------------------------------------------------------------------- comparison
def difference_figure(comparisons: Sequence[Any], rows: Sequence[tuple[str, str]]) -> Figure:
    """Paired differences (B - A) with their intervals; the dotted line is "no difference"."""
    n = len(comparisons)
    fig, axes = grid_figure(
        1,
        n,
        (3.4, 0.24 * len(rows) + 0.2),
        left=1.75,
        right=0.2,
        bottom=0.55,
        top=0.15,
        gap=(1.9, 0),
    )
    for ax, comp in zip(axes, comparisons, strict=True):
        keep = [(label, key) for label, key in rows if key in comp.differences]
        y = np.arange(len(keep))
        for yi, (_label, key) in zip(y, keep, strict=True):
            value = comp.differences[key]
            ci = comp.intervals.get(key)
            color = "#d62728" if key == "official_score" else "#1f77b4"
            if ci is not None:
                ax.plot([ci[0], ci[1]], [yi, yi], color=color, lw=2, alpha=0.6)
            ax.plot([value], [yi], marker="o", color=color, ms=4)
        ax.axvline(0.0, color="0.3", ls=":", lw=1)
        ax.set_yticks(y, [label for label, _ in keep], fontsize=7.5)
        ax.set_ylim(len(keep) - 0.5, -0.5)
        ax.set_xlabel(f"{comp.name_b} − {comp.name_a}", fontsize=8)
        ax.grid(axis="x", color="0.92")
        ax.tick_params(axis="x", labelsize=7)
    return fig
