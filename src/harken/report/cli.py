"""``harken report --run RUN [--compare RUN2 ...]``: one self-contained HTML page with plots.

The page answers the questions people ask of an anomaly detector by looking: do normal and
anomalous scores separate (table, ROC, score distributions), is the target domain where it
fails (every figure splits source from target), did the domain-adversarial branch make the
domains overlap (latent map and a separability number), and where in time and frequency an
anomalous clip differs from what the model expects (reconstructions).  With ``--compare``
the runs sit side by side and their paired differences come with bootstrap intervals.

Section order and content are documented in ``docs/REPORT.md``.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harken.atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
#: points per machine type in the latent map (a random subset beyond it, for speed and legibility)
MAX_LATENT_POINTS = 4000


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="write an HTML report with plots for one or more runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True, help="tested run directory (or its model.pt)")
    p.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="RUN",
        help="more runs to show side by side, with paired differences against --run",
    )
    p.add_argument(
        "--out",
        default=None,
        help=f"HTML file to write (default RUN/report/{REPORT_NAME}); the PNGs go beside it",
    )
    p.add_argument(
        "--data",
        default=None,
        help="dataset root of the test clips (default: the one the run recorded); needed for latents and reconstructions",
    )
    p.add_argument(
        "--cache",
        default=None,
        help="feature cache directory (default: the system's default cache)",
    )
    p.add_argument(
        "--projection",
        default="pca",
        choices=("pca", "tsne", "umap"),
        help="2-D map of the latents (umap needs umap-learn)",
    )
    p.add_argument(
        "--top",
        type=int,
        default=2,
        help="highest-scoring test clips per machine type to show reconstructed",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="resamples for intervals the run lacks and for paired differences",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = write_report(
        [Path(args.run), *map(Path, args.compare)],
        Path(args.out) if args.out else None,
        data_root=args.data,
        progress=not args.no_progress,
        cache_dir=args.cache,
        projection=args.projection,
        top=args.top,
        bootstrap=args.bootstrap,
        seed=args.seed,
    )
    print(f"wrote {path}")
    return 0


def write_report(
    runs: Sequence[Path],
    out: Path | None = None,
    *,
    data_root: str | Path | None = None,
    progress: bool = False,
    cache_dir: str | Path | None = None,
    projection: str = "pca",
    top: int = 2,
    bootstrap: int = 1000,
    seed: int = 0,
) -> Path:
    """Write the report of ``runs`` (the first is the reference of paired differences).

    Returns the HTML path (default ``RUN/report/report.html`` of the first run); each PNG is
    written beside it.  ``data_root`` applies to every run and overrides what they recorded.
    Raises :class:`~harken.report.plots.MissingDependencyError` (also an ``ImportError``)
    without matplotlib.
    """
    from harken.report.plots import require_matplotlib
    from harken.report.runs import ReportError, load_run, run_directory, unique_labels

    require_matplotlib()
    if not runs:
        raise ReportError("no run to report on")
    if projection not in ("pca", "tsne", "umap"):
        raise ReportError(f"unknown projection {projection!r}; choose pca, tsne or umap")
    if projection == "umap":
        from harken.report.analysis import require_umap

        require_umap()  # before minutes of work, not in the middle of them
    dirs = [run_directory(r) for r in runs]
    labels = unique_labels(dirs)
    out_path = Path(out) if out is not None else dirs[0] / "report" / REPORT_NAME
    out_dir = out_path.parent
    steps = _Steps(progress, total=len(dirs) * 6 + 2)
    loaded = []
    for d, label in zip(dirs, labels, strict=True):
        steps.set(f"loading {label}")
        loaded.append(
            load_run(
                d,
                label=label,
                data_root=data_root,
                cache_dir=cache_dir,
                bootstrap=bootstrap,
                seed=seed,
            )
        )
        steps.advance()
    builder = _Builder(
        loaded, out_dir, projection=projection, top=top, bootstrap=bootstrap, seed=seed, steps=steps
    )
    html_text = builder.build()
    steps.set("writing")
    for img in builder.images:
        atomic_write_bytes(out_dir / img.name, img.data)
        _shareable(out_dir / img.name)
    atomic_write_text(out_path, html_text)
    _shareable(out_path)
    _remove_stale_images(out_dir, {img.name for img in builder.images})
    steps.advance()
    steps.close()
    log.info("wrote %s and %d PNGs beside it", out_path, len(builder.images))
    return out_path


#: names of the PNGs a report writes (and nothing else a user may keep in the folder)
_OUR_PNG = re.compile(r"^(run\d+-)?(roc|scores|latents|training|differences|recon-.+-\d+)\.png$")


def _remove_stale_images(out_dir: Path, written: set[str]) -> None:
    """Delete PNGs an earlier report left here that this one did not write (fewer clips with
    --top, a run dropped from --compare), so the folder always matches the page."""
    for path in out_dir.glob("*.png"):
        if path.name not in written and _OUR_PNG.match(path.name):
            path.unlink(missing_ok=True)


def _shareable(path: Path) -> None:
    """World-readable like any document: the atomic writer's temporary files are created 0600,
    but a report is made to be opened by others (a web server, a colleague's account)."""
    import os

    os.chmod(path, 0o644)


class _Steps:
    """A progress bar over report steps (nothing when disabled)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="report", leave=False)

    def set(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


class _Builder:
    """Assembles sections; every PNG goes through :meth:`_image` so it is written and embedded."""

    def __init__(
        self,
        runs: list[Any],
        out_dir: Path,
        *,
        projection: str,
        top: int,
        bootstrap: int,
        seed: int,
        steps: _Steps,
    ) -> None:
        self.runs = runs
        self.out_dir = out_dir
        self.projection = projection
        self.top = max(0, int(top))
        self.bootstrap = bootstrap
        self.seed = seed
        self.steps = steps
        self.images: list[Any] = []
        self.notes: list[str] = []
        self._clip_cache: dict[int, dict[tuple[str, str], Any]] = {}

    # ------------------------------------------------------------------ helpers
    def _prefix(self, i: int) -> str:
        return "" if len(self.runs) == 1 else f"run{i + 1}-"

    def _image(self, fig: Any, name: str, alt: str, caption: str = "") -> Any:
        from harken.report.html import Image
        from harken.report.plots import to_png

        img = Image(name=name, data=to_png(fig), alt=alt, caption=caption)
        fig.clear()
        self.images.append(img)
        return img

    def _block(self, i: int) -> Any:
        from harken.report.html import RunBlock

        return RunBlock(label=self.runs[i].label)

    def _test_clips(self, i: int) -> dict[tuple[str, str], Any] | str:
        """(machine, file name) -> Clip of the run's test audio, or why it is unavailable."""
        if i in self._clip_cache:
            return self._clip_cache[i]
        run = self.runs[i]
        if run.data_root is None:
            return (
                "the test audio is needed here, and this run does not record where its data is: "
                "pass --data ROOT (the dataset harken test scored)"
            )
        from harken.data.dataset import discover
        from harken.errors import HarkenError

        machines = sorted({c.machine for c in run.clips})
        try:
            found = discover(run.data_root, machines=machines, splits=["test"])
        except HarkenError as exc:
            return f"the test audio could not be read from {run.data_root}: {exc}"
        clips = {(c.machine, c.file_name): c for c in found}
        missing = [c.file_name for c in run.clips if (c.machine, c.file_name) not in clips]
        if missing:
            return f"{len(missing)} scored clip(s) are not under {run.data_root} (e.g. {missing[0]}): is it the dataset this run was tested on?"
        self._clip_cache[i] = clips
        return clips

    def _model_reason(self, i: int) -> str | None:
        from harken.report.model_views import autoencoder_support

        run = self.runs[i]
        if run.detector is None:
            return "the model could not be loaded (see Notes)"
        return autoencoder_support(run.detector)

    def _features(self, i: int, clips: list[Any]) -> list[Any]:
        from harken.report.model_views import clip_spectrograms

        run = self.runs[i]
        if run.cache_dir is not None:
            run.detector.cache_dir = Path(run.cache_dir)
        return clip_spectrograms(run.detector, clips)

    # ------------------------------------------------------------------ sections
    def build(self) -> str:
        from harken.report.html import page

        sections = [self.results_section()]
        if len(self.runs) > 1:
            sections.append(self.comparison_section())
        for make in (
            self.roc_section,
            self.score_section,
            self.latent_section,
            self.reconstruction_section,
            self.training_section,
        ):
            sections.append(make())
        for run in self.runs:
            self.notes += [f"{run.label}: {n}" if len(self.runs) > 1 else n for n in run.notes]
        title = "harken report: " + " vs ".join(r.label for r in self.runs)
        return page(title, self._runs_html(), sections, len(self.runs), self.notes)

    def _runs_html(self) -> str:
        from html import escape

        lines = []
        for r in self.runs:
            n = len(r.clips)
            machines = len({c.machine for c in r.clips})
            lines.append(
                f"<p><b>{escape(r.label)}</b>: system {escape(r.system)}, decision score "
                f"<code>{escape(r.kind)}</code>, {n} test clips of {machines} machine type(s) · {escape(str(r.path))}</p>"
            )
        return "".join(lines)

    def results_section(self) -> Any:
        from html import escape

        from harken.report.html import Section, decisions_table, diagnostics_table, results_table

        sec = Section(
            "results",
            "Results",
            "Official DCASE Task 2 figures per machine type: AUC-S / AUC-T (each domain's normal clips against all "
            "anomalies), pAUC (FPR ≤ 0.1, all clips) and the official score Ω, the harmonic mean of all of them. "
            "Brackets: bootstrap confidence intervals (clips resampled within machine × section × domain × label).",
        )
        named = [(r.label, r.result) for r in self.runs if r.result is not None]
        parts = []
        if named:
            parts.append(results_table(named))
            boots = [r.bootstrap for _, r in named if r.bootstrap is not None]
            if boots:
                b = boots[0]
                parts.append(
                    f'<p class="why">[low, high]: {b.confidence:.0%} percentile interval, stratified bootstrap, '
                    f"{b.n_resamples} resamples, seed {escape(str(b.seed))}.</p>"
                )
            for label, r in named:
                if r.has_decisions:
                    parts.append(
                        f"<h3>Decisions{' — ' + escape(label) if len(named) > 1 else ''}</h3>"
                    )
                    parts.append(decisions_table(r))
            for label, r in named:
                if r.data:
                    parts.append(
                        f"<h3>Domain diagnostics{' — ' + escape(label) if len(named) > 1 else ''}</h3>"
                        '<p class="why">Not official metrics. Within-domain AUC: normal against anomalous clips of '
                        "one domain only (can the score see the faults?). Domain offset: target-domain normals "
                        "against source-domain normals (0.5: none). A large offset makes the official AUC-T and "
                        "AUC-S read worse or better than the detection itself.</p>"
                    )
                    parts.append(diagnostics_table(r))
        else:
            parts.append('<p class="note">No labelled test clips: nothing to tabulate.</p>')
        sec.body_html = "\n".join(parts)
        return sec

    def comparison_section(self) -> Any:
        from html import escape

        from harken.evaluation.bootstrap import compare_systems
        from harken.report.html import Section, difference_table, table_rows
        from harken.report.plots import difference_figure

        sec = Section(
            "comparison",
            "Paired differences",
            f"Each run minus {self.runs[0].label}, on the same clips: both systems are resampled with the same bootstrap "
            "draws, so shared clip difficulty cancels and the interval of the difference is much narrower than two "
            "separate intervals suggest. Green / red: the interval lies above / below zero. P(Δ ≤ 0): share of "
            "resamples in which the run did not beat the reference.",
        )
        base = self.runs[0]
        comps, parts = [], []
        for other in self.runs[1:]:
            if base.result is None or other.result is None:
                parts.append(
                    f'<p class="note">{escape(other.label)}: no labelled results to compare.</p>'
                )
                continue
            try:
                comps.append(
                    compare_systems(
                        base.result, other.result, n_resamples=self.bootstrap, seed=self.seed
                    )
                )
            except ValueError as exc:
                parts.append(
                    f'<p class="note">{escape(other.label)} vs {escape(base.label)}: no paired comparison ({escape(str(exc))}).</p>'
                )
        rows = (
            table_rows([base.result] + [o.result for o in self.runs[1:] if o.result is not None])
            if base.result is not None
            else []
        )
        for comp in comps:
            parts.append(f"<h3>{escape(comp.name_b)} − {escape(comp.name_a)}</h3>")
            parts.append(difference_table(comp, rows))
            if comp.intervals:
                parts.append(
                    f'<p class="why">{comp.confidence:.0%} interval from {comp.n_resamples} paired resamples, seed {escape(str(comp.seed))}.</p>'
                )
        if comps:
            forest = [
                (self._row_label(label, key), key)
                for label, _kind, keys in rows
                for key in keys.values()
            ]
            img = self._image(
                difference_figure(comps, forest),
                "differences.png",
                "paired differences with intervals",
            )
            parts.append(
                _figure_html(
                    img,
                    "Paired differences (points) and their intervals (bars); the dotted line is no difference.",
                )
            )
        sec.body_html = "\n".join(parts)
        self.steps.advance()
        return sec

    @staticmethod
    def _row_label(label: str, key: str) -> str:
        if key == "official_score":
            return "official score Ω"
        parts = key.split("/")
        title = {"auc_source": "AUC-S", "auc_target": "AUC-T", "pauc": "pAUC"}[parts[-1]]
        if len(parts) == 3 and parts[0] != "machine" and label.startswith("section"):
            label = f"{parts[0]} {label}"  # a section row: name its machine type
        return f"{label} {title}"

    def roc_section(self) -> Any:
        from harken.report.html import Section
        from harken.report.plots import roc_figure

        sec = Section(
            "roc",
            "ROC curves",
            "Per machine type: source normals against all anomalies, and target normals against all anomalies (the "
            "official AUC definition). The grey band is the pAUC region (FPR ≤ 0.1), where a usable detector must "
            "already find anomalies. A target curve far below the source curve means the system fails on the shifted domain.",
        )
        for i, run in enumerate(self.runs):
            block = self._block(i)
            if run.result is None:
                block.notes.append("no labelled test clips: no ROC curves")
            else:
                block.images.append(
                    self._image(
                        roc_figure(run), f"{self._prefix(i)}roc.png", f"ROC curves of {run.label}"
                    )
                )
            sec.blocks.append(block)
            self.steps.advance()
        return sec

    def score_section(self) -> Any:
        from harken.report.html import Section
        from harken.report.plots import score_figure

        sec = Section(
            "scores",
            "Score distributions",
            "Every test clip's anomaly score, by domain and label (circles: source, diamonds: target; bar: inter-quartile "
            "range, tick: median), and the decision threshold fitted on training scores. Separation shows as red to "
            "the right of green; a target shift shows as target normals moving right, past the threshold.",
        )
        for i, run in enumerate(self.runs):
            block = self._block(i)
            block.images.append(
                self._image(
                    score_figure(run),
                    f"{self._prefix(i)}scores.png",
                    f"score distributions of {run.label}",
                )
            )
            sec.blocks.append(block)
            self.steps.advance()
        return sec

    def latent_section(self) -> Any:
        from harken.report.html import Section

        method = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}[self.projection]
        sec = Section(
            "latents",
            "Latent space",
            f"The encoder's latent z of every test window, mapped to 2-D by {method}, coloured by domain and by label; "
            "the star is the SVDD centre c. The domain-adversarial branch trains source and target to overlap; "
            "'domain separability' is the cross-validated balanced accuracy of a linear classifier predicting the "
            "domain of normal windows from z (0.5: the domains are indistinguishable, 1.0: fully separable).",
        )
        for i in range(len(self.runs)):
            block = self._block(i)
            try:
                self._latents(i, block)
            except Exception as exc:  # a figure that fails must not take the report with it
                log.exception("latent map of %s failed", self.runs[i].label)
                block.notes.append(
                    f"the latent map could not be drawn: {type(exc).__name__}: {exc}"
                )
            sec.blocks.append(block)
            self.steps.advance()
        return sec

    def _latents(self, i: int, block: Any) -> None:
        import numpy as np

        from harken.report.analysis import domain_separability, project
        from harken.report.model_views import encode_clips, svdd_center
        from harken.report.plots import LatentPanel, latent_figure

        reason = self._model_reason(i)
        if reason:
            block.notes.append(f"skipped: {reason}")
            return
        clips = self._test_clips(i)
        if isinstance(clips, str):
            block.notes.append(f"skipped: {clips}")
            return
        run = self.runs[i]
        rng = np.random.default_rng(self.seed)
        panels = []
        for machine in sorted({c.machine for c in run.clips}):
            rows = [c for c in run.clips if c.machine == machine]
            specs = self._features(i, [clips[(machine, c.file_name)] for c in rows])
            zs = encode_clips(run.detector, machine, specs)
            domains, labels, groups = [], [], []
            for k, (c, z) in enumerate(zip(rows, zs, strict=True)):
                domains += [c.domain] * len(z)
                labels += [c.label] * len(z)
                groups += [k] * len(z)
            z_all = np.concatenate(zs)
            keep = np.arange(len(z_all))
            if len(keep) > MAX_LATENT_POINTS:
                keep = np.sort(rng.choice(len(keep), MAX_LATENT_POINTS, replace=False))
            dom = np.array(domains, dtype=object)[keep]
            lab = np.array(labels, dtype=object)[keep]
            grp = np.array(groups)[keep]
            proj = project(
                z_all[keep],
                self.projection,
                center=svdd_center(run.detector, machine),
                seed=self.seed,
            )
            normal = (lab == "normal") & np.isin(dom, ["source", "target"])
            sep = None
            if normal.any():
                sep = domain_separability(
                    z_all[keep][normal],
                    (dom[normal] == "target").astype(int),
                    grp[normal],
                    seed=self.seed,
                )
            panels.append(
                LatentPanel(
                    machine,
                    proj.points,
                    list(dom),
                    list(lab),
                    proj.center,
                    proj.xlabel,
                    proj.ylabel,
                    sep,
                )
            )
        fig = latent_figure(panels, proj.method)
        block.images.append(
            self._image(fig, f"{self._prefix(i)}latents.png", f"latent map of {run.label}")
        )

    def reconstruction_section(self) -> Any:
        from harken.report.html import Section

        sec = Section(
            "reconstructions",
            "Highest-scoring clips: input, reconstruction, error",
            f"The {self.top} highest-scoring test clip(s) of each machine type: the input log-mel, the autoencoder's "
            "reconstruction (windows as scored, overlaps averaged) and the squared error on the scaled input, whose "
            "mean is the reconstruction score. Bright error regions are where, in time and frequency, the clip "
            "departs from what the model expects.",
        )
        for i in range(len(self.runs)):
            block = self._block(i)
            try:
                self._reconstructions(i, block)
            except Exception as exc:  # a figure that fails must not take the report with it
                log.exception("reconstructions of %s failed", self.runs[i].label)
                block.notes.append(
                    f"the reconstructions could not be drawn: {type(exc).__name__}: {exc}"
                )
            sec.blocks.append(block)
            self.steps.advance()
        return sec

    def _reconstructions(self, i: int, block: Any) -> None:
        import numpy as np

        from harken.report.model_views import mel_centers_hz, reconstruct_clip
        from harken.report.plots import reconstruction_figure

        if self.top == 0:
            block.notes.append("skipped (--top 0)")
            return
        reason = self._model_reason(i)
        if reason:
            block.notes.append(f"skipped: {reason}")
            return
        clips = self._test_clips(i)
        if isinstance(clips, str):
            block.notes.append(f"skipped: {clips}")
            return
        run = self.runs[i]
        scores = run.scores()
        centers = mel_centers_hz(run.detector.config)
        how = run.detector.config.window.aggregate
        agg = np.max if how == "max" else np.mean
        for machine in sorted({c.machine for c in run.clips}):
            idx = [k for k, c in enumerate(run.clips) if c.machine == machine]
            best = sorted(idx, key=lambda k: -scores[k])[: self.top]
            specs = self._features(i, [clips[(machine, run.clips[k].file_name)] for k in best])
            for rank, (k, spec) in enumerate(zip(best, specs, strict=True), start=1):
                c = run.clips[k]
                rec = reconstruct_clip(run.detector, machine, spec)
                verdict = (
                    ""
                    if c.decision is None
                    else (", decided anomalous" if c.decision else ", decided normal")
                )
                thr = "" if c.threshold is None else f" (threshold {c.threshold:.4g})"
                title = (
                    f"{machine} #{rank}: {c.file_name}\n{c.domain or 'no domain'}, truly {c.label}; "
                    f"{run.kind} score {scores[k]:.4g}{thr}{verdict}; "
                    f"reconstruction error ({how} of {len(rec.window_errors)} windows) {agg(rec.window_errors):.4g}"
                )
                name = f"{self._prefix(i)}recon-{_slug(machine)}-{rank}.png"
                block.images.append(
                    self._image(
                        reconstruction_figure(rec, centers, title),
                        name,
                        f"reconstruction of {c.file_name}",
                    )
                )

    def training_section(self) -> Any:
        from harken.report.html import Section
        from harken.report.plots import training_figure

        sec = Section(
            "training",
            "Training curves",
            "Every loss term logged per epoch, the validation AUC (held-out normal clips against their "
            "pseudo-anomalies; the best epoch's model is kept) and the learning rate (reduced on plateaus).",
        )
        for i, run in enumerate(self.runs):
            block = self._block(i)
            if not run.history:
                block.notes.append(
                    "no training history in this run (model.pt history and logs/*.csv are empty)"
                )
            else:
                caption = f"from {run.history_source}"
                block.images.append(
                    self._image(
                        training_figure(run.history),
                        f"{self._prefix(i)}training.png",
                        f"training curves of {run.label}",
                        caption,
                    )
                )
            sec.blocks.append(block)
            self.steps.advance()
        return sec


def _figure_html(img: Any, caption: str) -> str:
    from html import escape

    from harken.report.html import data_uri

    return f'<figure><img src="{data_uri(img.data)}" alt="{escape(img.alt)}"><figcaption>{escape(caption)}</figcaption></figure>'
