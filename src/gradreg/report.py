"""Tables from the results store: each cell mean (std) over n runs, the paper's value beside it.

The paper's protocol (Section 6.2): a number is the mean (std) of 10 runs on different random training
subsets; λ is chosen by the best mean *dev* metric over a grid (phase 1, dev seeds), then the chosen λ
is run on fresh seeds and reported on the test set (phase 2). Significance against the cell's
baseline (:meth:`~gradreg.experiments.Experiment.reference`) is Welch's t-test (unequal variances),
Bonferroni-corrected over the table's comparisons, as Table 6 does; ``paired=True`` pairs the runs by
seed instead (a seed draws the same training subset, initialization and batch order in every cell of
a column, and that shared draw is most of a run's spread). Nothing here ever looks at a test metric to
choose anything.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .experiments import GRIDS, Cell, Experiment, PlannedRun
from .store import ResultStore

__all__ = ["CellStats", "collect", "select_lambdas", "grid_stats", "markdown_table", "markdown_grid_table",
           "write_csv", "write_grid_csv", "at_window_edge", "dev_metric", "higher_is_better", "paired_p", "welch_p"]

ALPHA = 0.05


def higher_is_better(metric: str) -> bool:
    return not metric.endswith("mse") and not metric.endswith("loss")


def task_metric(metric: str, metrics: dict) -> str:
    """``metric``, or where a run of a regression task lacks it (a classification default such as
    ``test_acc``, as an experiment file without ``metric`` gets) the same split's ``mse``."""
    split = metric.split("_", 1)[0]
    if metric not in metrics and metric.endswith(("_acc", "_top5", "_loss")) and f"{split}_mse" in metrics:
        return f"{split}_mse"
    return metric


def dev_metric(metric: str) -> str:
    """The dev-set counterpart of a test metric (``test_acc`` -> ``dev_acc``); λ is chosen on it."""
    return "dev_" + metric.split("_", 1)[1] if metric.startswith(("test_", "train_")) else metric


@dataclass
class CellStats:
    cell: Cell
    lam: float | None
    values: list[float] = field(default_factory=list)   # the metric of every finished run
    seeds: list[int] = field(default_factory=list)
    diverged: int = 0
    failed: int = 0
    missing: int = 0                                      # planned but not (yet) in the store
    extra: dict[str, list[float]] = field(default_factory=dict)  # other metrics, for plots
    p_value: float | None = None                          # vs the reference, Bonferroni-adjusted
    delta: float | None = None                            # mean - reference mean
    test: str = ""                                        # what p_value is: "welch" or "paired" ("" none)
    metric: str = ""                                      # read from the runs: cell.metric, or its task's

    @property
    def shown_metric(self) -> str:
        return self.metric or self.cell.metric

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def by_seed(self) -> dict[int, float]:
        """seed -> value, what a paired comparison matches on."""
        return dict(zip(self.seeds, self.values))

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        # Sample standard deviation (ddof=1), the usual reading of the paper's "(std)".
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch t-test p-value, None when either side has fewer than 2 runs."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def paired_p(a: dict[int, float], b: dict[int, float]) -> float | None:
    """Two-sided paired t-test over the seeds ``a`` and ``b`` (seed -> value) share; None below 2."""
    common = sorted(a.keys() & b.keys())
    if len(common) < 2:
        return None
    diffs = [a[s] - b[s] for s in common]
    if len(set(diffs)) == 1:  # no spread: the t statistic is undefined
        return 1.0 if diffs[0] == 0 else 0.0
    from scipy import stats
    return float(stats.ttest_rel([a[s] for s in common], [b[s] for s in common]).pvalue)


