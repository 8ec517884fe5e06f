"""Reports and plots from a results store: exact numbers on a hand-made store, and every experiment's
smoke sweep end to end (tiny fixtures in the real file formats stand in for the image datasets)."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradreg import sweep as sweep_mod
from gradreg.cli import app
from gradreg.data import load_dataset
from gradreg.experiments import DEV_SEED_OFFSET, EXPERIMENTS, get_experiment
from gradreg.plots import plot_experiment
from gradreg.report import collect, markdown_table, select_lambdas, welch_p, write_csv
from gradreg.store import ResultStore, owner_id
from gradreg.train import RunResult

from test_data import make_chunks, make_mnist


def make_tinyimagenet(root, classes=6, per_class=40):
    """The official TinyImageNet-200 layout with ``classes`` flat-colored classes of 64x64 JPEGs."""
    from PIL import Image

    wnids = [f"n{i:02d}" for i in range(classes)]
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for k, w in enumerate(wnids):
        color = (40 * k % 256, 255 - 40 * k % 256, 90)
        (root / "train" / w / "images").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (64, 64), color).save(root / "train" / w / "images" / f"{w}_{i}.JPEG")
        Image.new("RGB", (64, 64), color).save(root / "val" / "images" / f"val_{k}.JPEG")
        lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def put(store, config, status="done", **metrics):
    owner = owner_id()
    assert store.claim(config, owner)
    assert store.finish(RunResult(config=config, status=status, metrics=metrics), owner)


@pytest.fixture
def table4_store(tmp_path):
    """table4 with made-up test accuracies: 3 seeds per cell, one diverged DataGrad run."""
    exp = get_experiment("table4")
    values = {}
    with ResultStore(tmp_path / "r.db") as store:
        for p in exp.plan(seeds=3):
            row, col = p.cell.key
            base = {"NoGR": 97.0, "SpectReg": 97.5, "DataGrad": 98.0}[row] + (0.3 if col == "no WD" else 0.0)
            acc = base + 0.1 * p.seed
            if row == "DataGrad" and col == "no WD" and p.seed == 2:
                put(store, p.config, status="diverged")
                continue
            put(store, p.config, test_acc=acc, dev_acc=acc)
            values.setdefault(p.cell.key, []).append(acc)
    return exp, tmp_path / "r.db", values


def test_report_numbers_are_exact(table4_store):
    exp, db, values = table4_store
    with ResultStore(db) as store:
        stats = {st.cell.key: st for st in collect(exp, store, seeds=3)}
    spect = stats[("SpectReg", "WD=0.0005")]
    assert spect.n == 3 and spect.values == pytest.approx([97.5, 97.6, 97.7])
    assert spect.mean == pytest.approx(97.6) and spect.std == pytest.approx(0.1)
    dg = stats[("DataGrad", "no WD")]
    assert dg.n == 2 and dg.diverged == 1
    # Welch against the column's baseline, Bonferroni over the table's 4 comparisons.
    from scipy import stats as sps
    raw = sps.ttest_ind(values[("SpectReg", "WD=0.0005")], values[("NoGR", "WD=0.0005")], equal_var=False).pvalue
    assert spect.p_value == pytest.approx(min(1.0, 4 * raw))
    assert stats[("NoGR", "no WD")].p_value is None  # the baseline is not compared with itself
    assert spect.delta == pytest.approx(0.5)


def test_against_a_row_compares_every_cell_with_that_rows_cell(table4_store, tmp_path):
    from scipy import stats as sps

    exp, db, values = table4_store
    vs = exp.with_reference_row("SpectReg")
    with ResultStore(db) as store:
        stats = {st.cell.key: st for st in collect(vs, store, seeds=3)}
    dg, spect = ("DataGrad", "WD=0.0005"), ("SpectReg", "WD=0.0005")
    assert stats[dg].delta == pytest.approx(0.5)
    raw = sps.ttest_ind(values[dg], values[spect], equal_var=False).pvalue
    assert stats[dg].p_value == pytest.approx(min(1.0, 4 * raw))  # NoGR and DataGrad, 2 columns
    assert stats[("NoGR", "no WD")].delta == pytest.approx(-0.5) and stats[spect].p_value is None
    assert "against the column's SpectReg cell" in markdown_table(vs, list(stats.values()))
    res = runner.invoke(app, ["report", "table4", "--seeds", "3", "--db", str(db), "--against", "SpectReg",
                              "--csv", str(tmp_path / "t.csv")])
    assert res.exit_code == 0 and "against the column's SpectReg cell" in res.output
    assert "DataGrad,WD=0.0005," in (csv_text := (tmp_path / "t.csv").read_text())
    assert ",SpectReg / WD=0.0005," in csv_text and ",NoGR / " not in csv_text
    fig = runner.invoke(app, ["plot", "table4", "--seeds", "3", "--db", str(db), "--against", "SpectReg",
                              "--out", str(tmp_path / "fig")])
    assert fig.exit_code == 0 and (tmp_path / "fig" / "table4_vs-SpectReg.png").exists()


def test_paired_p_values_pair_each_cell_with_its_reference_by_seed(tmp_path):
    """A shared per-seed draw that dwarfs a constant gain: Welch's test cannot see the gain, the paired
    test (what ``--paired`` reports) does; both Bonferroni-corrected, the same delta either way."""
    from scipy import stats as sps

    exp = get_experiment("table4")
    seed_effect = [0.0, 0.6, -0.4, 0.3]
    noise = [0.02, -0.03, 0.01, 0.0]
    gain = {"NoGR": 0.0, "SpectReg": 0.3, "DataGrad": 0.2}
    values: dict = {}
    with ResultStore(tmp_path / "r.db") as store:
        for p in exp.plan(seeds=4):
            acc = 97.0 + seed_effect[p.seed] + gain[p.cell.row] + (noise[p.seed] if p.cell.row != "NoGR" else 0.0)
            put(store, p.config, test_acc=acc)
            values.setdefault(p.cell.key, []).append(acc)
        welch = {st.cell.key: st for st in collect(exp, store, seeds=4)}
        paired = {st.cell.key: st for st in collect(exp, store, seeds=4, paired=True)}
    cell, base = ("SpectReg", "WD=0.0005"), ("NoGR", "WD=0.0005")
    raw = sps.ttest_rel(values[cell], values[base]).pvalue
    assert paired[cell].p_value == pytest.approx(4 * raw) and paired[cell].p_value < 0.01
    assert welch[cell].p_value > 0.5 and welch[cell].test == "welch" and paired[cell].test == "paired"
    assert paired[cell].delta == pytest.approx(welch[cell].delta) == pytest.approx(0.3)
    assert paired[base].p_value is None and paired[base].test == ""
    assert "p: a paired t-test over the seeds both cells have" in markdown_table(exp, list(paired.values()))
    assert "p: Welch's t-test" in markdown_table(exp, list(welch.values()))
    db = tmp_path / "r.db"
    res = runner.invoke(app, ["report", "table4", "--seeds", "4", "--db", str(db), "--paired",
                              "--csv", str(tmp_path / "t.csv")])
    assert res.exit_code == 0 and "paired t-test" in res.output, res.output
    assert ",paired," in (tmp_path / "t.csv").read_text()
    fig = runner.invoke(app, ["plot", "table4", "--seeds", "4", "--db", str(db), "--paired",
                              "--out", str(tmp_path / "fig")])
    assert fig.exit_code == 0 and (tmp_path / "fig" / "table4_paired.png").exists(), fig.output


def test_markdown_and_csv_show_ours_and_the_papers(table4_store, tmp_path):
    exp, db, _ = table4_store
    with ResultStore(db) as store:
        stats = collect(exp, store, seeds=3)
    text = markdown_table(exp, stats)
    assert "| SpectReg |" in text and "97.60 (0.10) n=3" in text and "div=1" in text
    spect_paper = exp.cell("SpectReg", "WD=0.0005").paper
    assert f"paper {spect_paper[0]:.2f} ({spect_paper[1]:.2f})" in text
    csv_text = write_csv(exp, stats, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == csv_text
    assert csv_text.splitlines()[0].startswith("experiment,row,column,metric")
    assert len(csv_text.splitlines()) == 1 + len(exp.cells)
    import csv
    rows = {(r["row"], r["column"]): r for r in csv.DictReader(csv_text.splitlines())}
    assert rows[("SpectReg", "WD=0.0005")]["reference"] == "NoGR / WD=0.0005"
    assert rows[("NoGR", "WD=0.0005")]["reference"] == ""


def test_missing_runs_are_counted_not_hidden(tmp_path):
    exp = get_experiment("table4")
    with ResultStore(tmp_path / "r.db") as store:
        stats = collect(exp, store, seeds=2)
    assert all(st.n == 0 and st.missing == 2 for st in stats)
    assert "missing=2" in markdown_table(exp, stats)



def test_the_dev_phase_runs_the_paper_phase_on_dev_seeds_and_scores_the_dev_set(tmp_path):
    """phase="dev" (probes): the paper phase's cells and λ on dev seeds, compared on the dev metric, so
    a probe never touches the test seeds or reads a test accuracy."""
    exp = get_experiment("table4")
    paper, dev = exp.plan(seeds=3), exp.plan(phase="dev", seeds=3)
    assert [(p.cell, p.lam, p.seed + DEV_SEED_OFFSET) for p in paper] == [(p.cell, p.lam, p.seed) for p in dev]
    with ResultStore(tmp_path / "r.db") as store:
        for p in dev:
            put(store, p.config, dev_acc=90.0 + p.seed - DEV_SEED_OFFSET + (p.cell.row == "SpectReg"), test_acc=0.0)
        stats = {st.cell.key: st for st in collect(exp, store, phase="dev", seeds=3)}
        assert all(st.n == 0 for st in collect(exp, store, seeds=3))  # no test-seed run among them
    spect = stats[("SpectReg", "no WD")]
    assert spect.metric == "dev_acc" and spect.values == [91.0, 92.0, 93.0] and spect.delta == pytest.approx(1.0)
    assert "on dev seeds, scored on the dev set (dev_acc)" in markdown_table(exp, list(stats.values()))

def test_lambda_selection_uses_dev_metric_only(tmp_path):
    """The λ with the best mean dev accuracy wins, whatever the test accuracies say."""
    exp = get_experiment("table4")
    with ResultStore(tmp_path / "r.db") as store:
        with pytest.raises(ValueError, match="--phase grid"):
            select_lambdas(exp, store, seeds=2)
        for p in exp.plan(phase="grid", seeds=2):
            assert p.seed >= DEV_SEED_OFFSET
            good = p.lam == p.cell.grid[1]
            put(store, p.config, dev_acc=99.0 if good else 90.0, test_acc=50.0 if good else 99.9)
        best = select_lambdas(exp, store, seeds=2)
    assert best == {c.key: c.grid[1] for c in exp.cells if c.tuned}


def test_lambda_selection_on_a_grid_window_chooses_inside_it(tmp_path):
    """Phase 2 on a narrowed grid ignores grid runs outside the window, even where they score best."""
    exp = get_experiment("table4")
    narrow = exp.with_grid_window(1)
    with ResultStore(tmp_path / "r.db") as store:
        for p in exp.plan(phase="grid", seeds=2):
            window = narrow.cell(*p.cell.key).grid
            dev = 99.9 if p.lam not in window else (99.0 if p.lam == window[-1] else 90.0)
            put(store, p.config, dev_acc=dev, test_acc=50.0)
        assert select_lambdas(narrow, store, seeds=2) == {c.key: c.grid[-1] for c in narrow.cells if c.tuned}
        assert all(lam not in narrow.cell(*key).grid for key, lam in select_lambdas(exp, store, seeds=2).items())


@pytest.fixture
def table4_grid_store(tmp_path):
    """table4's phase 1 on a 3-λ window with made-up dev accuracies over 3 dev seeds: each cell's middle
    λ best, its right neighbour 0.1 behind, its left 0.5 behind, plus a seed effect shared by every λ
    and a little noise of each run's own; test accuracies say the opposite."""
    exp = get_experiment("table4").with_grid_window(1)
    dev = {}
    with ResultStore(tmp_path / "r.db") as store:
        for p in exp.plan(phase="grid", seeds=3):
            offset = {0: -0.5, 1: 0.0, 2: -0.1}[p.cell.grid.index(p.lam)]
            i = p.seed - DEV_SEED_OFFSET
            acc = 97.0 + offset + 0.3 * i ** 2 + 0.02 * ((i + 2 * p.cell.grid.index(p.lam)) % 3)
            put(store, p.config, dev_acc=acc, test_acc=100.0 - acc)
            dev.setdefault((p.cell.key, p.lam), []).append(acc)
    return exp, tmp_path / "r.db", dev


