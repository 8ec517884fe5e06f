"""The experiment format: :class:`Cell`, :class:`Experiment`, :class:`PlannedRun` and their planning.

Experiment files (TOML, :mod:`gradreg.spec`) are read into it: the user's, and the paper's own, which
ship as package data (``gradreg/paper/<name>.toml``) and are listed by :mod:`gradreg.experiments`.

An :class:`Experiment` is a list of :class:`Cell` s. A cell is one number the paper prints (one table
cell, one point of a figure's series): the run that produces it (``config``, seed 0, *without* the
regularizer whose λ is tuned), the name of that regularizer (``term``), the λ the paper reports for
it, the grid its λ is selected from, and the paper's (mean, std).

Conventions
-----------
- **Orientation.** ``row`` is the method (the regularizer, or a figure's series) and ``column`` the
  setup it is compared within (a base model, a weight decay, a dataset, a train size, a λ). Where the
  paper prints methods as columns (Tables 1, 2 and 4) the table is transposed here, so that every
  column holds at most one ``baseline`` cell: the reference of the significance tests in its column.
  In λ sweeps (Tables 5 and 7) the single λ = 0 cell is the reference for every column; where
  several λ curves share the λ columns (an experiment file's), each row's λ = 0 is its own
  (:meth:`Experiment.reference`).
- **λ as printed.** ``paper_lambda`` is the paper's value in the paper's convention; ``RunConfig``
  converts it (``weight_convention="paper"``). λ = 0 means the term is left out, so a λ = 0 point is
  the same run (the same key) as the baseline.
- **λ the paper does not state.** ``paper_lambda`` stays ``None`` and ``fallback_lambda`` holds a
  documented stand-in (usually the λ the paper states for the closest setup) so that
  ``runs(phase="paper")`` can still run every cell; such cells should be tuned with the two-phase
  protocol (``runs(phase="grid")`` on dev seeds, then :meth:`Experiment.select_runs`).
- **Seeds.** The paper's protocol (6.2): every number is the mean (std) of 10 runs, each on a different
  random training subset. Test runs use seeds 0..n-1; the λ selection runs (phase 1) use seeds
  ``DEV_SEED_OFFSET + i`` so they never share a training subset, initialization or minibatch order
  with the runs that are reported.
- **Units.** ``paper`` is in the unit of ``metric`` as ``gradreg.train`` reports it: accuracies in
  percent, MSE as a plain number (Table 7 prints MSE in units of 1e-5; stored here multiplied by 1e-5).
  ``std`` is ``None`` where the paper prints none (single runs, the poster's means).
- **Full training sets.** ``train_size=None`` is the whole pool, i.e. the official training set minus
  the 10,000-point dev split (CIFAR-10: 40,000 images, not the paper's 50,000; TinyImageNet: 90,000).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .cost import estimate_run_seconds
from .registry import MetadataView
from .regularizers import REGULARIZER_INFO, REGULARIZERS
from .reports import Report
from .train import RunConfig

__all__ = ["Cell", "Experiment", "PlannedRun", "grid_window", "resolve_phase", "DEV_SEED_OFFSET", "GRIDS", "METRICS"]

DEV_SEED_OFFSET = 1000
METRICS = ("test_acc", "test_top5", "test_mse", "train_mse")


def resolve_phase(phase: str | None, lambdas: str | None, where: str) -> str:
    """The phase given as ``phase=`` (None: ``"paper"``), or as the keyword's old name ``lambdas=`` (a
    DeprecationWarning)."""
    if lambdas is None:
        return "paper" if phase is None else phase
    warnings.warn(f"{where}(lambdas=...) is deprecated; pass phase=...", DeprecationWarning, stacklevel=3)
    if phase not in (None, lambdas):
        raise ValueError(f"{where}: phase={phase!r} and lambdas={lambdas!r} disagree; give phase alone")
    return lambdas


# The paper's λ grids are registered with each term (gradreg.regularizers); GRIDS reads that registry.
GRIDS: Mapping[str, tuple[float, ...]] = MetadataView(REGULARIZER_INFO, "grid")


def grid_window(grid: tuple[float, ...], center: float, k: int) -> tuple[float, ...]:
    """The ``2k + 1`` values of ``grid`` closest to ``center`` on a log scale, in grid order.

    λ grids are logarithmic, so "the neighbours of the paper's λ" are the nearest values in log λ;
    ``center`` need not lie on the grid (Table 4's SpectReg 0.05 gets 0.01, 0.03 and 0.1 at k = 1).
    Ties go to the smaller λ. A grid with fewer values is returned whole.
    """
    if k < 0:
        raise ValueError(f"grid window must be >= 0, got {k}")
    if center <= 0:
        raise ValueError(f"grid window needs a positive centre λ, got {center}")
    nearest = sorted(grid, key=lambda v: (abs(math.log(v / center)), v))[:2 * k + 1]
    return tuple(sorted(nearest))


@dataclass(frozen=True)
class Cell:
    """One cell of a table / one point of a figure's series."""

    row: str                                   # the method / series, e.g. "SpectReg"
    column: str                                # the setup, or a figure's x value as str ("2000")
    config: RunConfig                          # seed 0, without the tuned term
    term: str | None = None                    # the regularizer whose λ this cell uses
    paper_lambda: float | None = None          # the λ the paper reports for this cell
    grid: tuple[float, ...] = ()               # λ candidates for dev-set selection; () = not tuned
    paper: tuple[float, float | None] | None = None   # the paper's (mean, std) in the metric's unit
    baseline: bool = False                     # a reference cell: of its column, else row (Experiment.reference)
    metric: str = "test_acc"
    fallback_lambda: float | None = None       # stand-in where the paper states no λ (see notes)

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(float(v) for v in self.grid))
        where = f"cell ({self.row!r}, {self.column!r})"
        if self.metric not in METRICS:
            raise ValueError(f"{where}: unknown metric {self.metric!r}; valid: {', '.join(METRICS)}")
        if self.config.seed != 0:
            raise ValueError(f"{where}: config.seed must be 0 (seeds are set per run), got {self.config.seed}")
        if self.term is None:
            if self.paper_lambda is not None or self.grid or self.fallback_lambda is not None:
                raise ValueError(f"{where}: a λ or grid needs a term")
            return
        if self.term not in REGULARIZERS:
            raise ValueError(f"{where}: unknown regularizer {self.term!r}; valid: {', '.join(sorted(REGULARIZERS))}")
        if self.paper_lambda is not None and self.fallback_lambda is not None:
            raise ValueError(f"{where}: fallback_lambda is only for cells without a paper_lambda")
        if self.lambda_for_paper_mode is None:
            raise ValueError(f"{where}: a term needs paper_lambda or fallback_lambda")
        if any(v <= 0 for v in self.grid) or list(self.grid) != sorted(set(self.grid)):
            raise ValueError(f"{where}: grid must be increasing positive values, got {self.grid}")

    @property
    def key(self) -> tuple[str, str]:
        return (self.row, self.column)

    @property
    def tuned(self) -> bool:
        """True when the cell's λ is chosen on the dev set (phase 1 runs its grid)."""
        return bool(self.grid)

    @property
    def lambda_for_paper_mode(self) -> float | None:
        """The λ ``runs(phase="paper")`` uses: the paper's, else the documented stand-in."""
        return self.paper_lambda if self.paper_lambda is not None else self.fallback_lambda

    def config_for(self, lam: float | None, seed: int) -> RunConfig:
        """The cell's config with ``term`` at ``lam`` added to its terms (λ = 0: left out) and ``seed``."""
        if self.term is None:
            if lam:
                raise ValueError(f"cell ({self.row!r}, {self.column!r}) has no term to put λ={lam} on")
            return dataclasses.replace(self.config, seed=seed)
        if lam is None:
            raise ValueError(f"cell ({self.row!r}, {self.column!r}) needs a λ for {self.term}")
        terms = self.config.terms + (((self.term, float(lam)),) if lam > 0 else ())
        return dataclasses.replace(self.config, terms=terms, seed=seed)

    def run(self, lam: float | None, seed: int) -> RunConfig:
        """Deprecated name of :meth:`config_for` (it runs nothing); kept for callers."""
        return self.config_for(lam, seed)


