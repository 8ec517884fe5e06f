"""The paper's experiments as data: run counts, keys, seeds, smoke runs and a few exact paper values."""
from __future__ import annotations

import dataclasses
import math

import pytest

from gradreg.data import DATASETS, load_dataset
from gradreg.experiments import (
    DATAGRAD_GRID, DEV_SEED_OFFSET, EXPERIMENTS, GRIDS, METRICS, SPECTREG_GRID, Cell, Experiment,
    estimate_run_seconds, get_experiment, grid_window,
)
from gradreg.models import MODELS
from gradreg.train import RunConfig, train

NAMES = sorted(EXPERIMENTS)
REQUIRED = {"table1", "table2", "table3", "table4", "table5", "table6", "table7", "figure2", "figure3",
            "figure4", "figure5", "figure6", "sin2", "poster_weight_decay", "poster_cp",
            "poster_tinyimagenet", "poster_tinyimagenet_top5"}


def test_every_table_and_figure_is_registered():
    assert REQUIRED <= set(EXPERIMENTS)
    datasets = {c.config.dataset for e in EXPERIMENTS.values() for c in e.cells}
    assert {"mnist", "cifar10", "cifar100", "tinyimagenet", "sin", "sin2"} <= datasets


@pytest.mark.parametrize("name", NAMES)
def test_paper_runs_one_per_cell_and_seed_with_distinct_keys(name):
    e = get_experiment(name)
    runs = e.runs()
    assert len(runs) == len(e.cells) * e.seeds
    assert len({r.key() for r in runs}) == len(runs)
    assert {r.seed for r in runs} == set(range(e.seeds))
    for r in runs:
        assert r.dataset in DATASETS and r.model_name in MODELS
        r.resolved_recipe()  # recipe name and overrides are valid
    assert len(e.runs(seeds=2)) == 2 * len(e.cells)


def _seed_major(plan) -> bool:
    """Every cell's (and λ's) seed i before any seed i+1, in the same cell order for each seed."""
    seeds = [p.seed for p in plan]
    per_seed = {}
    for p in plan:
        per_seed.setdefault(p.seed, []).append((p.cell.key, p.lam))
    return seeds == sorted(seeds) and len({tuple(v) for v in per_seed.values()}) == 1


@pytest.mark.parametrize("name", NAMES)
def test_every_phase_plans_seed_major_so_an_interrupted_sweep_is_balanced(name):
    e = get_experiment(name)
    assert _seed_major(e.plan(seeds=3))
    if any(c.grid for c in e.cells):
        assert _seed_major(e.plan(phase="grid", seeds=3))
    if any(c.tuned for c in e.cells):
        assert _seed_major(e.select_plan({c.key: c.grid[-1] for c in e.cells if c.tuned}, seeds=3))


@pytest.mark.parametrize("name", NAMES)
def test_cells_are_well_formed(name):
    e = get_experiment(name)
    assert e.kind in ("table", "figure") and e.notes and e.source and e.title
    for c in e.cells:
        assert c.metric in METRICS and c.config.seed == 0
        assert e.cell(c.row, c.column) is c
        if c.term is not None:
            assert c.lambda_for_paper_mode is not None
            assert c.grid in ((), GRIDS[c.term])
            assert all(n != c.term for n, _ in c.config.terms)  # the tuned term is not in the config
        if c.paper is not None:
            assert len(c.paper) == 2 and math.isfinite(c.paper[0])
        if e.kind == "figure":
            assert c.paper is None  # the figures print no numbers
        ref = e.reference(c)
        assert ref is None or (ref.baseline and ref is not c)
    if e.kind == "table" and name not in ("sin2", "sin_lownoise"):  # a claim in the text; an investigation
        assert all(c.paper is not None for c in e.cells)