def _gather(plan: Iterable[PlannedRun], store: ResultStore, metric_of,
            group=lambda p: p.cell.key) -> dict:
    """CellStats per ``group(run)`` (default: per cell), from one query of the store."""
    plan = list(plan)
    rows = {r["key"]: r for r in store.rows(keys=[p.config.key() for p in plan])}
    out: dict = {}
    for p in plan:
        st = out.setdefault(group(p), CellStats(cell=p.cell, lam=p.lam))
        row = rows.get(p.config.key())
        if row is None or row["status"] == "running":
            st.missing += 1
        elif row["status"] == "diverged":
            st.diverged += 1
        elif row["status"] == "failed":
            st.failed += 1
        elif row["status"] != "done":  # a status this gradreg does not know: not a result, not a failure
            st.missing += 1
        else:
            metrics = row["metrics"] or {}
            st.metric = task_metric(metric_of(p.cell), metrics)
            value = metrics.get(st.metric)
            if value is None:
                st.failed += 1
                continue
            st.values.append(float(value))
            st.seeds.append(p.seed)
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and v is not None:
                    st.extra.setdefault(k, []).append(float(v))
    return out


def select_lambdas(experiment: Experiment, store: ResultStore, *, seeds: int | None = None,
                   require_complete: bool = True) -> dict[tuple[str, str], float]:
    """Phase 1's outcome: for each tuned cell, the grid λ with the best mean dev metric over ``seeds``
    dev seeds (default: the experiment's).

    Diverged runs count as the worst possible value (a λ that diverges on some subsets is not chosen
    over one that never does). ``require_complete``: refuse while grid runs are missing.
    """
    return _choose(experiment, _gather_grid(experiment, store, seeds), require_complete)


def _choose(experiment: Experiment, stats: dict, require_complete: bool) -> dict[tuple[str, str], float]:
    best: dict[tuple[str, str], float] = {}
    for cell in experiment.cells:
        if not cell.tuned:
            continue
        metric = next((stats[(cell.key, lam)].shown_metric for lam in cell.grid if stats[(cell.key, lam)].n),
                      cell.metric)
        sign = 1.0 if higher_is_better(metric) else -1.0
        scored = []
        for lam in cell.grid:
            st = stats[(cell.key, lam)]
            if require_complete and (st.missing or st.failed):
                raise ValueError(f"{experiment.name} {cell.key}: λ={lam:g} has {st.missing} missing and "
                                 f"{st.failed} failed dev runs; run `gradreg sweep {experiment.name} --lambdas grid` "
                                 f"first (with the same --grid-window, and --dev-seeds if it ran fewer dev seeds)")
            if not st.n:
                continue
            score = sign * st.mean if not st.diverged else -math.inf
            scored.append((score, -lam, lam))  # ties: the smaller λ (less regularization)
        if scored:
            best[cell.key] = max(scored)[2]
    return best


def dev_seed_count(seeds: int | None, dev_seeds: int | None) -> int | None:
    """The dev seeds per grid λ that a λ selection runs and reads: ``dev_seeds`` where given, else
    ``seeds`` (one count serving both phases), else ``None`` (the experiment's default)."""
    return dev_seeds if dev_seeds is not None else seeds


def grid_stats(experiment: Experiment, store: ResultStore, *, seeds: int | None = None
               ) -> tuple[list[CellStats], dict[tuple[str, str], float]]:
    """Phase 1 as it stands: the dev metric per tuned cell and grid λ (cell, then grid order), and the
    λ each cell chooses from the runs there so far.

    Each λ's ``delta`` (difference of means) and ``p_value`` compare it with its cell's chosen λ. The
    p-value is a paired t-test over the dev seeds both have, *not* corrected: a seed fixes the training
    subset, initialization and batch order for every λ, and that shared draw is most of a run's spread
    (it moves 5-run means by 0.2-0.3 on MNIST), so pairing is what lets a few seeds separate neighbours.
    """
    if not any(c.tuned for c in experiment.cells):
        raise ValueError(f"{experiment.name} has no cell with a λ grid to select on")
    by_key = _gather_grid(experiment, store, seeds)
    chosen = _choose(experiment, by_key, require_complete=False)
    out = []
    for cell in experiment.cells:
        if not cell.tuned:
            continue
        ref = by_key[(cell.key, chosen[cell.key])] if cell.key in chosen else None
        for lam in cell.grid:
            st = by_key[(cell.key, lam)]
            if ref is not None and st is not ref and st.n and ref.n:
                st.delta = st.mean - ref.mean
                st.p_value = paired_p(st.by_seed, ref.by_seed)
            out.append(st)
    return out, chosen


