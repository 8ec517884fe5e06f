"""Datasets for the gradient-regularization experiments (Varga et al., arXiv:1712.09936, section 6.1).

Every loader returns a :class:`Dataset` whose splits are float32 tensors held in memory: a *pool* of
candidate training points (runs draw their small training sets from it with
:meth:`Dataset.subset_indices`), a held-out *dev* set for choosing the regularization weight
(section 6.1: 10,000 MNIST training images are set aside for tuning) and a *test* set.

Real data is never downloaded by default. File-based datasets are searched for under a data directory
(:func:`resolve_data_dir`: the ``data_dir`` argument, else ``$GRADREG_DATA_DIR``, else ``./data``).

This module holds the :class:`Dataset` class and the registry; the loaders live one family per module:
:mod:`~gradreg.data.synthetic` (SIN, digits), :mod:`~gradreg.data.mnist`, :mod:`~gradreg.data.cifar`,
:mod:`~gradreg.data.tinyimagenet` and :mod:`~gradreg.data.npz` (the user's own file).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["DATASETS", "DATASET_INFO", "DataError", "Dataset", "DatasetInfo", "data_fingerprint", "dataset_info",
           "file_sha256", "load_dataset", "register_dataset", "resolve_data_dir"]

ENV_VAR = "GRADREG_DATA_DIR"

class DataError(RuntimeError):
    """Dataset files are missing, malformed or fail their checksum."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """In-memory dataset: a pool of candidate training points plus dev and test splits.

    Images are float32 ``(N, C, H, W)``, vectors ``(N, D)``. Targets are int64 ``(N,)`` class indices
    for classification and float32 ``(N, k)`` for regression. ``pair_offset`` is set only for SIN2
    (section 6.2.8), whose pool entries ``2k`` and ``2k+1`` are the pair ``(x, y)``, ``(x + offset, y)``.
    ``fingerprint`` (see :func:`data_fingerprint`) is set where the contents can change under one name.
    """

    name: str
    task: str
    x_pool: torch.Tensor = field(repr=False)
    y_pool: torch.Tensor = field(repr=False)
    x_dev: torch.Tensor = field(repr=False)
    y_dev: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    num_outputs: int
    input_shape: tuple[int, ...]
    pair_offset: float | None = None
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {self.task!r}")
        for split in ("pool", "dev", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if len(x) != len(y) or tuple(x.shape[1:]) != tuple(self.input_shape):
                raise ValueError(f"{self.name} {split}: inputs {tuple(x.shape)} and targets "
                                 f"{tuple(y.shape)} do not match input_shape {self.input_shape}")
        if self.pair_offset is not None and len(self.x_pool) % 2:
            raise ValueError(f"{self.name}: a paired pool needs an even number of entries")

    def subset_indices(self, size: int | None, seed: int) -> torch.Tensor:
        """Indices into the pool of a random training subset of ``size`` points.

        Drawn without replacement by a ``torch.Generator`` seeded with ``seed``, so the same seed gives
        the same subset (and a smaller subset is a prefix of a larger one). ``None`` or the full pool
        size gives ``arange`` over the pool. For a paired pool (SIN2) ``size`` counts pairs and both
        indices of each drawn pair are returned (``2 * size`` indices).
        """
        units = len(self.x_pool) // 2 if self.pair_offset is not None else len(self.x_pool)
        if size is None or size == units:
            return torch.arange(len(self.x_pool))
        if not 0 < size <= units:
            what = f"{units} pairs" if self.pair_offset is not None else f"{units} points"
            raise ValueError(f"subset size must be between 1 and the {self.name} pool size "
                             f"({what}), got {size}")
        chosen = torch.randperm(units, generator=torch.Generator().manual_seed(seed))[:size]
        if self.pair_offset is None:
            return chosen
        return torch.stack([2 * chosen, 2 * chosen + 1], dim=1).reshape(-1)


@dataclass(frozen=True)
class DatasetInfo:
    """What a run knows of a dataset before loading it (:func:`register_dataset` records it).

    ``task``: "classification", "regression", or None where the files decide (``npz``); ``model`` and
    ``recipe``: what a run uses unless it names its own; ``train_size``: points a run draws from the pool
    unless it says (None: the whole pool); for the cost model of ``gradreg experiments``, ``num_outputs``
    (None: unknown before loading) and ``cost_factor``, a step's cost relative to the inputs the models'
    step costs were measured on.
    """

    task: str | None = None
    model: str = "mlp"
    recipe: str = "mnist"
    train_size: int | None = None
    num_outputs: int | None = None
    cost_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.task not in (None, "classification", "regression"):
            raise ValueError(f"task must be 'classification', 'regression' or None, got {self.task!r}")
        if self.train_size is not None and self.train_size < 1:
            raise ValueError(f"train_size must be >= 1 or None, got {self.train_size}")
        if self.num_outputs is not None and self.num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1 or None, got {self.num_outputs}")


DATASETS: dict[str, Callable[..., Dataset]] = {}
DATASET_INFO: dict[str, DatasetInfo] = {}
_FINGERPRINTS: dict[str, Callable[[Path], str]] = {}


def dataset_info(name: str) -> DatasetInfo:
    """The registered dataset ``name``'s :class:`DatasetInfo`; unknown names list the valid ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    return DATASET_INFO.get(name, DatasetInfo())  # put into DATASETS directly: the defaults
