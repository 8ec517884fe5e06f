"""The paper's figures from the results store (matplotlib, saved as PNG and SVG).

figure2 (and any experiment whose columns are training-set sizes): test accuracy against training-set
size per method, and each method's gain over the baseline; figure3: learning curves; figure4: accuracy
and squared weight norm against the DataGrad λ per weight decay; figure5/figure6 (and table7): SIN fits
for several λ with the training points and the true function. Any other experiment gets a generic plot
of its cells (ours with std error bars, the paper's values as open markers). Phase 1 of a λ selection
(``phase="grid"``) draws the dev metric against λ per tuned cell, as ``<name>_dev``.
"""
from __future__ import annotations

import dataclasses
import math
import re
import statistics
from pathlib import Path

from .experiment import resolve_phase
from .experiments import Experiment
from .selection import CellStats, collect, dev_metric, dev_seed_count, grid_stats
from .store import ResultStore

__all__ = ["gain_series", "plot_experiment"]


METRIC_LABELS = {"test_acc": "test accuracy (%)", "test_mse": "test MSE", "train_mse": "train MSE",
                 "test_top5": "test top-5 accuracy (%)", "dev_acc": "dev accuracy (%)", "dev_mse": "dev MSE",
                 "dev_top5": "dev top-5 accuracy (%)"}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt
    return plt


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty store draws no series: no empty legend box
        ax.legend(**kw)


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    for p in paths:
        fig.savefig(p, dpi=130, bbox_inches="tight")
    return paths


def _num(label: str) -> float | None:
    try:
        return float(label)
    except ValueError:
        return None


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", label)


def _series(experiment: Experiment, stats: list[CellStats]):
    """{row: [(x, stats)]} with numeric x from the column labels, sorted."""
    out: dict[str, list[tuple[float, CellStats]]] = {}
    for st in stats:
        x = _num(st.cell.column)
        if x is not None:
            out.setdefault(st.cell.row, []).append((x, st))
    return {k: sorted(v, key=lambda t: t[0]) for k, v in out.items()}


def _errorbar_series(ax, series, metric_scale: float = 1.0, with_paper: bool = True):
    for i, (row, points) in enumerate(series.items()):
        color = f"C{i}"
        done = [(x, st) for x, st in points if st.n]
        if done:
            ax.errorbar([x for x, _ in done], [st.mean * metric_scale for _, st in done],
                        yerr=[(0 if math.isnan(st.std) else st.std) * metric_scale for _, st in done],
                        color=color, marker="o", capsize=3, label=f"{row} (ours)")
        paper = [(x, st.cell.paper[0]) for x, st in points if st.cell.paper]
        if with_paper and paper:
            ax.plot([x for x, _ in paper], [v * metric_scale for _, v in paper], color=color, ls="--",
                    marker="s", mfc="none", alpha=0.7, label=f"{row} (paper)")


def gain_series(experiment: Experiment, stats: list[CellStats]) -> dict[str, list[tuple[float, float, float]]]:
    """{row: [(x, Δ, se)]}: each compared cell's mean minus its baseline's mean (the report's ``delta``,
    against :meth:`Experiment.reference`) with the standard error its test divides by: Welch's
    sqrt(s²/n + s_ref²/n_ref), or for stats collected ``paired`` the standard deviation of the per-seed
    differences over √k, k the seeds both have. Cells with fewer than two runs (or shared seeds) on
    either side are left out."""
    by_key = {st.cell.key: st for st in stats}
    out: dict[str, list[tuple[float, float, float]]] = {}
    for st in stats:
        ref_cell = experiment.reference(st.cell)
        x = _num(st.cell.column)
        if ref_cell is None or x is None or st.delta is None:
            continue
        ref = by_key[ref_cell.key]
        if st.test == "paired":
            ref_values = ref.by_seed
            diffs = [v - ref_values[s] for s, v in st.by_seed.items() if s in ref_values]
            if len(diffs) < 2:
                continue
            se = statistics.stdev(diffs) / math.sqrt(len(diffs))
        else:
            se = math.sqrt(st.std ** 2 / st.n + ref.std ** 2 / ref.n)
        out.setdefault(st.cell.row, []).append((x, st.delta, se))
    return {k: sorted(v) for k, v in out.items()}


