"""TinyImageNet-200 from its extracted folder (``wnids.txt``, ``train/``, ``val/``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import DataError, Dataset, register_dataset
from ._common import _image_dataset, _not_found

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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
