"""Sweep worker processes: spawned, one task at a time each, and never outliving the sweep.

A :class:`WorkerPool` keeps ``size`` worker processes, each joined to the sweep by its own pipe. Unlike
``concurrent.futures.ProcessPoolExecutor``, where one dead worker breaks the whole pool (every task in
flight is lost), a worker that dies here (``kill -9``, the out-of-memory killer, a crash in native code)
costs only the task it held: :meth:`WorkerPool.run` reports it as a ``"died"`` event with the cause, and
starts another worker for the tasks still queued.

A worker dies with the sweep, however the sweep ends: on Linux the kernel sends it SIGKILL when its
parent dies (``PR_SET_PDEATHSIG``); elsewhere, and as a second guard, a watchdog thread ends it when its
parent process is no longer its parent (polled every :data:`WATCHDOG_SECONDS`); and a worker waiting for
work ends when its pipe reaches end-of-file. So ``kill -9`` of a sweep leaves no worker training on
alone, holding memory and writing runs a rerun would count as another sweep's.
"""
from __future__ import annotations

import os
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["WATCHDOG_SECONDS", "WorkerEvent", "WorkerPool", "die_with_parent", "exit_cause"]

WATCHDOG_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` (the process that started it) dies, whatever kills it."""
    if os.name == "posix":
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # Linux only; elsewhere the watchdog
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while True:
            threading.Event().wait(WATCHDOG_SECONDS)
            if os.getppid() != parent_pid:  # re-parented: the sweep is gone
                os._exit(1)

    threading.Thread(target=watch, name="gradreg-parent-watch", daemon=True).start()


def _worker_main(conn: Any, parent_pid: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """A worker's life: die with the parent, initialize, then run ``(fn, args)`` messages until told to
    stop (None) or the pipe closes. Every error is sent back as text; the worker lives on."""
    die_with_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the sweep closed the pipe (or died): nothing more to do
            os._exit(0)
        if message is None:
            return
        fn, args = message
        try:
            reply = ("ok", fn(*args))
        except BaseException:  # noqa: BLE001 - reported to the sweep, which decides
            reply = ("error", traceback.format_exc())
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            os._exit(0)


def exit_cause(exitcode: int | None) -> str:
    """How a worker process ended, in words: ``killed by SIGKILL``, ``exit code 1``."""
    if exitcode is None:
        return "ended (exit status unknown)"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        why = " (kill -9, or the out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{why}"
    return f"exited with code {exitcode}"


@dataclass
class WorkerEvent:
    """What became of one task: ``kind`` is ``"ok"`` (``value``: the function's return value), ``"error"``
    (``value``: the traceback text) or ``"died"`` (``value``: the cause, ``pid``: the dead worker's pid)."""

    kind: str
    task: Any
    value: Any
    pid: int


class _Worker:
    def __init__(self, ctx: Any, initializer: Callable[..., None] | None, initargs: tuple) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, os.getpid(), initializer, initargs),
                                name="gradreg-sweep-worker", daemon=True)
        self.proc.start()
        child.close()  # only the worker holds its end: its death is an EOF here
        self.task: Any = None


class WorkerPool:
    """``size`` spawned worker processes running ``fn(*args(task))`` for a list of tasks.

    Spawn, not fork: safe with torch's threads and CUDA, and the same on every OS (the caller's main
    module is imported in each worker: scripts need ``if __name__ == "__main__":``).
    """

    def __init__(self, size: int, *, initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> None:
        import multiprocessing

        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size, self.initializer, self.initargs = size, initializer, initargs
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def run(self, queue: list[Any], fn: Callable[..., Any], args: Callable[[Any], tuple]
            ) -> Iterator[WorkerEvent]:
        """Yield one :class:`WorkerEvent` per task as tasks end, in the order they end. Tasks are taken
        from the front of ``queue``; the caller may append more while iterating (a dead worker's runs)."""
        from multiprocessing.connection import wait

        while queue or any(w.task is not None for w in self._workers):
            while queue and (idle := self._idle()) is not None:
                idle.task = queue.pop(0)
                try:
                    idle.conn.send((fn, args(idle.task)))
                except (BrokenPipeError, OSError):  # it died before taking the task: noticed below
                    pass
            busy = [w for w in self._workers if w.task is not None]
            ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy])
            for w in busy:
                if w.conn not in ready and w.proc.sentinel not in ready:
                    continue
                task, w.task = w.task, None
                try:
                    kind, value = w.conn.recv()
                except (EOFError, OSError):  # the worker died with the task
                    w.proc.join(timeout=5)
                    self._workers.remove(w)
                    w.conn.close()
                    yield WorkerEvent("died", task, exit_cause(w.proc.exitcode), w.proc.pid)
                    continue
                yield WorkerEvent(kind, task, value, w.proc.pid)

    def _idle(self) -> _Worker | None:
        for w in self._workers:
            if w.task is None:
                return w
        if len(self._workers) < self.size:
            self._workers.append(_Worker(self._ctx, self.initializer, self.initargs))
            return self._workers[-1]
        return None

    def close(self) -> None:
        """Let idle workers end and wait for them (the normal end of a sweep)."""
        for w in self._workers:
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        self._reap()

    def terminate(self) -> None:
        """End every worker now (SIGTERM, then SIGKILL after 10 s), mid-task or not."""
        for w in self._workers:
            if w.proc.is_alive():
                w.proc.terminate()
        self._reap()

    def _reap(self) -> None:
        """Wait up to 10 s for each worker to end, SIGKILL the ones that do not, close their pipes."""
        for w in self._workers:
            w.proc.join(timeout=10)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.conn.close()
        self._workers = []

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()
