"""Run many :class:`~gradreg.train.RunConfig` s into a :class:`~gradreg.store.ResultStore`.

A sweep is restartable by construction: every run is claimed in the store before it trains and
written there as soon as it ends, so stopping a sweep (Ctrl-C, ``kill -9``, a lost node) loses at
most the runs in flight, and running the same sweep again trains only what is missing. Two sweeps
may share one database: claims are atomic, so no run is trained twice.

Runs are trained in *tasks*: a single run, or a group of runs that differ only in seed and λ trained
as one vectorized computation where that pays (:mod:`gradreg.planner`). A
task's runs are claimed together and stored one by one as the task ends; if the task raises, all its
runs are recorded as failed.

Backends:

* ``"local"``: ``workers`` processes on this machine (in this process when ``workers == 1``;
  :mod:`gradreg.local_backend`).
* ``"ray"``: one ray task per task, on a local ray instance or the cluster at ``address``
  (:mod:`gradreg.ray_backend`). Tasks return their results to this process (the driver), which alone
  reads and writes the store, so the cluster needs no shared filesystem; it needs the same gradreg and
  torch installed on every node (and the sweep's ``imports``, :mod:`gradreg.plugins`).
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .errors import group_failures
from .plugins import Imports, import_plugins, resolve_imports
from .store import STATUSES, ResultStore, owner_id
from .sweep_data import _DATASETS, _check_data, _dataset, _preflight, _stop_on_data_error  # noqa: F401 (_DATASETS: tests)
from .planner import auto_group_size, plan_tasks  # noqa: F401 (importable from here)
from .train import RunConfig, RunResult, resolve_device, train, train_group

__all__ = ["BACKENDS", "SweepSummary", "auto_group_size", "default_workers", "plan_tasks", "run_sweep"]

BACKENDS = ("local", "ray")
HEARTBEAT_SECONDS = 30.0  # a tenth of the store's default stale_after: a few missed beats are harmless
OUTCOMES = ("done", "diverged", "failed", "busy")


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
    """Train one task: a single run, or a group trained as one (:func:`gradreg.train.train_group`)."""
    ds = _dataset(configs[0].dataset, data_dir)
    if len(configs) == 1:
        results = [train(configs[0], dataset=ds, data_dir=data_dir, device=device, progress=progress)]
    else:
        results = train_group(configs, dataset=ds, data_dir=data_dir, device=device, progress=progress)
    if ds.fingerprint is not None:  # stored beside the run: a later sweep checks it (_check_data)
        for result in results:
            result.extras["data_sha256"] = ds.fingerprint
    return results



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


# -- the sweep ------------------------------------------------------------------------------------

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
        from .ray_backend import import_ray

        import_ray()  # fail before touching the store
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
                from .ray_backend import run_ray

                run_ray(tasks, store, record, workers=workers, threads=threads, address=address,
                         data_dir=data_dir, device=device, retry_failed=retry_failed, imports=imports)
            elif workers == 1:
                owner = owner_id()
                with _torch_threads(threads):
                    for task in tasks:
                        for key, outcome in _run_task(store, task, owner, data_dir=data_dir, device=device,
                                                      retry_failed=retry_failed, progress=progress):
                            record(key, outcome)
            else:
                from .local_backend import run_local_pool

                run_local_pool(tasks, store, record, workers=workers, threads=threads, data_dir=data_dir,
                                device=device, retry_failed=retry_failed, imports=imports, say=say)
        summary.failures = group_failures(store.rows(failed_keys, status="failed"))
    summary.seconds = time.perf_counter() - start
    return summary
