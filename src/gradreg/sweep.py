"""Run many :class:`~gradreg.train.RunConfig` s into a :class:`~gradreg.store.ResultStore`.

A sweep is restartable by construction: every run is claimed in the store before it trains and
written there as soon as it ends, so stopping a sweep (Ctrl-C, ``kill -9``, a lost node) loses at
most the runs in flight, and running the same sweep again trains only what is missing. Two sweeps
may share one database: claims are atomic, so no run is trained twice.

Runs are trained in *tasks*: a single run, or a group of runs that differ only in seed and λ trained
as one vectorized computation (:mod:`gradreg.grouped`) where that pays (:func:`auto_group_size`). A
task's runs are claimed together and stored one by one as the task ends; if the task raises, all its
runs are recorded as failed.

Backends:

* ``"local"``: ``workers`` processes on this machine (in this process when ``workers == 1``).
* ``"ray"``: one ray task per task, on a local ray instance or the cluster at ``address``. Tasks
  return their results to this process (the driver), which alone reads and writes the store, so the
  cluster needs no shared filesystem; it needs the same gradreg and torch installed on every node
  (and the sweep's ``imports``, :mod:`gradreg.plugins`).
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .grouped import group_key, groupable, train_group
from .models import MODEL_INFO
from .plugins import Imports, import_plugins, resolve_imports
from .errors import error_cause, group_failures
from .store import STATUSES, ResultStore, owner_id, runtime_versions
from .train import RunConfig, RunResult, resolve_device, train
from .workers import WorkerPool

__all__ = ["BACKENDS", "SweepSummary", "auto_group_size", "default_workers", "plan_tasks", "run_sweep"]

BACKENDS = ("local", "ray")
HEARTBEAT_SECONDS = 30.0  # a tenth of the store's default stale_after: a few missed beats are harmless
OUTCOMES = ("done", "diverged", "failed", "busy")
CPU_GROUP_SIZE = 50  # SIN MLPs per group on CPU; see auto_group_size


@dataclass
class SweepSummary:
    """What one :func:`run_sweep` call did.

    ``total``: distinct runs asked for (configs with equal keys count once); ``skipped``: already in
    the store as done or diverged (or failed, unless ``retry_failed``); ``busy``: claimed by another
    live sweep at the time, so left to it; ``done``/``diverged``/``failed``: trained by this call;
    ``failures``: this call's failed runs grouped by cause (:func:`gradreg.errors.group_failures`).
    """

    total: int = 0
    skipped: int = 0
    done: int = 0
    diverged: int = 0
    failed: int = 0
    seconds: float = 0.0
    busy: int = 0
    failed_before: int = 0  # of ``skipped``: recorded as failed by an earlier sweep, not retried
    failures: list[tuple[str, int, str]] = field(default_factory=list)  # (cause, count, a run key) of ``failed``
    other_status: int = 0  # of ``skipped``: rows with a status this gradreg does not know (left alone)


def default_workers(device: str = "auto") -> int:
    """A good ``workers`` for this machine: one per CPU core on CPU, 1 on CUDA.

    Small models (LeNet-sized) do not keep several threads busy, so single-thread processes, one per
    core, beat one multi-thread process (measured: two single-thread workers beat one two-thread
    process on two cores). One GPU is best fed by a single process.
    """
    if resolve_device(device).type == "cuda":
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))  # the cores this process may use (containers)
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# -- one run, in whichever process trains it ------------------------------------------------------

_DATASETS: dict[tuple[str, str | None, str | None], Any] = {}


def _dataset(name: str, data_dir: str | os.PathLike | None) -> Any:
    """The dataset, loaded once per process (loading MNIST takes seconds; a sweep runs it hundreds of
    times), and again when the user's file changed (its fingerprint is part of the cache key)."""
    from .data import DataError, data_fingerprint, load_dataset

    try:
        fingerprint = data_fingerprint(name, data_dir)
    except (DataError, OSError):  # no file: load_dataset raises the full error below
        fingerprint = None
    where = None if data_dir is None else os.fspath(data_dir)
    cache_key = (name, where, fingerprint)
    if cache_key not in _DATASETS:
        for old in [k for k in _DATASETS if k[:2] == (name, where)]:
            del _DATASETS[old]  # an earlier version of the file: not needed again
        _DATASETS[cache_key] = load_dataset(name, data_dir)
    return _DATASETS[cache_key]


