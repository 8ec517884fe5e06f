"""gradreg.compare: the same planned runs in two databases, paired by run key."""
from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from gradreg.cli import app
from gradreg.compare import compare_stores, markdown_comparison
from gradreg.spec import load_experiment
from gradreg.store import ResultStore, owner_id
from gradreg.train import RunResult

SPEC = """
name = "pairs"
title = "t"
seeds = 3
[run]
dataset = "digits"
[[cells]]
row = "Baseline"
term = "spectreg"
lambda = 0
[[cells]]
row = "SpectReg"
term = "spectreg"
lambda = 0.003
"""


def _fill(path, plan, acc, seconds, cpu=None):
    owner = owner_id()
    with ResultStore(path) as store:
        for p in plan:
            if (p.cell.row, p.config.seed) in acc:
                assert store.claim(p.config, owner)
                store.finish(RunResult(config=p.config, status="done", seconds=seconds,
                                       metrics={"test_acc": acc[(p.cell.row, p.config.seed)]},
                                       extras={} if cpu is None else {"cpu_seconds": cpu}), owner)


def test_pairs_by_key_with_interval_and_times(tmp_path):
    (tmp_path / "s.toml").write_text(SPEC)
    plan = load_experiment(tmp_path / "s.toml").plan(seeds=3)
    a = {("Baseline", s): 90.0 + s for s in range(3)} | {("SpectReg", s): 91.0 for s in range(3)}
    b = {("Baseline", s): 90.0 + s for s in range(3)} | {("SpectReg", 0): 91.5, ("SpectReg", 1): 91.1}
    _fill(tmp_path / "a.db", plan, a, seconds=30.0)
    _fill(tmp_path / "b.db", plan, b, seconds=10.0)
    with ResultStore(tmp_path / "a.db") as sa, ResultStore(tmp_path / "b.db") as sb:
        base, spect = compare_stores(plan, sa, sb)
    assert base.seeds == [0, 1, 2] and base.diffs == [0.0, 0.0, 0.0] and base.interval() == (0.0, 0.0)
    assert spect.seeds == [0, 1] and spect.diffs == pytest.approx([0.5, 0.1])  # seed 2 missing in B
    lo, hi = spect.interval()
    assert lo < 0.3 < hi and math.isclose((lo + hi) / 2, 0.3)  # t(1) interval around the mean difference
    text = markdown_comparison([base, spect], "a", "b")
    assert "| Baseline / digits | 3 | 91.000 | 91.000 | +0.000 [+0.000, +0.000] | 0.000 | 3/3 |" in text
    assert "| 30 | 10 | 3.00x |" in text

    # CPU seconds where both sides stored them: load on the machine does not inflate them
    _fill(tmp_path / "c.db", plan, a, seconds=30.0, cpu=8.0)
    _fill(tmp_path / "d.db", plan, b, seconds=90.0, cpu=4.0)
    with ResultStore(tmp_path / "c.db") as sc, ResultStore(tmp_path / "d.db") as sd:
        assert "| 8 CPU | 4 CPU | 2.00x |" in markdown_comparison(compare_stores(plan, sc, sd), "c", "d")

    out = CliRunner().invoke(app, ["compare", str(tmp_path / "a.db"), str(tmp_path / "b.db"),
                                   str(tmp_path / "s.toml"), "--metric", "test_mse"])
    assert out.exit_code != 0 and "metric 'test_mse' is not in the runs" in out.output and "test_acc" in out.output
