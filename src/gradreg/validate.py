"""Checks that data and settings make sense before anything trains on them.

Bad values that pass silently end as a "diverged" run (NaN inputs), a run without test metrics (an
empty test split), a dropped imaginary part, a bool label taken as a regression target, or a label of
10^9 that asks for a 10^9-way output layer. Each is refused here, naming the file and the array.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["MAX_CLASSES", "check_dataset", "check_device", "check_npz_arrays", "check_overrides", "check_runs"]

MAX_CLASSES = 100_000  # above any real label set (ImageNet-21k: 21,841); a larger label is a mistake


def _error(message: str) -> Exception:
    from .data import DataError

    return DataError(message)


def check_npz_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A user's ``.npz`` arrays: numbers (not strings, objects or complex values), labels that are
    integers or floats (not bool), every split non-empty, every value finite, class labels below
    :data:`MAX_CLASSES`. Raises DataError naming ``path`` and the array."""
    for name in sorted(arrays):
        a = arrays[name]
        if a.dtype.kind in "USOVMm":
            raise _error(f"{path}: array {name} holds {a.dtype} values, not numbers; store numeric arrays "
                         "(e.g. encode string labels as integers with np.unique(y, return_inverse=True))")
        if a.dtype.kind == "c":
            raise _error(f"{path}: array {name} holds complex numbers ({a.dtype}); gradreg trains on real "
                         "values: store the real part, or real and imaginary parts as separate features")
        if a.dtype.kind == "b" and name.startswith("y_"):
            raise _error(f"{path}: array {name} is bool; store class labels as integers (y.astype(int)) or "
                         "regression targets as floats")
        if a.ndim == 0 or len(a) == 0:
            raise _error(f"{path}: array {name} is empty (no points); every split needs at least one point")
        if a.dtype.kind == "f":
            finite = np.isfinite(a)
            if not finite.all():
                row = int(np.argwhere(~finite)[0][0])
                raise _error(f"{path}: array {name} holds {int((~finite).sum())} non-finite value(s) (NaN or "
                             f"inf), the first in row {row}; remove or replace them")
    if "y_train" in arrays and arrays["y_train"].dtype.kind in "iu":
        for name in sorted(k for k in arrays if k.startswith("y_")):
            y = arrays[name]
            if y.dtype.kind in "iu" and y.size and int(y.max()) >= MAX_CLASSES:
                raise _error(f"{path}: array {name} has the label {int(y.max())}, which would need "
                             f"{int(y.max()) + 1:,} classes (at most {MAX_CLASSES:,}); labels are class indices "
                             "0..K-1: remap them with np.unique(y, return_inverse=True)")


def check_dataset(ds: Any) -> None:
    """A loaded :class:`~gradreg.data.Dataset`: non-empty pool and test split, finite values everywhere."""
    for split in ("pool", "dev", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        if split != "dev" and len(x) == 0:
            raise _error(f"{ds.name}: the {split} split is empty; it needs at least one point")
        for what, t in (("inputs", x), ("targets", y)):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise _error(f"{ds.name}: the {split} split's {what} hold non-finite values (NaN or inf); "
                             "fix the data files")


# -- settings ------------------------------------------------------------------------------------

_FLOAT32_MAX = 3.4028234663852886e38


def check_overrides(pairs: Iterable[tuple[str, str]]) -> None:
    """``--set KEY=VALUE`` strings that the recipe would otherwise change silently or choke on: an
    integer field given a fraction (``steps=1.5`` would train 1 step), a non-finite or float32-overflowing
    number (``lr=inf``, ``lr=1e40``), Adam ``betas`` that are not two numbers in [0, 1)."""
    import dataclasses

    from .recipes import Recipe

    kinds = {f.name: type(getattr(Recipe(), f.name)) for f in dataclasses.fields(Recipe)}
    for key, text in pairs:
        kind = kinds.get(key)
        if kind is None or kind in (str, bool):
            continue  # unknown keys and names: the recipe's own check lists the valid ones
        values = [v for v in text.split(",") if v.strip()] if kind is tuple else [text]
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            raise ValueError(f"--set {key}={text}: expected {'numbers separated by commas' if kind is tuple else 'a number'}") from None
        for x in numbers:
            if not math.isfinite(x) or abs(x) > _FLOAT32_MAX:
                raise ValueError(f"--set {key}={text}: must be a finite number within float32's range "
                                 f"(|x| <= {_FLOAT32_MAX:.3g})")
        if kind is int and not numbers[0].is_integer():
            raise ValueError(f"--set {key}={text}: {key} is a whole number (it would be truncated to "
                             f"{int(numbers[0])}); give an integer")
        if key == "betas" and (len(numbers) != 2 or not all(0 <= b < 1 for b in numbers)):
            raise ValueError(f"--set betas={text}: Adam's betas are two numbers in [0, 1), e.g. --set betas=0.9,0.999")


def check_device(device: str) -> None:
    """``device`` names a device this torch build and machine have."""
    try:
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                           "cpu" if device == "auto" else device)
    except RuntimeError as exc:
        raise ValueError(f"--device {device}: not a device name ({exc}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"--device {device}: {why}; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif dev.type not in ("cpu", "mps"):
        raise ValueError(f"--device {device}: gradreg runs on cpu or cuda")


def check_runs(configs: Iterable[Any], dataset_of: Any) -> None:
    """What would fail every run of a sweep, checked once before any trains: the training-set size
    against the pool, the model against the data's shape, terms that are zero by construction for the
    task. ``dataset_of(name)`` loads a dataset (None: skip that dataset's runs)."""
    from .models import create_model

    seen: set[tuple] = set()
    for c in configs:
        shape = (c.dataset, c.train_size, c.model_name, c.batchnorm, tuple(n for n, _ in c.terms))
        if shape in seen:
            continue
        seen.add(shape)
        ds = dataset_of(c.dataset)
        if ds is None:  # not loadable here: the runs report that themselves
            continue
        units = len(ds.x_pool) // 2 if ds.pair_offset is not None else len(ds.x_pool)
        if c.train_size is not None and c.train_size > units:
            raise ValueError(f"train_size {c.train_size} is larger than the {c.dataset} pool ({units} "
                             f"{'pairs' if ds.pair_offset is not None else 'points'}); use at most {units}")
        try:
            create_model(c.model_name, input_shape=tuple(ds.input_shape), num_outputs=ds.num_outputs,
                         batchnorm=c.batchnorm, dropout=c.resolved_recipe().dropout)
        except ValueError as exc:
            raise ValueError(f"model {c.model_name} on {c.dataset}: {exc}") from None
        if ds.task == "regression" and any(n == "confidence_penalty" for n, _ in c.terms):
            raise ValueError(f"confidence_penalty on {c.dataset}, a regression task: the term is the entropy "
                             "of a softmax over classes, zero by construction here; drop it")