@dataclass(frozen=True)
class PlannedRun:
    """One run of an experiment, with the cell and λ it belongs to (for mapping results back)."""

    cell: Cell
    lam: float | None
    seed: int
    config: RunConfig


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    source: str                       # e.g. "Table 4, Section 6.2.3"
    cells: tuple[Cell, ...]
    seeds: int = 10                   # paper protocol: 10 runs on different random training subsets
    kind: str = "table"               # "table" or "figure"
    notes: str = ""                   # the caption's setup, deviations, how λ values were read
    only_rows: tuple[str, ...] = ()   # set by with_rows: the rows kept (besides the baselines)
    reference_row: str = ""           # set by with_reference_row: the row compared with instead of the baselines
    db_name: str | None = None        # the default results database's name; None: see ``database``
    imports: tuple[str, ...] = ()     # modules/.py files registering the user's components (gradreg.plugins)
    reports: tuple[Report, ...] = ()  # the committed tables made from its runs (gradreg.reports)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cells", tuple(self.cells))
        object.__setattr__(self, "imports", tuple(self.imports))
        object.__setattr__(self, "reports", tuple(self.reports))
        tables = [r.table for r in self.reports]
        if len(set(tables)) < len(tables):
            raise ValueError(f"{self.name}: two reports write the same table")
        if not self.cells:
            raise ValueError(f"{self.name}: no cells")
        if self.kind not in ("table", "figure"):
            raise ValueError(f"{self.name}: kind must be 'table' or 'figure', got {self.kind!r}")
        if not 1 <= self.seeds < DEV_SEED_OFFSET:
            raise ValueError(f"{self.name}: seeds must lie in [1, {DEV_SEED_OFFSET}), got {self.seeds}")
        keys = [c.key for c in self.cells]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"{self.name}: duplicate cells {dupes}")
        for cell in self.cells:
            self.reference(cell)  # raises where a cell's reference is ambiguous

    # --- lookup -----------------------------------------------------------------------------------

    @property
    def rows(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.row for c in self.cells))

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.column for c in self.cells))

    @property
    def database(self) -> str:
        """Name of the experiment's default results database, ``results/<database>.db``: ``db_name``
        (an experiment file's name), else the dataset of its first cell. One database per dataset
        family keeps each committed file small, and an experiment that also reads a second dataset
        (``sin2``, the poster's tables) keeps all its runs in one file."""
        return self.db_name or self.cells[0].config.dataset

    @property
    def has_paper_values(self) -> bool:
        """Whether any cell has a published number to show beside ours (experiment files may have none)."""
        return any(c.paper for c in self.cells)

    def cell(self, row: str, column: str) -> Cell:
        for c in self.cells:
            if c.key == (row, column):
                return c
        raise KeyError(f"{self.name} has no cell ({row!r}, {column!r}); "
                       f"cells: {', '.join(f'({r!r}, {k!r})' for r, k in (c.key for c in self.cells))}")

    def reference(self, cell: Cell) -> Cell | None:
        """The baseline ``cell`` is compared with: its column's; else its row's (a λ curve's λ = 0 cell,
        where several curves share the λ columns); else the experiment's only baseline. Two baselines
        at the first of these levels that has any make the reference ambiguous: a ValueError. With a
        ``reference_row`` (:meth:`with_reference_row`), only that row's cell of the same column, else None."""
        if cell.baseline:
            return None
        baselines = [c for c in self.cells if c.baseline]
        if self.reference_row:
            return next((c for c in baselines if c.column == cell.column), None)
        for level, found in (("column", [c for c in baselines if c.column == cell.column]),
                             ("row", [c for c in baselines if c.row == cell.row])):
            if len(found) > 1:
                raise ValueError(f"{self.name}: more than one baseline in the {level} of cell {cell.key}: "
                                 f"{', '.join(str(c.key) for c in found)}")
            if found:
                return found[0]
        return baselines[0] if len(baselines) == 1 else None

    def with_overrides(self, overrides: dict[str, object] | None) -> "Experiment":
        """The same experiment with recipe ``overrides`` applied to every cell (over the cell's own).

        E.g. ``get_experiment("table4").with_overrides({"lr": 0.001})`` is Table 4 at Adam's usual
        rate. Overrides equal to a cell's recipe value change nothing, so those runs keep their keys.
        """
        if not overrides:
            return self
        try:
            cells = tuple(dataclasses.replace(c, config=dataclasses.replace(
                c.config, overrides=tuple((dict(c.config.overrides) | dict(overrides)).items())))
                for c in self.cells)
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None
        spelled = ", ".join(f"{k}={v}" for k, v in overrides.items())
        return dataclasses.replace(self, cells=cells, notes=f"{self.notes} Recipe overrides: {spelled}.".strip())

    def with_grid_window(self, k: int | None) -> "Experiment":
        """The same experiment with each tuned cell's λ grid narrowed to :func:`grid_window` ``(grid,
        paper λ, k)``: the paper's λ and its k neighbours on either side, for a λ selection that costs
        ``2k + 1`` λ per cell instead of the whole grid. ``None`` keeps the full grids.

        Phase 2 (``select_plan``, ``report --phase selected``) then chooses among those values only,
        so pass the same ``k`` to every phase of one selection.
        """
        if k is None:
            return self
        cells = tuple(dataclasses.replace(c, grid=grid_window(c.grid, c.lambda_for_paper_mode, k))
                      if c.tuned else c for c in self.cells)
        note = (f"λ grids narrowed to the {2 * k + 1} values nearest the paper's λ on a log scale "
                f"(--grid-window {k}).")
        return dataclasses.replace(self, cells=cells, notes=f"{self.notes} {note}".strip())

    def with_rows(self, rows: Sequence[str] | None) -> "Experiment":
        """The same experiment with only the cells of ``rows`` (and the baselines they are compared
        with): e.g. a wider λ window for one method without rerunning the others. ``None`` or empty
        keeps every row. Unknown names raise, listing the rows there are."""
        if not rows:
            return self
        unknown = [r for r in rows if r not in self.rows]
        if unknown:
            raise ValueError(f"{self.name} has no row {', '.join(map(repr, unknown))}; "
                             f"rows: {', '.join(self.rows)}")
        refs = {ref.key for c in self.cells if c.row in rows and (ref := self.reference(c)) is not None}
        cells = tuple(c for c in self.cells if c.row in rows or c.key in refs)
        note = f"Only the rows {', '.join(rows)} (and the baselines)."
        return dataclasses.replace(self, cells=cells, only_rows=tuple(rows),
                                   notes=f"{self.notes} {note}".strip())

    def with_reference_row(self, row: str | None) -> "Experiment":
        """The same experiment compared with ``row``'s cell of each column instead of its baselines: the
        p-values and gains of a report or plot then say whether, e.g., DataGrad beats SpectReg at every
        training-set size. A column without a cell of ``row`` has no comparisons. The runs and their keys
        are unchanged. ``None`` keeps the baselines; an unknown name raises, listing the rows there are."""
        if not row:
            return self
        if row not in self.rows:
            raise ValueError(f"{self.name} has no row {row!r}; rows: {', '.join(self.rows)}")
        cells = tuple(dataclasses.replace(c, baseline=c.row == row) for c in self.cells)
        note = f"Each cell compared with the {row} cell of its column, not with the baseline."
        return dataclasses.replace(self, cells=cells, reference_row=row, notes=f"{self.notes} {note}".strip())

    # --- runs -------------------------------------------------------------------------------------

    def plan(self, *, seeds: int | None = None, phase: str | None = None, smoke: bool = False,
             lambdas: str | None = None) -> list[PlannedRun]:
        """``runs`` with each run's cell and λ attached."""
        phase = resolve_phase(phase, lambdas, "plan")
        n = self._n_seeds(seeds, smoke)
        if phase in ("paper", "dev"):
            first = DEV_SEED_OFFSET if phase == "dev" else 0
            out = [PlannedRun(c, c.lambda_for_paper_mode, s, c.config_for(c.lambda_for_paper_mode, s))
                   for s in range(first, first + n) for c in self.cells]
        elif phase == "grid":
            out = [PlannedRun(c, lam, s, c.config_for(lam, s))
                   for s in range(DEV_SEED_OFFSET, DEV_SEED_OFFSET + n) for c in self.cells for lam in c.grid]
        else:
            raise ValueError(f"phase must be 'paper', 'dev' or 'grid', got {phase!r}")
        return [dataclasses.replace(p, config=_smoke(p.config)) for p in out] if smoke else out

    def runs(self, *, seeds: int | None = None, phase: str | None = None, smoke: bool = False,
             lambdas: str | None = None) -> list[RunConfig]:
        """The experiment's run configs, seed-major: every cell's (and λ's) first seed, then every
        cell's second, and so on, so a sweep stopped part-way leaves a balanced table, not some cells
        complete and others empty.

        ``phase="paper"``: every cell at its paper λ (or documented stand-in), test seeds 0..n-1.
        ``phase="dev"``: the same runs on dev seeds ``DEV_SEED_OFFSET + i``: probes that compare settings
        on the dev set, never touching the test seeds' subsets, initializations and orders.
        ``phase="grid"``: phase 1 of the λ selection, every tuned cell at every λ of its grid, on dev
        seeds ``DEV_SEED_OFFSET + i`` (cells without a grid contribute nothing).
        ``smoke=True``: 5 steps, one evaluation on at most 100 points, at most 100 training points,
        one seed (unless ``seeds`` is given); for fast tests. ``lambdas=`` is the deprecated name of ``phase=``.
        """
        phase = resolve_phase(phase, lambdas, "runs")
        return [p.config for p in self.plan(seeds=seeds, phase=phase, smoke=smoke)]

    def select_plan(self, best: dict[tuple[str, str], float], *, seeds: int | None = None,
                    smoke: bool = False) -> list[PlannedRun]:
        """Phase 2 with cells and λ attached: see :meth:`select_runs`."""
        tuned = {c.key for c in self.cells if c.tuned}
        missing, unknown = sorted(tuned - set(best)), sorted(set(best) - tuned)
        if missing or unknown:
            raise ValueError(f"{self.name}: select_runs needs a λ for every tuned cell and no others; "
                             f"missing {missing}, not tuned here {unknown}")
        n = self._n_seeds(seeds, smoke)
        lam = {c.key: best[c.key] if c.tuned else c.lambda_for_paper_mode for c in self.cells}
        out = [PlannedRun(c, lam[c.key], s, c.config_for(lam[c.key], s)) for s in range(n) for c in self.cells]
        return [dataclasses.replace(p, config=_smoke(p.config)) for p in out] if smoke else out

    def select_runs(self, best: dict[tuple[str, str], float], *, seeds: int | None = None,
                    smoke: bool = False) -> list[RunConfig]:
        """Phase 2 of the λ selection: tuned cells at the λ chosen on the dev set (``best`` maps
        ``(row, column)`` to λ), the others as in paper mode, on test seeds 0..n-1; seed-major, as
        :meth:`runs`."""
        return [p.config for p in self.select_plan(best, seeds=seeds, smoke=smoke)]

    def estimated_cost(self, phase: str | None = None, seconds_per_step: dict[str, float] | None = None,
                       *, seeds: int | None = None, lambdas: str | None = None) -> float:
        """Rough single-CPU seconds for ``runs(phase=...)`` (see :func:`estimate_run_seconds`)."""
        phase = resolve_phase(phase, lambdas, "estimated_cost")
        return sum(estimate_run_seconds(r, seconds_per_step) for r in self.runs(seeds=seeds, phase=phase))

    def _n_seeds(self, seeds: int | None, smoke: bool) -> int:
        n = seeds if seeds is not None else (1 if smoke else self.seeds)
        if not 1 <= n < DEV_SEED_OFFSET:
            raise ValueError(f"seeds must lie in [1, {DEV_SEED_OFFSET}), got {n}")
        return n


def _smoke(config: RunConfig) -> RunConfig:
    size = min(config.train_size or 100, 100)
    # Small batches too: a smoke step of the CIFAR ResNet at batch 128 costs seconds on a CPU.
    batch = min(config.resolved_recipe().batch_size, 16)
    overrides = dict(config.overrides) | {"steps": 5, "eval_points": 1, "batch_size": batch}
    return dataclasses.replace(config, train_size=size, overrides=tuple(overrides.items()), max_eval=100)
