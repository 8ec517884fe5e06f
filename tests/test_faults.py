"""Faults and bad input: killed sweeps and workers, damaged or foreign databases, bad data files, bad
command lines. Each case ends in a defined state and, for the user, one line naming problem and fix."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from gradreg.errors import error_cause, group_failures
from gradreg.store import SCHEMA_VERSION, ResultStore, StoreError
from gradreg.sweep import run_sweep
from gradreg.train import RunConfig

posix_only = pytest.mark.skipif(os.name != "posix", reason="kill -9, pids and /proc are POSIX")


def _sin(seed: int, steps: int = 30) -> RunConfig:
    return RunConfig(dataset="sin", seed=seed, overrides=(("steps", steps), ("eval_points", 1)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped by its new parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


_SWEEP_SCRIPT = """
import json, sys
from gradreg.sweep import run_sweep
from gradreg.train import RunConfig
if __name__ == "__main__":
    steps = [int(s) for s in sys.argv[2].split(",")]
    configs = [RunConfig(dataset="sin", seed=i, overrides=(("steps", n), ("eval_points", 1))) for i, n in enumerate(steps)]
    s = run_sweep(configs, sys.argv[1], workers=2, threads=1, group_size=1, progress=False)
    print(json.dumps({"done": s.done, "failed": s.failed, "busy": s.busy, "failures": s.failures}))
"""


def _start_sweep(tmp_path: Path, steps: list[int]) -> tuple[subprocess.Popen, Path]:
    db, script = tmp_path / "runs.db", tmp_path / "sweep.py"
    script.write_text(textwrap.dedent(_SWEEP_SCRIPT))  # a file: spawned workers re-import the main module
    proc = subprocess.Popen([sys.executable, str(script), str(db), ",".join(map(str, steps))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, db


def _running_workers(proc: subprocess.Popen, db: Path, n: int, timeout: float = 90) -> set[int]:
    """The pids of the sweep's workers once ``n`` runs are claimed (their owners are ``host:pid:tag``)."""
    deadline = time.monotonic() + timeout
    while not db.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with ResultStore(db) as store:
        while proc.poll() is None and time.monotonic() < deadline:
            pids = {int(r["owner"].rsplit(":", 2)[1]) for r in store.rows(status="running")}
            if len(pids) >= n:
                return pids
            time.sleep(0.05)
    raise AssertionError(f"the sweep never had {n} runs in flight: {proc.communicate()[1] if proc.poll() is not None else ''}")


@posix_only
def test_kill_9_of_the_sweep_ends_its_workers_within_seconds(tmp_path):
    proc, db = _start_sweep(tmp_path, [100_000] * 4)
    workers: set[int] = set()
    try:
        workers = _running_workers(proc, db, 2)
        assert proc.pid not in workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while {p for p in workers if _alive(p)} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not {p for p in workers if _alive(p)}, "a worker outlived its sweep"
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in workers:  # where the test failed, leave no orphan training for 100,000 steps
            if _alive(pid) and b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
    # The killed sweep's runs are taken over by the next one (their owners are dead).
    summary = run_sweep([_sin(i, 30) for i in range(2)], tmp_path / "other.db", progress=False)
    assert summary.done == 2


@posix_only
def test_a_killed_worker_fails_only_its_run_and_the_sweep_goes_on(tmp_path):
    proc, db = _start_sweep(tmp_path, [600, 600, 100])
    try:
        victim = min(_running_workers(proc, db, 2))
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["done"], summary["failed"], summary["busy"]) == (2, 1, 0)
    [(cause, count, key)] = summary["failures"]
    assert count == 1 and cause.startswith(f"WorkerDied: sweep worker process {victim} killed by SIGKILL")
    assert f"sweep worker process {victim} killed by SIGKILL" in err and "1 run(s) it was training" in err
    assert "Traceback" not in err
    with ResultStore(db) as store:
        assert store.counts() == {"running": 0, "done": 2, "diverged": 0, "failed": 1}
        assert "--retry-failed" in store.get(key)["error"]


# -- the results database ----------------------------------------------------------------------


def test_error_cause_and_grouping():
    tb = ('Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n    f()\n'
          "gradreg.data.DataError: /d/train-images: not an IDX file with magic number 2051\n")
    assert error_cause(tb) == "DataError: /d/train-images: not an IDX file with magic number 2051"
    assert error_cause(None) == "(no error text recorded)"
    rows = [{"key": "a", "error": tb}, {"key": "b", "error": "ValueError: x"}, {"key": "c", "error": tb}]
    assert group_failures(rows) == [(error_cause(tb), 2, "a"), ("ValueError: x", 1, "b")]


