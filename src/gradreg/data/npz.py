"""The user's own data: one ``.npz`` file with ``x_train``, ``y_train``, ``x_test``, ``y_test``
(optionally ``x_dev``, ``y_dev``), fingerprinted by its bytes."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from . import DataError, Dataset, file_sha256, register_dataset
from ._common import _not_found, _split_dev, _standardize

_NPZ_REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def _npz_inputs(x: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W, C) or (N, H, W) -> float32 NCHW in [0, 1]; other arrays as float32
    (a 1-d array becomes (N, 1))."""
    if x.dtype == np.uint8 and x.ndim in (3, 4):
        return _standardize(x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2))
    return torch.from_numpy(np.ascontiguousarray(x.reshape(len(x), -1) if x.ndim == 1 else x, dtype=np.float32))


def _npz_path(data_dir: Path) -> Path:
    """The .npz file ``data_dir`` names, or the only one in that folder."""
    files = [data_dir] if data_dir.suffix == ".npz" and data_dir.is_file() else \
        sorted(data_dir.glob("*.npz")) if data_dir.is_dir() else []
    if len(files) != 1:
        if files:
            raise DataError(f"{data_dir} holds several .npz files; pass the path of the one to load")
        raise _not_found("npz dataset", ["a .npz file with x_train, y_train, x_test, y_test"], [data_dir])
    return files[0]


# The file decides the task (integer or float targets); the model and recipe a run takes unless it names its own.
@register_dataset("npz", fingerprint=lambda data_dir: file_sha256(_npz_path(data_dir)), model="mlp", recipe="mnist")
def _load_npz(data_dir: Path, *, dev_size: int | None = None, **_) -> Dataset:
    """A user's dataset in one .npz: x_train, y_train, x_test, y_test and optionally x_dev, y_dev.

    Integer targets mean classification (classes = max label + 1), float targets regression
    (reshaped to (N, k)). Without x_dev/y_dev the last 10% (at least 1) of the training points are dev.
    """
    path = _npz_path(data_dir)
    raw = path.read_bytes()  # once: the arrays and their fingerprint from the same bytes
    fingerprint = file_sha256(path, raw)
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # damaged zip, or object arrays that would need pickle
        raise DataError(f"{path}: cannot read as a numpy .npz archive ({exc})") from exc
    from ..validate import check_npz_arrays

    check_npz_arrays(path, arrays)
    has_dev = "x_dev" in arrays or "y_dev" in arrays
    missing = [k for k in _NPZ_REQUIRED + (("x_dev", "y_dev") if has_dev else ()) if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing arrays {', '.join(missing)} (required: {', '.join(_NPZ_REQUIRED)}; "
                        "optional: x_dev with y_dev)")
    if has_dev and dev_size is not None:
        raise ValueError(f"{path} provides x_dev/y_dev, so dev_size cannot be set")
    splits = [s for s in ("train", "dev", "test") if f"x_{s}" in arrays]
    classification = np.issubdtype(arrays["y_train"].dtype, np.integer)
    xs, ys = {}, {}
    for s in splits:
        x, y = arrays[f"x_{s}"], arrays[f"y_{s}"]
        if x.ndim < 1 or y.ndim < 1 or len(x) != len(y):
            raise DataError(f"{path}: x_{s} {x.shape} and y_{s} {y.shape} must have the same length")
        if np.issubdtype(y.dtype, np.integer) != classification:
            raise DataError(f"{path}: y_{s} is {y.dtype} but y_train is {arrays['y_train'].dtype}")
        if classification and (y.size != len(y) or (y.size and y.min() < 0)):
            raise DataError(f"{path}: y_{s} must hold one non-negative integer label per point")
        xs[s] = _npz_inputs(x)
        ys[s] = torch.from_numpy(y.astype(np.int64).reshape(-1) if classification
                                 else y.astype(np.float32).reshape(len(y), -1))
    for s in splits:
        if xs[s].shape[1:] != xs["train"].shape[1:] or ys[s].shape[1:] != ys["train"].shape[1:]:
            raise DataError(f"{path}: x_{s}/y_{s} per-point shapes differ from x_train/y_train")
    if has_dev:
        pool_x, pool_y, dev_x, dev_y = xs["train"], ys["train"], xs["dev"], ys["dev"]
    else:
        pool_x, pool_y, dev_x, dev_y = _split_dev(xs["train"], ys["train"], dev_size,
                                                  max(1, len(xs["train"]) // 10))
    outputs = max(int(y.max()) + 1 for y in ys.values() if len(y)) if classification else ys["train"].shape[1]
    return Dataset("npz", "classification" if classification else "regression", pool_x, pool_y,
                   dev_x, dev_y, xs["test"], ys["test"], outputs, tuple(xs["train"].shape[1:]),
                   fingerprint=fingerprint)
