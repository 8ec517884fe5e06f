"""Your own experiments as TOML files (gradreg.spec): parsing, clear errors, and the CLI end to end."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import gradreg
from gradreg.cli import app
from gradreg.experiments import DEV_SEED_OFFSET
from gradreg.spec import experiment_from_dict, load_experiment
from gradreg.store import ResultStore
from gradreg.train import RunConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits_sweep.toml"
runner = CliRunner()

TINY = """
title = "tiny"
seeds = 2

[run]
dataset = "digits"
train_size = 50
overrides = { steps = 10, eval_points = 1 }

[[cells]]
row = "baseline"
baseline = true

[[cells]]
row = "SpectReg"
term = "spectreg"
grid = [0.001, 0.01]
"""


def _spec(tmp_path: Path, text: str, name: str = "mine.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_shipped_example_is_the_experiment_its_comments_describe():
    e = load_experiment(EXAMPLE)
    assert gradreg.load_experiment is load_experiment
    assert e.name == "digits_sweep" and e.seeds == 5 and e.source == str(EXAMPLE)
    assert e.rows == ("baseline", "SpectReg", "DataGrad") and e.columns == ("digits",)
    base, spect, dg = e.cells
    assert base.baseline and base.term is None and not spect.baseline
    assert (spect.term, spect.paper_lambda, spect.grid) == ("spectreg", 0.003, (0.001, 0.003, 0.01))
    assert (dg.term, dg.paper_lambda, dg.grid) == ("datagrad", 3.0, (1.0, 3.0, 10.0))
    runs = e.runs()
    assert len(runs) == 15 and len({r.key() for r in runs}) == 15
    assert runs[1] == RunConfig(dataset="digits", train_size=300, overrides=(("steps", 600),),
                                terms=(("spectreg", 0.003),))
    assert len(e.runs(phase="grid")) == 30


def test_cell_run_settings_merge_over_the_shared_ones_key_by_key():
    e = experiment_from_dict({
        "run": {"dataset": "digits", "train_size": 100, "overrides": {"steps": 50, "lr": 0.002}},
        "cells": [{"row": "plain", "baseline": True, "column": "no wd",
                   "run": {"overrides": {"weight_decay": 0.0}}},
                  {"row": "plain", "baseline": True, "column": "bn", "run": {"batchnorm": True, "train_size": 60}}],
    }, name="merge")
    wd, bn = (c.config for c in e.cells)
    assert dict(wd.overrides) == {"steps": 50, "lr": 0.002, "weight_decay": 0.0} and wd.train_size == 100
    assert bn.batchnorm and bn.train_size == 60 and dict(bn.overrides) == {"steps": 50, "lr": 0.002}
    assert e.name == e.title == "merge" and e.seeds == 10  # defaults


def test_a_lambda_curve_is_one_cell_per_value_with_zero_as_its_baseline():
    e = experiment_from_dict({"run": {"dataset": "sin"}, "metric": "test_mse",
                              "cells": [{"row": "SpectReg", "term": "spectreg", "lambdas": [0, 0.01, 0.1]}]})
    assert e.columns == ("0", "0.01", "0.1") and [c.metric for c in e.cells] == ["test_mse"] * 3
    zero, small, _ = e.cells
    assert zero.baseline and not small.baseline and e.reference(small) is zero
    assert zero.run(zero.paper_lambda, 0) == RunConfig(dataset="sin")  # λ = 0 is the unregularized run
    assert small.run(small.paper_lambda, 0).terms == (("spectreg", 0.01),)


def test_each_of_several_curves_is_compared_with_its_own_zero():
    curve = {"term": "datagrad", "lambdas": [0, 50, 100]}
    e = experiment_from_dict({"cells": [{"row": "wd 0", **curve, "run": {"overrides": {"weight_decay": 0.0}}},
                                        {"row": "wd 5e-4", **curve}]})
    for row in ("wd 0", "wd 5e-4"):
        zero = e.cell(row, "0")
        assert zero.baseline and [e.reference(e.cell(row, c)) for c in ("50", "100")] == [zero, zero]
    assert e.cell("wd 0", "0").config != e.cell("wd 5e-4", "0").config
    assert [c.key for c in e.with_rows(["wd 0"]).cells] == [("wd 0", "0"), ("wd 0", "50"), ("wd 0", "100")]
    # Beside a table baseline, a curve's points still compare with the curve's own λ = 0.
    e = experiment_from_dict({"cells": [{"row": "plain", "baseline": True}, {"row": "dg", **curve}]})
    assert e.reference(e.cell("dg", "50")) is e.cell("dg", "0")


COLUMNS = [{"name": "small", "run": {"train_size": 50}},
           {"name": "large", "run": {"train_size": 200, "overrides": {"lr": 0.01}}}]


def test_columns_give_each_cell_their_settings_and_a_lambda_table_one_lambda_each():
    e = experiment_from_dict({
        "run": {"dataset": "digits", "overrides": {"steps": 20}},
        "columns": COLUMNS,
        "cells": [{"row": "plain", "baseline": True},
                  {"row": "SpectReg", "term": "spectreg", "lambda": {"small": 0.1, "large": 0.01}},
                  {"row": "DataGrad", "term": "datagrad", "lambda": {"small": 3}, "grid": [1, 10, 30]},
                  {"row": "CP", "term": "confidence_penalty", "lambda": 0.3, "column": "large",
                   "run": {"overrides": {"steps": 30}}}],
    })
    assert e.columns == ("small", "large") and e.rows == ("plain", "SpectReg", "DataGrad", "CP")
    written = experiment_from_dict({"run": {"dataset": "digits"}, "cells": [  # the same, cell by cell
        {"row": "plain", "column": "small", "baseline": True, "run": {"train_size": 50, "overrides": {"steps": 20}}},
        {"row": "plain", "column": "large", "baseline": True,
         "run": {"train_size": 200, "overrides": {"steps": 20, "lr": 0.01}}}]})
    assert e.cells[:2] == written.cells
    assert [e.cell("SpectReg", c).paper_lambda for c in e.columns] == [0.1, 0.01]
    small, large = e.cell("DataGrad", "small"), e.cell("DataGrad", "large")
    assert (small.paper_lambda, large.paper_lambda, large.lambda_for_paper_mode) == (3.0, None, 10.0)
    cp = e.cell("CP", "large")
    assert [c.key for c in e.cells if c.row == "CP"] == [("CP", "large")]
    assert cp.config.train_size == 200 and dict(cp.config.overrides) == {"steps": 30, "lr": 0.01}
    assert e.reference(cp) is e.cell("plain", "large")


def test_a_grid_without_a_lambda_runs_its_middle_value_in_paper_mode():
    e = experiment_from_dict({"cells": [{"row": "s", "term": "spectreg", "grid": [0.001, 0.01, 0.1]}]})
    assert e.cells[0].lambda_for_paper_mode == 0.01 and e.cells[0].paper_lambda is None


@pytest.mark.parametrize("data, message", [
    ({"cells": [{"row": "a"}], "sedes": 3}, "top level: unknown key(s) 'sedes'; valid: name, title"),
    ({"run": {"datset": "digits"}, "cells": [{"row": "a"}]}, "[run]: unknown key(s) 'datset'; valid: dataset, train_size"),
    ({"run": {"seed": 3}, "cells": [{"row": "a"}]}, "[run]: unknown key(s) 'seed'"),
    ({"run": {"terms": [["spectreg", 1.0]]}, "cells": [{"row": "a"}]}, "[run]: terms must be a table of keys"),
    ({"cells": [{"row": "a", "lamda": 0.1}]}, "cells[0]: unknown key(s) 'lamda'"),
    ({"cells": [{"row": "a", "run": {"stepz": 3}}]}, "cells[0]: run: unknown key(s) 'stepz'"),
    ({"cells": [{"row": "a", "baseline": True}, {"column": "x"}]}, "cells[1]: needs a row"),
    ({"cells": []}, "at least one [[cells]]"),
    ({"cells": [{"row": "a", "term": "spectreg"}]}, "term 'spectreg' needs a lambda, lambdas, a grid, fallback_lambda or tuned = true"),
    ({"cells": [{"row": "a", "term": "spectral", "lambda": 0.1}]}, "unknown regularizer 'spectral'; valid:"),
    ({"cells": [{"row": "a", "lambda": 0.1}]}, "a λ or grid needs a term"),
    ({"run": {"dataset": "mnistt"}, "cells": [{"row": "a"}]}, "unknown dataset 'mnistt'; valid:"),
    ({"run": {"overrides": {"stepz": 3}}, "cells": [{"row": "a"}]}, "[run]: unknown recipe key(s) stepz; valid:"),
    ({"cells": [{"row": "a", "term": "spectreg", "lambdas": [0.1, 0.01]}]}, "lambdas must be increasing"),
    ({"cells": [{"row": "a", "term": "spectreg", "lambdas": [0, 1], "grid": [1]}]}, "goes without grid"),
    ({"cells": [{"row": "a", "term": "spectreg", "lambdas": [0, 1], "baseline": True}]}, "goes without baseline"),
    ({"cells": [{"row": "a", "term": "spectreg", "lambdas": [0, 1], "paper": [9]}]},
     "paper beside lambdas must list one value per λ (2)"),
    ({"cells": [{"row": "a", "term": "spectreg", "lambdas": [0, float("nan")]}]}, "finite number >= 0, got nan"),
    ({"cells": [{"row": "a", "term": "spectreg", "lambdas": 1}]}, "lambdas must be a list of numbers, got 1"),
    ({"cells": [{"row": "a", "term": "spectreg", "lambda": -1}]}, "lambda must be a finite number >= 0, got -1"),
    ({"cells": [{"row": "a", "term": "spectreg", "lambda": float("inf")}]}, "lambda must be a finite number"),
    ({"cells": [{"row": "a", "term": "spectreg", "lambda": "0.1"}]}, "lambda must be a finite number >= 0, got '0.1'"),
    ({"cells": [{"row": "a", "term": "spectreg", "lambda": True}]}, "lambda must be a finite number >= 0, got True"),
    ({"cells": [{"row": "a", "term": "spectreg", "grid": "0.1"}]}, "grid must be a list of numbers, got '0.1'"),
    ({"cells": [{"row": "a", "term": "spectreg", "grid": ["0.1"]}]}, "each value of grid must be a finite number"),
    ({"cells": [{"row": "a", "term": "spectreg", "grid": []}]}, "term 'spectreg' needs a lambda, lambdas, a grid, fallback_lambda or tuned = true"),
    ({"cells": [{"row": "a", "term": ["spectreg"], "lambda": 1}]}, "term must be a non-empty string"),
    ({"cells": [{"row": "a", "baseline": "no"}]}, "cells[0]: baseline must be true or false, got 'no'"),
    ({"cells": [{"row": 1}]}, "cells[0]: row must be a non-empty string, got 1"),
    ({"cells": [{"row": ""}]}, "row must be a non-empty string, got ''"),
    ({"cells": [{"row": "a", "column": 3}]}, "column must be a non-empty string"),
    ({"cells": [{"row": "a", "paper": ["x"]}]}, "each value of paper must be a finite number"),
    ({"run": {"batchnorm": "false"}, "cells": [{"row": "a"}]}, "[run]: batchnorm must be true or false"),
    ({"run": {"train_size": 300.5}, "cells": [{"row": "a"}]}, "[run]: train_size must be an integer, got 300.5"),
    ({"run": {"train_size": "300"}, "cells": [{"row": "a"}]}, "[run]: train_size must be an integer"),
    ({"run": {"n_projections": "x"}, "cells": [{"row": "a"}]}, "n_projections must be an integer"),
    ({"run": {"model": "resnet9000"}, "cells": [{"row": "a"}]}, "[run]: unknown model 'resnet9000'; valid:"),
    ({"run": {"batch_mode": "x"}, "cells": [{"row": "a"}]}, "batch_mode must be 'batch' or 'sample'"),
    ({"run": {"overrides": "steps=3"}, "cells": [{"row": "a"}]}, "[run]: overrides must be a table of keys"),
    ({"run": {"dataset": ["digits"]}, "cells": [{"row": "a"}]}, "[run]: dataset must be a non-empty string"),
    ({"run": {"train_size": 0}, "cells": [{"row": "a"}]}, "[run]: train_size must be >= 1"),
    ({"cells": [{"row": "a", "run": {"batchnorm": 1}}]}, "cells[0]: run: batchnorm must be true or false"),
    ({"seeds": "5", "cells": [{"row": "a"}]}, "seeds must be an integer, got '5'"),
    ({"seeds": True, "cells": [{"row": "a"}]}, "seeds must be an integer, got True"),
    ({"name": "table4", "cells": [{"row": "a"}]}, "name 'table4' is one of the paper's experiments; set another"),
    ({"name": "sub/x", "cells": [{"row": "a"}]}, "must be letters, digits"),
    ({"name": "", "cells": [{"row": "a"}]}, "name must be a non-empty string"),
    ({"cells": [{"row": "a", "term": "spectreg", "lambda": 1, "grid": [1, 0.1]}]}, "grid must be increasing"),
    ({"cells": [{"row": "a", "metric": "accuracy"}]}, "unknown metric 'accuracy'; valid: test_acc"),
    ({"cells": [{"row": "a", "paper": [1, 2, 3]}]}, "paper must be [mean] or [mean, std]"),
    ({"cells": [{"row": "a"}, {"row": "a"}]}, "duplicate cells"),
    ({"seeds": 0, "cells": [{"row": "a"}]}, "seeds must lie in"),
    ({"cells": [{"row": "a"}], "run": 3}, "[run] must be a table"),
    ({"columns": [], "cells": [{"row": "a"}]}, "columns must be one or more [[columns]] entries"),
    ({"columns": [{"run": {}}], "cells": [{"row": "a"}]}, "columns[0]: needs a name"),
    ({"columns": [{"name": "x", "size": 3}], "cells": [{"row": "a"}]}, "columns[0]: unknown key(s) 'size'; valid: name, run"),
    ({"columns": [{"name": "x"}, {"name": "x"}], "cells": [{"row": "a"}]}, "columns[1]: duplicate column name 'x'"),
    ({"columns": [{"name": "x", "run": {"train_size": 0}}], "cells": [{"row": "a"}]}, "columns[0]: train_size must be >= 1"),
    ({"columns": [{"name": "x", "run": {"stepz": 1}}], "cells": [{"row": "a"}]}, "columns[0]: run: unknown key(s) 'stepz'"),
    ({"columns": COLUMNS, "cells": [{"row": "a", "column": "medium"}]},
     "cells[0]: column 'medium' is not one of the [[columns]]: 'small', 'large'"),
    ({"columns": COLUMNS, "cells": [{"row": "a", "term": "spectreg", "lambda": {"smal": 1, "small": 1}}]},
     "cells[0]: lambda names column(s) 'smal' the cell does not run in; valid: 'small', 'large'"),
    ({"columns": COLUMNS, "cells": [{"row": "a", "term": "spectreg", "lambda": {"small": 1}}]},
     "cells[0]: column 'large': term 'spectreg' needs a lambda, lambdas, a grid, fallback_lambda or tuned = true"),
    ({"columns": COLUMNS, "cells": [{"row": "a", "term": "spectreg", "lambda": {"small": -1, "large": 1}}]},
     "cells[0]: column 'small': lambda must be a finite number >= 0, got -1"),
    ({"columns": COLUMNS, "cells": [{"row": "a", "term": "spectreg", "lambdas": [0, 1]}]},
     "lambdas (a λ curve: one column per value) goes without [[columns]]"),
    ({"cells": [{"row": "a", "term": "spectreg", "lambda": {"x": 1}}]}, "lambda as a table (one value per column) needs [[columns]]"),
    ({"columns": COLUMNS, "cells": [{"baseline": True}]}, "cells[0]: needs a row"),
])
def test_bad_specs_fail_naming_the_key_and_what_is_valid(data, message):
    with pytest.raises(ValueError) as info:
        experiment_from_dict(data)
    assert message in str(info.value)


def test_unreadable_files_fail_with_the_path(tmp_path):
    with pytest.raises(ValueError, match="no experiment file at"):
        load_experiment(tmp_path / "absent.toml")
    broken = _spec(tmp_path, "title = 'x'\n[[cells]\nrow = 1\n", "broken.toml")
    with pytest.raises(ValueError, match=r"broken\.toml: not valid TOML"):
        load_experiment(broken)
    bad_key = _spec(tmp_path, TINY + "\n[[cells]]\nrow = 'x'\ncolour = 'red'\n", "bad.toml")
    with pytest.raises(ValueError, match=r"bad\.toml: cells\[2\]: unknown key\(s\) 'colour'"):
        load_experiment(bad_key)
    res = runner.invoke(app, ["sweep", str(bad_key), "--db", str(tmp_path / "x.db")])
    assert res.exit_code == 2 and "colour" in res.output and not (tmp_path / "x.db").exists()
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(ValueError, match=r"dir\.toml: cannot read it"):
        load_experiment(tmp_path / "dir.toml")
    bom = tmp_path / "bom.toml"
    bom.write_bytes("\ufeff".encode() + TINY.encode())  # as some editors save UTF-8
    assert load_experiment(bom).title == "tiny"
    paper_name = _spec(tmp_path, TINY, "table4.toml")
    with pytest.raises(ValueError, match=r"table4\.toml: name 'table4' is one of the paper's experiments"):
        load_experiment(paper_name)
    typo = runner.invoke(app, ["report", "digits_sweep"])  # a name, not a file: the valid ones, and the files
    assert typo.exit_code == 2 and "valid: table1" in typo.output and "experiment file (*.toml)" in typo.output


def test_cli_sweeps_reports_and_plots_a_spec_through_both_phases_of_the_selection(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec, db = _spec(tmp_path, TINY), tmp_path / "results" / "mine.db"
    common = ["--db", str(db), "--workers", "1", "--no-progress"]
    paper = runner.invoke(app, ["sweep", str(spec), "--workers", "1", "--no-progress"])
    assert paper.exit_code == 0, paper.output
    # the file's own database by default, not results/digits.db that other experiments on the digits use
    assert "mine: 4 runs (paper λ), database results/mine.db" in paper.output and "4 done" in paper.output
    assert sorted(p.name for p in (tmp_path / "results").glob("*.db")) == ["mine.db"]
    rep = runner.invoke(app, ["report", str(spec), "--db", str(db), "--csv", str(tmp_path / "t.csv")])
    assert rep.exit_code == 0, rep.output
    assert "| SpectReg | " in rep.output and "n=2 p=" in rep.output and "λ=0.01" in rep.output  # the grid's upper middle
    assert "paper" not in rep.output  # nothing published to compare with: no column of dashes
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 3

    grid = runner.invoke(app, ["sweep", str(spec), "--lambdas", "grid", *common])
    assert grid.exit_code == 0 and "4 runs (grid λ)" in grid.output and "4 done" in grid.output, grid.output
    with ResultStore(db) as store:
        seeds = sorted(r["config"]["seed"] for r in store.rows() if r["config"]["terms"])
    assert seeds == [0, 1, DEV_SEED_OFFSET, DEV_SEED_OFFSET, DEV_SEED_OFFSET + 1, DEV_SEED_OFFSET + 1]
    chosen = runner.invoke(app, ["report", str(spec), "--lambdas", "grid", "--db", str(db)])
    assert chosen.exit_code == 0 and "chosen" in chosen.output, chosen.output
    selected = runner.invoke(app, ["sweep", str(spec), "--lambdas", "selected", *common])
    assert selected.exit_code == 0 and "λ chosen on the dev set: SpectReg/digits:" in selected.output
    for lambdas in ("paper", "grid", "selected"):
        fig = runner.invoke(app, ["plot", str(spec), "--lambdas", lambdas, "--db", str(db),
                                  "--out", str(tmp_path / "fig")])
        assert fig.exit_code == 0, fig.output
    names = sorted(p.name for p in (tmp_path / "fig").glob("*.png"))
    assert names == ["mine.png", "mine_dev.png", "mine_selected.png"]


def test_cli_runs_a_lambda_curve_on_the_users_own_npz_data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    np.savez(tmp_path / "mine.npz", x_train=x[:80], y_train=y[:80], x_test=x[80:], y_test=y[80:])
    spec = _spec(tmp_path, """
