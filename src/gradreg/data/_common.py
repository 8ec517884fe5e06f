"""What the file loaders share: the not-found message, torchvision downloads, the dev split and image scaling."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from . import _DOWNLOADABLE, ENV_VAR, DataError, Dataset


def _not_found(what: str, expected: Iterable[str], searched: Iterable[Path]) -> DataError:
    return DataError(
        f"{what} not found: expected {', '.join(expected)} in one of: {', '.join(map(str, searched))}. "
        f"Put the files in one of these folders, or point gradreg at your copy with --data-dir or the "
        f"{ENV_VAR} environment variable.")


def _download(name: str, root: Path) -> None:
    try:
        import torchvision.datasets  # noqa: PLC0415 (optional dependency, only needed here)
    except ImportError as exc:
        raise DataError(f"cannot download {name}: torchvision is not installed. Install it, or place "
                        f"the files manually under {root} (see --data-dir / {ENV_VAR}).") from exc
    getattr(torchvision.datasets, _DOWNLOADABLE[name])(root=str(root), train=True, download=True)


def _split_dev(x: torch.Tensor, y: torch.Tensor, dev_size: int | None, default: int):
    """(pool_x, pool_y, dev_x, dev_y): the last ``dev_size`` points (default: ``default``, at most half) are dev."""
    n = len(x)
    dev = min(default, n // 2) if dev_size is None else dev_size
    if not 0 < dev < n:
        raise ValueError(f"dev_size must be between 1 and {n - 1} for {n} training points, got {dev}")
    return x[:-dev], y[:-dev], x[-dev:], y[-dev:]


def _check_labels(y: np.ndarray, num_classes: int, source: Path) -> None:
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{source}: labels must lie in 0..{num_classes - 1}, found {y.min()}..{y.max()}")


def _standardize(x: np.ndarray, mean=None, std=None) -> torch.Tensor:
    """uint8 NCHW -> float32 scaled to [0, 1], then per-channel standardized if mean/std are given."""
    out = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).div_(255)
    if mean is None:
        return out
    return out.sub_(torch.tensor(mean).view(1, -1, 1, 1)).div_(torch.tensor(std).view(1, -1, 1, 1))


def _image_dataset(name, x_train, y_train, x_test, y_test, num_classes, dev_size, mean=None, std=None):
    """Classification dataset from uint8 NCHW arrays; the last ``dev_size`` (default 10,000, at most
    half) training images are the dev set."""
    xp, yp, xd, yd = _split_dev(_standardize(x_train, mean, std), torch.from_numpy(y_train), dev_size, 10_000)
    xt = _standardize(x_test, mean, std)
    return Dataset(name, "classification", xp, yp, xd, yd, xt, torch.from_numpy(y_test),
                   num_classes, tuple(xt.shape[1:]))