class _Heartbeat:
    """A daemon thread refreshing the heartbeat of the rows an owner holds, so they are not taken over."""

    def __init__(self, store: ResultStore, owner: str, interval: float | None = None) -> None:
        self.store, self.owner = store, owner
        self.interval = HEARTBEAT_SECONDS if interval is None else interval
        self._keys: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gradreg-heartbeat", daemon=True)

    def add(self, key: str) -> None:
        with self._lock:
            self._keys.add(key)

    def discard(self, key: str) -> None:
        with self._lock:
            self._keys.discard(key)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                keys = list(self._keys)
            for key in keys:
                try:
                    self.store.heartbeat(key, self.owner)
                except Exception:  # a locked or closed database must not kill the run; retry next beat
                    pass

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _train_task(configs: list[RunConfig], *, data_dir: Any, device: str, progress: bool) -> list[RunResult]:
    """Train one task: a single run, or a group trained as one (:mod:`gradreg.grouped`)."""
    ds = _dataset(configs[0].dataset, data_dir)
    if len(configs) == 1:
        results = [train(configs[0], dataset=ds, data_dir=data_dir, device=device, progress=progress)]
    else:
        results = train_group(configs, dataset=ds, data_dir=data_dir, device=device, progress=progress)
    if ds.fingerprint is not None:  # stored beside the run: a later sweep checks it (_check_data)
        for result in results:
            result.extras["data_sha256"] = ds.fingerprint
    return results


def _check_data(store: ResultStore, finished: list[RunConfig], data_dir: Any) -> None:
    """Refuse to count runs as finished that were trained on another version of the user's data file.

    Run keys hold settings, not data: without this check, a sweep over an edited .npz would skip
    every run already in the database and report the old file's results as the new one's.
    """
    from .data import DataError, data_fingerprint

    for name in sorted({c.dataset for c in finished}):
        try:
            current = data_fingerprint(name, data_dir)
        except (DataError, OSError):  # no file: nothing to compare; runs that need it fail with this error
            continue
        if current is None:
            continue
        rows = store.rows([c.key() for c in finished if c.dataset == name], status=("done", "diverged"))
        other = sorted({r["extras"].get("data_sha256") for r in rows} - {None, current})
        if other:
            n = sum(r["extras"].get("data_sha256") in other for r in rows)
            raise ValueError(f"{store.path}: {n} finished run(s) of this sweep were trained on another {name} data "
                             f"file (sha256 {', '.join(other)}; the file now: {current}), and run keys do not "
                             f"tell data apart. Sweep into another database (--db; db_path in Python) to keep both.")


def _preflight(configs: list[RunConfig], data_dir: Any, keep_data: bool = True) -> None:
    """Refuse, before any run trains, settings that would fail every run of their kind
    (:func:`gradreg.validate.check_runs`). A dataset that does not load is left to the runs: they fail
    with its error, and :func:`_stop_on_data_error` stops the sweep where that is every run."""
    from .data import DataError
    from .validate import check_runs

    def dataset_of(name: str) -> Any:
        try:
            return _dataset(name, data_dir)
        except DataError:
            return None

    loaded_before = set(_DATASETS)
    try:
        check_runs(configs, dataset_of)
    finally:
        if not keep_data:  # the workers load their own copy: do not hold a second one here all sweep
            for key in set(_DATASETS) - loaded_before:
                del _DATASETS[key]