def test_grid_stats_give_every_lambda_and_its_distance_from_the_choice(table4_grid_store):
    from scipy import stats as sps
    from gradreg.report import grid_stats

    exp, db, dev = table4_grid_store
    with ResultStore(db) as store:
        stats, chosen = grid_stats(exp, store, seeds=3)
    tuned = [c for c in exp.cells if c.tuned]
    assert chosen == {c.key: c.grid[1] for c in tuned}
    assert [(st.cell.key, st.lam) for st in stats] == [(c.key, lam) for c in tuned for lam in c.grid]
    for st in stats:
        values = dev[(st.cell.key, st.lam)]
        assert st.values == pytest.approx(values) and st.seeds == [1000, 1001, 1002]
        best = dev[(st.cell.key, chosen[st.cell.key])]
        if st.lam == chosen[st.cell.key]:
            assert st.delta is None and st.p_value is None
        else:
            assert st.delta == pytest.approx(statistics.fmean(values) - statistics.fmean(best))
            # Paired over seeds: the shared seed effect (0.3 i²) cancels, so even 0.1 is separated,
            # where an unpaired test drowns it.
            assert st.p_value == pytest.approx(sps.ttest_rel(values, best).pvalue)
            assert st.p_value < 0.05 < sps.ttest_ind(values, best, equal_var=False).pvalue
    assert sorted({round(st.delta, 2) for st in stats if st.delta is not None}) == [-0.5, -0.1]


