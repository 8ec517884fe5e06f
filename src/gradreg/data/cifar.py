"""CIFAR-10 and CIFAR-100: the official pickled batches (read with a restricted unpickler) or
``.npz`` chunks listed in a ``chunks.json`` with their sha256s."""
from __future__ import annotations

import codecs
import functools
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np

from . import DataError, Dataset, register_dataset
from ._common import _check_labels, _download, _image_dataset, _not_found

# Per-channel mean/std of the training images after scaling to [0, 1].
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

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
