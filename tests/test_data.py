"""Tests for gradreg.data: tiny fixtures in the real file formats, plus slow checks on the real data."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import gradreg.data as data_mod
from gradreg.data import (
    CIFAR10_MEAN, CIFAR10_STD, DATASETS, DataError, Dataset, data_fingerprint, load_dataset, resolve_data_dir,
)

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FILE_FREE = ["sin", "sin2", "sin_lownoise", "digits"]
MNIST_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


# --- fixture writers -----------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write uint8 ``array`` as IDX (magic 0x0000 08 ndim), gzipped when the name ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def make_mnist(folder: Path, n_train=30, n_test=10, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train),
              rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test)]
    suffix = ".gz" if gz else ""
    for name, array in zip(MNIST_NAMES, arrays):
        write_idx(folder / f"{name}{suffix}", array)
    return arrays


def make_cifar_pickles(folder: Path, c10=True, n_per_batch=4, n_test=6, seed=0):
    """Official python batches: dicts with bytes keys, data (N, 3072) uint8 CHW row-major, protocol 2."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if c10 else ["train", "test"]
    sizes = [n_per_batch] * (len(names) - 1) + [n_test]
    out = {}
    for name, n in zip(names, sizes):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10 if c10 else 100, n)
        batch = {b"batch_label": name.encode(), b"data": data, b"filenames": [b"x.png"] * n}
        if c10:
            batch[b"labels"] = labels.tolist()
        else:
            batch.update({b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist()})
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)
        out[name] = (data, labels)
    return out