def test_grid_table_and_csv_mark_the_choice_and_the_papers_lambda(table4_grid_store, tmp_path):
    from gradreg.report import grid_stats, markdown_grid_table, write_grid_csv

    exp, db, _ = table4_grid_store
    with ResultStore(db) as store:
        stats, chosen = grid_stats(exp, store, seeds=3)
    text = markdown_grid_table(exp, stats, chosen)
    assert "dev_acc per grid λ (%)" in text and "Dev seeds 1000–1002" in text
    assert "| DataGrad | no WD | **50 (paper, chosen)** |" in text
    assert "| SpectReg | WD=0.0005 | **0.03 (chosen)** |" in text  # the paper's 0.05 is off the grid
    assert "| SpectReg | no WD | 0.01 |" in text and "| -0.50 |" in text
    rows = write_grid_csv(exp, stats, chosen, tmp_path / "g.csv").splitlines()
    assert (tmp_path / "g.csv").read_text().splitlines() == rows
    import csv
    parsed = list(csv.DictReader(rows))
    assert list(parsed[0])[:9] == ["experiment", "row", "column", "metric", "term", "lambda", "paper_lambda",
                                   "chosen", "at_window_edge"]
    assert len(parsed) == len(stats) == 4 * 3 and {r["metric"] for r in parsed} == {"dev_acc"}
    assert [r["lambda"] for r in parsed if r["chosen"] == "True"] == ["0.03", "50.0", "0.03", "50.0"]
    # Each 3-λ window ends on both sides inside its full grid.
    assert [r["at_window_edge"] for r in parsed[:3]] == ["True", "False", "True"]


