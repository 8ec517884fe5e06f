"""Copy the data the GPU check needs into an ignored folder of the repository (default ``.data/gpu``).

The GPU machine receives only the working tree (at most 64 MiB, carried paths included) and reaches
nothing else, so ``benchmarks/gpu_check.py`` reads its data from here: CIFAR-10 ``train_0.npz`` (5,000
training images) and ``test_0.npz`` (the first 5,000 test images) with the sha256 manifest, and the four
MNIST files; about 40 MB. Copies, never links (a link would not travel).

    python scripts/prepare_gpu_data.py --source ../shared/data --dest .data/gpu
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

FILES = {"cifar10": ["train_0.npz", "test_0.npz", "chunks.json"],
         "mnist": ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                   "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]}
LIMIT = 64 * 2**20


def prepare(source: Path, dest: Path, datasets=tuple(FILES)) -> int:
    total = 0
    for name in datasets:
        (dest / name).mkdir(parents=True, exist_ok=True)
        for f in FILES[name]:
            src = source / name / f
            if not src.is_file():
                raise SystemExit(f"{src}: missing (expected the layout of ../shared/data, see its README)")
            shutil.copyfile(src, dest / name / f)
            total += src.stat().st_size
    if total > LIMIT:
        raise SystemExit(f"{total / 2**20:.1f} MiB copied: over the device machine's 64 MiB")
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=Path("../shared/data"))
    ap.add_argument("--dest", type=Path, default=Path(".data/gpu"))
    args = ap.parse_args()
    total = prepare(args.source, args.dest)
    print(f"{total / 2**20:.1f} MiB in {args.dest}")


if __name__ == "__main__":
    main()
