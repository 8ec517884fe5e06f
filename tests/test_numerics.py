"""Subnormal flushing: the context manager, the process default, and that every way of training a run
(solo, grouped, a sweep's worker processes, the CLI) really flushes: measured, not trusted."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from gradreg import numerics
from gradreg.store import ResultStore
from gradreg.sweep import run_sweep
from gradreg.train import RunConfig, train, train_group

TINY = (("steps", 4), ("eval_points", 1))


@pytest.fixture
def one_thread():
    # The mode is per thread: with one thread the probe sees exactly the thread the test sets.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_subnormal_arithmetic_is_flushed_inside_and_restored_after(one_thread):
    tiny = torch.tensor([1e-39], dtype=torch.float64).to(torch.float32)
    assert not numerics.subnormals_flushed() and (tiny * 1.0).item() > 0
    with numerics.flush_denormal(True) as flushed:
        assert flushed and numerics.subnormals_flushed()
        assert (tiny * 1.0).item() == 0.0
        with numerics.flush_denormal(False) as inner:  # off inside on: computed in full, then back on
            assert not inner and (tiny * 1.0).item() > 0
        assert numerics.subnormals_flushed()
    assert not numerics.subnormals_flushed() and (tiny * 1.0).item() > 0


def test_default_reads_the_environment(monkeypatch):
    monkeypatch.delenv(numerics.FLUSH_DENORMAL_ENV, raising=False)
    assert numerics.default_flush_denormal() is True
    for off in ("0", "false", "No", "off"):
        monkeypatch.setenv(numerics.FLUSH_DENORMAL_ENV, off)
        assert numerics.default_flush_denormal() is False
    monkeypatch.setenv(numerics.FLUSH_DENORMAL_ENV, "maybe")
    with pytest.raises(ValueError, match="GRADREG_FLUSH_DENORMAL must be 1 or 0"):
        numerics.default_flush_denormal()


def test_late_pool_threads_are_reported_not_assumed():
    code = ("import torch, warnings\nfrom gradreg import numerics\ntorch.set_num_threads(2)\n"
            "(torch.randn(1 << 20) * 2).sum()\n"  # starts the intra-op threads unflushed
            "with warnings.catch_warnings(record=True) as w:\n    warnings.simplefilter('always')\n"
            "    with numerics.flush_denormal(True) as f: pass\n"
            "print(f, any('reaches only this thread' in str(x.message) for x in w))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def test_solo_and_grouped_runs_flush_by_default_and_record_it(one_thread, monkeypatch):
    monkeypatch.delenv(numerics.FLUSH_DENORMAL_ENV, raising=False)
    solo = train(RunConfig(dataset="digits", overrides=TINY), progress=False)
    off = train(RunConfig(dataset="digits", overrides=TINY), progress=False, flush_denormal=False)
    group = train_group([RunConfig(dataset="digits", seed=s, overrides=TINY) for s in (0, 1)], progress=False)
    assert solo.extras["flush_denormal"] is True and off.extras["flush_denormal"] is False
    assert [r.extras["flush_denormal"] for r in group] == [True, True]
    assert not numerics.subnormals_flushed()  # the caller's mode is restored


@pytest.mark.parametrize("env, expected", [(None, True), ("0", False)])
def test_sweep_worker_processes_flush_as_their_parent_says(tmp_path, monkeypatch, env, expected):
    # Two spawned workers with two threads each: the mode must reach the workers' own thread pools.
    if env is None:
        monkeypatch.delenv(numerics.FLUSH_DENORMAL_ENV, raising=False)
    else:
        monkeypatch.setenv(numerics.FLUSH_DENORMAL_ENV, env)
    configs = [RunConfig(dataset="digits", seed=s, batchnorm=True, overrides=TINY) for s in (0, 1)]
    db = tmp_path / "w.db"
    run_sweep(configs, db, workers=2, threads=2, progress=False)
    rows = ResultStore(db).rows()
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows)
    assert [r["extras"]["flush_denormal"] for r in rows] == [expected, expected]


@pytest.mark.parametrize("flag, expected", [([], True), (["--no-flush-denormal"], False)])
def test_cli_train_flushes_its_thread_pool(flag, expected):
    env = {k: v for k, v in os.environ.items() if k != numerics.FLUSH_DENORMAL_ENV}
    cmd = [sys.executable, "-m", "gradreg", *flag, "train", "--dataset", "digits", "--set", "steps=4",
           "--set", "eval_points=1", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env | {"OMP_NUM_THREADS": "2"})
    assert json.loads(out.stdout)["extras"]["flush_denormal"] is expected