def _stop_on_data_error(store: ResultStore, key: str, dataset: str, datasets: set[str], trained_ok: set[str]) -> None:
    """Stop the sweep when a run failed because its dataset does not load, every run of the sweep uses
    that dataset, and none has trained: the others would fail the same way, each after loading it again.
    (Where other datasets' runs remain, those can succeed: the sweep goes on.)"""
    from .data import DataError

    if datasets != {dataset} or dataset in trained_ok:
        return
    row = store.get(key)
    cause = error_cause(row["error"] if row else None)
    if cause.startswith("DataError:"):
        raise DataError(f"{cause.removeprefix('DataError: ')} (stopped the sweep: every {dataset} run needs this "
                        "data; fix it, then run the sweep again with --retry-failed)")


def _run_task(store: ResultStore, configs: list[RunConfig], owner: str, *, data_dir: Any, device: str,
              retry_failed: bool, progress: bool) -> list[tuple[str, str]]:
    """Claim, train and store one task's runs; returns ``(key, outcome)`` per run (``OUTCOMES``).

    Runs another sweep holds are left to it ("busy"). If a group raises, its runs are trained again
    one by one, so that one bad run (or a group too large for the device) fails only itself. A run
    that raises is recorded as ``failed`` with its traceback and the sweep goes on; an interruption
    (Ctrl-C) deletes the task's unfinished rows again.
    """
    outcomes = {c.key(): "busy" for c in configs}
    claimed: list[RunConfig] = []
    where = str(resolve_device(device))
    try:
        with _Heartbeat(store, owner) as beat:
            for c in configs:
                if store.claim(c, owner, retry_failed=retry_failed):
                    claimed.append(c)
                    beat.add(c.key())
            batches = [claimed] if len(claimed) > 1 else [[c] for c in claimed]
            while batches:
                batch = batches.pop(0)
                start = time.perf_counter()
                try:
                    results = _train_task(batch, data_dir=data_dir, device=device, progress=progress)
                except Exception:
                    if len(batch) > 1:  # retry the group's runs alone
                        batches = [[c] for c in batch] + batches
                        continue
                    store.fail(batch[0], owner, traceback.format_exc(), seconds=time.perf_counter() - start,
                               device=where)
                    outcomes[batch[0].key()] = "failed"
                    continue
                for result in results:
                    key = result.config.key()
                    outcomes[key] = result.status if store.finish(result, owner, device=where) else "busy"
    except BaseException:  # KeyboardInterrupt, SystemExit
        for c in claimed:
            if outcomes[c.key()] == "busy":  # claimed here but not finished
                store.release(c.key(), owner)
        raise
    return list(outcomes.items())


# -- local process pool -------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(threads: int, imports: tuple[str, ...]) -> None:
    """Pool worker setup: torch's thread count, the user's components (``imports``), and Ctrl-C left to
    the parent (which stops the pool)."""
    import signal

    import torch

    from .numerics import set_default_flush_denormal

    set_default_flush_denormal()  # the parent's setting (environment), before torch starts its threads
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import_plugins(imports)
    except Exception:  # raised here it would break the pool, reported as a crashed worker: see _pool_task
        _WORKER["import_error"] = traceback.format_exc()


def _pool_task(configs: list[RunConfig], db_path: str, data_dir: Any, device: str,
               retry_failed: bool) -> list[tuple[str, str]]:
    """One task in a pool worker; the store connection and owner id live as long as the worker."""
    if "import_error" in _WORKER:
        raise ValueError("imports: a sweep worker (a fresh process) could not import them, though this "
                         "process could:\n" + _WORKER["import_error"])
    if _WORKER.get("path") != db_path:
        if "store" in _WORKER:
            _WORKER["store"].close()
        _WORKER.update(path=db_path, store=ResultStore(db_path), owner=owner_id())
    return _run_task(_WORKER["store"], configs, _WORKER["owner"], data_dir=data_dir, device=device,
                     retry_failed=retry_failed, progress=False)


