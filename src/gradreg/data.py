"""Datasets for the gradient-regularization experiments (Varga et al., arXiv:1712.09936, section 6.1).

Every loader returns a :class:`Dataset` whose splits are float32 tensors held in memory: a *pool* of
candidate training points (runs draw their small training sets from it with
:meth:`Dataset.subset_indices`), a held-out *dev* set for choosing the regularization weight
(section 6.1: 10,000 MNIST training images are set aside for tuning) and a *test* set.

Real data is never downloaded by default. File-based datasets are searched for under a data directory
(:func:`resolve_data_dir`: the ``data_dir`` argument, else ``$GRADREG_DATA_DIR``, else ``./data``).
"""

from __future__ import annotations

import codecs
import functools
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["DATASETS", "DATASET_INFO", "DataError", "Dataset", "DatasetInfo", "data_fingerprint", "dataset_info",
           "file_sha256", "load_dataset", "register_dataset", "resolve_data_dir"]

ENV_VAR = "GRADREG_DATA_DIR"

# md5s of the official MNIST files (the same ones torchvision checks).
_OFFICIAL_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# Per-channel mean/std of the training images after scaling to [0, 1].
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

SIN_POOL_SIZE, SIN_DEV_SIZE, SIN_TEST_SIZE, SIN_NOISE, SIN2_OFFSET = 20_000, 1_000, 900, 0.1, 0.001
SIN_LOW_NOISE = 0.01
_SIN_SEED = 0


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
    from .validate import check_dataset

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


# --- synthetic and bundled data ------------------------------------------------------------------


def _sin_data(dev_size: int | None, noise: float = SIN_NOISE):
    """SIN (section 6.1.3): x ~ U[-1, 1], y = sin(5x) + N(0, noise^2); test: 900-point grid, no noise.

    The same x and the same standard-normal draws for every noise level, so levels differ only in scale.
    """
    gen = torch.Generator().manual_seed(_SIN_SEED)

    def noisy(n: int):
        x = torch.rand(n, 1, generator=gen) * 2 - 1
        return x, torch.sin(5 * x) + noise * torch.randn(n, 1, generator=gen)

    x_pool, y_pool = noisy(SIN_POOL_SIZE)
    x_dev, y_dev = noisy(SIN_DEV_SIZE if dev_size is None else dev_size)
    x_test = torch.linspace(-1, 1, SIN_TEST_SIZE).unsqueeze(1)
    return x_pool, y_pool, x_dev, y_dev, x_test, torch.sin(5 * x_test)


# The paper's SIN setup fixes the training set at 100 points (6.1.3).
@register_dataset("sin", task="regression", model="mlp", recipe="sin", train_size=100, num_outputs=1)
def _load_sin(data_dir: Path, *, dev_size: int | None = None, **_) -> Dataset:
    return Dataset("sin", "regression", *_sin_data(dev_size), num_outputs=1, input_shape=(1,))


@register_dataset("sin_lownoise", task="regression", model="mlp", recipe="sin", train_size=100, num_outputs=1)
def _load_sin_lownoise(data_dir: Path, *, dev_size: int | None = None, **_) -> Dataset:
    """SIN with noise σ = 0.01 instead of the paper's 0.1: the level at which Table 7's MSEs are attainable.

    With σ = 0.1 and 100 points even the one-parameter oracle fit a·sin(5x) has an expected test MSE of
    about 1e-4, above most of Table 7's values (down to 1.6e-5); see results/REPRODUCTION.md.
    """
    return Dataset("sin_lownoise", "regression", *_sin_data(dev_size, SIN_LOW_NOISE), num_outputs=1,
                   input_shape=(1,))


