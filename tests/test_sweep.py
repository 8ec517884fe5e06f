"""Sweeps: skipping finished runs, recording failures and divergence, resuming after kill -9, backends."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import gradreg.sweep as sweep_mod
from gradreg.data import DataError
from gradreg.models import MODELS
from gradreg.plugins import import_plugins
from gradreg.store import ResultStore, owner_id
from gradreg.sweep import SweepSummary, default_workers, run_sweep
from gradreg.train import RunConfig


def sin_config(seed: int = 0, steps: int = 30, **overrides) -> RunConfig:
    return RunConfig(dataset="sin", seed=seed, overrides=(("steps", steps), ("eval_points", 1), *overrides.items()))


def test_sweep_trains_then_skips_finished_runs(tmp_path):
    db = tmp_path / "runs.db"
    configs = [sin_config(0), sin_config(1), sin_config(0), sin_config(2).to_dict()]  # a duplicate and a dict
    first = run_sweep(configs, db, progress=False)
    assert (first.total, first.skipped, first.done, first.diverged, first.failed) == (3, 0, 3, 0, 0)
    with ResultStore(db) as store:
        before = {row["key"]: row["finished"] for row in store.rows()}
        rows = store.rows(status="done")
    assert len(rows) == 3 and all(r["metrics"]["test_mse"] > 0 and r["device"] == "cpu" for r in rows)
    assert all(r["curve"] and r["versions"]["torch"] and r["seconds"] > 0 for r in rows)

    second = run_sweep(configs, db, progress=False)
    assert (second.total, second.skipped, second.done, second.diverged, second.failed) == (3, 3, 0, 0, 0)
    with ResultStore(db) as store:
        assert {row["key"]: row["finished"] for row in store.rows()} == before


def test_failed_and_diverged_runs_are_recorded_and_the_sweep_goes_on(tmp_path):
    db, empty = tmp_path / "runs.db", tmp_path / "no-data"
    empty.mkdir()
    ok, diverging = sin_config(0), sin_config(0, lr=1e6)
    missing = RunConfig(dataset="mnist", overrides=(("steps", 10), ("eval_points", 1)), max_eval=50)
    summary = run_sweep([missing, diverging, ok], db, data_dir=empty, progress=False)
    assert (summary.done, summary.diverged, summary.failed) == (1, 1, 1)
    with ResultStore(db) as store:
        failed, div, done = store.get(missing.key()), store.get(diverging.key()), store.get(ok.key())
    assert failed["status"] == "failed" and "Traceback" in failed["error"] and "DataError" in failed["error"]
    assert div["status"] == "diverged" and div["error"].startswith("non-finite loss")
    assert div["metrics"]["weight_sq_norm"] is None  # NaN, stored as null
    assert done["status"] == "done"

    again = run_sweep([missing, diverging, ok], db, data_dir=empty, progress=False)
    assert (again.skipped, again.failed) == (3, 0)  # failed runs are not retried by default
    assert again.failed_before == 1
    # Retried alone, the missing data fails the only dataset left: the sweep stops with the data error.
    with pytest.raises(DataError, match="MNIST not found.*stopped the sweep: every mnist run needs this data"):
        run_sweep([missing, diverging, ok], db, data_dir=empty, retry_failed=True, progress=False)
    with ResultStore(db) as store:
        assert store.get(missing.key())["status"] == "failed"


def test_a_raising_run_is_failed_with_its_traceback(tmp_path, monkeypatch):
    real_train = sweep_mod.train

    def flaky(config, **kwargs):
        if config.seed == 1:
            raise RuntimeError("boom in training")
        return real_train(config, **kwargs)

    monkeypatch.setattr(sweep_mod, "train", flaky)
    summary = run_sweep([sin_config(0), sin_config(1), sin_config(2)], tmp_path / "runs.db", group_size=1,
                        progress=False)
    assert (summary.done, summary.failed) == (2, 1)
    with ResultStore(tmp_path / "runs.db") as store:
        assert "RuntimeError: boom in training" in store.get(sin_config(1).key())["error"]


def test_keyboard_interrupt_releases_the_run_and_reraises(tmp_path, monkeypatch):
    def interrupted(config, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_mod, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep([sin_config(0), sin_config(1)], tmp_path / "runs.db", group_size=1, progress=False)
    with ResultStore(tmp_path / "runs.db") as store:
        assert len(store) == 0


_KILL_SCRIPT = """
import sys
from gradreg.sweep import run_sweep
from gradreg.train import RunConfig
configs = [RunConfig(dataset="sin", seed=s, overrides=(("steps", {steps}), ("eval_points", 1))) for s in range({n})]
run_sweep(configs, sys.argv[1], workers=1, threads=1, group_size=1, progress=False)
"""


def test_resume_after_kill_9(tmp_path):
    db, n, steps = tmp_path / "runs.db", 6, 150
    configs = [sin_config(s, steps=steps) for s in range(n)]
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_KILL_SCRIPT.format(steps=steps, n=n)), str(db)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not db.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with ResultStore(db) as store:
            while store.counts()["done"] < 1 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert proc.poll() is None, f"the sweep ended before it was killed: {proc.stderr.read().decode()}"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            before = {r["key"]: r["finished"] for r in store.rows(status="done")}
            left_running = store.rows(status="running")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert 1 <= len(before) < n
    assert all(r["owner"].split(":")[1] == str(proc.pid) for r in left_running)  # the dead sweep's claim

    summary = run_sweep(configs, db, threads=1, progress=False)
    assert (summary.skipped, summary.done, summary.failed, summary.busy) == (len(before), n - len(before), 0, 0)
    with ResultStore(db) as store:
        assert store.counts() == {"running": 0, "done": n, "diverged": 0, "failed": 0}
        after = {r["key"]: r["finished"] for r in store.rows()}
    assert set(after) == {c.key() for c in configs}
    assert {k: after[k] for k in before} == before  # finished runs were not trained again


_TERM_SCRIPT = """
import sys
from gradreg.sweep import run_sweep
from gradreg.train import RunConfig
if __name__ == "__main__":
    configs = [RunConfig(dataset="sin", seed=s, overrides=(("steps", 100000), ("eval_points", 1))) for s in range(4)]
    run_sweep(configs, sys.argv[1], workers=2, threads=1, group_size=1, progress=False)
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM and kill(pid, 0) as a liveness probe are POSIX")
def test_sigterm_stops_the_pool_workers_and_releases_their_runs(tmp_path):
    db, script, workers = tmp_path / "runs.db", tmp_path / "term.py", set()
    script.write_text(textwrap.dedent(_TERM_SCRIPT))  # a file: spawned workers re-import the main module
    proc = subprocess.Popen([sys.executable, str(script), str(db)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not db.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with ResultStore(db) as store:
            while len(store.rows(status="running")) < 2 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            workers = {int(r["owner"].rsplit(":", 2)[1]) for r in store.rows(status="running")}
            assert proc.poll() is None and len(workers) == 2, proc.stderr.read().decode() if proc.poll() else ""
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=60) == 128 + signal.SIGTERM
            assert store.counts()["running"] == 0  # the killed runs' rows are gone, not left claimed
        assert not {pid for pid in workers if _alive(pid)}  # no worker left training on its own
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
        for pid in workers:  # where the test failed, leave no orphan training for 100,000 steps
            if _alive(pid) and b"multiprocessing" in _cmdline(pid):  # not a stranger that reused the pid
                os.kill(pid, signal.SIGKILL)


def test_sigterm_handling_keeps_a_callers_handler_and_restores_the_default(tmp_path, monkeypatch):
    seen = []
    real_train = sweep_mod.train

    def spy(config, **kwargs):  # what SIGTERM does while a run trains
        seen.append(signal.getsignal(signal.SIGTERM))
        return real_train(config, **kwargs)

    monkeypatch.setattr(sweep_mod, "train", spy)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    run_sweep([sin_config(0)], tmp_path / "a.db", group_size=1, progress=False)
    assert callable(seen[0]) and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        run_sweep([sin_config(1)], tmp_path / "b.db", group_size=1, progress=False)
        assert seen[1] is mine and signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # no /proc (macOS): a pid this young is not reused yet
        return b"multiprocessing"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_local_process_pool(tmp_path):
    db = tmp_path / "runs.db"
    configs = [sin_config(s) for s in range(4)]
    summary = run_sweep(configs, db, workers=2, threads=1, progress=False)
    assert (summary.total, summary.done, summary.failed) == (4, 4, 0)
    with ResultStore(db) as store:
        rows = store.rows()
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    worker_pids = {int(r["owner"].split(":")[1]) for r in rows}
    assert os.getpid() not in worker_pids and 1 <= len(worker_pids) <= 2


def test_sweep_leaves_runs_claimed_by_a_live_sweep(tmp_path):
    db, held = tmp_path / "runs.db", sin_config(0)
    with ResultStore(db) as store:
        assert store.claim(held, owner_id())  # as if another sweep in this process were training it
        summary = run_sweep([held, sin_config(1)], db, progress=False)
        assert (summary.busy, summary.done) == (1, 1)
        assert store.get(held.key())["status"] == "running"


def test_heartbeat_thread_refreshes_held_rows(tmp_path):
    with ResultStore(tmp_path / "runs.db") as store:
        cfg, me = sin_config(0), owner_id()
        store.claim(cfg, me)
        first = store.get(cfg.key())["heartbeat"]
        with sweep_mod._Heartbeat(store, me, interval=0.02) as beat:
            beat.add(cfg.key())
            time.sleep(0.2)
        assert store.get(cfg.key())["heartbeat"] > first


def test_argument_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown backend 'slurm'; valid backends: local, ray"):
        run_sweep([sin_config()], tmp_path / "runs.db", backend="slurm")
    with pytest.raises(ValueError, match="workers and threads must be >= 1"):
        run_sweep([sin_config()], tmp_path / "runs.db", workers=0)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        run_sweep([sin_config()], tmp_path / "runs.db", group_size=0)
    with pytest.raises(TypeError, match="RunConfig objects or dicts"):
        run_sweep(["sin"], tmp_path / "runs.db")
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail even where ray is installed
    with pytest.raises(ImportError, match=r"pip install 'gradreg\[ray\]'"):
        run_sweep([sin_config()], tmp_path / "runs.db", backend="ray")


def test_default_workers():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_workers("cpu") == cores
    assert default_workers("cuda") == 1
    assert SweepSummary().total == 0


@pytest.mark.slow
def test_ray_backend(tmp_path):
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.fail("ray is not installed, so the ray backend cannot be tested: pip install 'gradreg[ray]'")
    # One ray test per test process, covering the backend and its plugin imports: a second
    # ray.init after ray.shutdown in one pytest process was seen to crash it later (a segfault).
    db, empty = tmp_path / "runs.db", tmp_path / "no-data"
    empty.mkdir()
    plugin = tmp_path / "ray_plugin_model.py"  # registers a model ray's worker processes must import
    plugin.write_text("import gradreg\nfrom torch import nn\n\n@gradreg.register_model('ray_plugin_mlp')\n"
                      "def build(*, input_shape, num_outputs, batchnorm, dropout):\n"
                      "    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], 4), nn.Tanh(), "
                      "nn.Linear(4, num_outputs))\n")
    missing = RunConfig(dataset="mnist", overrides=(("steps", 10), ("eval_points", 1)), max_eval=50)
    try:
        import_plugins([plugin])
        mine = RunConfig(dataset="sin", model="ray_plugin_mlp", overrides=(("steps", 20), ("eval_points", 1)))
        configs = [sin_config(0), sin_config(1), sin_config(0, lr=1e6), missing, mine]
        summary = run_sweep(configs, db, backend="ray", workers=2, data_dir=empty, device="cpu", progress=False,
                            imports=[plugin])
        assert (summary.done, summary.diverged, summary.failed) == (3, 1, 1)
        with ResultStore(db) as store:
            assert store.counts() == {"running": 0, "done": 3, "diverged": 1, "failed": 1}
            assert "DataError" in store.get(missing.key())["error"]
            assert store.get(mine.key())["status"] == "done"
            done = store.rows(status="done")
            assert all(r["device"] == "cpu" and r["versions"]["torch"] and r["curve"] for r in done)
        again = run_sweep(configs, db, backend="ray", workers=2, data_dir=empty, progress=False, imports=[plugin])
        assert again.skipped == 5 and again.done == 0
    finally:
        MODELS.pop("ray_plugin_mlp", None)
        sys.modules.pop("ray_plugin_model", None)


def test_a_sweep_refuses_finished_runs_of_an_edited_data_file(tmp_path):
    def write(shift: float) -> None:  # the size changes too: hashes are remembered per size and mtime
        x = np.random.default_rng(0).normal(size=(40 + int(10 * shift), 2)).astype(np.float32)
        np.savez(tmp_path / "mine.npz", x_train=x, y_train=(x.sum(1) > shift).astype(np.int64), x_test=x[:10],
                 y_test=(x[:10].sum(1) > shift).astype(np.int64))

    write(0.0)
    configs = [RunConfig(dataset="npz", model="mlp", seed=s, overrides=(("steps", 5), ("eval_points", 1)))
               for s in range(2)]
    first = run_sweep(configs, tmp_path / "a.db", data_dir=tmp_path, progress=False)
    with ResultStore(tmp_path / "a.db") as store:
        stamps = {r["extras"]["data_sha256"] for r in store.rows()}
    assert first.done == 2 and len(stamps) == 1
    assert run_sweep(configs, tmp_path / "a.db", data_dir=tmp_path, progress=False).skipped == 2  # same file
    write(0.5)  # the user edits the file: the stored runs no longer describe it
    with pytest.raises(ValueError, match=r"a\.db: 2 finished run\(s\) of this sweep were trained on another npz data"):
        run_sweep(configs, tmp_path / "a.db", data_dir=tmp_path, progress=False)
    again = run_sweep(configs, tmp_path / "b.db", data_dir=tmp_path, progress=False)  # this process reloads it
    with ResultStore(tmp_path / "b.db") as store:
        new = {r["extras"]["data_sha256"] for r in store.rows()}
    assert again.done == 2 and len(new) == 1 and new != stamps
