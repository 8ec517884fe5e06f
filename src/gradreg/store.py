"""The results database: one SQLite file (WAL mode) holding every run's config, status and metrics.

Why SQLite: a sweep is many short writes from a few processes on one machine, and the results must
survive a crash or ``kill -9`` half way through. SQLite gives atomic claims (``BEGIN IMMEDIATE``), a
single file to copy around, and needs nothing beyond the standard library. WAL mode lets readers
(a notebook plotting results) work while a sweep writes.

A run's life: :meth:`ResultStore.claim` inserts a ``running`` row owned by the calling worker, the
worker sends :meth:`~ResultStore.heartbeat` while training, then :meth:`~ResultStore.finish` stores
the result (``done``/``diverged``) or :meth:`~ResultStore.fail` stores the traceback (``failed``).
A row left ``running`` by a worker that died (its pid is gone, or its heartbeat is stale) is taken
over by the next claim, so an interrupted sweep resumes where it stopped.

The bulky columns, ``curve`` and ``extras`` (learning curves, SIN predictions), are stored as
zlib-compressed JSON when large (a BLOB; small values stay JSON text), which keeps a database of
hundreds of runs small enough to commit. Read them through :meth:`ResultStore.rows` / :meth:`~ResultStore.get`.

The file must live on a local disk: SQLite's locking (and WAL's shared memory) is unreliable on
network filesystems. Spread runs over machines with the ray backend of :mod:`gradreg.sweep`, whose
driver alone writes the store.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .store_rows import (DEFAULT_STALE_AFTER, from_packed, owner_alive, owner_id, runtime_versions, to_json,
                         to_packed)

if TYPE_CHECKING:  # the store itself never needs torch: keep importing it cheap
    from .train import RunConfig, RunResult

__all__ = ["ResultStore", "SCHEMA_VERSION", "STATUSES", "StoreError", "owner_id", "owner_alive", "runtime_versions",
           "to_json"]

STATUSES = ("running", "done", "diverged", "failed")
# The layout of the runs table, kept in SQLite's user_version: a database of a newer layout is refused,
# never written (a newer gradreg may give its rows meanings this one would miscount or overwrite).
# 0 is a database written before the version was recorded; its layout is version 1's. Version 2 stores
# each row's resolved config (model and recipe values filled in: RunConfig.resolved_dict, what the key
# hashes); a version 0/1 database is converted when a sweep opens it for writing (_upgrade), never when
# it is only read.
SCHEMA_VERSION = 2
FINISHED = ("done", "diverged")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    key       TEXT PRIMARY KEY,
    config    TEXT NOT NULL,
    status    TEXT NOT NULL CHECK (status IN ({", ".join(f"'{s}'" for s in STATUSES)})),
    metrics   TEXT,
    curve     TEXT,
    extras    TEXT,
    error     TEXT,
    seconds   REAL,
    owner     TEXT,
    heartbeat REAL,
    started   REAL,
    finished  REAL,
    versions  TEXT,
    device    TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
"""
_COLUMNS = ("key", "config", "status", "metrics", "curve", "extras", "error", "seconds", "owner", "heartbeat",
            "started", "finished", "versions", "device")
_JSON_COLUMNS = ("config", "metrics", "curve", "extras", "versions")
_MAX_SQL_VARIABLES = 500  # well below SQLite's lowest compiled-in limit (999)


class StoreError(RuntimeError):
    """The results database cannot be used: not a SQLite file, another program's database, written by a
    newer gradreg, locked, or in a place that cannot be read or written. The message names the file and
    what to do."""