def _columns_are_train_sizes(experiment: Experiment) -> bool:
    """True when every column is its cells' training-set size (Figure 2's layout, also in an experiment
    file), so that such a file gets Figure 2's plot."""
    return len({c.column for c in experiment.cells}) > 1 and all(
        (x := _num(c.column)) is not None and x == c.config.train_size for c in experiment.cells)


def _figure_sizes(experiment, stats, store, out_dir):
    """Left: the metric against training-set size, as the paper draws it. Right: each method's
    difference from the baseline at the same size, whose size (tenths of a point for Figure 2) the left
    panel's range (several points from 500 to 20000 examples) flattens."""
    plt = _pyplot()
    fig, (ax, gain_ax) = plt.subplots(1, 2, figsize=(12, 4.4))
    metric = experiment.cells[0].metric
    scale = 1e5 if metric.endswith("mse") else 1.0
    series = _series(experiment, stats)
    colors = {row: f"C{i}" for i, row in enumerate(series)}
    _errorbar_series(ax, series, scale)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric.replace("_", " ")) + (" (1e-5)" if scale != 1 else ""))
    gains = gain_series(experiment, stats)
    for i, (row, points) in enumerate(gains.items()):
        # Nudge each method sideways (a few % on the log axis) so that error bars at one size don't hide each other.
        shift = 1.0 + 0.04 * (i - (len(gains) - 1) / 2)
        gain_ax.errorbar([x * shift for x, _, _ in points], [d * scale for _, d, _ in points],
                         yerr=[se * scale for _, _, se in points], color=colors[row], marker="o", capsize=3,
                         label=row)
    gain_ax.axhline(0.0, color="0.4", lw=1)
    reference = experiment.reference_row or "the baseline"
    se = "± 1 paired s.e." if any(st.test == "paired" for st in stats) else "± 1 s.e."
    gain_ax.set_ylabel(f"gain over {reference} (points, {se})" if "acc" in metric or "top5" in metric
                       else f"difference from {reference}{' (1e-5)' if scale != 1 else ''}, {se}")
    sizes = sorted({x for points in series.values() for x, st in points if st.n})
    for a in (ax, gain_ax):
        a.set_xscale("log")
        if sizes:  # the sizes run, in plain numbers, not log-axis powers of ten
            a.set_xticks(sizes, [f"{x:g}" for x in sizes])
            a.minorticks_off()
        a.set_xlabel("training-set size")
        a.grid(alpha=0.3)
        _legend(a, fontsize=7, ncol=2 if a is ax else 1)
    fig.suptitle(experiment.title, fontsize=10)
    return fig


