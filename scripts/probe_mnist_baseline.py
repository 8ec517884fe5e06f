"""Probe: does Keras-style initialization close the gap between our MNIST baseline and the paper's?

Our Table 4 baseline sits 0.3-0.4 points below the paper's (results/REPRODUCTION.md). The paper's code
was Keras/TensorFlow of 2017, whose Dense/Conv2D layers start from Glorot-uniform weights and zero
biases; PyTorch's defaults are Kaiming-uniform(a=√5) weights and small uniform biases. This trains the
Table 4 baseline (weight decay 0.0005) both ways on dev seeds (1000+, never the test seeds of the
tables) and compares **dev** accuracy; test accuracy is printed for the record only.

    python scripts/probe_lenet_init.py --seeds 3 --data-dir ../shared/data   # ~12 min on 2 cores
"""
from __future__ import annotations

import argparse
import csv
import multiprocessing
import statistics
from pathlib import Path

import torch
from torch import nn

import gradreg.train as train_mod
from gradreg.experiments import DEV_SEED_OFFSET
from gradreg.train import RunConfig

_original_init = train_mod.init_model


def _glorot_init(config, ds, device):
    model = _original_init(config, ds, device)  # seeds the global stream as a normal run does
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def _run(args: tuple[str, int, str, int]) -> dict:
    init, seed, data_dir, steps = args
    torch.set_num_threads(1)
    # Pool workers are reused across jobs: set the init for every job, never only for one arm.
    train_mod.init_model = _glorot_init if init == "glorot" else _original_init
    config = RunConfig(dataset="mnist", train_size=2000, seed=seed, overrides=(("steps", steps),))
    r = train_mod.train(config, data_dir=data_dir, progress=False)
    return {"init": init, "seed": seed, "status": r.status, "dev_acc": r.metrics.get("dev_acc"),
            "test_acc": r.metrics.get("test_acc"), "seconds": round(r.seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10_000, help="the MNIST recipe's; fewer only to smoke-test")
    ap.add_argument("--out", default="results/probe_lenet_init.csv")
    args = ap.parse_args()
    jobs = [(init, DEV_SEED_OFFSET + s, args.data_dir, args.steps)
            for s in range(args.seeds) for init in ("pytorch", "glorot")]
    with multiprocessing.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
        rows = pool.map(_run, jobs, chunksize=1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for init in ("pytorch", "glorot"):
        dev = [r["dev_acc"] for r in rows if r["init"] == init]
        test = [r["test_acc"] for r in rows if r["init"] == init]
        print(f"{init:8s} dev {statistics.mean(dev):.2f} ({statistics.stdev(dev):.2f})  "
              f"test {statistics.mean(test):.2f} ({statistics.stdev(test):.2f})  n={len(dev)}")


if __name__ == "__main__":
    main()
