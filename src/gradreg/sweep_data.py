"""The sweep's data: each dataset loaded once per process, and the checks that stop a sweep before it
trains on data that is missing, or on another version of a user's file than its finished runs used."""
from __future__ import annotations

import os
from typing import Any

from .errors import error_cause
from .store import ResultStore
from .train import RunConfig

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