def _figure_curves(experiment, stats, store, out_dir):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, cell in enumerate(experiment.cells):
        lam = cell.lambda_for_paper_mode
        keys = [cell.config_for(lam, s).key() for s in range(experiment.seeds)]
        rows = [r for r in store.rows(keys=keys, status="done") if r.get("curve")]
        for j, r in enumerate(rows):
            steps = [p["step"] for p in r["curve"] if "test_acc" in p]
            accs = [p["test_acc"] for p in r["curve"] if "test_acc" in p]
            ax.plot(steps, accs, color=f"C{i}", alpha=0.8, label=cell.row if j == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(experiment.title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=8)
    return fig


def _sin_fits(ax, store, fits, zoom=None):
    """Draw SIN fits, ``fits`` a list of (label, run key), with the training points of the first one
    found and the true function; runs without a stored fit are skipped."""
    grid = [-1 + 2 * i / 899 for i in range(900)]  # the SIN test grid (gradreg.data.synthetic)
    plotted_train = False
    for i, (label, key) in enumerate(fits):
        row = store.get(key)
        if not row or row["status"] != "done" or not (row.get("extras") or {}).get("test_pred"):
            continue
        ex = row["extras"]
        ax.plot(grid, ex["test_pred"], color=f"C{i}", lw=1.2, label=label)
        if not plotted_train:
            ax.scatter(ex["train_x"], ex["train_y"], s=10, color="k", zorder=5, label="training points")
            plotted_train = True
    ax.plot(grid, [math.sin(5 * x) for x in grid], color="k", ls=":", lw=1.5, label="sin(5x)")
    if zoom:
        ax.set_xlim(*zoom)
        ys = [math.sin(5 * x) for x in grid if zoom[0] <= x <= zoom[1]]
        ax.set_ylim(min(ys) - 0.25, max(ys) + 0.25)
    ax.set_xlabel("x")
    ax.set_ylabel("network output")
    _legend(ax, fontsize=7)
    ax.grid(alpha=0.3)


def _figure_sin(experiment, stats, store, out_dir):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    _sin_fits(ax, store, [(f"λ={st.lam or 0.0:g}", st.cell.config_for(st.lam, 0).key()) for st in stats])
    ax.set_title(experiment.title + " (seed 0)", fontsize=10)
    return fig


def _generic(experiment, stats, store, out_dir):
    plt = _pyplot()
    series = _series(experiment, stats)
    metric = experiment.cells[0].metric
    scale = 1e5 if metric.endswith("mse") else 1.0
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    if series and all(len(v) > 1 for v in series.values()):
        _errorbar_series(ax, series, scale)
        xs = [x for pts in series.values() for x, _ in pts]
        if min(xs) > 0 or any(x == 0 for x in xs):
            ax.set_xscale("symlog", linthresh=min([x for x in xs if x > 0] or [1e-3]))
        ax.set_xlabel("λ" if all(st.cell.term for st in stats if _num(st.cell.column) is not None) else "")
    else:
        # Ours and the paper's side by side per cell, each with its std, so the gap reads against the spread.
        labels = [f"{st.cell.row}{'*' if st.significant else ''}\n{st.cell.column}"
                  + (f"\nλ={st.lam:g}" if st.cell.term and st.lam is not None else "") for st in stats]
        xs = list(range(len(stats)))
        has_paper = experiment.has_paper_values
        shift = 0.12 if has_paper else 0.0
        ax.errorbar([x - shift for x in xs], [st.mean * scale if st.n else math.nan for st in stats],
                    yerr=[0 if math.isnan(st.std) else st.std * scale for st in stats],
                    fmt="o", capsize=3, label="ours (mean, std)")
        if has_paper:
            paper = [st.cell.paper or (math.nan, None) for st in stats]
            ax.errorbar([x + shift for x in xs], [m * scale for m, _ in paper],
                        yerr=[(s or 0) * scale for _, s in paper], fmt="s", mfc="none", capsize=3, alpha=0.8,
                        label="paper (mean, std)")
        ax.set_xticks(xs, labels, fontsize=7, rotation=30, ha="right")
        if any(st.significant for st in stats):
            ax.text(0.99, 0.01, "* significant against the baseline", transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=7)
    if metric.endswith("mse") and any(st.n and st.mean > 0 for st in stats):
        ax.set_yscale("log")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric) + (" (1e-5)" if scale != 1 else ""))
    ax.set_title(experiment.title, fontsize=10)
    _legend(ax, fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def _figure_grid(experiment, stats, chosen):
    """Dev metric against λ, one panel per method, one line per setup; the choice filled, the paper's λ
    as a dotted line, so a flat curve (neighbours within noise) shows at a glance."""
    plt = _pyplot()
    methods = list(dict.fromkeys(st.cell.row for st in stats))
    fig, axes = plt.subplots(1, len(methods), figsize=(5.2 * len(methods), 4.0), squeeze=False)
    metric = dev_metric(experiment.cells[0].metric)
    scale = 1e5 if metric.endswith("mse") else 1.0
    for ax, method in zip(axes[0], methods):
        setups = list(dict.fromkeys(st.cell.column for st in stats if st.cell.row == method))
        drew_paper = False
        for i, setup in enumerate(setups):
            pts = [st for st in stats if st.cell.key == (method, setup) and st.n]
            if not pts:
                continue
            color = f"C{i}"
            ax.errorbar([st.lam for st in pts], [st.mean * scale for st in pts],
                        yerr=[0 if math.isnan(st.std) else st.std * scale for st in pts], color=color,
                        marker="o", mfc="white", capsize=3, label=f"{setup} (n={max(st.n for st in pts)})")
            best = [st for st in pts if chosen.get(st.cell.key) == st.lam]
            ax.plot([st.lam for st in best], [st.mean * scale for st in best], "o", color=color, ms=8, zorder=4)
            paper = pts[0].cell.paper_lambda
            if paper is not None:
                ax.axvline(paper, color=color, ls=":", alpha=0.7)
                drew_paper = True
        ax.set_xscale("log")
        lams = sorted({st.lam for st in stats if st.cell.row == method})
        ax.set_xticks(lams, [f"{lam:g}" for lam in lams])  # the grid's own values, not powers of ten
        ax.minorticks_off()
        ax.set_xlabel(f"{method} λ (filled: chosen" + ("; dotted: paper's λ)" if drew_paper else ")"))
        ax.set_ylabel(METRIC_LABELS.get(metric, metric.replace("_", " ")) + (" (1e-5)" if scale != 1 else ""))
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=7)
    fig.suptitle(f"{experiment.title}: λ selection on dev seeds (mean, std)", fontsize=10)
    return fig