@pytest.mark.parametrize("name", NAMES)
def test_grid_runs_use_dev_seeds_only(name):
    e = get_experiment(name)
    grid = e.runs(phase="grid", seeds=3)
    assert len(grid) == 3 * sum(len(c.grid) for c in e.cells)
    assert len({r.key() for r in grid}) == len(grid)
    assert all(DEV_SEED_OFFSET <= r.seed < DEV_SEED_OFFSET + 3 for r in grid)
    assert not {r.seed for r in grid} & {r.seed for r in e.runs()}


def test_grid_window_takes_the_nearest_values_on_a_log_scale():
    assert grid_window(SPECTREG_GRID, 0.05, 1) == (0.01, 0.03, 0.1)  # 0.05 is off the grid (Table 4)
    assert grid_window(DATAGRAD_GRID, 50.0, 1) == (20.0, 50.0, 100.0)
    assert grid_window(DATAGRAD_GRID, 50.0, 0) == (50.0,)
    assert grid_window(SPECTREG_GRID, 0.0001, 1) == (0.0001, 0.0003, 0.001)  # at the grid's end
    assert grid_window(SPECTREG_GRID, 0.03, 100) == SPECTREG_GRID
    assert grid_window((1.0, 4.0), 2.0, 0) == (1.0,)  # a tie goes to the smaller λ
    with pytest.raises(ValueError, match=">= 0"):
        grid_window(SPECTREG_GRID, 0.03, -1)


@pytest.mark.parametrize("name", NAMES)
def test_with_rows_keeps_those_rows_and_the_baselines(name):
    e = get_experiment(name)
    assert e.with_rows(None) is e and e.with_rows([]) is e
    row = e.rows[-1]
    only = e.with_rows([row])
    assert {c.key for c in only.cells} == {c.key for c in e.cells if c.row == row or c.baseline}
    assert {r.key() for r in only.runs(seeds=2)} <= {r.key() for r in e.runs(seeds=2)}
    assert all(only.reference(c) == e.reference(c) for c in only.cells)
    assert f"Only the rows {row}" in only.notes
    with pytest.raises(ValueError, match=f"no row 'nope'; rows: {e.rows[0]}"):
        e.with_rows([row, "nope"])


@pytest.mark.parametrize("name", NAMES)
def test_with_reference_row_compares_with_that_rows_cell_and_keeps_the_runs(name):
    e = get_experiment(name)
    assert e.with_reference_row(None) is e
    row = e.rows[-1]
    vs = e.with_reference_row(row)
    assert vs.runs(seeds=2) == e.runs(seeds=2) and vs.reference_row == row
    own = {c.column: c for c in vs.cells if c.row == row}
    for c in vs.cells:
        ref = vs.reference(c)
        if c.row == row:
            assert ref is None
        elif c.column in own:
            assert ref == own[c.column]
    # --row after it keeps the reference row's cells for the comparisons
    first_cols = {c.column for c in vs.cells if c.row == e.rows[0]}
    both = vs.with_rows([e.rows[0]])
    assert {c.key for c in both.cells} >= {(row, col) for col in first_cols & set(own)}
    # a column without a cell of the row: no comparison there, not one with another column's cell
    kept = next(c.column for c in e.cells if c.row == row)
    partial = dataclasses.replace(e, cells=tuple(c for c in e.cells if c.row != row or c.column == kept))
    only_kept = partial.with_reference_row(row)
    assert all(only_kept.reference(c) is None for c in only_kept.cells if c.column != kept)
    with pytest.raises(ValueError, match=f"no row 'nope'; rows: {e.rows[0]}"):
        e.with_reference_row("nope")


@pytest.mark.parametrize("name", NAMES)
def test_grid_window_narrows_tuned_grids_around_the_paper_lambda(name):
    e = get_experiment(name)
    assert e.with_grid_window(None) is e
    w = e.with_grid_window(1)
    assert w.runs() == e.runs()  # the paper-λ runs do not change
    assert {r.key() for r in w.runs(phase="grid", seeds=2)} <= {r.key() for r in e.runs(phase="grid", seeds=2)}
    for full, narrow in zip(e.cells, w.cells):
        assert narrow.key == full.key and narrow.tuned == full.tuned
        if full.tuned:
            assert set(narrow.grid) <= set(full.grid) and len(narrow.grid) == min(3, len(full.grid))
            if full.lambda_for_paper_mode in full.grid:
                assert full.lambda_for_paper_mode in narrow.grid
    if any(c.tuned for c in e.cells):
        assert "--grid-window 1" in w.notes