def test_corrupt_foreign_and_future_databases_are_refused_unchanged(tmp_path):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not sqlite at all " * 100)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER, path TEXT)")
    future = tmp_path / "future.db"
    with ResultStore(future):
        pass
    with sqlite3.connect(future) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    cases = [(corrupt, "not a SQLite database"), (foreign, "another program .*photos"),
             (future, f"newer gradreg .*schema version {SCHEMA_VERSION + 1}")]
    for path, match in cases:
        before = path.read_bytes()
        for readonly in (False, True):
            with pytest.raises(StoreError, match=match):
                ResultStore(path, readonly=readonly)
        assert path.read_bytes() == before, f"{path.name} was changed"


def test_a_new_database_records_its_schema_version(tmp_path):
    with ResultStore(tmp_path / "a.db"):
        pass
    with sqlite3.connect(tmp_path / "a.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_db_path_under_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreError, match="afile is a file, not a folder"):
        ResultStore(tmp_path / "afile" / "sub" / "runs.db")


def test_unwritable_folder_is_one_clear_error(tmp_path, monkeypatch):
    # File permissions do not bind root (the tests may run as root), so the folder's mode is set and the
    # permission check answered as the OS answers it for an ordinary user: no write access.
    import gradreg.store as store_mod

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    real_access = os.access
    monkeypatch.setattr(store_mod.os, "access", lambda p, mode: False if Path(p) == folder else real_access(p, mode))
    try:
        with pytest.raises(StoreError, match="not writable"):
            ResultStore(folder / "runs.db")
        assert not (folder / "runs.db").exists()
    finally:
        folder.chmod(0o755)


def test_readonly_store_writes_nothing(tmp_path):
    db = tmp_path / "runs.db"
    run_sweep([_sin(0)], db, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"runs.db"}  # the WAL is checkpointed away at close
    with ResultStore(db, readonly=True) as store:
        assert store.counts()["done"] == 1
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.claim(_sin(1), "me")
    # Beside it only SQLite's shared-memory index (-shm) and an empty WAL may appear: a reader of a WAL
    # database opens them; nothing is written.
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.endswith("-shm")}
    assert after.pop("runs.db-wal", b"") == b"" and after == before


def test_a_locked_database_is_one_clear_error(tmp_path):
    db = tmp_path / "runs.db"
    with ResultStore(db):
        pass
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked by another process for more than 0.2s"):
            ResultStore(db, timeout=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def _unknown_status_db(path: Path, config: RunConfig) -> None:
    """A database of this schema version whose runs table (as another writer might make it) holds a row
    of a status this gradreg does not know."""
    from gradreg.store import _COLUMNS

    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE runs ({', '.join(_COLUMNS)}, PRIMARY KEY (key))")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("INSERT INTO runs (key, config, status) VALUES (?, ?, 'queued')",
                     (config.key(), json.dumps(config.to_dict())))
    conn.close()


def test_rows_of_unknown_status_are_neither_miscounted_nor_overwritten(tmp_path):
    db, config = tmp_path / "runs.db", _sin(0)
    _unknown_status_db(db, config)
    summary = run_sweep([config, _sin(1)], db, progress=False)
    assert (summary.skipped, summary.other_status, summary.done, summary.busy) == (1, 1, 1, 0)
    with ResultStore(db) as store:
        assert store.get(config.key())["status"] == "queued"
        assert store.counts() == {"running": 0, "done": 1, "diverged": 0, "failed": 0, "queued": 1}
        assert not store.claim(config, "me", retry_failed=True)


# -- bad data files ---------------------------------------------------------------------------------


def _npz_arrays(**changes) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.normal(size=(20, 3)).astype(np.float32), "y_train": np.arange(20) % 3,
              "x_test": rng.normal(size=(6, 3)).astype(np.float32), "y_test": np.arange(6) % 3}
    arrays.update(changes)
    return arrays


def _nan_at(a: np.ndarray, value: float) -> np.ndarray:
    a = a.copy()
    a[2, 1] = value
    return a