def _gather_grid(experiment: Experiment, store: ResultStore, seeds: int | None):
    """CellStats per (cell key, λ) of phase 1, on the dev metric."""
    return _gather(experiment.plan(lambdas="grid", seeds=seeds), store, lambda c: dev_metric(c.metric),
                   group=lambda p: (p.cell.key, p.lam))


def collect(experiment: Experiment, store: ResultStore, *, lambdas: str = "paper",
            seeds: int | None = None, dev_seeds: int | None = None, smoke: bool = False,
            paired: bool = False) -> list[CellStats]:
    """Per-cell statistics for the runs ``gradreg sweep`` planned (paper λ or dev-selected λ), over
    ``seeds`` test seeds; the selection reads ``dev_seeds`` dev seeds per λ (default: ``seeds``).

    Each compared cell's ``p_value`` is Welch's test against its reference's runs, or with ``paired``
    a paired t-test over the seeds both have; either way Bonferroni-corrected over the table's
    comparisons. ``delta`` is the difference of the two cells' means either way."""
    if lambdas == "paper":
        plan = experiment.plan(seeds=seeds, smoke=smoke)
    elif lambdas == "selected":
        best = select_lambdas(experiment, store, seeds=dev_seed_count(seeds, dev_seeds))
        plan = experiment.select_plan(best, seeds=seeds, smoke=smoke)
    else:
        raise ValueError(f"lambdas must be 'paper' or 'selected', got {lambdas!r}")
    by_cell = _gather(plan, store, lambda c: c.metric)
    stats = [by_cell[c.key] for c in experiment.cells]
    comparisons = []
    for st in stats:
        ref_cell = experiment.reference(st.cell)
        if ref_cell is None:
            continue
        ref = by_cell[ref_cell.key]
        p = paired_p(st.by_seed, ref.by_seed) if paired else welch_p(st.values, ref.values)
        if p is not None:
            st.test = "paired" if paired else "welch"
            comparisons.append((st, p))
            st.delta = st.mean - ref.mean
    for st, p in comparisons:  # Bonferroni over the table's comparisons
        st.p_value = min(1.0, p * len(comparisons))
    return stats


