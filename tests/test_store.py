"""The results store: atomic claims, dead-owner takeover, ownership checks, finite-safe JSON."""
from __future__ import annotations

import json
import math
import multiprocessing
import socket
import sqlite3
import time

import pytest

from gradreg.store import ResultStore, owner_alive, owner_id, to_json
from gradreg.train import RunConfig, RunResult


def _config(seed: int = 0, **overrides) -> RunConfig:
    return RunConfig(dataset="sin", seed=seed, overrides=(("steps", 30), ("eval_points", 1), *overrides.items()))


def _dead_pid() -> int:
    """A pid that certainly belongs to no live process: a child that has already been reaped."""
    proc = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    proc.start()
    proc.join()
    return proc.pid


def _result(config: RunConfig, status: str = "done", **metrics: float) -> RunResult:
    return RunResult(config=config, status=status, metrics=metrics or {"test_mse": 0.5},
                     curve=[{"step": 30, "dev_mse": 0.6}], extras={"note": "x"}, seconds=0.25)


def test_schema_wal_and_parent_dirs(tmp_path):
    path = tmp_path / "a" / "b" / "runs.db"
    with ResultStore(path) as store:
        assert len(store) == 0 and store.counts() == {"running": 0, "done": 0, "diverged": 0, "failed": 0}
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    columns = [row[1] for row in conn.execute("PRAGMA table_info(runs)")]
    assert columns == ["key", "config", "status", "metrics", "curve", "extras", "error", "seconds", "owner",
                       "heartbeat", "started", "finished", "versions", "device"]
    with pytest.raises(sqlite3.IntegrityError):  # the status CHECK constraint
        conn.execute("INSERT INTO runs (key, config, status) VALUES ('k', '{}', 'weird')")


def test_claim_is_exclusive_between_two_store_objects(tmp_path):
    a, b = ResultStore(tmp_path / "runs.db"), ResultStore(tmp_path / "runs.db")
    cfg, owner_a, owner_b = _config(), owner_id(), owner_id()
    assert owner_a != owner_b
    assert a.claim(cfg, owner_a)
    assert not b.claim(cfg, owner_b)  # running, by a live owner (this very process)
    assert not a.claim(cfg, owner_a)  # a claim is not re-entrant either
    row = b.get(cfg.key())
    assert row["status"] == "running" and row["owner"] == owner_a
    assert RunConfig.from_dict(row["config"]) == cfg
    assert row["versions"]["python"] and row["versions"]["torch"] and "git" in row["versions"]
    assert a.finish(_result(cfg), owner_a)
    assert not b.claim(cfg, owner_b)  # done: never again
    a.close(), b.close()


def _claim_all(path: str, configs: list[RunConfig], barrier, queue) -> None:
    store, owner = ResultStore(path), owner_id()
    barrier.wait()
    queue.put((owner, [c.key() for c in configs if store.claim(c, owner)]))


def test_two_processes_claim_each_key_exactly_once(tmp_path):
    path = str(tmp_path / "runs.db")
    ResultStore(path).close()
    configs = [_config(seed) for seed in range(20)]
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    # Opposite orders make the two processes collide on every key at some point.
    procs = [ctx.Process(target=_claim_all, args=(path, order, barrier, queue))
             for order in (configs, configs[::-1])]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (owner1, keys1), (owner2, keys2) = results
    assert not set(keys1) & set(keys2)
    assert sorted(keys1 + keys2) == sorted(c.key() for c in configs)
    with ResultStore(path) as store:
        owners = {row["key"]: row["owner"] for row in store.rows()}
    assert owners == {**{k: owner1 for k in keys1}, **{k: owner2 for k in keys2}}