_BAD_NPZ = {
    "nan inputs": ({"x_train": _nan_at(_npz_arrays()["x_train"], np.nan)},
                   r"array x_train holds 1 non-finite value\(s\) \(NaN or inf\), the first in row 2"),
    "inf in the test split": ({"x_test": _nan_at(_npz_arrays()["x_test"], np.inf)}, "array x_test holds 1 non-finite"),
    "nan regression target": ({"y_train": np.array([0.5] * 19 + [np.nan]), "y_test": np.zeros(6)},
                              "array y_train holds 1 non-finite value"),
    "empty test split": ({"x_test": np.zeros((0, 3), np.float32), "y_test": np.zeros(0, np.int64)},
                         "array x_test is empty"),
    "complex inputs": ({"x_train": _npz_arrays()["x_train"] * 1j}, "array x_train holds complex numbers"),
    "bool labels": ({"y_train": np.arange(20) % 2 == 0}, "array y_train is bool"),
    "string labels": ({"y_train": np.array(["cat", "dog"] * 10)}, "array y_train holds <U3 values, not numbers"),
    "absurd label": ({"y_train": np.r_[np.arange(19) % 3, 10**9]},
                     "array y_train has the label 1000000000, which would need 1,000,000,001 classes"),
}


@pytest.mark.parametrize("case", sorted(_BAD_NPZ))
def test_bad_npz_values_are_one_clear_data_error(tmp_path, case):
    from gradreg.data import DataError, load_dataset

    changes, match = _BAD_NPZ[case]
    path = tmp_path / "mine.npz"
    np.savez(path, **_npz_arrays(**changes))
    with pytest.raises(DataError, match=match) as info:
        load_dataset("npz", path)
    assert str(path) in str(info.value)


def test_a_loader_returning_nan_is_refused(monkeypatch):
    import torch

    import gradreg.data as data_mod

    real = data_mod.DATASETS["sin"]

    def broken(*args, **kwargs):
        ds = real(*args, **kwargs)
        ds.x_test[3] = float("nan")
        return ds

    monkeypatch.setitem(data_mod.DATASETS, "sin", broken)
    with pytest.raises(data_mod.DataError, match="sin: the test split's inputs hold non-finite values"):
        data_mod.load_dataset("sin")
    assert torch.isfinite(real(Path(".")).x_test).all()


