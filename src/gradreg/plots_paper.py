"""Figures 4 and 6 in the paper's layout, from the results store (drawn by :func:`gradreg.plots.plot_experiment`).

figure4: one panel per weight decay, test accuracy and the squared weight norm against DataGrad's λ,
λ = 0 as a reference line, runs at chance level counted apart; figure6: the SIN zoom at the λ that the
dev set prefers, beside the paper's λ.
"""
from __future__ import annotations

import dataclasses
import math
import statistics

from .experiments import Experiment
from .plots import _pyplot, _sin_fits
from .store import ResultStore

__all__ = ["CHANCE_ACC", "LambdaPanel", "figure4", "figure4_panels", "figure6", "sin_dev_choice"]


# MNIST's commonest test class is 11.35% of the test set: a run below 15% predicts one class (its ReLUs
# died), a failure of training, not a point on the accuracy curve.
CHANCE_ACC = 15.0


@dataclasses.dataclass(frozen=True)
class LambdaPanel:
    """One weight-decay panel of Figure 4: per λ (0 included) the live runs' (seed, test accuracy, Σw²)
    and the seeds whose run is at chance level (test accuracy < :data:`CHANCE_ACC`)."""
    row: str
    live: dict[float, list[tuple[int, float, float]]]
    dead: dict[float, list[int]]


def figure4_panels(experiment: Experiment, store: ResultStore, seeds: int | None = None) -> list[LambdaPanel]:
    """Figure 4's panels from ``store``: one per row (weight decay) of ``experiment``, over its λ columns
    and λ = 0 (the row's unregularized runs, the reference line), on test seeds 0..seeds-1."""
    n = seeds or experiment.seeds
    panels = []
    for row in experiment.rows:
        cells = [c for c in experiment.cells if c.row == row]
        planned = {cells[0].config_for(0.0, s).key(): (0.0, s) for s in range(n)}
        planned.update({c.config_for(c.lambda_for_paper_mode, s).key(): (c.lambda_for_paper_mode, s)
                        for c in cells for s in range(n)})
        live: dict[float, list] = {}
        dead: dict[float, list[int]] = {}
        for r in store.rows(keys=list(planned), status="done"):
            lam, seed = planned[r["key"]]
            acc, norm = r["metrics"].get("test_acc"), r["metrics"].get("weight_sq_norm", math.nan)
            if acc is None:
                continue
            if acc < CHANCE_ACC:
                dead.setdefault(lam, []).append(seed)
            else:
                live.setdefault(lam, []).append((seed, acc, norm))
        panels.append(LambdaPanel(row, {k: sorted(v) for k, v in sorted(live.items())},
                                  {k: sorted(v) for k, v in sorted(dead.items())}))
    return panels


def _dead_text(panel: LambdaPanel) -> str:
    """Which runs are at chance level, in one line: 'seed 1 at every λ' where one seed dies throughout."""
    lams = sorted(set(panel.live) | set(panel.dead))
    seeds = {s for v in panel.dead.values() for s in v}
    if all(sorted(panel.dead.get(lam, [])) == sorted(seeds) for lam in lams):
        which = f"seed {', '.join(map(str, sorted(seeds)))} at every λ run"
    else:
        which = "; ".join(f"λ={lam:g}: seed {', '.join(map(str, v))}" for lam, v in panel.dead.items())
    return f"dead (test accuracy < {CHANCE_ACC:g}%, chance), left out: {which}"


