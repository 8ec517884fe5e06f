"""The sweep's local backend: tasks trained in spawned worker processes on this machine
(:class:`~gradreg.workers.WorkerPool`), each worker holding its own store connection."""
from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from .plugins import import_plugins
from .store import ResultStore, owner_id
from .sweep import _run_task
from .train import RunConfig
from .workers import WorkerPool

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


def run_local_pool(tasks: list[list[RunConfig]], store: ResultStore, record: Callable[[str, str], None], *,
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