seeds = 2
[run]
dataset = "npz"
model = "mlp"
overrides = { steps = 20, eval_points = 1 }
[[cells]]
row = "SpectReg"
term = "spectreg"
lambdas = [0, 0.01, 0.1]
""", "curve.toml")
    db = tmp_path / "curve.db"
    res = runner.invoke(app, ["sweep", str(spec), "--data-dir", str(tmp_path / "mine.npz"), "--db", str(db),
                              "--workers", "1", "--no-progress"])
    assert res.exit_code == 0 and "6 done" in res.output, res.output
    rep = runner.invoke(app, ["report", str(spec), "--db", str(db)])
    assert rep.exit_code == 0 and "| | 0 | 0.01 | 0.1 |" in rep.output, rep.output
    assert rep.output.count("n=2") == 3 and rep.output.count(" p=") == 2  # λ = 0 is the reference
    fig = runner.invoke(app, ["plot", str(spec), "--db", str(db), "--out", str(tmp_path / "fig")])
    assert fig.exit_code == 0 and (tmp_path / "fig" / "curve.png").stat().st_size > 10_000, fig.output


@pytest.mark.parametrize("paper, labels", [(None, ["ours (mean, std)"]),
                                           ([97.0, 0.1], ["ours (mean, std)", "paper (mean, std)"])])
def test_the_figure_draws_published_numbers_only_where_the_file_gives_some(tmp_path, paper, labels):
    from gradreg.plots import _generic
    from gradreg.report import collect

    cell = {"row": "SpectReg", "term": "spectreg", "lambda": 0.01} | ({"paper": paper} if paper else {})
    e = experiment_from_dict({"cells": [{"row": "baseline", "baseline": True}, cell]}, name="p")
    with ResultStore(tmp_path / "r.db") as store:
        fig = _generic(e, collect(e, store), store, tmp_path)
    assert fig.axes[0].get_legend_handles_labels()[1] == labels


def test_every_run_config_field_but_seed_can_be_set_from_a_file():
    import dataclasses

    from gradreg.spec import _RUN_TYPES
    assert set(_RUN_TYPES) == {f.name for f in dataclasses.fields(RunConfig)} - {"seed"}


# --- [[reports]]: the tables an experiment file's runs make (gradreg reproduce) ---


_REPORTS_BASE = """
name = "rep"
[run]
dataset = "digits"
[[cells]]
row = "SpectReg"
term = "spectreg"
grid = [0.001, 0.01]
"""


def test_reports_parse_and_become_report_arguments(tmp_path):
    from gradreg.reports import Report

    p = tmp_path / "r.toml"
    # lambdas: the phase key's old name, still read
    p.write_text(_REPORTS_BASE + '[[reports]]\ntable = "rep_dev"\nlambdas = "grid"\nseeds = 2\n'
                 '[[reports]]\ntable = "sub/rep_sel"\ndb = "other.db"\nphase = "selected"\nseeds = 5\n'
                 'dev_seeds = 2\npaired = true\nrows = ["SpectReg"]\nset = {lr = 0.001}\n')
    exp = load_experiment(p)
    assert exp.reports == (Report("rep_dev", phase="grid", seeds=2),
                           Report("sub/rep_sel", db="other.db", phase="selected", seeds=5, dev_seeds=2,
                                  paired=True, rows=("SpectReg",), set=(("lr", 0.001),)))
    assert exp.reports[0].database(exp.database) == "rep.db"
    assert exp.reports[1].arguments() == ["--phase", "selected", "--seeds", "5", "--dev-seeds", "2", "--row",
                                          "SpectReg", "--paired", "--set", "lr=0.001"]


@pytest.mark.parametrize("entry, message", [
    ('seeds = 2', "needs a table"),
    ('table = "a"\ncolour = 1', "unknown key(s) 'colour'; valid: table, db"),
    ('table = "../a"', "table must be a file stem under results/"),
    ('table = "a"\nphase = "best"', "phase must be paper, dev, grid or selected"),
    ('table = "a"\nlambdas = "best"', "phase must be paper, dev, grid or selected"),
    ('table = "a"\nphase = "grid"\nlambdas = "grid"', "give phase alone (lambdas is its old name)"),
    ('table = "a"\nphase = "grid"\npaired = true', "against/paired are for the paper and selected phases"),
    ('table = "a"\nseeds = -1', "seeds must be a non-negative integer"),
    ('table = "a"\npaired = "yes"', "paired must be a bool"),
])
def test_bad_reports_name_the_entry_and_the_problem(tmp_path, entry, message):
    p = tmp_path / "r.toml"
    p.write_text(_REPORTS_BASE + "[[reports]]\n" + entry + "\n")
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        load_experiment(p)
    assert "reports[0]" in str(err.value)


def test_two_reports_of_one_table_are_refused(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text(_REPORTS_BASE + '[[reports]]\ntable = "a"\n[[reports]]\ntable = "a"\nseeds = 3\n')
    with pytest.raises(ValueError, match="two reports write the same table"):
        load_experiment(p)


def test_reproduce_runs_each_phase_in_order_and_refuses_an_experiment_without_reports(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text(_REPORTS_BASE + '[[reports]]\ntable = "rep_sel"\nphase = "selected"\nseeds = 3\ndev_seeds = 2\n'
                 'against = "SpectReg"\n[[reports]]\ntable = "rep_dev"\nphase = "grid"\nseeds = 2\n')
    out = CliRunner().invoke(app, ["reproduce", str(p), "--sweep", "--dry-run", "--results", str(tmp_path)])
    assert out.exit_code == 0, out.output
    lines = [line for line in out.output.splitlines() if line.startswith("$ gradreg")]
    assert [line.split()[2] for line in lines] == ["sweep", "sweep", "report", "report"]
    assert "--phase grid --seeds 2" in lines[0] and "--phase selected --seeds 3 --dev-seeds 2" in lines[1]
    assert "--against" not in lines[1] and "--against SpectReg" in lines[2]
    assert f"--markdown {tmp_path / 'rep_dev.md'}" in lines[3]
    p.write_text(_REPORTS_BASE)
    out = CliRunner().invoke(app, ["reproduce", str(p)])
    assert out.exit_code != 0 and "lists no reports" in out.output


# --- the keys the paper's own files use, and the files themselves -------------------------------------

PAPER_COLUMNS = [{"name": "small", "run": {"train_size": 100}}, {"name": "large", "run": {"train_size": 400}}]


def test_tuned_cells_get_the_registered_grid_and_fixed_cells_none():
    from gradreg.regularizers import regularizer_info

    e = experiment_from_dict({"run": {"dataset": "digits"}, "cells": [
        {"row": "a", "term": "spectreg", "lambda": 0.01, "tuned": True},
        {"row": "b", "term": "datagrad", "lambda": 1, "tuned": False},
        {"row": "c", "term": "spectreg", "tuned": True, "fallback_lambda": 0.003}]})
    a, b, c = e.cells
    assert a.grid == regularizer_info("spectreg").grid and a.paper_lambda == 0.01 and a.fallback_lambda is None
    assert b.grid == () and not b.tuned
    assert c.paper_lambda is None and c.fallback_lambda == 0.003 and c.lambda_for_paper_mode == 0.003


def test_per_column_values_fallback_and_column_order():
    e = experiment_from_dict({"run": {"dataset": "digits"}, "columns": PAPER_COLUMNS, "order": "columns", "cells": [
        {"row": "base", "baseline": True, "paper": {"small": [90.0, 1.0], "large": 95.0}},
        {"row": "reg", "term": "spectreg", "tuned": True, "lambda": {"large": 0.01}, "fallback_lambda": 0.03,
         "paper": {"small": 91.0}}]})
    assert [c.key for c in e.cells] == [("base", "small"), ("reg", "small"), ("base", "large"), ("reg", "large")]
    base_small, reg_small, base_large, reg_large = e.cells
    assert base_small.paper == (90.0, 1.0) and base_large.paper == (95.0, None)
    assert reg_small.paper == (91.0, None) and reg_large.paper is None
    assert (reg_small.paper_lambda, reg_small.fallback_lambda) == (None, 0.03)
    assert (reg_large.paper_lambda, reg_large.fallback_lambda) == (0.01, None)
    entries = experiment_from_dict({"run": {"dataset": "digits"}, "columns": PAPER_COLUMNS,
                                    "cells": [{"row": "base", "baseline": True}, {"row": "x"}]})
    assert [c.key for c in entries.cells] == [("base", "small"), ("base", "large"), ("x", "small"), ("x", "large")]


def test_fixed_terms_in_the_run_settings_and_paper_values_of_a_curve():
    e = experiment_from_dict({"run": {"dataset": "digits", "terms": {"confidence_penalty": 0.01}}, "cells": [
        {"row": "a", "term": "spectreg", "lambda": 0.03, "run": {"terms": {"datagrad": 1}}},
        {"row": "b", "term": "spectreg", "lambdas": [0, 0.1], "paper": [5e-5, [4e-5, 1e-6]]}]})
    assert e.cells[0].config.terms == (("confidence_penalty", 0.01), ("datagrad", 1.0))
    assert e.cells[0].config_for(0.03, 0).terms[-1] == ("spectreg", 0.03)
    assert [c.paper for c in e.cells[1:]] == [(5e-5, None), (4e-5, 1e-6)]


@pytest.mark.parametrize("data, message", [
    ({"cells": [{"row": "a", "term": "spectreg", "grid": [1], "tuned": False}]}, "tuned = false (the λ is fixed) goes without a grid"),
    ({"cells": [{"row": "a", "tuned": True}]}, "tuned needs a term"),
    ({"cells": [{"row": "a", "fallback_lambda": 1}]}, "fallback_lambda needs a term"),
    ({"cells": [{"row": "a", "term": "spectreg", "tuned": "yes"}]}, "tuned must be true or false"),
    ({"cells": [{"row": "a", "term": "spectreg", "lambda": 1, "fallback_lambda": 2}]},
     "fallback_lambda is the stand-in λ of a cell without a lambda"),
    ({"cells": [{"row": "a", "term": "spectreg", "fallback_lambda": -1}]}, "fallback_lambda must be a finite number >= 0"),
    ({"cells": [{"row": "a", "term": "spectreg", "lambdas": [0, 1], "tuned": True}]}, "goes without tuned"),
    ({"cells": [{"row": "a", "paper": {"x": 1}}]}, "paper as a table (one value per column) needs [[columns]]"),
    ({"order": "rows", "cells": [{"row": "a"}]}, "order must be one of 'entries', 'columns', got 'rows'"),
    ({"order": "columns", "cells": [{"row": "a"}]}, "order = \"columns\" lists the cells column by column: it needs"),
    ({"run": {"terms": {"nope": 1}}, "cells": [{"row": "a"}]}, "[run]: unknown regularizer 'nope'"),
    ({"run": {"terms": {"datagrad": True}}, "cells": [{"row": "a"}]}, "terms.datagrad must be a finite number"),
    ({"run": {"terms": {"datagrad": "50"}}, "cells": [{"row": "a"}]}, "terms.datagrad must be a finite number"),
    ({"cells": [{"row": "a", "term": "fd_spectreg", "tuned": True}]}, "registers none; give the cell a grid"),
    ({"columns": PAPER_COLUMNS, "cells": [{"row": "a", "term": "spectreg", "fallback_lambda": {"big": 1}}]},
     "fallback_lambda names column(s) 'big' the cell does not run in"),
])
def test_bad_paper_keys_fail_naming_the_key(data, message):
    with pytest.raises(ValueError) as info:
        experiment_from_dict({"run": {"dataset": "digits"}} | data)
    assert message in str(info.value)


def test_the_paper_files_are_the_paper_experiments_and_keep_their_names():
    import importlib.resources

    from gradreg.experiments import EXPERIMENTS
    from gradreg.spec import PAPER_NAMES

    folder = importlib.resources.files("gradreg") / "paper"
    assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".toml")) == sorted(
        f"{n}.toml" for n in PAPER_NAMES)
    assert tuple(EXPERIMENTS) == PAPER_NAMES and all(e.name == n for n, e in EXPERIMENTS.items())
    # cells, tuned cells and reports of each: what the paper's tables and figures hold
    assert {n: (len(e.cells), sum(c.tuned for c in e.cells), len(e.reports)) for n, e in EXPERIMENTS.items()} == {
        "table1": (9, 6, 1), "table2": (6, 5, 2), "table2_cp": (2, 0, 1), "table3": (4, 3, 0), "table4": (6, 4, 6),
        "table5": (15, 0, 0), "table6": (3, 3, 1), "table7": (10, 0, 1), "sin_lownoise": (9, 0, 1),
        "figure2": (30, 24, 0), "figure3": (2, 0, 0), "figure4": (102, 0, 0), "figure5": (6, 0, 0),
        "figure6": (2, 0, 0), "sin2": (2, 0, 1), "poster_weight_decay": (12, 6, 0), "poster_cp": (12, 9, 0),
        "poster_tinyimagenet": (2, 1, 0), "poster_tinyimagenet_top5": (2, 1, 0)}
    assert all(e.db_name is None and e.source for e in EXPERIMENTS.values())  # the dataset's database
    text = (folder / "table1.toml").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="'table1' is one of the paper's experiments"):
        experiment_from_dict(gradreg.spec.tomllib.loads(text), name="table1")


def test_lambdas_keyword_is_a_deprecated_name_of_phase():
    from gradreg.experiments import get_experiment

    e = get_experiment("table4")
    with pytest.warns(DeprecationWarning, match="phase="):
        old = e.runs(lambdas="grid", seeds=1)
    assert old == e.runs(phase="grid", seeds=1)
    with pytest.raises(ValueError, match="disagree"), pytest.warns(DeprecationWarning):
        e.plan(phase="grid", lambdas="paper")