def _fmt(value: float | None, std: float | None, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    scale, digits = (1e5, 1) if metric.endswith("mse") else (1.0, 2)
    s = f"{value * scale:.{digits}f}"
    if std is not None and not math.isnan(std):
        s += f" ({std * scale:.{digits}f})"
    return s


def _runs_text(st: CellStats, metric: str) -> str:
    """``mean (std) n=N`` and whatever did not finish: diverged, failed, missing runs."""
    text = f"{_fmt(st.mean if st.n else None, st.std, metric)} n={st.n}"
    for label, count in (("div", st.diverged), ("failed", st.failed), ("missing", st.missing)):
        if count:
            text += f" {label}={count}"
    return text


def _cell_text(st: CellStats, show_paper: bool = True) -> str:
    metric = st.shown_metric
    text = _runs_text(st, metric)
    if st.p_value is not None:
        text += f" p={st.p_value:.2g}{'*' if st.significant else ''}"
    paper = st.cell.paper
    if show_paper:
        text += f" · paper {_fmt(paper[0], paper[1], metric) if paper else '–'}"
    if st.lam is not None and st.cell.term:
        text += f" · λ={st.lam:g}"
    return text


def _reference_text(experiment: Experiment) -> str:
    """What the table's p-values compare with, in words (:meth:`Experiment.reference`)."""
    pairs = [(c, ref) for c in experiment.cells if (ref := experiment.reference(c)) is not None]
    if all(ref.column == c.column for c, ref in pairs):
        return f"the column's {experiment.reference_row} cell" if experiment.reference_row else "the column's baseline"
    if all(ref.row == c.row and ref.term is not None and ref.paper_lambda == 0 for c, ref in pairs):
        return "λ = 0" if len({ref.key for _, ref in pairs}) == 1 else "the row's λ = 0 (each λ curve's own)"
    if len({ref.key for _, ref in pairs}) == 1:
        ref = pairs[0][1]
        return f"the {ref.row} cell" + (f" ({ref.column})" if len(experiment.columns) > 1 else "")
    return "the cell's baseline (its column's, else its row's, else the table's only one)"


def markdown_table(experiment: Experiment, stats: list[CellStats]) -> str:
    """The experiment in the paper's layout: methods as rows, setups as columns."""
    by = {st.cell.key: st for st in stats}
    metric = next((st.shown_metric for st in stats if st.n), experiment.cells[0].metric)
    unit = " (MSE in 1e-5)" if metric.endswith("mse") else " (%)" if "acc" in metric or "top5" in metric else ""
    show_paper = experiment.has_paper_values  # else no column of dashes
    paper_note = " · the paper's value" if show_paper else ""
    test = ("a paired t-test over the seeds both cells have" if any(st.test == "paired" for st in stats)
            else "Welch's t-test")
    lines = [f"### {experiment.name}: {experiment.title}{unit}", "",
             f"Source: {experiment.source}. Cells: ours mean (std) over n runs{paper_note}. "
             f"p: {test} against {_reference_text(experiment)}, Bonferroni-corrected over the table's "
             f"comparisons; * marks p < {ALPHA}.", ""]
    cols = experiment.columns
    lines.append("| | " + " | ".join(cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    for row in experiment.rows:
        cells = [(_cell_text(by[(row, c)], show_paper) if (row, c) in by else "") for c in cols]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["experiment", "row", "column", "metric", "term", "lambda", "n", "mean", "std", "diverged",
              "failed", "missing", "p_bonferroni", "test", "delta", "reference", "paper_mean", "paper_std", "seeds"]


def csv_rows(experiment: Experiment, stats: list[CellStats]) -> list[dict]:
    out = []
    for st in stats:
        paper = st.cell.paper or (None, None)
        ref = experiment.reference(st.cell)  # what p_bonferroni and delta compare with: "row / column"
        out.append({"experiment": experiment.name, "row": st.cell.row, "column": st.cell.column,
                    "metric": st.shown_metric, "term": st.cell.term or "", "lambda": st.lam,
                    "n": st.n, "mean": st.mean if st.n else None, "std": st.std if st.n > 1 else None,
                    "diverged": st.diverged, "failed": st.failed, "missing": st.missing,
                    "p_bonferroni": st.p_value, "test": st.test, "delta": st.delta,
                    "reference": f"{ref.row} / {ref.column}" if ref else "", "paper_mean": paper[0],
                    "paper_std": paper[1], "seeds": " ".join(map(str, st.seeds))})
    return out


def write_csv(experiment: Experiment, stats: list[CellStats], path: str | Path | None = None) -> str:
    return _write_csv(CSV_FIELDS, csv_rows(experiment, stats), path)


def _write_csv(fields: list[str], rows: Iterable[dict], path: str | Path | None) -> str:
    """``rows`` as CSV text, also written to ``path`` when given."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(buf.getvalue())
    return buf.getvalue()


def _seed_span(stats: list[CellStats]) -> str:
    seeds = sorted({s for st in stats for s in st.seeds})
    return f"{seeds[0]}–{seeds[-1]}" if seeds else "none yet"


def at_window_edge(cell: Cell, lam: float) -> bool:
    """``lam`` ends ``cell``'s (narrowed) grid on a side where the term's full grid goes on: the best λ
    may lie beyond what was run (``--grid-window`` wider would tell)."""
    full = GRIDS.get(cell.term or "", ())
    low, high = cell.grid[0], cell.grid[-1]
    return (lam == low and any(v < low for v in full)) or (lam == high and any(v > high for v in full))


def markdown_grid_table(experiment: Experiment, stats: list[CellStats],
                        chosen: dict[tuple[str, str], float]) -> str:
    """Phase 1 of the λ selection, one line per tuned cell and grid λ: the dev metric, the λ chosen,
    and how far each neighbour lies from the choice."""
    metric = next((st.shown_metric for st in stats if st.n), dev_metric(experiment.cells[0].metric))
    unit = " (MSE in 1e-5)" if metric.endswith("mse") else " (%)" if "acc" in metric or "top5" in metric else ""
    better = "highest" if higher_is_better(metric) else "lowest"
    scale = 1e5 if metric.endswith("mse") else 1.0
    lines = [f"### {experiment.name} λ selection, phase 1: {metric} per grid λ{unit}", "",
             f"Source: {experiment.source}. Dev seeds {_seed_span(stats)} (training subsets, inits and "
             f"orders never used by the reported runs), scored on the held-out dev set. Each cell chooses the "
             f"λ with the {better} mean (ties: the smaller λ; a λ with a diverged run is never chosen). "
             f"Δ and p compare a λ with its cell's choice (paired t-test over shared dev seeds, which fix "
             f"the training subset, init and order; uncorrected): a large p means these seeds do not separate "
             f"the two. 'window edge': the choice ends a narrowed grid (--grid-window) that the full grid goes "
             f"on past, so the best λ may lie outside what was run.", "",
             "| method | setup | λ | dev mean (std) n | Δ vs chosen | p vs chosen |", "|---|---|---|---|---|---|"]
    for st in stats:
        cell = st.cell
        is_chosen = chosen.get(cell.key) == st.lam
        tags = [t for t, on in (("paper", st.lam == cell.paper_lambda), ("chosen", is_chosen),
                                ("window edge", is_chosen and at_window_edge(cell, st.lam))) if on]
        lam = f"{st.lam:g}" + (f" ({', '.join(tags)})" if tags else "")
        if chosen.get(cell.key) == st.lam:
            lam = f"**{lam}**"
        text = _runs_text(st, metric)
        delta = "–" if st.delta is None else f"{st.delta * scale:+.2f}"
        p = "–" if st.p_value is None else f"{st.p_value:.2g}"
        lines.append(f"| {cell.row} | {cell.column} | {lam} | {text} | {delta} | {p} |")
    return "\n".join(lines) + "\n"


GRID_CSV_FIELDS = ["experiment", "row", "column", "metric", "term", "lambda", "paper_lambda", "chosen",
                   "at_window_edge", "n",
                   "mean", "std", "diverged", "failed", "missing", "delta_vs_chosen", "p_vs_chosen", "seeds"]


def write_grid_csv(experiment: Experiment, stats: list[CellStats], chosen: dict[tuple[str, str], float],
                   path: str | Path | None = None) -> str:
    """:func:`markdown_grid_table` as CSV, one row per tuned cell and grid λ."""
    rows = ({"experiment": experiment.name, "row": st.cell.row, "column": st.cell.column,
             "metric": st.metric or dev_metric(st.cell.metric), "term": st.cell.term, "lambda": st.lam,
             "paper_lambda": st.cell.paper_lambda, "chosen": chosen.get(st.cell.key) == st.lam,
             "at_window_edge": at_window_edge(st.cell, st.lam),
             "n": st.n, "mean": st.mean if st.n else None, "std": st.std if st.n > 1 else None,
             "diverged": st.diverged, "failed": st.failed, "missing": st.missing,
             "delta_vs_chosen": st.delta, "p_vs_chosen": st.p_value, "seeds": " ".join(map(str, st.seeds))}
            for st in stats)
    return _write_csv(GRID_CSV_FIELDS, rows, path)
