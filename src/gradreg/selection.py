"""λ selection and cell statistics: gathering an experiment's runs from the store, each cell's mean
(std) n, the significance tests, the choice of λ on the dev set and the plan of phase 2.

The paper's protocol (Section 6.2): a number is the mean (std) of 10 runs on different random training
subsets; λ is chosen by the best mean *dev* metric over a grid (phase 1, dev seeds), then the chosen λ
is run on fresh seeds and reported on the test set (phase 2). Significance against the cell's
baseline (:meth:`~gradreg.experiments.Experiment.reference`) is Welch's t-test (unequal variances),
Bonferroni-corrected over the table's comparisons, as Table 6 does; ``paired=True`` pairs the runs by
seed instead (a seed draws the same training subset, initialization and batch order in every cell of
a column, and that shared draw is most of a run's spread). Nothing here ever looks at a test metric to
choose anything. :mod:`gradreg.report` formats what this module computes.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Iterable

from .experiments import Cell, Experiment, PlannedRun
from .experiment import resolve_phase
from .store import ResultStore

__all__ = ["CellStats", "collect", "select_lambdas", "grid_stats", "plan_phase", "dev_metric", "dev_seed_count",
           "higher_is_better", "task_metric", "paired_p", "welch_p", "ALPHA"]

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
                                 f"{st.failed} failed dev runs; run `gradreg sweep {experiment.name} --phase grid` "
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
    return _gather(experiment.plan(phase="grid", seeds=seeds), store, lambda c: dev_metric(c.metric),
                   group=lambda p: (p.cell.key, p.lam))


def collect(experiment: Experiment, store: ResultStore, *, phase: str | None = None,
            seeds: int | None = None, dev_seeds: int | None = None, smoke: bool = False,
            paired: bool = False, lambdas: str | None = None) -> list[CellStats]:
    """Per-cell statistics for the runs ``gradreg sweep`` planned (paper λ or dev-selected λ), over
    ``seeds`` test seeds; the selection reads ``dev_seeds`` dev seeds per λ (default: ``seeds``).

    Each compared cell's ``p_value`` is Welch's test against its reference's runs, or with ``paired``
    a paired t-test over the seeds both have; either way Bonferroni-corrected over the table's
    comparisons. ``delta`` is the difference of the two cells' means either way. ``phase``: ``paper``,
    ``dev`` (the paper phase's runs on dev seeds, scored on the dev metric) or ``selected`` (``lambdas=``
    is its deprecated name)."""
    phase = resolve_phase(phase, lambdas, "collect")
    if phase in ("paper", "dev"):
        plan = experiment.plan(phase=phase, seeds=seeds, smoke=smoke)
    elif phase == "selected":
        best = select_lambdas(experiment, store, seeds=dev_seed_count(seeds, dev_seeds))
        plan = experiment.select_plan(best, seeds=seeds, smoke=smoke)
    else:
        raise ValueError(f"phase must be 'paper', 'dev' or 'selected', got {phase!r}")
    by_cell = _gather(plan, store, (lambda c: dev_metric(c.metric)) if phase == "dev" else (lambda c: c.metric))
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


def plan_phase(experiment: Experiment, store: ResultStore | None, *, phase: str | None = None,
               seeds: int | None = None, dev_seeds: int | None = None, smoke: bool = False,
               lambdas: str | None = None) -> tuple[list[PlannedRun], dict[tuple[str, str], float]]:
    """The runs of one sweep phase and, for phase 2, the λ chosen on the dev set: ``paper`` (each
    cell's stated λ), ``dev`` (the same on dev seeds), ``grid`` (phase 1: every grid λ on ``dev_seeds`` or ``seeds`` dev seeds) or
    ``selected`` (phase 2: the chosen λ on ``seeds`` test seeds; needs phase 1's runs in ``store``).
    ``lambdas=`` is the deprecated name of ``phase=``."""
    phase = resolve_phase(phase, lambdas, "plan_phase")
    if phase in ("paper", "dev"):
        return experiment.plan(phase=phase, seeds=seeds, smoke=smoke), {}
    if phase == "grid":
        return experiment.plan(phase=phase, seeds=dev_seed_count(seeds, dev_seeds), smoke=smoke), {}
    if phase == "selected":
        if store is None:
            raise ValueError("the selected phase reads phase 1's dev runs: it needs a results database")
        best = select_lambdas(experiment, store, seeds=dev_seed_count(seeds, dev_seeds))
        return experiment.select_plan(best, seeds=seeds, smoke=smoke), best
    raise ValueError(f"phase must be paper, dev, grid or selected, got {phase!r}")
