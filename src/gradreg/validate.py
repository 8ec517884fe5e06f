"""Checks that data and settings make sense before anything trains on them.

Bad values that pass silently end as a "diverged" run (NaN inputs), a run without test metrics (an
empty test split), a dropped imaginary part, a bool label taken as a regression target, or a label of
10^9 that asks for a 10^9-way output layer. Each is refused here, naming the file and the array.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["MAX_CLASSES", "check_dataset", "check_npz_arrays"]

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