_DOWNLOADABLE = {"mnist": "MNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}


def register_dataset(name: str, *, fingerprint: Callable[[Path], str] | None = None, task: str | None = None,
                     model: str = "mlp", recipe: str = "mnist", train_size: int | None = None,
                     num_outputs: int | None = None, cost_factor: float = 1.0,
                     ) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Register a loader ``fn(data_dir: Path, *, dev_size, download, verify_checksums) -> Dataset``
    with what runs need to know of it: ``task``, default ``model``, ``recipe`` and ``train_size``, and
    the cost model's ``num_outputs`` and ``cost_factor`` (:class:`DatasetInfo`, :func:`dataset_info`).
    One call is all a new dataset needs; :func:`load_dataset` checks the loaded task against ``task``.

    ``fingerprint(data_dir) -> str``, for data whose contents may change under one name (the user's
    own files): a short hash of what the loader reads, which the loader should also set as the
    Dataset's ``fingerprint``; see :func:`data_fingerprint`. :func:`file_sha256` hashes one file.
    """
    info = DatasetInfo(task, model, recipe, train_size, num_outputs, cost_factor)

    def decorator(fn: Callable[..., Dataset]) -> Callable[..., Dataset]:
        if name in DATASETS:  # as models and regularizers: a second loader must not replace the first
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = fn
        DATASET_INFO[name] = info
        if fingerprint is not None:
            _FINGERPRINTS[name] = fingerprint
        return fn

    return decorator


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$GRADREG_DATA_DIR``, else ``./data``."""
    chosen = data_dir if data_dir is not None else (os.environ.get(ENV_VAR) or "data")
    return Path(chosen).expanduser().absolute()


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, dev_size: int | None = None,
                 download: bool = False, verify_checksums: bool = True) -> Dataset:
    """Load a registered dataset into memory.

    ``dev_size`` overrides the dataset's default dev-set size. ``download=True`` fetches MNIST/CIFAR
    through torchvision (if installed) when the files are not already present. ``verify_checksums``
    checks the official MNIST md5s and the sha256s of a CIFAR ``chunks.json``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    if download and name not in _DOWNLOADABLE:
        raise ValueError(f"download is only supported for {', '.join(sorted(_DOWNLOADABLE))}, not {name!r}")
    from ..validate import check_dataset

    ds = DATASETS[name](resolve_data_dir(data_dir), dev_size=dev_size, download=download,
                        verify_checksums=verify_checksums)
    check_dataset(ds)  # every loader's, the user's own included: no NaN, no empty split passes
    registered = dataset_info(name).task
    if registered is not None and ds.task != registered:  # runs chose their loss and metrics by it
        raise DataError(f"dataset {name!r} is registered as {registered} but its loader gave a {ds.task} dataset")
    return ds


def data_fingerprint(name: str, data_dir: str | os.PathLike | None = None) -> str | None:
    """A short hash of what dataset ``name`` reads, where its contents are not fixed by its name.

    ``npz`` (the user's file, which may be edited or replaced between two sweeps on one database)
    and datasets registered with a ``fingerprint`` have one. Run keys hold settings, not data, so
    sweeps compare it with the one stored beside each finished run (:func:`gradreg.run_sweep`).
    The paper's datasets return None: their files are checked against the official checksums, or
    generated from the run's seed. So do user datasets registered without a ``fingerprint``.
    """
    if name not in _FINGERPRINTS:
        return None
    return _FINGERPRINTS[name](resolve_data_dir(data_dir))


_FILE_HASHES: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike, data: bytes | None = None) -> str:
    """The first 16 hex digits of ``path``'s sha256 (of ``data``, its bytes, where already read);
    remembered per path, size, inode, modification and status-change time, so a sweep re-reads nothing
    unchanged. The POSIX status-change time (ctime) is in the key because no call sets it back: an edit
    that keeps the size and restores the old mtime (``os.utime``, ``cp -p``, ``touch -r``) still moves
    it. (On Windows st_ctime is the creation time, which does not.)"""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    if data is not None or key not in _FILE_HASHES:
        if data is None:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        else:
            digest = hashlib.sha256(data)
        _FILE_HASHES[key] = digest.hexdigest()[:16]
    return _FILE_HASHES[key]


# Each module registers its datasets as it is imported (in this order, which listings keep); the
# constants are re-exported for callers.
from . import synthetic, mnist, cifar, tinyimagenet, npz  # noqa: E402,F401,I001
from .cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD  # noqa: E402,F401
from .synthetic import (  # noqa: E402,F401
    SIN2_OFFSET, SIN_DEV_SIZE, SIN_LOW_NOISE, SIN_NOISE, SIN_POOL_SIZE, SIN_TEST_SIZE,
)
from .tinyimagenet import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402,F401