def test_a_choice_at_the_end_of_a_narrowed_grid_is_flagged(tmp_path):
    from gradreg.report import at_window_edge, grid_stats, markdown_grid_table

    full = get_experiment("table4")
    narrow = full.with_grid_window(1)
    spect = narrow.cell("SpectReg", "no WD")
    assert spect.grid == (0.01, 0.03, 0.1)
    assert at_window_edge(spect, 0.01) and at_window_edge(spect, 0.1) and not at_window_edge(spect, 0.03)
    whole = full.cell("SpectReg", "no WD")
    assert not at_window_edge(whole, whole.grid[0]) and not at_window_edge(whole, whole.grid[-1])
    with ResultStore(tmp_path / "r.db") as store:
        for p in narrow.plan(phase="grid", seeds=2):
            put(store, p.config, dev_acc=(99.0 if p.lam == p.cell.grid[0] else 98.0) + 0.1 * (p.seed - DEV_SEED_OFFSET))
        stats, chosen = grid_stats(narrow, store, seeds=2)
    text = markdown_grid_table(narrow, stats, chosen)
    assert "| SpectReg | no WD | **0.01 (chosen, window edge)** |" in text


def test_dev_seeds_let_the_selection_read_fewer_seeds_than_the_tests_use(table4_grid_store):
    exp, db, _ = table4_grid_store
    with ResultStore(db) as store:
        with pytest.raises(ValueError, match="--dev-seeds"):
            collect(exp, store, phase="selected", seeds=4)  # 4 dev seeds expected, 3 there
        stats = collect(exp, store, phase="selected", seeds=4, dev_seeds=3)
    by = {st.cell.key: st for st in stats}
    assert by[("SpectReg", "no WD")].lam == exp.cell("SpectReg", "no WD").grid[1]
    assert all(st.missing == 4 and not st.n for st in stats)  # phase 2 not run: counted, not invented


def test_cli_report_and_plot_the_grid_phase(table4_grid_store, tmp_path):
    exp, db, _ = table4_grid_store
    common = ["table4", "--lambdas", "grid", "--grid-window", "1", "--db", str(db)]
    res = runner.invoke(app, ["report", *common, "--dev-seeds", "3", "--csv", str(tmp_path / "d.csv"),
                              "--markdown", str(tmp_path / "d.md")])
    assert res.exit_code == 0, res.output
    assert "**50 (paper, chosen)**" in res.output and (tmp_path / "d.md").read_text() in res.output
    assert len((tmp_path / "d.csv").read_text().splitlines()) == 13
    fewer = runner.invoke(app, ["report", *common, "--seeds", "2"])  # --seeds stands in for --dev-seeds
    assert fewer.exit_code == 0 and "n=2" in fewer.output and "n=3" not in fewer.output
    fig = runner.invoke(app, ["plot", *common, "--dev-seeds", "3", "--out", str(tmp_path / "fig")])
    assert fig.exit_code == 0, fig.output
    assert (tmp_path / "fig" / "table4_dev.png").stat().st_size > 10_000
    none = runner.invoke(app, ["report", "table7", "--lambdas", "grid", "--db", str(db)])
    assert none.exit_code == 2 and "no cell with a λ grid" in none.output