@pytest.mark.parametrize("name", NAMES)
def test_smoke_runs_are_small(name):
    e = get_experiment(name)
    smoke = e.runs(smoke=True)
    assert len(smoke) == len(e.cells)
    for r in smoke:
        recipe = r.resolved_recipe()
        assert recipe.steps == 5 and recipe.eval_points == 1
        assert r.max_eval == 100 and r.train_size is not None and r.train_size <= 100 and r.seed == 0
    assert len(e.runs(smoke=True, phase="grid")) == sum(len(c.grid) for c in e.cells)


@pytest.mark.parametrize("name", NAMES)
def test_select_runs_put_the_chosen_lambda_on_tuned_cells(name):
    e = get_experiment(name)
    best = {c.key: c.grid[0] for c in e.cells if c.tuned}
    plan = e.select_plan(best, seeds=2)
    assert len(plan) == 2 * len(e.cells) and {p.seed for p in plan} == {0, 1}
    for p in plan:
        expected = best[p.cell.key] if p.cell.tuned else p.cell.lambda_for_paper_mode
        assert p.lam == expected
        if p.cell.term is not None and expected:
            assert p.config.terms[-1] == (p.cell.term, expected)
    if best:
        with pytest.raises(ValueError, match="missing"):
            e.select_runs(dict(list(best.items())[1:]))
    with pytest.raises(ValueError, match="not tuned"):
        e.select_runs({**best, ("nope", "nope"): 1.0})


@pytest.mark.parametrize("name", NAMES)
def test_estimated_cost_is_positive(name):
    e = get_experiment(name)
    assert e.estimated_cost() > 0
    assert e.estimated_cost("grid") >= 0
    assert e.estimated_cost(seconds_per_step={"lenet5": 1.0, "mlp": 1.0, "cifar_resnet": 10.0}) > e.estimated_cost()


def test_cost_model_matches_the_documented_factors():
    plain = RunConfig(dataset="mnist", train_size=2000)
    assert estimate_run_seconds(plain) == pytest.approx(10_000 * 0.0054)
    assert estimate_run_seconds(RunConfig(dataset="mnist", terms=(("datagrad", 50),))) == pytest.approx(10_000 * 0.0054 * 2.1)
    assert estimate_run_seconds(RunConfig(dataset="mnist", terms=(("jacreg", 0.1),))) == pytest.approx(10_000 * 0.0054 * 10.3)


def test_table4_values_and_setup():
    e = get_experiment("table4")
    assert e.columns == ("no WD", "WD=0.0005") and e.rows == ("NoGR", "SpectReg", "DataGrad")
    c = e.cell("SpectReg", "WD=0.0005")
    assert c.paper == (97.73, 0.13) and c.paper_lambda == 0.05 and c.term == "spectreg"
    assert c.config.resolved_recipe().weight_decay == 0.0005 and c.config.train_size == 2000
    nowd = e.cell("DataGrad", "no WD")
    assert nowd.paper == (97.95, 0.15) and nowd.paper_lambda == 50
    assert nowd.config.resolved_recipe().weight_decay == 0.0 and nowd.config.resolved_recipe().dropout == 0.5
    assert e.cell("NoGR", "no WD").paper == (97.25, 0.22) and e.cell("NoGR", "WD=0.0005").baseline
    assert e.reference(c) is e.cell("NoGR", "WD=0.0005")
    run = c.run(c.paper_lambda, 3)
    assert run.terms == (("spectreg", 0.05),) and run.seed == 3 and run.weight_convention == "paper"