def figure4(experiment, store, seeds):
    """The paper's layout: one panel per weight decay, accuracy (blue) and Σw² (black, log) against
    DataGrad's λ (log axis). The accuracy axis spans the live curve's top; means below it (the collapse)
    are drawn at its bottom edge with their value, so that they do not squeeze the gains into a line;
    λ = 0 is a dashed reference line; runs at chance level are counted, not averaged."""
    plt = _pyplot()
    panels = figure4_panels(experiment, store, seeds)
    lams = sorted({lam for p in panels for lam in p.live if lam > 0} | {lam for p in panels for lam in p.dead if lam > 0})
    cols = 3 if len(panels) > 2 else len(panels)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.9 * rows), squeeze=False)
    legend = None  # the handles of a drawn panel, for one legend under the figure
    for ax, panel in zip(axes.flat, panels):
        ax.set_title(f"{panel.row}: not run", fontsize=9)
        ax.set_xscale("log")
        if lams:
            ax.set_xticks(lams, [f"{lam:g}" for lam in lams], fontsize=7)
            ax.minorticks_off()
        ax.set_xlabel("DataGrad λ (paper convention)", fontsize=8)
        ax.set_ylabel("test accuracy (%)", color="C0", fontsize=8)
        ax.grid(alpha=0.3)
        points = [(lam, [a for _, a, _ in runs], [w for _, _, w in runs]) for lam, runs in panel.live.items() if lam > 0]
        if not points and 0.0 not in panel.live:
            ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", va="center", color="0.5")
            ax.set_yticks([])
            continue
        means = [statistics.fmean(a) for _, a, _ in points]
        ref = panel.live.get(0.0)
        ref_acc = statistics.fmean(a for _, a, _ in ref) if ref else None
        top = max(means + ([ref_acc] if ref_acc else [])) + 0.4
        bottom = min([m for m in means if m > top - 4.0] + ([ref_acc] if ref_acc else [])) - 0.9
        ax.set_ylim(bottom, top)
        xs = [lam for lam, _, _ in points]
        ax.plot(xs, [min(max(m, bottom), top) for m in means], color="C0", marker="o",
                label="test accuracy, mean of live seeds (dots: seeds)")
        for lam, accs, _ in points:
            inside = [a for a in accs if a >= bottom]
            ax.plot([lam] * len(inside), inside, ".", color="C0", alpha=0.35, ms=5)
        below = {lam: m for lam, m in zip(xs, means) if m < bottom}  # the collapse: ▼ at the axis' foot
        ax.plot(list(below), [bottom] * len(below), "v", color="C0", ms=9, clip_on=False)
        ax.set_xticks(lams, [f"{lam:g}" + (f"\n▼{below[lam]:.1f}" if lam in below else "") for lam in lams], fontsize=7)
        if ref_acc is not None:
            ax.axhline(ref_acc, color="C0", ls="--", lw=1, label="λ = 0 (the panel's unregularized runs)")
        ax.axvline(20, color="0.5", ls=":", lw=1, label="paper's transition (λ ≈ 20)")
        wax = ax.twinx()
        wax.set_yscale("log")
        wax.plot(xs, [statistics.fmean(w) for _, _, w in points], color="k", marker="s", ms=4, lw=1,
                 label="Σw², mean (right axis; dotted: λ = 0)")
        if ref:
            wax.axhline(statistics.fmean(w for _, _, w in ref), color="k", ls=":", lw=1)
        wax.set_ylabel("squared weight norm Σw² (dotted: λ = 0)", fontsize=8)
        n_live = max(len(a) for _, a, _ in points) if points else 0
        ax.set_title(f"{panel.row}: n = {n_live} live seeds per λ" + ("\n" + _dead_text(panel) if panel.dead else ""),
                     fontsize=9 if not panel.dead else 7.5)
        if ref_acc is not None:
            ax.text(0.01, ref_acc, f" λ = 0: {ref_acc:.2f}", transform=ax.get_yaxis_transform(), fontsize=7,
                    ha="left", va="bottom", color="C0")
        legend = (ax.get_legend_handles_labels(), wax.get_legend_handles_labels())
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if legend is not None:
        (h, labels), (wh, wlabels) = legend
        fig.legend(h + wh, labels + wlabels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    seeds_run = sorted({s for p in panels for runs in p.live.values() for s, _, _ in runs})
    span = f"test seeds {seeds_run[0]}–{seeds_run[-1]}" if seeds_run else "no runs"
    fig.suptitle(f"{experiment.title}: {span}; accuracy below a panel's axis is marked ▼ with its mean", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def sin_dev_choice(store: ResultStore, seeds: int = 10) -> tuple[float, dict[float, float]] | None:
    """The SpectReg λ of Table 7's sweep with the lowest mean dev MSE over its runs' seeds 0..seeds-1
    (each run scores its own held-out noisy dev draw; the test grid chooses nothing), and every λ's
    mean dev MSE; None without runs."""
    from .experiments import get_experiment
    means = {}
    for cell in get_experiment("table7").cells:
        lam = cell.lambda_for_paper_mode or 0.0  # Table 7's λ = 0 cell is a plain baseline (λ None)
        keys = [cell.config_for(cell.lambda_for_paper_mode, s).key() for s in range(seeds)]
        dev = [r["metrics"]["dev_mse"] for r in store.rows(keys=keys, status="done") if "dev_mse" in r["metrics"]]
        if dev:
            means[lam] = statistics.fmean(dev)
    return (min(means, key=means.get), means) if means else None


def figure6(experiment: Experiment, store: ResultStore):
    """Figure 6's zoom at the λ our dev set prefers, beside the paper's λ, each fit's test MSE in its
    label, and a title that says what is drawn (the paper's caption claims a better fit; the data decide)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    cell = next(c for c in experiment.cells if c.term)
    paper_lam = max(c.lambda_for_paper_mode or 0.0 for c in experiment.cells)
    choice = sin_dev_choice(store)
    lams = [(0.0, "no regularization")]
    if choice is not None and choice[0] not in (0.0, paper_lam):
        lams.append((choice[0], f"SpectReg λ={choice[0]:g} (lowest mean dev MSE)"))
    lams.append((paper_lam, f"SpectReg λ={paper_lam:g} (the paper's Table 7 optimum)"))
    fits = []
    for lam, label in lams:
        row = store.get(cell.config_for(lam, 0).key())
        mse = (row or {}).get("metrics", {}).get("test_mse") if row and row["status"] == "done" else None
        fits.append((label + (f": test MSE {mse * 1e5:.0f}e-5" if mse is not None else ""), cell.config_for(lam, 0).key()))
    _sin_fits(ax, store, fits, zoom=(0.1, 0.5))
    picked = f"dev-picked λ={choice[0]:g}" if choice else "no dev-picked λ (no runs)"
    ax.set_title(f"SIN, x in [0.1, 0.5], seed 0: the unregularized fit, SpectReg at the {picked} and at the "
                 f"paper's λ={paper_lam:g}", fontsize=9)
    return fig