def _run_local_pool(tasks: list[list[RunConfig]], store: ResultStore, record: Callable[[str, str], None], *,
                    workers: int, threads: int, data_dir: Any, device: str, retry_failed: bool,
                    imports: tuple[str, ...], say: Callable[[str], None]) -> None:
    """Train ``tasks`` in ``workers`` spawned processes (:class:`~gradreg.workers.WorkerPool`).

    A worker that dies mid-task costs that task alone: the runs it held are recorded as failed with
    the cause (its claimed rows are its, and it is gone), runs it had not yet claimed go back to the
    queue, a replacement worker takes the next task, and ``say`` gets one line about it."""
    import socket

    keys = [c.key() for task in tasks for c in task]
    pool = WorkerPool(min(workers, len(tasks)), initializer=_init_worker, initargs=(threads, imports))
    try:
        queue = list(tasks)
        for event in pool.run(queue, _pool_task, lambda t: (t, str(store.path), data_dir, device, retry_failed)):
            if event.kind == "ok":
                for key, outcome in event.value:  # _run_task turns training errors into "failed" itself
                    record(key, outcome)
            elif event.kind == "error":  # the task function itself raised (e.g. the worker's imports)
                head, sep, imports_error = event.value.partition("ValueError: imports: ")
                raise ValueError("imports: " + imports_error if sep else
                                 "a sweep worker failed outside any run:\n" + event.value)
            else:
                _worker_died(store, event, socket.gethostname(), record, queue, say)
    except BaseException:
        pool.terminate()
        store.release_dead(keys)  # the stopped workers' rows: nothing of them finished
        raise
    pool.close()


def _worker_died(store: ResultStore, event: Any, host: str, record: Callable[[str, str], None],
                 queue: list[list[RunConfig]], say: Callable[[str], None]) -> None:
    """Account for the task of a worker that died: its claimed runs failed, its unclaimed ones requeued."""
    error = (f"WorkerDied: sweep worker process {event.pid} {event.value} while training this run; the sweep "
             "went on with the other runs. Train it again with --retry-failed (retry_failed=True).")
    owner = f"{host}:{event.pid}:"
    failed, unclaimed = [], []
    for config in event.task:
        key = config.key()
        if store.fail_abandoned(key, owner, error):
            failed.append(key)
            record(key, "failed")
            continue
        row = store.get(key)
        if row is not None and row["status"] in ("done", "diverged") and (row["owner"] or "").startswith(owner):
            record(key, row["status"])  # stored by the worker before it died
        elif row is None or row["status"] == "running" and (row["owner"] or "").startswith(owner):
            unclaimed.append(config)
        else:
            record(key, "busy")  # held (or finished) by another sweep
    queue.extend([config] for config in unclaimed)
    say(f"sweep worker process {event.pid} {event.value}: {len(failed)} run(s) it was training recorded as "
        f"failed{f', {len(unclaimed)} requeued' if unclaimed else ''}; the other workers go on")


# -- ray ------------------------------------------------------------------------------------------

def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the ray backend needs ray: pip install 'gradreg[ray]'") from exc
    return ray


def _ray_train(configs: list[dict[str, Any]], data_dir: Any, device: str, threads: int,
               imports: tuple[str, ...] = ()) -> dict[str, Any]:
    """A ray task: train one task's runs and return plain data (the driver stores it), errors included."""
    import torch

    from .numerics import set_default_flush_denormal

    set_default_flush_denormal()  # from this process's GRADREG_FLUSH_DENORMAL (default: on)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    out: dict[str, Any] = {"versions": runtime_versions(), "device": None}
    try:
        import_plugins(imports)
        runs = [RunConfig.from_dict(c) for c in configs]
        out["device"] = str(resolve_device(device))
        try:
            out["results"] = [r.to_dict() for r in _train_task(runs, data_dir=data_dir, device=device,
                                                               progress=False)]
        except Exception:
            if len(runs) == 1:
                raise
            out["results"] = []
            for run in runs:  # the group failed: each run alone, so one bad run fails only itself
                try:
                    out["results"] += [r.to_dict() for r in _train_task([run], data_dir=data_dir, device=device,
                                                                         progress=False)]
                except Exception:
                    out["results"].append({"config": run.to_dict(), "error": traceback.format_exc()})
    except Exception:
        out["error"] = traceback.format_exc()
    out["seconds"] = (time.perf_counter() - start) / max(1, len(configs))
    return out