def test_table7_values_in_the_metric_unit():
    e = get_experiment("table7")
    assert e.columns == ("0", "0.001", "0.003", "0.01", "0.03", "0.1", "0.3", "1", "3", "10")
    assert all(c.metric == "test_mse" and c.config.dataset == "sin" for c in e.cells)
    assert e.cell("SpectReg", "0").baseline and e.cell("SpectReg", "0").term is None
    assert e.cell("SpectReg", "0").paper[0] == pytest.approx(16.6e-5)
    assert e.cell("SpectReg", "0.03").paper[0] == pytest.approx(1.6e-5)
    assert e.cell("SpectReg", "10").paper[0] == pytest.approx(2002.2e-5)
    assert e.reference(e.cell("SpectReg", "1")) is e.cell("SpectReg", "0")


def test_other_spot_values():
    t1 = get_experiment("table1")
    bn = t1.cell("DataGrad", "LeNet Batchnorm")
    assert bn.paper == (96.89, 0.22) and bn.paper_lambda == 0.001 and bn.config.batchnorm
    assert bn.config.resolved_recipe().dropout == 0.0
    assert t1.cell("DataGrad", "LeNet Dropout").paper == (97.98, 0.12)
    both = get_experiment("table2").cell("DataGrad", "CP")
    assert both.paper == (98.07, 0.09) and both.paper_lambda == 10
    assert both.run(10, 0).terms == (("confidence_penalty", 0.01), ("datagrad", 10.0))
    t3 = get_experiment("table3")
    assert t3.cell("SpectReg", "CIFAR-10, 2000").paper == (59.24, 1.48)
    assert t3.cell("DataGrad", "CIFAR-10, 2000").paper_lambda == 1
    t5 = get_experiment("table5")
    assert t5.seeds == 1 and t5.cell("DataGrad", "0.01").paper == (94.14, None)
    recipe = t5.cell("Baseline", "0").config.resolved_recipe()
    assert recipe.steps == 200_000 and recipe.augment and t5.cell("Baseline", "0").config.train_size is None
    t6 = get_experiment("table6")
    assert t6.cell("JacReg", "MNIST, 2000").paper_lambda is None
    assert t6.cell("JacReg", "MNIST, 2000").fallback_lambda is not None
    tin = get_experiment("poster_tinyimagenet_top5").cell("SpectReg", "TinyImageNet-200")
    assert tin.metric == "test_top5" and tin.paper == (75.93, 0.40)
    assert get_experiment("poster_cp").cell("DoubleBack", "CIFAR-100").paper == (48.72, None)
    assert DATAGRAD_GRID == (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 2, 5, 10, 20, 50, 100)
    assert SPECTREG_GRID == (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1)


def test_shared_runs_have_shared_keys():
    # Figure 3 is Table 5's two runs; Table 2's baseline is Table 4's WD=0.0005 baseline.
    f3, t5 = get_experiment("figure3"), get_experiment("table5")
    assert {r.key() for r in f3.runs()} <= {r.key() for r in t5.runs()}
    assert get_experiment("table2").cell("No GR", "No CP").run(None, 0).key() == \
        get_experiment("table4").cell("NoGR", "WD=0.0005").run(None, 0).key()


def test_with_overrides_applies_to_every_cell_over_its_own():
    t4 = get_experiment("table4")
    slow = t4.with_overrides({"lr": "0.001"})
    assert slow.name == "table4" and [c.key for c in slow.cells] == [c.key for c in t4.cells]
    for cell in slow.cells:
        recipe = cell.config.resolved_recipe()
        assert recipe.lr == 0.001
        assert recipe.weight_decay == t4.cell(*cell.key).config.resolved_recipe().weight_decay
    assert not {r.key() for r in slow.runs()} & {r.key() for r in t4.runs()}
    # Overriding a cell's own setting: the override wins (the no-WD column gets weight decay back).
    assert t4.with_overrides({"weight_decay": 0.0005}).cell("NoGR", "no WD").run(None, 0).key() == \
        t4.cell("NoGR", "WD=0.0005").run(None, 0).key()
    assert t4.with_overrides({}) is t4 and t4.with_overrides({"lr": 0.003}).runs() == t4.runs()
    with pytest.raises(ValueError, match="table4: unknown recipe key"):
        t4.with_overrides({"lrr": 1})