def test_dead_owner_is_taken_over(tmp_path):
    store = ResultStore(tmp_path / "runs.db")
    dead_pid, cfg = _dead_pid(), _config()
    dead = f"{socket.gethostname()}:{dead_pid}:deadbeef"
    assert not owner_alive(dead, time.time())
    assert store.claim(cfg, dead)
    me = owner_id()
    assert store.claim(cfg, me)  # same host, pid gone: dead despite a fresh heartbeat
    assert store.get(cfg.key())["owner"] == me
    assert not store.heartbeat(cfg.key(), dead) and store.heartbeat(cfg.key(), me)


def test_stale_heartbeat_is_taken_over_even_on_another_host(tmp_path):
    store = ResultStore(tmp_path / "runs.db", stale_after=300)
    cfg, remote = _config(), "some-other-host:12345:abcdef12"
    assert store.claim(cfg, remote)
    assert not store.claim(cfg, owner_id())  # fresh heartbeat, unknown pid: presumed alive
    store.conn.execute("UPDATE runs SET heartbeat = ?", (time.time() - 301,))
    me = owner_id()
    assert store.claim(cfg, me)
    assert not store.finish(_result(cfg), remote)  # the old owner's late result is refused
    assert store.finish(_result(cfg), me)


def test_finish_refuses_a_foreign_owner(tmp_path):
    store = ResultStore(tmp_path / "runs.db")
    cfg, mine, other = _config(), owner_id(), owner_id()
    assert not store.finish(_result(cfg), mine)  # never claimed
    assert store.claim(cfg, mine)
    assert not store.finish(_result(cfg), other)
    assert not store.fail(cfg, other, "boom")
    assert not store.release(cfg.key(), other)
    assert store.get(cfg.key())["status"] == "running"
    assert store.finish(_result(cfg, test_mse=0.125), mine, device="cpu")
    row = store.get(cfg.key())
    assert row["status"] == "done" and row["metrics"] == {"test_mse": 0.125} and row["device"] == "cpu"
    assert row["curve"] == [{"step": 30, "dev_mse": 0.6}] and row["extras"] == {"note": "x"}
    assert row["seconds"] == 0.25 and row["finished"] >= row["started"]
    assert not store.finish(_result(cfg), mine)  # no longer running: a second finish is refused
    with pytest.raises(ValueError, match="done, diverged"):
        store.finish(_result(cfg, status="failed"), mine)


def test_nan_metrics_are_stored_as_null(tmp_path):
    store = ResultStore(tmp_path / "runs.db")
    cfg, me = _config(), owner_id()
    assert store.claim(cfg, me)
    result = _result(cfg, status="diverged", weight_sq_norm=math.nan, test_mse=math.inf, steps=30)
    result.curve = [{"step": 10, "train_loss": -math.inf}]
    assert store.finish(result, me)
    raw = store.conn.execute("SELECT metrics, curve FROM runs").fetchone()
    for text in raw:  # strict JSON: no NaN/Infinity tokens
        json.loads(text, parse_constant=lambda c: pytest.fail(f"non-finite constant {c} in {text}"))
    row = store.get(cfg.key())
    assert row["status"] == "diverged"
    assert row["metrics"] == {"weight_sq_norm": None, "test_mse": None, "steps": 30}
    assert row["curve"] == [{"step": 10, "train_loss": None}]
    assert to_json({"a": [1.0, float("nan")], "b": (2, None)}) == '{"a": [1.0, null], "b": [2, null]}'