def test_a_damaged_mnist_folder_fails_every_run_once_and_stops_the_sweep(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (folder / name).write_bytes(b"\x00" * 64)  # no IDX magic number
    configs = [RunConfig(dataset="mnist", seed=s, overrides=(("steps", 5),), max_eval=10) for s in range(4)]
    db = tmp_path / "runs.db"
    from gradreg.data import DataError

    with pytest.raises(DataError, match="not an IDX file with magic number .*stopped the sweep: every mnist run"):
        run_sweep(configs, db, data_dir=tmp_path, progress=False)
    with ResultStore(db) as store:
        assert store.counts() == {"running": 0, "done": 0, "diverged": 0, "failed": 1}  # one tried, not four
    summary = run_sweep(configs[:1], db, data_dir=tmp_path, progress=False)  # a rerun says what failed before
    assert (summary.skipped, summary.failed_before) == (1, 1)


# -- report ---------------------------------------------------------------------------------------


def test_report_of_a_regression_experiment_file_reads_mse(tmp_path):
    from gradreg.report import collect, markdown_table
    from gradreg.spec import load_experiment

    spec = tmp_path / "sinreg.toml"
    spec.write_text('seeds = 2\n[run]\ndataset = "sin"\noverrides = { steps = 20, eval_points = 1 }\n'
                    '[[cells]]\nrow = "baseline"\nbaseline = true\n')  # no metric: the classification default
    exp = load_experiment(spec)
    db = tmp_path / "sinreg.db"
    run_sweep([p.config for p in exp.plan()], db, progress=False)
    with ResultStore(db, readonly=True) as store:
        [st] = collect(exp, store)
    assert (st.n, st.failed, st.shown_metric) == (2, 0, "test_mse")
    text = markdown_table(exp, [st])
    assert "(MSE in 1e-5)" in text and "(%)" not in text and "n=2" in text


# -- the command line -------------------------------------------------------------------------------


def _cli(capsys, *args: str) -> tuple[int, str]:
    """Run ``gradreg ARGS`` in this process; (exit code, stderr)."""
    from gradreg.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code, capsys.readouterr().err


_CLI_CASES = {
    "unknown model": (["train", "--model", "foo"], "unknown model 'foo'; valid:"),
    "train size over the pool": (["train", "--train-size", "100000"], "larger than the digits pool (997 points)"),
    "betas not a pair": (["train", "--set", "betas=0.9"], "Adam's betas are two numbers"),
    "lr overflows float32": (["train", "--set", "lr=1e40"], "lr=1e40: must be a finite number"),
    "lr infinite": (["train", "--set", "lr=inf"], "lr=inf: must be a finite number"),
    "steps fractional": (["train", "--set", "steps=1.5"], "would be truncated to 1"),
    "batch mode unknown": (["train", "--batch-mode", "foo", "--reg", "spectreg=0.01"], "--batch-mode must be"),
    "batch mode without a term": (["train", "--batch-mode", "sample"], "no --term is given"),
    "confidence penalty on regression": (["train", "--dataset", "sin", "--reg", "confidence_penalty=1"],
                                         "zero by construction"),
    "image model on sin": (["train", "--dataset", "sin", "--model", "lenet5"], "lenet5 needs image inputs"),
    "workers zero": (["sweep", "SPEC", "--workers", "0"], "--workers"),
}


@pytest.mark.parametrize("case", sorted(_CLI_CASES))
def test_cli_user_errors_are_one_line_with_exit_code_2(tmp_path, capsys, case):
    args, match = _CLI_CASES[case]
    spec = tmp_path / "ok.toml"
    spec.write_text('seeds = 1\n[run]\ndataset = "digits"\ntrain_size = 50\noverrides = { steps = 3 }\n'
                    '[[cells]]\nrow = "b"\nbaseline = true\n')
    args = [str(spec) if a == "SPEC" else a for a in args] + ["--no-progress"]
    code, err = _cli(capsys, *args)
    assert code == 2 and match in err, err
    assert "Traceback" not in err


def test_cli_device_unavailable(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = _cli(capsys, "train", "--device", "cuda")
    assert code == 2 and "--device cuda" in err and "--device cpu" in err and "Traceback" not in err


def test_cli_debug_shows_the_traceback(capsys):
    from gradreg.cli import main

    with pytest.raises(ValueError, match="unknown model 'foo'"):
        main(["train", "--model", "foo", "--debug"])


def test_cli_sweep_refuses_what_would_fail_every_run(tmp_path, capsys):
    spec = tmp_path / "big.toml"
    spec.write_text('seeds = 1\n[run]\ndataset = "digits"\ntrain_size = 5000\noverrides = { steps = 3 }\n'
                    '[[cells]]\nrow = "b"\nbaseline = true\n')
    db = tmp_path / "big.db"
    code, err = _cli(capsys, "sweep", str(spec), "--db", str(db), "--no-progress")
    assert code == 2 and "train_size 5000 is larger than the digits pool" in err
    with ResultStore(db) as store:
        assert len(store) == 0  # nothing was claimed, nothing failed


def test_cli_backend_ray_without_ray(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code, err = _cli(capsys, "sweep", "table4", "--backend", "ray", "--db", str(tmp_path / "r.db"))
    assert code == 2 and "pip install 'gradreg[ray]'" in err


@pytest.mark.parametrize("kind", ["corrupt", "foreign", "future", "under a file"])
def test_cli_bad_databases_are_one_line(tmp_path, capsys, kind):
    db = tmp_path / "x.db"
    if kind == "corrupt":
        db.write_bytes(b"garbage" * 200)
    elif kind == "foreign":
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE photos (id INTEGER)")
        conn.close()
    elif kind == "future":
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA user_version = 99")
        conn.close()
    else:
        db.write_text("a file")
        db = db / "sub" / "runs.db"
    before = db.read_bytes() if db.is_file() else None
    for command in ("sweep", "report"):
        code, err = _cli(capsys, command, "table7", "--db", str(db), *(["--no-progress"] if command == "sweep" else []))
        assert code == 2 and err.count("\n") == 1 and "--db" in err and "Traceback" not in err, err
    assert (db.read_bytes() if db.is_file() else None) == before


def test_cli_rerun_explains_earlier_failures(tmp_path, capsys):
    spec = tmp_path / "mn.toml"
    spec.write_text('seeds = 1\n[run]\ndataset = "mnist"\ntrain_size = 50\nmax_eval = 10\noverrides = { steps = 3 }\n'
                    '[[cells]]\nrow = "b"\nbaseline = true\n')
    db, data = tmp_path / "mn.db", tmp_path / "data"
    data.mkdir()
    code, err = _cli(capsys, "sweep", str(spec), "--db", str(db), "--data-dir", str(data), "--no-progress")
    assert code == 2 and "MNIST not found" in err and "--retry-failed" in err and err.count("\n") == 1
    code, err = _cli(capsys, "sweep", str(spec), "--db", str(db), "--data-dir", str(data), "--no-progress")
    assert code == 1 and "1 run(s) failed in an earlier sweep" in err and "--retry-failed" in err