def test_figure4_grid_of_weight_decays_and_lambdas():
    e = get_experiment("figure4")
    assert e.rows[0] == "wd = 0.0" and len(e.rows) == 6 and "20" in e.columns
    c = e.cell("wd = 0.005", "20")
    assert c.term == "datagrad" and c.paper_lambda == 20 and c.config.resolved_recipe().weight_decay == 0.005


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="table1.*table7|table7.*table1"):
        get_experiment("table99")
    with pytest.raises(KeyError, match="SpectReg"):
        get_experiment("table4").cell("nope", "no WD")
    with pytest.raises(ValueError, match="phase"):
        get_experiment("table4").runs(phase="best")


def test_cell_run_rules():
    cfg = RunConfig(dataset="sin", train_size=10)
    base = Cell("Baseline", "x", cfg, baseline=True)
    assert base.run(None, 2).seed == 2 and base.run(0, 0) == cfg
    with pytest.raises(ValueError):
        base.run(0.1, 0)
    reg = Cell("SpectReg", "x", cfg, term="spectreg", paper_lambda=0.03, grid=SPECTREG_GRID)
    assert reg.run(0, 0).key() == cfg.key()  # λ = 0 leaves the term out: the baseline run
    with pytest.raises(ValueError):
        reg.run(None, 0)
    with pytest.raises(ValueError, match="unknown regularizer"):
        Cell("X", "x", cfg, term="nope", paper_lambda=1.0)
    with pytest.raises(ValueError, match="seed"):
        Cell("X", "x", RunConfig(dataset="sin", seed=1))
    with pytest.raises(ValueError, match="duplicate"):
        Experiment("dup", "t", "s", (base, base))
    other = Cell("Other", "x", cfg, baseline=True)
    Experiment("two", "t", "s", (base, other))  # two baselines, nothing compared with them: fine
    with pytest.raises(ValueError, match=r"more than one baseline in the column of cell \('SpectReg', 'x'\)"):
        Experiment("two", "t", "s", (base, other, reg))


def test_reference_is_the_columns_baseline_else_the_rows_else_the_only_one():
    cfg = RunConfig(dataset="sin", train_size=10)
    curves = [Cell(row, f"{lam:g}", cfg, term="spectreg", paper_lambda=lam, baseline=lam == 0)
              for row in ("a", "b") for lam in (0, 0.1, 1)]
    e = Experiment("curves", "t", "s", curves)  # two λ = 0 baselines in column "0", one per row
    assert {c.key: e.reference(c) and e.reference(c).key for c in curves} == {
        ("a", "0"): None, ("a", "0.1"): ("a", "0"), ("a", "1"): ("a", "0"),
        ("b", "0"): None, ("b", "0.1"): ("b", "0"), ("b", "1"): ("b", "0")}
    table = [Cell("base", "x", cfg, baseline=True), Cell("reg", "x", cfg, term="spectreg", paper_lambda=1),
             Cell("reg", "y", cfg, term="spectreg", paper_lambda=2)]
    e = Experiment("table", "t", "s", table)  # column y has no baseline, row reg none: the only one
    assert e.reference(table[1]) is table[0] and e.reference(table[2]) is table[0]
    with pytest.raises(ValueError, match=r"more than one baseline in the row of cell \('a', '1'\)"):
        Experiment("ambiguous", "t", "s", [Cell("a", "0", cfg, baseline=True), Cell("a", "z", cfg, baseline=True),
                                           Cell("a", "1", cfg, term="spectreg", paper_lambda=1)])


def test_table7_smoke_runs_train():
    sin = load_dataset("sin")
    for config in get_experiment("table7").runs(smoke=True):
        result = train(config, dataset=sin, progress=False, device="cpu")
        assert result.status == "done" and result.metrics["steps"] == 5
        assert math.isfinite(result.metrics["test_mse"])