def test_grid_figure_names_the_dotted_line_only_where_a_paper_lambda_is_drawn(table4_grid_store):
    import dataclasses

    from gradreg.plots import _figure_grid, _pyplot
    from gradreg.report import grid_stats

    exp, db, _ = table4_grid_store
    # The same cells with the paper's λ moved to the stand-in (an experiment file with a `lambda`): no line.
    own = dataclasses.replace(exp, cells=tuple(
        dataclasses.replace(c, paper_lambda=None, fallback_lambda=c.lambda_for_paper_mode) if c.term else c
        for c in exp.cells))
    with ResultStore(db) as store:
        for e, dotted in ((exp, True), (own, False)):
            stats, chosen = grid_stats(e, store, seeds=3)
            fig = _figure_grid(e, stats, chosen)
            axes = [ax for ax in fig.axes if ax.get_lines()]
            assert axes and all(("dotted: paper's λ" in ax.get_xlabel()) is dotted for ax in axes)
            assert all(any(ln.get_linestyle() == ":" for ln in ax.get_lines()) is dotted for ax in axes)
            _pyplot().close(fig)


def test_cli_sweep_selected_reads_dev_seeds_and_runs_test_seeds(table4_grid_store, monkeypatch):
    exp, db, _ = table4_grid_store
    planned = {}

    def fake_run_sweep(configs, db, **kw):
        planned["configs"] = configs
        return sweep_mod.SweepSummary(total=len(configs))

    monkeypatch.setattr(sweep_mod, "run_sweep", fake_run_sweep)
    args = ["sweep", "table4", "--lambdas", "selected", "--grid-window", "1", "--db", str(db), "--no-progress"]
    missing = runner.invoke(app, args)
    assert missing.exit_code == 2 and "--dev-seeds" in missing.output
    res = runner.invoke(app, [*args, "--dev-seeds", "3", "--seeds", "2"])
    assert res.exit_code == 0, res.output
    configs = planned["configs"]
    assert len(configs) == len(exp.cells) * 2 and {c.seed for c in configs} == {0, 1}
    assert [c.seed for c in configs] == sorted(c.seed for c in configs)  # seed-major: balanced if interrupted
    assert ("spectreg", exp.cell("SpectReg", "no WD").grid[1]) in {t for c in configs for t in c.terms}