@register_dataset("sin2", task="regression", model="mlp", recipe="sin", train_size=100, num_outputs=1)
def _load_sin2(data_dir: Path, *, dev_size: int | None = None, **_) -> Dataset:
    """SIN2 (section 6.2.8): each SIN training point (x, y) also appears as (x + 0.001, y)."""
    x_pool, y_pool, *rest = _sin_data(dev_size)
    x_pairs = torch.stack([x_pool, x_pool + SIN2_OFFSET], dim=1).reshape(-1, 1)
    return Dataset("sin2", "regression", x_pairs, y_pool.repeat_interleave(2, dim=0), *rest,
                   num_outputs=1, input_shape=(1,), pair_offset=SIN2_OFFSET)


@register_dataset("digits", task="classification", model="lenet5", recipe="digits", num_outputs=10)
def _load_digits(data_dir: Path, *, dev_size: int | None = None, **_) -> Dataset:
    """scikit-learn's bundled 8x8 digits scaled to [0, 1]; fixed split: 500 test, 300 dev, 997 pool."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 (slow import, only needed here)

    bunch = load_digits()
    x = torch.from_numpy(bunch.data / 16.0).float().view(-1, 1, 8, 8)
    y = torch.from_numpy(bunch.target).long()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test, rest = perm[:500], perm[500:]
    pool, _, dev, _ = _split_dev(rest, rest, dev_size, 300)
    return Dataset("digits", "classification", x[pool], y[pool], x[dev], y[dev], x[test], y[test],
                   10, (1, 8, 8))


# --- MNIST ---------------------------------------------------------------------------------------


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse an IDX file (``.gz`` or uncompressed) of unsigned bytes with the given magic number."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path}: not an IDX file with magic number {magic}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) != header + math.prod(dims):
        raise DataError(f"{path}: dims {dims} need {header + math.prod(dims)} bytes, file has {len(raw)}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _read_mnist_split(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = _read_idx(images, 2051, 3), _read_idx(labels, 2049, 1).astype(np.int64)
    if x.shape[1:] != (28, 28):
        raise DataError(f"{images}: expected 28x28 images, found {x.shape[1]}x{x.shape[2]}")
    if len(x) != len(y):
        raise DataError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels")
    _check_labels(y, 10, labels)
    return x.reshape(-1, 1, 28, 28), y


@register_dataset("mnist", task="classification", model="lenet5", recipe="mnist", num_outputs=10)
def _load_mnist(data_dir: Path, *, dev_size: int | None = None, download: bool = False,
                verify_checksums: bool = True) -> Dataset:
    """MNIST from the four official IDX files (gzipped or not); the last 10,000 training images are dev."""
    names = [n.removesuffix(".gz") for n in _OFFICIAL_MD5]
    dirs = [data_dir / "mnist", data_dir / "MNIST" / "raw", data_dir]

    def locate() -> list[Path] | None:
        for d in dirs:
            found = [next((p for p in (d / f"{n}.gz", d / n) if p.is_file()), None) for n in names]
            if all(found):
                return found
        return None

    files = locate()
    if files is None and download:
        _download("mnist", data_dir)
        files = locate()
    if files is None:
        raise _not_found("MNIST", [f"{n}.gz (or {n})" for n in names], dirs)
    if verify_checksums:
        for path in files:
            expected = _OFFICIAL_MD5.get(path.name)
            if expected and hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest() != expected:
                raise DataError(f"{path}: md5 differs from the official {expected}; the file is corrupt "
                                "or not the official one (pass verify_checksums=False to load it anyway)")
    x_train, y_train = _read_mnist_split(files[0], files[1])
    x_test, y_test = _read_mnist_split(files[2], files[3])
    return _image_dataset("mnist", x_train, y_train, x_test, y_test, 10, dev_size)


# --- CIFAR ---------------------------------------------------------------------------------------

_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
# Everything the CIFAR batches reference; _codecs.encode is how protocol-2 pickles written by
# Python 3 store bytes.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else (no arbitrary code execution)."""

    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _read_cifar_pickle(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            batch = _RestrictedUnpickler(f, encoding="bytes").load()
        x, y = batch[b"data"], np.asarray(batch[label_key], dtype=np.int64)
    except Exception as exc:  # any malformed or malicious pickle is a data problem
        raise DataError(f"{path}: not a valid CIFAR python batch ({exc})") from exc
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 \
            or len(x) != len(y):
        raise DataError(f"{path}: expected uint8 data of shape (N, 3072) and N labels")
    return x.reshape(-1, 3, 32, 32), y


def _read_chunks(folder: Path, split: str, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``<split>_*.npz`` chunks (x: (N, 32, 32, 3) uint8, y: (N,) int) into NCHW arrays."""
    manifest_path, manifest = folder / "chunks.json", None
    if verify and manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())["chunks"]
        except (ValueError, KeyError) as exc:
            raise DataError(f"{manifest_path}: expected JSON with a 'chunks' mapping ({exc})") from exc
    xs, ys = [], []
    for path in sorted(folder.glob(f"{split}_*.npz"), key=lambda p: (len(p.name), p.name)):
        if manifest is not None:
            expected = manifest.get(path.name, {}).get("sha256")
            if expected is None:
                raise DataError(f"{path}: not listed in {manifest_path}")
            if hashlib.sha256(path.read_bytes()).hexdigest() != expected:
                raise DataError(f"{path}: sha256 differs from {manifest_path}; the chunk is corrupt")
        try:
            with np.load(path, allow_pickle=False) as chunk:
                x, y = chunk["x"], chunk["y"].astype(np.int64)
        except Exception as exc:  # a damaged zip or missing key is a data problem
            raise DataError(f"{path}: not a valid CIFAR chunk with arrays x and y ({exc})") from exc
        if x.dtype != np.uint8 or x.shape[1:] != (32, 32, 3) or len(x) != len(y):
            raise DataError(f"{path}: expected x of shape (N, 32, 32, 3) uint8 and N labels")
        xs.append(x.transpose(0, 3, 1, 2))
        ys.append(y)
    if manifest is not None:
        # An error, not a warning: a smaller pool moves the dev split and changes every run's training
        # subset, under the same run keys as the full pool's runs.
        listed = [n for n in manifest if n.startswith(f"{split}_")]
        absent = sorted(n for n in listed if not (folder / n).is_file())
        if absent:
            expected = sum(int(manifest[n].get("n", 0)) for n in listed)
            raise DataError(f"{folder}: {', '.join(absent)} listed in chunks.json but absent; the {split} split "
                            f"would have {sum(map(len, ys))} of {expected} images. Copy the missing chunk(s) "
                            "there (or load with verify_checksums=False to train on the chunks present)")
    return np.concatenate(xs), np.concatenate(ys)


def _load_cifar(name: str, data_dir: Path, *, dev_size: int | None = None, download: bool = False,
                verify_checksums: bool = True) -> Dataset:
    """CIFAR-10/100 (section 6.1.2) from numpy chunks or the official python batches.

    Chunks: ``train_*.npz``/``test_*.npz`` holding ``x`` (N, 32, 32, 3) uint8 and ``y`` (N,) int, checked
    against the sha256s of an optional ``chunks.json``. Official batches: pickled dicts with ``b'data'``
    (N, 3072) uint8 (CHW, row-major) and ``b'labels'`` (CIFAR-100: ``b'fine_labels'``, used here), read
    without executing code. Images are scaled to [0, 1] and standardized per channel.
    """
    c10 = name == "cifar10"
    official = "cifar-10-batches-py" if c10 else "cifar-100-python"
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if c10 else ["train"]
    test_files = ["test_batch"] if c10 else ["test"]
    dirs = [data_dir / name, data_dir / official, data_dir]

    def locate() -> tuple[str, Path] | None:
        for d in dirs:
            if any(d.glob("train_*.npz")) and any(d.glob("test_*.npz")):
                return "chunks", d
            if all((d / f).is_file() for f in train_files + test_files):
                return "pickle", d
        return None

    found = locate()
    if found is None and download:
        _download(name, data_dir)
        found = locate()
    if found is None:
        raise _not_found(name.upper(), ["train_*.npz and test_*.npz", "or " + ", ".join(train_files + test_files)],
                         dirs)
    fmt, folder = found
    if fmt == "chunks":
        (x_train, y_train), (x_test, y_test) = (_read_chunks(folder, s, verify_checksums) for s in ("train", "test"))
    else:
        key = b"labels" if c10 else b"fine_labels"
        parts = [_read_cifar_pickle(folder / f, key) for f in train_files]
        x_train, y_train = np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])
        x_test, y_test = _read_cifar_pickle(folder / test_files[0], key)
    classes = 10 if c10 else 100
    for y in (y_train, y_test):
        _check_labels(y, classes, folder)
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if c10 else (CIFAR100_MEAN, CIFAR100_STD)
    return _image_dataset(name, x_train, y_train, x_test, y_test, classes, dev_size, mean, std)


for _name, _classes in (("cifar10", 10), ("cifar100", 100)):
    register_dataset(_name, task="classification", model="cifar_resnet", recipe="cifar",
                     num_outputs=_classes)(functools.partial(_load_cifar, _name))


# --- TinyImageNet --------------------------------------------------------------------------------


def _read_images(items: list[tuple[Path, int]], desc: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image  # noqa: PLC0415 (only TinyImageNet reads image files)
    from tqdm.auto import tqdm  # noqa: PLC0415

    x = np.empty((len(items), 64, 64, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(tqdm(items, desc=desc, unit="img", disable=None)):
        try:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("RGB"))
        except OSError as exc:
            raise DataError(f"{path}: cannot read the image ({exc})") from exc
        if pixels.shape != (64, 64, 3):
            raise DataError(f"{path}: expected a 64x64 image, found {pixels.shape[1]}x{pixels.shape[0]}")
        x[i] = pixels
    return x.transpose(0, 3, 1, 2), np.array([label for _, label in items], dtype=np.int64)


@register_dataset("tinyimagenet", task="classification", model="cifar_resnet", recipe="cifar", num_outputs=200,
                  cost_factor=4.0)  # 64x64 inputs: ~4x the cost of CIFAR's 32x32 per step
def _load_tinyimagenet(data_dir: Path, *, dev_size: int | None = None, **_) -> Dataset:
    """TinyImageNet-200 (official layout); official val = test, dev = last images of a fixed shuffle."""
    dirs = [data_dir / "tiny-imagenet-200", data_dir / "tinyimagenet", data_dir]
    root = next((d for d in dirs if (d / "wnids.txt").is_file() and (d / "val" / "val_annotations.txt").is_file()), None)
    if root is None:
        raise _not_found("TinyImageNet-200", ["wnids.txt", "train/<wnid>/images/*.JPEG",
                                               "val/images/*.JPEG", "val/val_annotations.txt"], dirs)
    label = {w: i for i, w in enumerate(sorted(set((root / "wnids.txt").read_text().split())))}
    train = [(p, i) for w, i in label.items() for p in sorted((root / "train" / w / "images").glob("*.JPEG"))]
    if not train:
        raise DataError(f"no training images found under {root / 'train'}/<wnid>/images/")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    test = []
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            if fields[1] not in label:
                raise DataError(f"{root / 'val' / 'val_annotations.txt'}: unknown wnid {fields[1]!r}")
            test.append((root / "val" / "images" / fields[0], label[fields[1]]))
    x_train, y_train = _read_images([train[i] for i in order], "tinyimagenet train")
    x_test, y_test = _read_images(test, "tinyimagenet val")
    return _image_dataset("tinyimagenet", x_train, y_train, x_test, y_test, len(label), dev_size,
                          IMAGENET_MEAN, IMAGENET_STD)


# --- user data -----------------------------------------------------------------------------------

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
    from .validate import check_npz_arrays

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
