"""The sweep's planner: which runs train together, and in how many tasks.

A *task* is one run, or a group of runs that differ only in seed and λ (equal :func:`group_key`),
trained as one stacked model (:class:`gradreg.GroupedModel`, :func:`gradreg.train.train_group`) where
the model allows it (:func:`groupable`) and it pays (:func:`auto_group_size`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

from .models import MODEL_INFO
from .registry import MetadataView
from .run_config import RunConfig, resolve_device

__all__ = ["group_key", "groupable", "GROUPABLE_MODELS", "auto_group_size", "plan_tasks", "CPU_GROUP_SIZE"]

CPU_GROUP_SIZE = 50  # SIN MLPs per group on CPU; see auto_group_size


def group_key(config: RunConfig) -> str:
    """Runs with equal group keys can train as one group: all but seed and λ values agree."""
    same = RunConfig.from_dict(config.to_dict() | {"seed": 0, "terms": [[n, 1.0] for n, _ in config.terms]})
    return same.key()


# The models registered with groupable=True (register_model); a read-only view of that registry.
GROUPABLE_MODELS: Mapping[str, bool] = MetadataView(MODEL_INFO, "groupable")


def groupable(config: RunConfig) -> bool:
    """Whether the run can train in a group and still give its solo result: a model registered as
    groupable, without BatchNorm (per-run running statistics); dropout masks come from each run's own
    stream."""
    info = MODEL_INFO.get(config.model_name)
    return info is not None and info.groupable and not config.batchnorm


def auto_group_size(config: RunConfig, device: str = "auto") -> int:
    """How many runs like ``config`` to train as one group (1: not grouped).

    Measured on a 2-core CPU (benchmarks/bench_grouped.py): SIN MLPs train 5.7x faster per run in
    groups of 50 (5.2x in groups of 100) than one by one; stacked LeNet-5s were not faster than single
    runs there; BatchNorm runs are not stacked (see :func:`groupable`).
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
    """Split runs into tasks: groups of runs sharing a :func:`group_key`, at most
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