def _result_from_dict(d: dict[str, Any]) -> RunResult:
    return RunResult(config=RunConfig.from_dict(d["config"]), status=d["status"], metrics=d["metrics"],
                     curve=d["curve"], extras=d["extras"], seconds=d["seconds"], error=d["error"])


def _run_ray(tasks: list[list[RunConfig]], store: ResultStore, record: Callable[[str, str], None], *,
             workers: int, threads: int, address: str | None, data_dir: Any, device: str,
             retry_failed: bool, imports: tuple[str, ...]) -> None:
    """Keep ``workers`` ray tasks in flight; the driver claims a task's runs just before submitting it.

    Claiming lazily (not all runs up front) leaves the rest to another sweep on the same database
    and keeps the driver's heartbeat to a handful of rows. Results are stored the moment
    ``ray.wait`` returns them, so killing the driver loses only the runs in flight.
    """
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        local = address is None
        ray.init(address=address, num_cpus=workers * threads if local else None, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    owner = owner_id()
    in_flight: dict[Any, list[RunConfig]] = {}
    try:
        if str(device) == "auto":
            gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        else:
            gpus = 1 if resolve_device(device).type == "cuda" else 0
        remote = ray.remote(_ray_train).options(num_cpus=threads, num_gpus=gpus, max_retries=0)
        queue: Iterator[list[RunConfig]] = iter(tasks)
        with _Heartbeat(store, owner) as beat:
            while True:
                while len(in_flight) < workers:
                    task = next(queue, None)
                    if task is None:
                        break
                    claimed = []
                    for config in task:
                        if store.claim(config, owner, retry_failed=retry_failed):
                            claimed.append(config)
                            beat.add(config.key())
                        else:
                            record(config.key(), "busy")
                    if claimed:
                        in_flight[remote.remote([c.to_dict() for c in claimed], data_dir, device, threads,
                                                 imports)] = claimed
                if not in_flight:
                    break
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    claimed = in_flight.pop(ref)
                    for key, outcome in _store_ray_result(ray, ref, claimed, store, owner):
                        record(key, outcome)
                        beat.discard(key)
    except BaseException:
        for ref, claimed in in_flight.items():
            ray.cancel(ref, force=True)
            for config in claimed:
                store.release(config.key(), owner)
        raise
    finally:
        if started_here:
            ray.shutdown()


def _store_ray_result(ray: Any, ref: Any, configs: list[RunConfig], store: ResultStore,
                      owner: str) -> list[tuple[str, str]]:
    try:
        out = ray.get(ref)
    except Exception:  # the task itself died (worker crash, out of memory): failed runs, not a failed sweep
        error = traceback.format_exc()
        for config in configs:
            store.fail(config, owner, error)
        return [(c.key(), "failed") for c in configs]
    if "error" in out:
        for config in configs:
            store.fail(config, owner, out["error"], seconds=out["seconds"], device=out["device"])
        return [(c.key(), "failed") for c in configs]
    outcomes = []
    for d in out["results"]:
        if "status" not in d:  # this run raised
            config = RunConfig.from_dict(d["config"])
            store.fail(config, owner, d["error"], seconds=out["seconds"], device=out["device"])
            outcomes.append((config.key(), "failed"))
            continue
        result = _result_from_dict(d)
        stored = store.finish(result, owner, device=out["device"], versions=out["versions"])
        outcomes.append((result.config.key(), result.status if stored else "busy"))
    return outcomes


# -- the sweep ------------------------------------------------------------------------------------

def auto_group_size(config: RunConfig, device: str = "auto") -> int:
    """How many runs like ``config`` to train as one group (1: not grouped).

    Measured on a 2-core CPU (benchmarks/bench_grouped.py): SIN MLPs train 5.7x faster per run in
    groups of 50 (5.2x in groups of 100) than one by one; stacked LeNet-5s were not faster than single
    runs there; BatchNorm runs are not stacked (see :func:`gradreg.grouped.groupable`).
    On CUDA a group fills the device that one small run leaves idle:
    about 8192 rows per step (unmeasured here; no GPU was available).
    """
    if not groupable(config):
        return 1
    if resolve_device(device).type == "cuda":
        return max(1, min(128, 8192 // config.resolved_recipe().batch_size))
    return CPU_GROUP_SIZE if MODEL_INFO[config.model_name].group_on_cpu else 1  # register_model(group_on_cpu=)


def plan_tasks(configs: list[RunConfig], *, group_size: int | None = None, workers: int = 1,
               device: str = "auto") -> list[list[RunConfig]]:
    """Split runs into tasks: groups of runs sharing a :func:`~gradreg.grouped.group_key`, at most
    ``group_size`` each (None: :func:`auto_group_size`), and at least ``workers`` tasks where the runs
    allow it, so that no worker idles while another trains one huge group. Tasks of equal size keep
    the order of their first run in ``configs``."""
    if group_size is not None and group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if not configs:
        return []
    by_key: dict[str, list[RunConfig]] = {}
    for c in configs:
        by_key.setdefault(group_key(c), []).append(c)
    tasks: list[list[RunConfig]] = []
    for members in by_key.values():
        size = group_size if group_size is not None else auto_group_size(members[0], device)
        size = size if groupable(members[0]) else 1
        n = math.ceil(len(members) / size)
        tasks += [members[i::n] for i in range(n)]  # equal sizes; the order within each is kept
    while len(tasks) < workers and max(len(t) for t in tasks) > 1:
        biggest = max(tasks, key=len)
        tasks.remove(biggest)
        tasks += [biggest[0::2], biggest[1::2]]
    # Largest first, so the small ones fill in at the end; among equals, the callers' order (a task's
    # first run is its earliest: the slicing above keeps order), so a seed-major plan stays seed-major.
    position = {c.key(): i for i, c in reversed(list(enumerate(configs)))}
    return sorted(tasks, key=lambda t: (-len(t), position[t[0].key()]))


def _as_configs(configs: Iterable[RunConfig | dict[str, Any]]) -> list[RunConfig]:
    """Configs as RunConfig objects, de-duplicated by key (first occurrence kept, order preserved)."""
    unique: dict[str, RunConfig] = {}
    for c in configs:
        if isinstance(c, dict):
            c = RunConfig.from_dict(c)
        elif not isinstance(c, RunConfig):
            raise TypeError(f"configs must be RunConfig objects or dicts, got {type(c).__name__}")
        unique.setdefault(c.key(), c)
    return list(unique.values())


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """torch's thread count set to ``threads`` for an in-process sweep, then restored for the caller."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (``kill``, a batch scheduler's preemption) raised as SystemExit(143) in this thread while
    the sweep runs, so that it stops the workers and removes the unfinished runs' rows as Ctrl-C does,
    instead of ending this process alone and leaving its pool workers training. Only where SIGTERM has
    its default action (a caller's own handler, or an ignored SIGTERM, is kept) and in the main thread,
    the one Python lets set handlers. Ray installs its own handler (exit code 15); its cleanup runs too."""
    import signal

    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a scheduler's second SIGTERM must not cut the cleanup short
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="sweep", unit="run", dynamic_ncols=True, position=0)
    try:
        yield bar
    finally:
        bar.close()


def run_sweep(configs: Iterable[RunConfig | dict[str, Any]], db_path: str | os.PathLike, *, workers: int = 1,
              threads: int = 1, backend: str = "local", address: str | None = None, data_dir: Any = None,
              device: str = "auto", retry_failed: bool = False, group_size: int | None = None,
              progress: bool = True, imports: Imports = ()) -> SweepSummary:
    """Train every config not yet finished in the store at ``db_path``; returns what was done.

    ``workers``: tasks trained at once (see :func:`default_workers`); ``threads``: torch threads per
    task (in-process, ``workers == 1``, torch's setting is restored afterwards). ``group_size``: runs
    that differ only in seed and λ train together as one vectorized group of at most this many
    (None: :func:`auto_group_size`; 1: every run alone). ``address``: the ray cluster (None starts a
    local instance with ``workers * threads`` CPUs). ``retry_failed``: train runs recorded as failed
    again. ``imports``: modules or ``.py`` files that register your own models, datasets or
    regularizers, imported here and in every worker before it trains (:mod:`gradreg.plugins`). A run
    that raises is recorded as failed and the sweep goes on; Ctrl-C removes the interrupted runs'
    rows, stops the workers and re-raises, and SIGTERM does the same, raised as ``SystemExit(143)``
    (called from the main thread, where no handler of the caller's is set for SIGTERM).

    With ``workers > 1`` (local backend) the workers are spawned, so they import the caller's main
    module: a script must call this under ``if __name__ == "__main__":``.
    """
    start = time.perf_counter()
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if workers < 1 or threads < 1:
        raise ValueError(f"workers and threads must be >= 1, got workers={workers}, threads={threads}")
    if group_size is not None and group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if backend == "ray":
        _import_ray()  # fail before touching the store
    imports = resolve_imports(imports)
    import_plugins(imports)  # here first: a missing file fails before any worker starts
    todo = _as_configs(configs)
    summary = SweepSummary(total=len(todo))
    with ResultStore(db_path) as store:
        known = store.statuses([c.key() for c in todo])
        _check_data(store, [c for c in todo if known.get(c.key()) in ("done", "diverged")], data_dir)
        finished = {"done", "diverged"} | (set() if retry_failed else {"failed"})
        summary.failed_before = sum(known.get(c.key()) == "failed" for c in todo) if not retry_failed else 0
        # A status this gradreg does not know (another program's, or a newer gradreg's): left alone.
        summary.other_status = sum(c.key() in known and known[c.key()] not in STATUSES for c in todo)
        todo = [c for c in todo if known.get(c.key()) not in finished and known.get(c.key(), "running") in STATUSES]
        summary.skipped = summary.total - len(todo)
        _preflight(todo, data_dir, keep_data=workers == 1 and backend == "local")
        tasks = plan_tasks(todo, group_size=group_size, workers=workers, device=device) if todo else []
        dataset_of = {c.key(): c.dataset for c in todo}
        trained_ok: set[str] = set()  # datasets with a run done or diverged in this call
        failed_keys: list[str] = []
        with _progress_bar(len(todo), progress and bool(todo)) as bar, _sigterm_as_exit():

            def say(line: str) -> None:
                if bar is not None:
                    bar.write(line, file=sys.stderr)
                else:
                    print(line, file=sys.stderr)

            def record(key: str, outcome: str) -> None:
                setattr(summary, outcome, getattr(summary, outcome) + 1)
                if bar is not None:
                    bar.set_postfix(done=summary.done, diverged=summary.diverged, failed=summary.failed,
                                    refresh=False)
                    bar.update(1)
                if outcome in ("done", "diverged"):
                    trained_ok.add(dataset_of.get(key, ""))
                elif outcome == "failed":
                    failed_keys.append(key)
                    _stop_on_data_error(store, key, dataset_of.get(key, ""), set(dataset_of.values()), trained_ok)

            if not tasks:
                pass
            elif backend == "ray":
                _run_ray(tasks, store, record, workers=workers, threads=threads, address=address,
                         data_dir=data_dir, device=device, retry_failed=retry_failed, imports=imports)
            elif workers == 1:
                owner = owner_id()
                with _torch_threads(threads):
                    for task in tasks:
                        for key, outcome in _run_task(store, task, owner, data_dir=data_dir, device=device,
                                                      retry_failed=retry_failed, progress=progress):
                            record(key, outcome)
            else:
                _run_local_pool(tasks, store, record, workers=workers, threads=threads, data_dir=data_dir,
                                device=device, retry_failed=retry_failed, imports=imports, say=say)
        summary.failures = group_failures(store.rows(failed_keys, status="failed"))
    summary.seconds = time.perf_counter() - start
    return summary
