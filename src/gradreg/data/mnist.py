"""MNIST from the official IDX files (``.gz`` or uncompressed), checked against their md5s."""
from __future__ import annotations

import gzip
import hashlib
import math
import zlib
from pathlib import Path

import numpy as np

from . import DataError, Dataset, register_dataset
from ._common import _check_labels, _download, _image_dataset, _not_found

# md5s of the official MNIST files (the same ones torchvision checks).
_OFFICIAL_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


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
