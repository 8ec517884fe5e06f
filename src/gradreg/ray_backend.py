"""The sweep's ray backend: one ray task per task, on a local ray instance or a cluster.

Tasks return their results to the driver (this process), which alone reads and writes the store, so
the cluster needs no shared filesystem; every node needs the same gradreg and torch installed (and the
sweep's ``imports``, :mod:`gradreg.plugins`).
"""
from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from .plugins import import_plugins
from .store import ResultStore, owner_id, runtime_versions
from .sweep import _Heartbeat, _train_task
from .train import RunConfig, RunResult, resolve_device

def import_ray() -> Any:
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


def run_ray(tasks: list[list[RunConfig]], store: ResultStore, record: Callable[[str, str], None], *,
             workers: int, threads: int, address: str | None, data_dir: Any, device: str,
             retry_failed: bool, imports: tuple[str, ...]) -> None:
    """Keep ``workers`` ray tasks in flight; the driver claims a task's runs just before submitting it.

    Claiming lazily (not all runs up front) leaves the rest to another sweep on the same database
    and keeps the driver's heartbeat to a handful of rows. Results are stored the moment
    ``ray.wait`` returns them, so killing the driver loses only the runs in flight.
    """
    ray = import_ray()
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
