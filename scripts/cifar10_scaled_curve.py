"""One baseline run of the scaled CIFAR-10 reproduction on a dev seed, with a dense learning curve.

It fixes the step budget (results/cifar10_scaled/README.md): where the baseline's dev accuracy stops improving.
A dev seed (1000 + i) never shares a training subset, initialization or batch order with a test seed,
so the budget is chosen without looking at test runs. Writes the curve as CSV (one row per eval point).

    OMP_NUM_THREADS=1 python scripts/cifar10_scaled_curve.py --data-dir ../shared/data \
        --model cifar_resnet_xs --steps 1000 --eval-points 10 --out results/cifar10_scaled/curve_xs_1000.csv
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from gradreg.experiments import DEV_SEED_OFFSET
from gradreg.train import RunConfig, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--model", default="cifar_resnet_xs")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--eval-points", type=int, default=10)
    ap.add_argument("--seed", type=int, default=DEV_SEED_OFFSET)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = RunConfig(dataset="cifar10", train_size=2000, model=args.model, seed=args.seed,
                       overrides=(("steps", args.steps), ("eval_points", args.eval_points)))
    result = train(config, data_dir=args.data_dir, progress=False, memory_format="contiguous")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    keys = ["step", "train_loss", "dev_acc", "dev_loss", "test_acc"]
    with args.out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for point in result.curve:
            w.writerow([point.get(k) if k == "step" else round(point.get(k, float("nan")), 4) for k in keys])
    print(f"{result.status}: {result.metrics.get('dev_acc')} dev acc, {result.seconds:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