class ResultStore:
    """Runs keyed by ``RunConfig.key()`` in one SQLite file, safe to share between processes.

    Every write is one short transaction; claims use ``BEGIN IMMEDIATE`` (the write lock is taken
    before the row is read) so two processes can never both claim a run. ``timeout`` is SQLite's
    busy timeout: how long a writer waits for another one's lock before giving up. One object may be
    used from several threads (a worker and its heartbeat thread); calls are serialized.
    """

    def __init__(self, path: str | os.PathLike, *, timeout: float = 60.0,
                 stale_after: float = DEFAULT_STALE_AFTER, readonly: bool = False) -> None:
        self.path = Path(path).expanduser().absolute()
        self.stale_after = float(stale_after)
        self.readonly = readonly
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = self._open(timeout)
            self._check_schema()
        except sqlite3.Error as exc:
            self.close()
            raise self._explain(exc, timeout) from exc
        except BaseException:
            self.close()
            raise

    def _open(self, timeout: float) -> sqlite3.Connection:
        if self.readonly:
            # mode=ro: reading never writes, so a database in a read-only folder (or a read-only copy) can
            # be reported; no WAL pragma, which is a write. A WAL database whose -shm cannot be created
            # there opens as immutable (nothing else can be writing where nobody may write).
            if not self.path.is_file():
                raise StoreError(f"{self.path}: no such results database")
            uri = self.path.as_uri()
            try:
                conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError:
                if os.access(self.path.parent, os.W_OK):
                    raise
                conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=timeout, isolation_level=None,
                                       check_same_thread=False)
            return conn
        parent = self.path.parent
        if parent.exists() and not parent.is_dir() or any(p.exists() and not p.is_dir() for p in parent.parents):
            blocker = next(p for p in [parent, *parent.parents] if p.exists() and not p.is_dir())
            raise StoreError(f"{self.path}: cannot create the results database there, {blocker} is a file, not a "
                             "folder; pass another --db")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create its folder ({exc.strerror}); pass a --db in a folder "
                             "you can write") from exc
        if not os.access(parent, os.W_OK | os.X_OK):
            raise StoreError(f"{self.path}: the folder {parent} is not writable (a sweep writes the database and "
                             "its -wal/-shm files there); pass a --db in a folder you can write")
        # isolation_level=None: no implicit transactions; each method opens and ends its own.
        conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        self._conn = conn
        self._check_schema()  # before the first write: a foreign or newer database is never changed
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # durable enough in WAL mode, much faster
        with self._transaction() as tx:
            new = tx.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone() is None
            for statement in filter(str.strip, _SCHEMA.split(";")):
                tx.execute(statement)
            if new:  # only a database made here: opening an existing one (a committed one) changes no byte
                tx.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif tx.execute("PRAGMA user_version").fetchone()[0] < 2:
                self._upgrade(tx)
        return conn

    def _upgrade(self, tx: sqlite3.Connection) -> None:
        """Version 0/1 -> 2: each row's config becomes its resolved config, in one transaction. A row whose
        config does not give back its own key (another gradreg's recipe) keeps its config as it is."""
        from .train import RunConfig

        for key, config in tx.execute("SELECT key, config FROM runs").fetchall():
            try:
                resolved = RunConfig.from_dict(json.loads(config))
            except (TypeError, ValueError):
                continue
            if resolved.key() == key:
                tx.execute("UPDATE runs SET config = ? WHERE key = ?", (to_json(resolved.resolved_dict()), key))
        tx.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_schema(self) -> None:
        """Refuse a database written by a newer gradreg, or by another program (tables, but no runs table
        of ours): either would be misread, and a sweep would write rows into it."""
        conn = self.conn
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: written by a newer gradreg (database schema version {version}; this "
                             f"gradreg reads up to {SCHEMA_VERSION}); upgrade gradreg (pip install -U gradreg) or "
                             "pass another --db. The file was not changed.")
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if "runs" not in tables:
            if tables:
                raise StoreError(f"{self.path}: a SQLite database of another program (tables: "
                                 f"{', '.join(sorted(tables)[:5])}), not a gradreg results database; pass "
                                 "another --db. The file was not changed.")
            if self.readonly:
                raise StoreError(f"{self.path}: an empty SQLite database, no gradreg results in it")
            return
        columns = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
        missing = [c for c in _COLUMNS if c not in columns]
        if missing:
            raise StoreError(f"{self.path}: its runs table lacks the column(s) {', '.join(missing)}, so it is not "
                             "a gradreg results database (or a damaged one); pass another --db. The file was "
                             "not changed.")

    def _explain(self, exc: sqlite3.Error, timeout: float) -> StoreError:
        """An SQLite error at opening, as what it means for the user."""
        text = str(exc)
        if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
            return StoreError(f"{self.path}: not a SQLite database, or a damaged one ({text}); move it aside "
                              "and pass another --db (or restore it from a copy)")
        if "locked" in text or "busy" in text:
            return StoreError(f"{self.path}: locked by another process for more than {timeout:g}s ({text}); wait "
                              "for it to finish, or pass another --db")
        if "readonly" in text or "read-only" in text:
            return StoreError(f"{self.path}: the database (or its folder) is read-only ({text}); a sweep needs "
                              "to write it: copy it somewhere writable and pass that --db")
        if "unable to open" in text:
            return StoreError(f"{self.path}: cannot open it ({text}); check that the path and its folder "
                              "exist and are readable, or pass another --db")
        return StoreError(f"{self.path}: cannot use it as a results database ({text})")

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"ResultStore({str(self.path)!r}) is closed")
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the database's write lock from its first statement."""
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    # -- the run life cycle ---------------------------------------------------------------------

    def claim(self, config: "RunConfig", owner: str, *, retry_failed: bool = False) -> bool:
        """Mark ``config``'s run as ``running`` by ``owner``; True when the caller should train it.

        False when the run is finished (done/diverged), failed (unless ``retry_failed``), or running
        under another owner that is still alive (see :func:`owner_alive`). A dead owner's row is
        taken over, which is how a sweep resumes after a crash.
        """
        key, now = config.key(), time.time()
        with self._transaction() as conn:
            row = conn.execute("SELECT status, owner, heartbeat FROM runs WHERE key = ?", (key,)).fetchone()
            if row is not None:
                status, old_owner, beat = row
                if status in FINISHED or (status == "failed" and not retry_failed):
                    return False
                if status == "running" and owner_alive(old_owner, beat, stale_after=self.stale_after, now=now):
                    return False
                if status not in STATUSES:  # another program's or a newer gradreg's row: never overwritten
                    return False
            conn.execute(
                "INSERT OR REPLACE INTO runs (key, config, status, owner, heartbeat, started, versions) "
                "VALUES (?, ?, 'running', ?, ?, ?, ?)",
                (key, to_json(config.resolved_dict()), owner, now, now, to_json(runtime_versions())))
        return True

    def heartbeat(self, key: str, owner: str) -> bool:
        """Refresh a running row's heartbeat; False when ``owner`` no longer holds it."""
        with self._transaction() as conn:
            cur = conn.execute("UPDATE runs SET heartbeat = ? WHERE key = ? AND owner = ? AND status = 'running'",
                               (time.time(), key, owner))
        return cur.rowcount == 1

    def finish(self, result: "RunResult", owner: str, device: str | None = None, *,
               versions: dict[str, Any] | None = None) -> bool:
        """Store a trained run's result. Refuses (False) when ``owner`` no longer holds the row.

        A refused write means the owner was presumed dead (e.g. its heartbeat stalled) and another
        worker took the run over; that worker's result will be stored instead. ``versions`` records
        where the run was trained when that is not this process (the ray backend's workers).
        """
        if result.status not in FINISHED:
            raise ValueError(f"result status must be one of {', '.join(FINISHED)}, got {result.status!r}")
        key, now = result.config.key(), time.time()
        with self._transaction() as conn:
            if not self._owns(conn, key, owner):
                return False
            conn.execute(
                "UPDATE runs SET config = ?, status = ?, metrics = ?, curve = ?, extras = ?, error = ?, "
                "seconds = ?, heartbeat = ?, finished = ?, versions = ?, device = ? WHERE key = ?",
                (to_json(result.config.resolved_dict()), result.status, to_json(result.metrics), to_packed(result.curve),
                 to_packed(result.extras), result.error, float(result.seconds), now, now,
                 to_json(versions if versions is not None else runtime_versions()), device, key))
        return True

    def fail_abandoned(self, key: str, owner_prefix: str, error: str) -> bool:
        """Record as failed a running row whose owner starts with ``owner_prefix`` (``host:pid:``, a sweep
        worker that died while training it): the row is the dead worker's, so the caller is not its owner.
        False if no such row (it finished first, or another sweep took it over)."""
        now = time.time()
        with self._transaction() as conn:
            cur = conn.execute("UPDATE runs SET status = 'failed', error = ?, heartbeat = ?, finished = ? "
                               "WHERE key = ? AND substr(owner, 1, ?) = ? AND status = 'running'",
                               (str(error), now, now, key, len(owner_prefix), owner_prefix))
        return cur.rowcount == 1

    def fail(self, config: "RunConfig", owner: str, error: str, *, seconds: float | None = None,
             device: str | None = None) -> bool:
        """Record that ``owner``'s run raised (``error``: the traceback text); False if not its row."""
        key, now = config.key(), time.time()
        with self._transaction() as conn:
            if not self._owns(conn, key, owner):
                return False
            conn.execute("UPDATE runs SET status = 'failed', error = ?, seconds = ?, heartbeat = ?, finished = ?, "
                         "device = ? WHERE key = ?", (str(error), seconds, now, now, device, key))
        return True

    def release(self, key: str, owner: str) -> bool:
        """Delete ``owner``'s own running row (a clean interruption: the run was never finished)."""
        with self._transaction() as conn:
            cur = conn.execute("DELETE FROM runs WHERE key = ? AND owner = ? AND status = 'running'", (key, owner))
        return cur.rowcount == 1

    def release_dead(self, keys: Iterable[str] | None = None) -> int:
        """Delete running rows (among ``keys``, default all) whose owner is dead; returns how many.

        Claims take such rows over anyway; this only makes :meth:`counts` honest after a sweep
        stopped its workers the hard way.
        """
        with self._transaction() as conn:
            dead = [key for key, owner, beat in self._select(conn, "key, owner, heartbeat", keys, ("running",))
                    if not owner_alive(owner, beat, stale_after=self.stale_after)]
            for key in dead:
                conn.execute("DELETE FROM runs WHERE key = ? AND status = 'running'", (key,))
        return len(dead)

    @staticmethod
    def _owns(conn: sqlite3.Connection, key: str, owner: str) -> bool:
        row = conn.execute("SELECT status, owner FROM runs WHERE key = ?", (key,)).fetchone()
        return row is not None and row[0] == "running" and row[1] == owner

    # -- reading --------------------------------------------------------------------------------

    @staticmethod
    def _select(conn: sqlite3.Connection, columns: str, keys: Iterable[str] | None,
                status: Sequence[str] | None) -> list[tuple]:
        """``SELECT columns`` filtered by keys and statuses, chunked to respect SQLite's variable limit."""
        where, params = [], []
        if status is not None:
            where.append(f"status IN ({', '.join('?' * len(status))})")
            params.extend(status)
        if keys is None:
            sql = f"SELECT {columns} FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY rowid"
            return conn.execute(sql, params).fetchall()
        keys = list(dict.fromkeys(keys))
        out: list[tuple] = []
        for i in range(0, len(keys), _MAX_SQL_VARIABLES):
            chunk = keys[i:i + _MAX_SQL_VARIABLES]
            clause = " AND ".join([*where, f"key IN ({', '.join('?' * len(chunk))})"])
            out.extend(conn.execute(f"SELECT {columns} FROM runs WHERE {clause} ORDER BY rowid",
                                    [*params, *chunk]).fetchall())
        return out

    @staticmethod
    def _statuses(status: str | Iterable[str] | None) -> tuple[str, ...] | None:
        if status is None:
            return None
        wanted = (status,) if isinstance(status, str) else tuple(status)
        unknown = sorted(set(wanted) - set(STATUSES))
        if unknown:
            raise ValueError(f"unknown status {', '.join(map(repr, unknown))}; valid: {', '.join(STATUSES)}")
        return wanted

    @staticmethod
    def _decode(row: tuple) -> dict[str, Any]:
        d = dict(zip(_COLUMNS, row))
        for name in _JSON_COLUMNS:
            d[name] = from_packed(d.get(name))
        return d

    def get(self, key: str) -> dict[str, Any] | None:
        """The row of run ``key`` with JSON columns decoded (``config`` as a dict), or None."""
        with self._lock:
            row = self.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE key = ?", (key,)).fetchone()
        return None if row is None else self._decode(row)

    def rows(self, keys: Iterable[str] | None = None,
             status: str | Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Decoded rows, optionally only those of ``keys`` and/or with ``status`` (one or several)."""
        wanted = self._statuses(status)
        with self._lock:
            found = self._select(self.conn, ", ".join(_COLUMNS), keys, wanted)
        return [self._decode(row) for row in found]

    def statuses(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        """``{key: status}`` without decoding metrics or curves: the cheap check a sweep starts with."""
        with self._lock:
            return dict(self._select(self.conn, "key, status", keys, None))

    def counts(self) -> dict[str, int]:
        """Number of rows per status (every status listed, zeros included; a status this gradreg does not
        know, if any row has one, is listed after them under its own name rather than miscounted)."""
        with self._lock:
            found = dict(self.conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
        return {s: int(found.get(s, 0)) for s in STATUSES} | {s: int(n) for s, n in found.items() if s not in STATUSES}

    def __len__(self) -> int:
        with self._lock:
            return int(self.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def count_full_runs(self) -> int:
        """Number of runs with uncapped evaluation (``config.max_eval`` unset), i.e. not smoke runs."""
        with self._lock:
            return int(self.conn.execute(
                "SELECT COUNT(*) FROM runs WHERE json_extract(config, '$.max_eval') IS NULL").fetchone()[0])

    def compact(self) -> None:
        """Compress the large ``curve``/``extras`` values written before compression existed, checkpoint
        the WAL and VACUUM: the smallest single file, e.g. before committing it."""
        with self._transaction() as conn:
            rows = conn.execute("SELECT key, curve, extras FROM runs WHERE typeof(curve) = 'text' "
                                "OR typeof(extras) = 'text'").fetchall()
            for key, curve, extras in rows:
                conn.execute("UPDATE runs SET curve = ?, extras = ? WHERE key = ?",
                             (to_packed(from_packed(curve)), to_packed(from_packed(extras)), key))
        with self._lock:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.conn.execute("VACUUM")