def test_fail_release_retry_and_queries(tmp_path):
    store = ResultStore(tmp_path / "runs.db")
    me = owner_id()
    a, b, c = _config(0), _config(1), _config(2)
    assert store.claim(a, me) and store.claim(b, me) and store.claim(c, me)
    assert store.fail(a, me, "Traceback: boom")
    assert store.release(c.key(), me) and store.get(c.key()) is None
    assert store.counts() == {"running": 1, "done": 0, "diverged": 0, "failed": 1} and len(store) == 2
    assert store.get(a.key())["error"] == "Traceback: boom"
    assert not store.claim(a, me)  # failed runs stay failed...
    assert store.claim(a, me, retry_failed=True)  # ...unless asked
    row = store.get(a.key())
    assert row["status"] == "running" and row["error"] is None
    assert sorted(r["key"] for r in store.rows(status="running")) == sorted([a.key(), b.key()])
    assert [r["key"] for r in store.rows(keys=[b.key(), "missing"])] == [b.key()]
    assert store.rows(status=("done", "diverged")) == []
    assert store.statuses() == {a.key(): "running", b.key(): "running"}
    with pytest.raises(ValueError, match="valid: running, done, diverged, failed"):
        store.rows(status="finished")
    store.close()
    store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        len(store)


def test_release_dead(tmp_path):
    store = ResultStore(tmp_path / "runs.db")
    dead = f"{socket.gethostname()}:{_dead_pid()}:00000000"
    assert store.claim(_config(0), dead) and store.claim(_config(1), owner_id())
    assert store.release_dead() == 1
    assert store.statuses() == {_config(1).key(): "running"}


def test_large_curves_and_extras_are_stored_compressed_and_read_back(tmp_path):
    db = tmp_path / "runs.db"
    big = _result(_config(1))
    big.curve = [{"step": s, "dev_mse": 1.0 / (s + 1)} for s in range(200)]
    big.extras = {"test_pred": [round(0.001 * i, 6) for i in range(900)]}
    small = _result(_config(2))
    with ResultStore(db) as store:
        for r in (big, small):
            store.claim(r.config, "me")
            assert store.finish(r, "me")
        kinds = dict(store.conn.execute("SELECT key, typeof(curve) || '/' || typeof(extras) FROM runs"))
        assert kinds == {big.config.key(): "blob/blob", small.config.key(): "text/text"}
        got = store.get(big.config.key())
        assert got["curve"] == big.curve and got["extras"] == big.extras
        assert store.get(small.config.key())["curve"] == small.curve
        # A database written before compression: compact() packs its text values, losing nothing.
        store.conn.execute("UPDATE runs SET curve = ?, extras = ? WHERE key = ?",
                           (to_json(big.curve), to_json(big.extras), big.config.key()))
        before = store.rows()
        store.compact()
        assert store.rows() == before
        assert store.conn.execute("SELECT typeof(extras) FROM runs WHERE key = ?",
                                  (big.config.key(),)).fetchone() == ("blob",)


def test_rows_store_the_resolved_config_and_old_databases_are_converted_once(tmp_path):
    """Version 2 rows hold what ran (model and recipe values filled in: what the key hashes); a version
    0/1 database, whose rows hold the config as written, converts when opened for writing, not reading."""
    import json

    from gradreg.store import SCHEMA_VERSION

    config = RunConfig(dataset="digits", terms=(("spectreg", 0.01),), overrides=(("steps", 7),))
    with ResultStore(tmp_path / "new.db") as store:
        assert store.claim(config, "me")
        store.finish(_result(config), "me")
        row = store.get(config.key())
    assert row["config"]["model"] == "lenet5" and row["config"]["recipe"]["steps"] == 7
    assert RunConfig.from_dict(row["config"]).key() == config.key() == row["key"]

    old = tmp_path / "old.db"
    with ResultStore(old) as store:
        assert store.claim(config, "me")
        store.finish(_result(config), "me")
    conn = sqlite3.connect(old)  # as a version-1 gradreg wrote it
    conn.execute("UPDATE runs SET config = ?", (json.dumps(config.to_dict()),))
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    before = old.read_bytes()
    with ResultStore(old, readonly=True) as store:
        assert store.get(config.key())["config"]["model"] is None  # read as it is
    assert old.read_bytes() == before
    with ResultStore(old) as store:
        row = store.get(config.key())
    assert row["config"] == json.loads(json.dumps(config.resolved_dict())) and row["key"] == config.key()
    assert sqlite3.connect(old).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