def test_cli_row_restricts_sweep_and_report_to_one_method(table4_grid_store, monkeypatch):
    """--row SpectReg: a wider window for one method plans only its runs, and its selection does not
    wait for the other methods' grid runs at that window."""
    exp, db, _ = table4_grid_store
    planned = {}
    monkeypatch.setattr(sweep_mod, "run_sweep", lambda configs, db, **kw: (
        planned.update(configs=configs), sweep_mod.SweepSummary(total=len(configs)))[1])
    common = ["table4", "--grid-window", "2", "--db", str(db), "--row", "SpectReg"]
    res = runner.invoke(app, ["sweep", *common, "--lambdas", "grid", "--seeds", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len(planned["configs"]) == 2 * 5 * 3  # 2 SpectReg cells x 5 λ x 3 dev seeds; no baseline grid
    assert {t[0] for c in planned["configs"] for t in c.terms} == {"spectreg"}
    wide = get_experiment("table4").with_grid_window(2).with_rows(["SpectReg"])
    with ResultStore(db) as store:  # the two new λ per cell: the smaller one best on dev
        for p in wide.plan(phase="grid", seeds=3):
            if p.lam not in exp.cell(*p.cell.key).grid:
                put(store, p.config, dev_acc=99.0 if p.lam == p.cell.grid[0] else 90.0, test_acc=50.0)
    grid = runner.invoke(app, ["report", *common, "--lambdas", "grid", "--dev-seeds", "3"])
    assert grid.exit_code == 0 and "DataGrad" not in grid.output, grid.output
    assert grid.output.count("**0.003 (chosen") == 2 and "missing" not in grid.output
    sel = runner.invoke(app, ["sweep", *common, "--lambdas", "selected", "--dev-seeds", "3", "--no-progress"])
    assert sel.exit_code == 0, sel.output
    assert {t for c in planned["configs"] for t in c.terms} == {("spectreg", wide.cells[1].grid[0])}
    every = runner.invoke(app, ["report", *common[:-2], "--lambdas", "selected", "--dev-seeds", "3"])
    assert every.exit_code == 2 and "('DataGrad', 'no WD')" in every.output
    bad = runner.invoke(app, ["report", *common[:-1], "Spectreg"])
    assert bad.exit_code == 2 and "no row 'Spectreg'; rows: NoGR, SpectReg, DataGrad" in bad.output
    out = db.parent / "fig"  # each phase and row subset draws its own file, none overwrites another
    for lambdas, stem in (("grid", "table4_SpectReg_dev"), ("selected", "table4_SpectReg_selected")):
        fig = runner.invoke(app, ["plot", *common, "--lambdas", lambdas, "--dev-seeds", "3", "--out", str(out)])
        assert fig.exit_code == 0 and (out / f"{stem}.png").stat().st_size > 10_000, fig.output
    assert sorted(p.name for p in out.glob("*.png")) == [
        "table4_SpectReg_dev.png", "table4_SpectReg_selected.png"]


def test_figure2_gain_is_each_methods_difference_from_its_sizes_baseline(tmp_path):
    """The gain panel's points and error bars: mean - baseline mean at the same size, and
    sqrt(s²/n + s_ref²/n_ref); a size whose baseline has a single run has no gain to draw."""
    from gradreg.plots import gain_series

    exp = get_experiment("figure2")
    offsets = {"Baseline": 0.0, "DataGrad": 0.5, "SpectReg": 0.3}
    spread = {"Baseline": 0.1, "DataGrad": 0.2, "SpectReg": 0.05}
    with ResultStore(tmp_path / "r.db") as store:
        for p in exp.plan(seeds=3):
            row, col = p.cell.key
            if row not in offsets or col not in ("500", "2000") or (col == "2000" and p.seed > 0):
                continue
            put(store, p.config, test_acc=90.0 + offsets[row] + spread[row] * p.seed)
        stats = collect(exp, store, seeds=3)
    gains = gain_series(exp, stats)
    assert set(gains) == {"DataGrad", "SpectReg"}
    (x, d, se), = gains["DataGrad"]
    assert x == 500 and d == pytest.approx(0.5 + 0.2 - 0.1)
    assert se == pytest.approx(math.sqrt(0.2 ** 2 / 3 + 0.1 ** 2 / 3))
    (x, d, se), = gains["SpectReg"]
    assert d == pytest.approx(0.3 + 0.05 - 0.1) and se == pytest.approx(math.sqrt(0.05 ** 2 / 3 + 0.1 ** 2 / 3))
    with ResultStore(tmp_path / "r.db") as store:  # paired: the s.e. of the per-seed differences
        gains = gain_series(exp, collect(exp, store, seeds=3, paired=True))
    (x, d, se), = gains["DataGrad"]  # differences 0.5, 0.6, 0.7
    assert x == 500 and d == pytest.approx(0.6) and se == pytest.approx(0.1 / math.sqrt(3))
    with ResultStore(tmp_path / "r.db") as store:
        files = plot_experiment(exp, store, tmp_path / "fig", seeds=3)
    assert all(f.stat().st_size > 0 for f in files)


def test_an_experiment_file_over_training_set_sizes_gets_figure2s_plot(tmp_path, monkeypatch):
    from gradreg import plots
    from gradreg.spec import experiment_from_dict

    drawn = []
    real = plots._figure_sizes
    monkeypatch.setattr(plots, "_figure_sizes", lambda *a: drawn.append(a[0].name) or real(*a))

    def spec(name, columns):  # a baseline and SpectReg per column, train_size as given
        return experiment_from_dict({"name": name, "run": {"dataset": "mnist"}, "cells": [
            {"row": row, "column": col, "run": {"train_size": size} if size else {}, **kw}
            for col, size in columns for row, kw in (("base", {"baseline": True}),
                                                     ("SpectReg", {"term": "spectreg", "lambda": 0.01}))]})

    sizes = spec("by_size", [("500", 500), ("1000", 1000)])
    named = spec("by_name", [("small", 500), ("large", 1000)])
    full = spec("full_sets", [("MNIST", None), ("CIFAR", None)])  # no number, no size: not a size figure
    with ResultStore(tmp_path / "r.db") as store:
        for exp in (sizes, named, full, get_experiment("figure2"), get_experiment("table4"),
                    get_experiment("table7")):
            plot_experiment(exp, store, tmp_path / "fig", seeds=1)
    assert drawn == ["by_size", "figure2"]  # not table4 (setups) nor table7 (λ columns)


def test_paired_p_matches_scipy_on_shared_seeds_only():
    from scipy import stats as sps
    from gradreg.report import paired_p

    a, b = {1: 97.0, 2: 97.4, 3: 96.9, 9: 90.0}, {1: 96.8, 2: 97.3, 3: 96.5}
    assert paired_p(a, b) == pytest.approx(sps.ttest_rel([97.0, 97.4, 96.9], [96.8, 97.3, 96.5]).pvalue)
    assert paired_p({1: 1.0}, {1: 2.0}) is None and paired_p({1: 1.0, 2: 2.0}, {3: 1.0, 4: 2.0}) is None
    assert paired_p({1: 1.0, 2: 2.0}, {1: 1.0, 2: 2.0}) == 1.0 and paired_p({1: 2.0, 2: 3.0}, {1: 1.0, 2: 2.0}) == 0.0


def test_welch_p_matches_scipy_and_handles_degenerate_input():
    from scipy import stats as sps
    a, b = [1.0, 2.0, 3.5], [2.0, 4.0, 4.5, 6.0]
    assert welch_p(a, b) == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    assert welch_p([1.0], b) is None
    assert welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0


# --- every named experiment, end to end, as a smoke sweep ----------------------------------------


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Tiny MNIST / CIFAR / TinyImageNet files (pools of >= 100 points, as smoke runs draw 100)."""
    root = tmp_path_factory.mktemp("data")
    make_mnist(root / "mnist", n_train=220, n_test=20)
    rng = np.random.default_rng(0)
    for name, classes in (("cifar10", 10), ("cifar100", 100)):
        make_chunks(root / name, rng.integers(0, 256, (220, 32, 32, 3), dtype=np.uint8), rng.integers(0, classes, 220),
                    rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), rng.integers(0, classes, 20), chunk=110)
    make_tinyimagenet(root / "tiny-imagenet-200")
    # Fixture MNIST files cannot carry the official md5s: load them once without the check and hand
    # them to the sweep's per-process dataset cache, which is what its workers would load.
    loaded = {n: load_dataset(n, root, verify_checksums=False)
              for n in ("mnist", "cifar10", "cifar100", "tinyimagenet")}
    return root, loaded


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_smoke_sweep_report_and_plot(name, datasets, tmp_path, monkeypatch):
    root, loaded = datasets
    for ds_name, ds in loaded.items():
        # (name, data_dir, fingerprint): these file datasets have none, being checked by checksums
        monkeypatch.setitem(sweep_mod._DATASETS, (ds_name, str(root), None), ds)
    exp = get_experiment(name)
    plan = exp.plan(smoke=True)
    db = tmp_path / "r.db"
    summary = sweep_mod.run_sweep([p.config for p in plan], db, data_dir=str(root), progress=False)
    assert summary.failed == summary.diverged == 0  # smoke runs are 5 small steps: none may break
    assert summary.done == len({p.config.key() for p in plan})
    with ResultStore(db) as store:
        stats = collect(exp, store, smoke=True)
        assert sum(st.n + st.diverged for st in stats) == len(plan)
        assert "| " + exp.rows[0] + " |" in markdown_table(exp, stats)
        files = plot_experiment(exp, store, tmp_path / "fig")
    assert all(f.exists() and f.stat().st_size > 1000 for f in files)


runner = CliRunner()


def test_cli_sweep_resume_report_plot(tmp_path):
    db = str(tmp_path / "r.db")
    first = runner.invoke(app, ["sweep", "table7", "--smoke", "--db", db, "--workers", "1", "--no-progress"])
    assert first.exit_code == 0, first.output
    assert "10 done" in first.output
    again = runner.invoke(app, ["sweep", "table7", "--smoke", "--db", db, "--workers", "1", "--no-progress"])
    assert "10 already in the database, 0 done" in again.output
    rep = runner.invoke(app, ["report", "table7", "--smoke", "--db", db, "--csv", str(tmp_path / "t7.csv")])
    assert rep.exit_code == 0 and "| SpectReg |" in rep.output and (tmp_path / "t7.csv").exists()
    fig = runner.invoke(app, ["plot", "table7", "--db", db, "--out", str(tmp_path / "fig")])
    assert fig.exit_code == 0 and (tmp_path / "fig" / "table7.png").exists()


def test_cli_set_overrides_every_run_of_sweep_and_report(tmp_path):
    db = str(tmp_path / "r.db")
    args = ["--smoke", "--db", db, "--set", "lr=0.01"]
    first = runner.invoke(app, ["sweep", "table7", *args, "--workers", "1", "--no-progress"])
    assert first.exit_code == 0 and "10 done" in first.output, first.output
    with ResultStore(db) as store:
        assert {r["config"]["overrides"]["lr"] for r in store.rows()} == {0.01}
    rep = runner.invoke(app, ["report", "table7", *args])
    assert rep.exit_code == 0 and "missing" not in rep.output
    plain = runner.invoke(app, ["report", "table7", "--smoke", "--db", db])
    assert plain.exit_code == 0 and "missing=1" in plain.output


def test_cli_default_database_is_named_by_the_experiments_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = runner.invoke(app, ["report", "sin2", "--smoke"])
    assert missing.exit_code == 2 and "no results database at results/smoke/sin.db" in missing.output
    swept = runner.invoke(app, ["sweep", "sin2", "--smoke", "--workers", "1", "--no-progress"])
    assert swept.exit_code == 0 and "database results/smoke/sin.db" in swept.output, swept.output
    # smoke runs get their own folder: never mixed into the databases a reproduction commits
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.db")) == ["results/smoke/sin.db"]
    # table7 shares sin2's SIN baseline runs: same database, nothing retrained
    again = runner.invoke(app, ["sweep", "table7", "--smoke", "--workers", "1", "--no-progress"])
    assert again.exit_code == 0 and "1 already in the database" in again.output, again.output
    assert runner.invoke(app, ["report", "sin2", "--smoke"]).exit_code == 0


def test_smoke_sweep_refuses_a_database_of_full_runs_and_leaves_it_untouched(tmp_path):
    db = tmp_path / "sin.db"
    full = get_experiment("sin2").runs()[0]
    with ResultStore(db) as store:
        store.claim(full, owner_id())
        store.finish(RunResult(config=full, status="done", metrics={"test_mse": 0.1}), owner_id())
    before = db.read_bytes()
    refused = runner.invoke(app, ["sweep", "sin2", "--smoke", "--db", str(db), "--workers", "1", "--no-progress"])
    assert refused.exit_code == 2, refused.output
    assert "holds 1 full run(s)" in refused.output and "results/smoke/<dataset>.db" in refused.output
    assert db.read_bytes() == before
    with ResultStore(db) as store:
        assert len(store) == store.count_full_runs() == 1
    # a database of smoke runs takes more of them
    scratch = str(tmp_path / "scratch.db")
    for _ in range(2):
        ok = runner.invoke(app, ["sweep", "sin2", "--smoke", "--db", scratch, "--workers", "1", "--no-progress"])
        assert ok.exit_code == 0, ok.output
    with ResultStore(scratch) as store:
        assert len(store) > 0 and store.count_full_runs() == 0


def test_experiment_database_is_its_first_cells_dataset():
    assert {n: EXPERIMENTS[n].database for n in ("table1", "table4", "table7", "sin2", "sin_lownoise")} == {
        "table1": "mnist", "table4": "mnist", "table7": "sin", "sin2": "sin", "sin_lownoise": "sin_lownoise"}


@pytest.mark.parametrize("args,match", [
    (["sweep", "table99"], "valid: table1, table2"),
    (["sweep", "table7", "--smoke", "--set", "lrr=0.1"], "unknown recipe key(s) lrr; valid:"),
    (["report", "table7", "--set", "lr=fast"], "lr: expected float"),
    (["report", "table7", "--db", "/nonexistent/r.db"], "no results database"),
    (["sweep", "table7", "--lambdas", "best", "--smoke"], "--lambdas must be"),
    (["sweep", "table7", "--seeds", "1000", "--smoke"], "seeds must lie in [1, 1000)"),
    (["report", "table4", "--against", "Dropout"], "table4 has no row 'Dropout'; rows: NoGR"),
    (["plot", "table4", "--lambdas", "grid", "--against", "SpectReg"], "--against is for the paper or selected"),
    (["report", "table4", "--lambdas", "grid", "--paired"], "--paired is for the paper or selected phase"),
])
def test_cli_errors(args, match, tmp_path):
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and match in res.output


def test_cli_grid_window_sizes_the_selection():
    res = runner.invoke(app, ["experiments", "--lambdas", "grid", "--grid-window", "1", "--seeds", "5"])
    assert res.exit_code == 0, res.output
    table4 = next(line for line in res.output.splitlines() if line.startswith("table4 "))
    assert table4.split()[1] == str(4 * 3 * 5)  # 4 tuned cells x 3 λ x 5 dev seeds
    bad = runner.invoke(app, ["sweep", "table4", "--lambdas", "grid", "--grid-window", "-1"])
    assert bad.exit_code == 2 and "--grid-window" in bad.output


def test_cli_experiments_lists_every_experiment():
    res = runner.invoke(app, ["experiments"])
    assert res.exit_code == 0
    for name in EXPERIMENTS:
        assert name in res.output


def test_cli_experiments_counts_finished_runs_and_the_cost_left(table4_store, tmp_path):
    from gradreg.experiments import estimate_run_seconds

    exp, db, _ = table4_store  # 3 seeds per cell: 17 done and 1 diverged of the 60 runs
    res = runner.invoke(app, ["experiments", "--db", str(db)])
    assert res.exit_code == 0, res.output
    left = sum(estimate_run_seconds(r) for r in exp.runs() if r.seed >= 3) / 3600
    fields = next(line for line in res.output.splitlines() if line.startswith("table4 ")).split()
    assert fields[1:5] == ["60", "18", f"{exp.estimated_cost() / 3600:.1f}", f"{left:.1f}"]
    missing = tmp_path / "none.db"
    res = runner.invoke(app, ["experiments", "--db", str(missing)])
    assert res.exit_code == 0 and not missing.exists()  # counting never creates a database
    assert next(line for line in res.output.splitlines() if line.startswith("table4 ")).split()[2] == "-"