def make_chunks(folder: Path, x_train: np.ndarray, y_train, x_test, y_test, chunk=5, manifest=True):
    """CIFAR numpy chunks (x: (N, 32, 32, 3) uint8 HWC, y int64) with a chunks.json of sha256s."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = {}
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        for k, start in enumerate(range(0, len(x), chunk)):
            path = folder / f"{split}_{k}.npz"
            np.savez_compressed(path, x=x[start:start + chunk], y=np.asarray(y[start:start + chunk], np.int64),
                                class_names=np.array([f"c{i}" for i in range(10)]))
            entries[path.name] = {"n": len(x[start:start + chunk]),
                                  "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    if manifest:
        (folder / "chunks.json").write_text(json.dumps({"dataset": "test", "chunks": entries}))


def make_tinyimagenet(root: Path, wnids=("n02", "n01"), per_class=3):
    from PIL import Image

    colors = {"n01": (250, 0, 0), "n02": (0, 0, 250)}
    (root / "wnids.txt").parent.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (64, 64), colors[w]).save(root / "train" / w / "images" / f"{w}_{i}.JPEG")
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i, w in enumerate(["n01", "n02"]):
        Image.new("RGB", (64, 64), colors[w]).save(root / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


# --- registry, data dir, errors ------------------------------------------------------------------


def test_registry_has_all_datasets():
    assert {"sin", "sin2", "digits", "mnist", "cifar10", "cifar100", "tinyimagenet", "npz"} <= set(DATASETS)


def test_registering_a_taken_dataset_name_fails():
    import gradreg
    with pytest.raises(ValueError, match="dataset 'mnist' is already registered"):
        gradreg.register_dataset("mnist")(lambda data_dir, **kw: None)
    assert DATASETS["mnist"].__name__ != "<lambda>"


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'") as info:
        load_dataset("imagenet")
    assert ", ".join(sorted(DATASETS)) in str(info.value)


def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("GRADREG_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir() == tmp_path / "data"
    monkeypatch.setenv("GRADREG_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_dir("rel") == tmp_path / "rel"


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100", "tinyimagenet", "npz"])
def test_missing_files_error_explains_where(name, tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset(name, tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "GRADREG_DATA_DIR" in message and "--data-dir" in message


def test_env_var_is_used(tmp_path, monkeypatch):
    make_mnist(tmp_path / "mnist")
    monkeypatch.setenv("GRADREG_DATA_DIR", str(tmp_path))
    assert load_dataset("mnist", verify_checksums=False).x_test.shape == (10, 1, 28, 28)


def test_download_without_torchvision(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torchvision", None)  # makes the import fail
    with pytest.raises(DataError, match="torchvision is not installed"):
        load_dataset("mnist", tmp_path, download=True)


def test_download_refused_for_other_datasets():
    with pytest.raises(ValueError, match="download is only supported"):
        load_dataset("sin", download=True)


# --- file-free datasets and subsets --------------------------------------------------------------


@pytest.mark.parametrize("name", FILE_FREE)
def test_file_free_datasets_are_deterministic(name):
    a, b = load_dataset(name), load_dataset(name)
    for split in ("pool", "dev", "test"):
        assert torch.equal(getattr(a, f"x_{split}"), getattr(b, f"x_{split}"))
        assert torch.equal(getattr(a, f"y_{split}"), getattr(b, f"y_{split}"))
        assert getattr(a, f"x_{split}").dtype == torch.float32
        assert tuple(getattr(a, f"x_{split}").shape[1:]) == a.input_shape


@pytest.mark.parametrize("name, pool, dev, test, shape", [
    ("sin", 20_000, 1_000, 900, (1,)), ("sin2", 40_000, 1_000, 900, (1,)),
    ("sin_lownoise", 20_000, 1_000, 900, (1,)), ("digits", 997, 300, 500, (1, 8, 8)),
])
def test_file_free_shapes(name, pool, dev, test, shape):
    ds = load_dataset(name)
    assert (len(ds.x_pool), len(ds.x_dev), len(ds.x_test), ds.input_shape) == (pool, dev, test, shape)


def test_sin_values():
    ds = load_dataset("sin")
    assert ds.task == "regression" and ds.num_outputs == 1 and ds.y_pool.shape == (20_000, 1)
    assert ds.x_pool.min() >= -1 and ds.x_pool.max() <= 1
    assert torch.equal(ds.x_test[:, 0], torch.linspace(-1, 1, 900))
    assert torch.allclose(ds.y_test, torch.sin(5 * ds.x_test))
    noise = ds.y_pool - torch.sin(5 * ds.x_pool)
    assert abs(noise.std().item() - 0.1) < 0.005 and abs(noise.mean().item()) < 0.005
    assert load_dataset("sin", dev_size=50).x_dev.shape == (50, 1)


def test_sin_lownoise_is_sin_with_a_tenth_of_the_noise():
    sin, low = load_dataset("sin"), load_dataset("sin_lownoise")
    assert torch.equal(low.x_pool, sin.x_pool) and torch.equal(low.x_test, sin.x_test)
    assert torch.allclose(low.y_pool - torch.sin(5 * low.x_pool), 0.1 * (sin.y_pool - torch.sin(5 * sin.x_pool)),
                          atol=1e-6)
    assert torch.equal(low.y_test, sin.y_test)


def test_sin2_pairs():
    sin, sin2 = load_dataset("sin"), load_dataset("sin2")
    assert sin2.pair_offset == 0.001
    assert torch.equal(sin2.x_pool[0::2], sin.x_pool) and torch.equal(sin2.y_pool[0::2], sin.y_pool)
    assert torch.allclose(sin2.x_pool[1::2] - sin2.x_pool[0::2], torch.full((20_000, 1), 0.001), atol=1e-6)
    assert torch.equal(sin2.y_pool[1::2], sin2.y_pool[0::2])
    idx = sin2.subset_indices(100, seed=3)
    assert len(idx) == 200 and torch.equal(idx[1::2], idx[0::2] + 1) and (idx[0::2] % 2 == 0).all()
    assert torch.equal(idx[0::2] // 2, sin.subset_indices(100, seed=3))
    with pytest.raises(ValueError, match="20000 pairs"):
        sin2.subset_indices(20_001, seed=0)


def test_digits_values():
    ds = load_dataset("digits")
    assert ds.task == "classification" and ds.num_outputs == 10 and ds.y_pool.dtype == torch.int64
    assert ds.x_pool.min() >= 0 and ds.x_pool.max() <= 1
    all_x = torch.cat([ds.x_pool, ds.x_dev, ds.x_test]).view(-1, 64)
    assert len(torch.unique(all_x, dim=0)) > 1700  # splits are disjoint (the data holds a few duplicates)


@pytest.mark.parametrize("name", FILE_FREE)
def test_subset_indices(name):
    ds = load_dataset(name)
    size, units = 64, len(ds.x_pool) // (2 if ds.pair_offset else 1)
    a, b, c = ds.subset_indices(size, 1), ds.subset_indices(size, 1), ds.subset_indices(size, 2)
    assert a.dtype == torch.int64 and torch.equal(a, b) and not torch.equal(a, c)
    assert len(torch.unique(a)) == len(a) and a.min() >= 0 and a.max() < len(ds.x_pool)
    assert torch.equal(ds.subset_indices(None, 5), torch.arange(len(ds.x_pool)))
    assert torch.equal(ds.subset_indices(units, 5), torch.arange(len(ds.x_pool)))
    for bad in (0, -1, units + 1):
        with pytest.raises(ValueError, match=str(units)):
            ds.subset_indices(bad, 0)


def test_dataset_repr_is_short():
    assert len(repr(load_dataset("sin"))) < 200


# --- MNIST ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout, gz", [("mnist", True), ("MNIST/raw", False), ("MNIST/raw", True), (".", True)])
def test_mnist_layouts(tmp_path, layout, gz):
    x_train, y_train, x_test, y_test = make_mnist(tmp_path / layout, gz=gz)
    ds = load_dataset("mnist", tmp_path, dev_size=10, verify_checksums=False)
    assert ds.x_pool.shape == (20, 1, 28, 28) and ds.x_dev.shape == (10, 1, 28, 28)
    assert ds.x_test.shape == (10, 1, 28, 28) and ds.num_outputs == 10 and ds.input_shape == (1, 28, 28)
    assert torch.allclose(ds.x_pool[3, 0] * 255, torch.from_numpy(x_train[3]).float(), atol=1e-3)
    assert torch.allclose(ds.x_dev * 255, torch.from_numpy(x_train[20:]).float().unsqueeze(1), atol=1e-3)
    assert torch.equal(ds.y_dev, torch.from_numpy(y_train[20:])) and torch.equal(ds.y_test, torch.from_numpy(y_test))
    assert ds.y_pool.dtype == torch.int64 and 0 <= ds.x_pool.min() and ds.x_pool.max() <= 1


def test_mnist_default_dev_is_at_most_half(tmp_path):
    make_mnist(tmp_path / "mnist", n_train=30)
    ds = load_dataset("mnist", tmp_path, verify_checksums=False)
    assert (len(ds.x_pool), len(ds.x_dev)) == (15, 15)


def test_mnist_md5_mismatch_detected(tmp_path):
    make_mnist(tmp_path / "mnist")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: md5"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("corruption, match", [
    ("magic", "not an IDX file with magic number 2051"),
    ("truncated", "dims .* need"),
    ("gzip", "cannot read"),
])
def test_mnist_corrupt_images(tmp_path, corruption, match):
    make_mnist(tmp_path / "mnist", gz=corruption == "gzip")
    name = "train-images-idx3-ubyte" + (".gz" if corruption == "gzip" else "")
    path = tmp_path / "mnist" / name
    raw = path.read_bytes()
    path.write_bytes({"magic": b"\x00\x00\x08\x01" + raw[4:], "truncated": raw[:-7],
                      "gzip": raw[: len(raw) // 2]}[corruption])
    with pytest.raises(DataError, match=match) as info:
        load_dataset("mnist", tmp_path, verify_checksums=False)
    assert name in str(info.value)


def test_mnist_bad_labels(tmp_path):
    make_mnist(tmp_path / "mnist")
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", np.full(10, 10))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: labels must lie in 0..9"):
        load_dataset("mnist", tmp_path, verify_checksums=False)
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", np.zeros(9))
    with pytest.raises(DataError, match="10 images but .*t10k-labels-idx1-ubyte.gz holds 9 labels"):
        load_dataset("mnist", tmp_path, verify_checksums=False)


# --- CIFAR ---------------------------------------------------------------------------------------


def _expected_standardized(data_chw: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(data_chw.reshape(-1, 3, 32, 32).astype(np.float32)) / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_cifar10_pickles(tmp_path):
    batches = make_cifar_pickles(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", tmp_path)
    train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    assert (len(ds.x_pool), len(ds.x_dev), len(ds.x_test)) == (10, 10, 6)
    assert ds.input_shape == (3, 32, 32) and ds.num_outputs == 10
    assert torch.allclose(ds.x_pool, _expected_standardized(train[:10], CIFAR10_MEAN, CIFAR10_STD), atol=1e-5)
    assert torch.equal(ds.y_dev, torch.from_numpy(labels[10:]))
    assert torch.equal(ds.y_test, torch.from_numpy(batches["test_batch"][1]))


def test_cifar100_pickles_use_fine_labels(tmp_path):
    batches = make_cifar_pickles(tmp_path / "cifar-100-python", c10=False, n_per_batch=8, n_test=4)
    ds = load_dataset("cifar100", tmp_path, dev_size=3)
    assert (len(ds.x_pool), len(ds.x_dev), len(ds.x_test), ds.num_outputs) == (5, 3, 4, 100)
    assert torch.equal(ds.y_pool, torch.from_numpy(batches["train"][1][:5]))


def test_chunks_and_pickles_agree(tmp_path):
    batches = make_cifar_pickles(tmp_path / "pickles" / "cifar-10-batches-py")
    train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    hwc = lambda d: d.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # noqa: E731
    make_chunks(tmp_path / "chunks" / "cifar10", hwc(train), labels, hwc(batches["test_batch"][0]),
                batches["test_batch"][1], chunk=3)
    a, b = load_dataset("cifar10", tmp_path / "pickles"), load_dataset("cifar10", tmp_path / "chunks")
    for split in ("pool", "dev", "test"):
        assert torch.equal(getattr(a, f"x_{split}"), getattr(b, f"x_{split}"))
        assert torch.equal(getattr(a, f"y_{split}"), getattr(b, f"y_{split}"))


def _random_chunks(folder, n_train=12, n_test=4, classes=10):
    rng = np.random.default_rng(1)
    make_chunks(folder, rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8), rng.integers(0, classes, n_train),
                rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8), rng.integers(0, classes, n_test))


def test_chunk_sha256_mismatch(tmp_path):
    _random_chunks(tmp_path / "cifar10")
    manifest = json.loads((tmp_path / "cifar10" / "chunks.json").read_text())
    manifest["chunks"]["train_1.npz"]["sha256"] = "0" * 64
    (tmp_path / "cifar10" / "chunks.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="train_1.npz: sha256"):
        load_dataset("cifar10", tmp_path)
    assert len(load_dataset("cifar10", tmp_path, verify_checksums=False).x_pool) == 6
    del manifest["chunks"]["train_1.npz"]
    (tmp_path / "cifar10" / "chunks.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="train_1.npz: not listed in"):
        load_dataset("cifar10", tmp_path)


def test_chunks_without_manifest_and_subset_of_chunks(tmp_path):
    _random_chunks(tmp_path / "cifar100", classes=100)
    (tmp_path / "cifar100" / "train_2.npz").unlink()  # a chunk the manifest lists was not copied: refused
    with pytest.raises(DataError, match="train_2.npz listed in chunks.json but absent; the train split would "
                                        "have 10 of 12 images. Copy the missing chunk"):
        load_dataset("cifar100", tmp_path)
    ds = load_dataset("cifar100", tmp_path, verify_checksums=False)  # the chunks present, knowingly
    assert (len(ds.x_pool), len(ds.x_dev), len(ds.x_test)) == (5, 5, 4)
    (tmp_path / "cifar100" / "chunks.json").unlink()
    assert len(load_dataset("cifar100", tmp_path).x_pool) == 5


def test_chunk_labels_out_of_range(tmp_path):
    _random_chunks(tmp_path / "cifar10", classes=100)
    with pytest.raises(DataError, match="labels must lie in 0..9"):
        load_dataset("cifar10", tmp_path)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_refused(tmp_path):
    make_cifar_pickles(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"
    with (tmp_path / "cifar-10-batches-py" / "data_batch_3").open("wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DataError, match="data_batch_3") as info:
        load_dataset("cifar10", tmp_path)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError) and "system" in str(info.value)
    assert not marker.exists()


def test_pickle_with_wrong_content(tmp_path):
    make_cifar_pickles(tmp_path / "cifar-10-batches-py")
    with (tmp_path / "cifar-10-batches-py" / "test_batch").open("wb") as f:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(DataError, match="test_batch: expected uint8 data of shape"):
        load_dataset("cifar10", tmp_path)


# --- TinyImageNet --------------------------------------------------------------------------------


def test_tinyimagenet(tmp_path):
    make_tinyimagenet(tmp_path / "tiny-imagenet-200")
    ds = load_dataset("tinyimagenet", tmp_path)
    assert (len(ds.x_pool), len(ds.x_dev), len(ds.x_test)) == (3, 3, 2)
    assert ds.input_shape == (3, 64, 64) and ds.num_outputs == 2
    assert torch.equal(ds.y_test, torch.tensor([0, 1]))  # labels follow sorted wnids: n01 -> 0
    red = torch.tensor([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225])
    assert torch.allclose(ds.x_test[0].mean(dim=(1, 2)), red, atol=0.1)
    train_red = torch.cat([ds.x_pool, ds.x_dev])[:, 0].mean(dim=(1, 2)) > 0
    assert torch.equal(train_red, torch.cat([ds.y_pool, ds.y_dev]) == 0)
    again = load_dataset("tinyimagenet", tmp_path)
    assert torch.equal(again.y_pool, ds.y_pool) and torch.equal(again.x_dev, ds.x_dev)


def test_tinyimagenet_wrong_image_size(tmp_path):
    from PIL import Image

    make_tinyimagenet(tmp_path / "tinyimagenet")
    Image.new("RGB", (64, 1)).save(tmp_path / "tinyimagenet" / "val" / "images" / "val_1.JPEG")
    with pytest.raises(DataError, match="val_1.JPEG: expected a 64x64 image, found 64x1"):
        load_dataset("tinyimagenet", tmp_path)


def test_tinyimagenet_unknown_val_wnid(tmp_path):
    make_tinyimagenet(tmp_path / "tinyimagenet")
    (tmp_path / "tinyimagenet" / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="unknown wnid 'n99'"):
        load_dataset("tinyimagenet", tmp_path)


# --- user npz ------------------------------------------------------------------------------------


def test_npz_classification_images(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 5, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", x_train=x, y_train=np.arange(20) % 3, x_test=x[:4], y_test=np.array([0, 1, 2, 7]))
    for where in (tmp_path, tmp_path / "mine.npz"):
        ds = load_dataset("npz", where)
        assert ds.task == "classification" and ds.num_outputs == 8 and ds.input_shape == (3, 5, 6)
        assert (len(ds.x_pool), len(ds.x_dev)) == (18, 2)
        assert torch.allclose(ds.x_pool[1], torch.from_numpy(x[1].transpose(2, 0, 1) / 255).float())


def test_npz_grayscale_with_dev(tmp_path):
    x = np.zeros((6, 4, 4), np.uint8)
    np.savez(tmp_path / "g.npz", x_train=x, y_train=np.zeros(6, np.int64), x_dev=x[:2], y_dev=np.ones(2, np.int32),
             x_test=x[:3], y_test=np.zeros(3, np.int64))
    ds = load_dataset("npz", tmp_path / "g.npz")
    assert ds.x_pool.shape == (6, 1, 4, 4) and ds.x_dev.shape == (2, 1, 4, 4) and ds.num_outputs == 2


def test_npz_regression_vectors(tmp_path):
    x = np.linspace(0, 1, 30, dtype=np.float64).reshape(10, 3)
    np.savez(tmp_path / "r.npz", x_train=x, y_train=x.sum(1), x_test=x[:2], y_test=x[:2].sum(1))
    ds = load_dataset("npz", tmp_path / "r.npz", dev_size=4)
    assert ds.task == "regression" and ds.num_outputs == 1 and ds.input_shape == (3,)
    assert ds.y_pool.shape == (6, 1) and ds.x_pool.dtype == torch.float32
    assert torch.allclose(ds.x_dev, torch.from_numpy(x[6:]).float())
    np.savez(tmp_path / "r.npz", x_train=x[:, 0], y_train=x[:, :2], x_test=x[:2, 0], y_test=x[:2, :2])
    ds = load_dataset("npz", tmp_path / "r.npz")
    assert ds.input_shape == (1,) and ds.num_outputs == 2 and (len(ds.x_pool), len(ds.x_dev)) == (9, 1)


@pytest.mark.parametrize("arrays, match", [
    ({"x_train": np.zeros((3, 2))}, "missing arrays y_train, x_test, y_test"),
    ({"x_train": np.zeros((3, 2)), "y_train": np.zeros(3), "x_test": np.zeros((1, 2)), "y_test": np.zeros(1),
      "x_dev": np.zeros((1, 2))}, "missing arrays y_dev"),
    ({"x_train": np.zeros((3, 2)), "y_train": np.zeros(4), "x_test": np.zeros((1, 2)), "y_test": np.zeros(1)},
     "x_train .* same length"),
    ({"x_train": np.zeros((3, 2)), "y_train": np.zeros(3, int), "x_test": np.zeros((1, 2)), "y_test": np.zeros(1)},
     "y_test is float64 but y_train is int64"),
    ({"x_train": np.zeros((3, 2)), "y_train": np.zeros(3), "x_test": np.zeros((1, 5)), "y_test": np.zeros(1)},
     "per-point shapes differ"),
])
def test_npz_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match):
        load_dataset("npz", tmp_path / "bad.npz")


def test_npz_several_files(tmp_path):
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz", x=np.zeros(1))
    with pytest.raises(DataError, match="several .npz"):
        load_dataset("npz", tmp_path)


def test_dataset_validates_shapes():
    z = torch.zeros(2, 1)
    with pytest.raises(ValueError, match="do not match"):
        Dataset("x", "regression", z, z, z, z, z, torch.zeros(3, 1), 1, (1,))


# --- real data (slow) ----------------------------------------------------------------------------

needs_real = pytest.mark.skipif(not (REAL_DATA / "mnist").exists(), reason=f"real data not found at {REAL_DATA}")


@pytest.mark.slow
@needs_real
def test_real_mnist():
    ds = load_dataset("mnist", REAL_DATA)  # md5s verified
    assert (len(ds.x_pool), len(ds.x_dev), len(ds.x_test)) == (50_000, 10_000, 10_000)
    assert ds.x_pool.min() == 0 and ds.x_pool.max() == 1
    assert set(ds.y_test.unique().tolist()) == set(range(10)) and ds.y_pool.min() == 0 and ds.y_pool.max() == 9
    assert 0.12 < ds.x_pool.mean() < 0.14


@pytest.mark.slow
@needs_real
@pytest.mark.parametrize("name, pool, classes", [("cifar10", 10_000, 10), ("cifar100", 5_000, 100)])
def test_real_cifar(name, pool, classes):
    ds = load_dataset(name, REAL_DATA)  # sha256s from chunks.json verified
    assert (len(ds.x_pool), len(ds.x_dev), len(ds.x_test)) == (pool, pool, 10_000)
    assert ds.input_shape == (3, 32, 32) and ds.num_outputs == classes
    assert ds.y_pool.min() == 0 and ds.y_pool.max() == classes - 1
    mean, std = ds.x_pool.mean(dim=(0, 2, 3)), ds.x_pool.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros(3), atol=0.05) and torch.allclose(std, torch.ones(3), atol=0.05)


def test_npz_fingerprint_follows_the_files_bytes(tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    np.savez(tmp_path / "r.npz", x_train=x, y_train=x.sum(1), x_test=x[:2], y_test=x[:2].sum(1))
    first = data_fingerprint("npz", tmp_path / "r.npz")
    assert re.fullmatch("[0-9a-f]{16}", first)
    assert first == hashlib.sha256((tmp_path / "r.npz").read_bytes()).hexdigest()[:16]
    assert data_fingerprint("npz", tmp_path) == first == load_dataset("npz", tmp_path).fingerprint
    # An edit (here of another size: the hash is remembered per size, inode and mtime) changes it.
    np.savez(tmp_path / "r.npz", x_train=x[:9], y_train=x[:9].sum(1), x_test=x[:2], y_test=x[:2].sum(1))
    assert data_fingerprint("npz", tmp_path) != first
    assert data_fingerprint("sin") is None and load_dataset("sin").fingerprint is None  # fixed by the name
    with pytest.raises(DataError, match="npz dataset not found"):
        data_fingerprint("npz", tmp_path / "elsewhere")


@pytest.mark.skipif(os.name != "posix", reason="st_ctime is the POSIX status-change time only on POSIX")
def test_file_hash_sees_a_same_size_edit_that_restores_the_mtime(tmp_path):
    path = tmp_path / "r.bin"
    path.write_bytes(b"a" * 64)
    before = path.stat()
    first = data_mod.file_sha256(path)
    deadline = time.monotonic() + 5
    while True:  # rewrite until the ctime moves past the file system's timestamp tick (ms here, s on some)
        path.write_bytes(b"b" * 64)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = path.stat()
        if after.st_ctime_ns != before.st_ctime_ns or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (before.st_size, before.st_ino, before.st_mtime_ns)
    assert after.st_ctime_ns != before.st_ctime_ns
    assert data_mod.file_sha256(path) == hashlib.sha256(b"b" * 64).hexdigest()[:16] != first


def test_a_registered_dataset_can_have_a_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "DATASETS", dict(DATASETS))
    monkeypatch.setattr(data_mod, "_FINGERPRINTS", dict(data_mod._FINGERPRINTS))
    (tmp_path / "mine.csv").write_text("1,2\n")

    @data_mod.register_dataset("my_csv", fingerprint=lambda d: data_mod.file_sha256(d / "mine.csv"))
    def _load(data_dir, **_):
        raise AssertionError("not loaded by data_fingerprint")

    assert data_fingerprint("my_csv", tmp_path) == hashlib.sha256(b"1,2\n").hexdigest()[:16]
    assert data_fingerprint("digits", tmp_path) is None