def plot_experiment(experiment: Experiment, store: ResultStore, out_dir: str | Path, *,
                    phase: str | None = None, seeds: int | None = None,
                    dev_seeds: int | None = None, paired: bool = False, lambdas: str | None = None) -> list[Path]:
    """Draw ``experiment`` from ``store`` into ``out_dir``; returns the files written.

    ``phase="grid"``: phase 1 of the λ selection over ``dev_seeds`` (default ``seeds``) dev seeds
    (``lambdas=`` is the deprecated name of ``phase=``).
    ``paired``: gains' error bars (Figure 2's right panel) from the per-seed differences (:func:`collect`).
    Files are named ``<experiment>[_<row>...][_vs-<row>][_paired][_dev|_selected].png`` (and ``.svg``):
    the paper-λ figure, phase 1 and phase 2 of each row subset (``Experiment.with_rows``), reference row
    (``Experiment.with_reference_row``) and test each get their own.
    """
    phase = resolve_phase(phase, lambdas, "plot_experiment")
    name = experiment.name
    # one file per phase, row subset and reference row, so that no plot overwrites another's figure
    stem = "_".join([name, *map(_slug, experiment.only_rows)])
    if phase == "grid":  # compares each λ with the chosen one: no reference row in its name
        stats, chosen = grid_stats(experiment, store, seeds=dev_seed_count(seeds, dev_seeds))
        fig = _figure_grid(experiment, stats, chosen)
        paths = _save(fig, Path(out_dir), f"{stem}_dev")
        _pyplot().close(fig)
        return paths
    if experiment.reference_row:
        stem += f"_vs-{_slug(experiment.reference_row)}"
    if paired:
        stem += "_paired"
    stats = collect(experiment, store, phase=phase, seeds=seeds, dev_seeds=dev_seeds, paired=paired)
    if phase in ("selected", "dev"):
        how = "λ chosen on the dev set" if phase == "selected" else "dev seeds, dev set"
        experiment = dataclasses.replace(experiment, title=f"{experiment.title}, {how}")
    if name == "figure2" or _columns_are_train_sizes(experiment):
        fig = _figure_sizes(experiment, stats, store, out_dir)
    elif name == "figure3":
        fig = _figure_curves(experiment, stats, store, out_dir)
    elif name == "figure4":
        from .plots_paper import figure4
        fig = figure4(experiment, store, seeds)
    elif name == "figure6":
        from .plots_paper import figure6
        fig = figure6(experiment, store)
    elif name == "figure5":
        fig = _figure_sin(experiment, stats, store, out_dir)
    else:
        fig = _generic(experiment, stats, store, out_dir)
    paths = _save(fig, Path(out_dir), stem + {"selected": "_selected", "dev": "_dev-seeds"}.get(phase, ""))
    _pyplot().close(fig)
    return paths
