"""Many runs at once: grouped training and the sweep engine against one-run-at-a-time, in one process.

Three measurements (``--part``), each a ratio of wall times taken side by side on the same machine:

``sin``
    Per-run throughput of G SIN runs trained as one group (``gradreg.train.train_group``) against
    the same kind of runs trained one after another (``gradreg.train.train``), for several G.
    Spectreg at the paper's λ grid, so every run pays the double backward. Rounds alternate the
    variants; medians over rounds.
``table7``
    The whole ``table7`` sweep (10 λ x 10 seeds = 100 runs, shortened to ``--steps``) end to end into
    a fresh results database: ``gradreg sweep``'s defaults (workers, groups) against the same runs one by
    one in one process (``group_size=1, workers=1``, all cores as torch threads).
``lenet``
    ``table4``'s MNIST LeNet-5 runs (one seed of each of its 6 cells, shortened to ``--lenet-steps``)
    through ``run_sweep``'s defaults against a straightforward loop: one process, torch's default
    threads, a ``DataLoader`` over the training subset, the same model, optimizer, schedule,
    regularizer, weight decay and final evaluation. Needs the real MNIST (``--data-dir``).

``lenet-group``
    Per-run throughput of G MNIST LeNet-5 runs (the MNIST recipe: dropout 0.5, weight decay; SpectReg
    λ=0.03) trained as one group against the same runs one after another, on ``--device`` (auto:
    CUDA when present). The issue's GPU target (10x) is measured here; on this 2-core CPU grouped
    LeNets are not expected to pay.

``--profile`` prints where a grouped SIN step spends its time (torch.profiler, top operators).

    python benchmarks/bench_grouped.py [--part all] [--data-dir ../shared/data] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import gradreg
from gradreg.data import load_dataset
from gradreg.experiments import get_experiment
from gradreg.train import train_group
from gradreg.models import create_model
from gradreg.objective import paper_weight
from gradreg.regularizers import get_regularizer
from gradreg.sweep import default_workers, run_sweep
from gradreg.train import RunConfig, resolve_device, train


def sin_configs(n: int, steps: int, seed0: int = 0) -> list[RunConfig]:
    lambdas = (0.001, 0.003, 0.01, 0.03, 0.1)
    return [RunConfig(dataset="sin", seed=seed0 + i, terms=(("spectreg", lambdas[i % len(lambdas)]),),
                      overrides=(("steps", steps),)) for i in range(n)]


def compare_grouped(title: str, make_configs, ds, groups: list[int], solo_runs: int, rounds: int,
                    device: str = "cpu") -> None:
    """Per-run seconds of ``make_configs(n, seed0)`` trained one by one against in groups of each size in
    ``groups``; rounds alternate the variants (fresh seeds each round), medians over rounds."""
    times: dict[str | int, list[float]] = {}
    for r in range(rounds):
        t = time.perf_counter()
        for c in make_configs(solo_runs, 1000 * r):
            train(c, dataset=ds, device=device, progress=False)
        times.setdefault("solo", []).append((time.perf_counter() - t) / solo_runs)
        for g in groups:
            t = time.perf_counter()
            train_group(make_configs(g, 1000 * r), dataset=ds, device=device, progress=False)
            times.setdefault(g, []).append((time.perf_counter() - t) / g)
    solo = statistics.median(times["solo"])
    print(f"\n{title}, {torch.get_num_threads()} threads, median of {rounds} rounds")
    print(f"{'runs':>18} | {'s per run':>9} | per-run throughput vs sequential")
    print(f"{'1 (sequential)':>18} | {solo:9.3f} | 1.00x")
    for g in groups:
        per_run = statistics.median(times[g])
        print(f"{f'{g} grouped':>18} | {per_run:9.3f} | {solo / per_run:.2f}x")


def bench_sin(groups: list[int], solo_runs: int, steps: int, rounds: int) -> None:
    compare_grouped(f"SIN MLP, spectreg, {steps} steps per run", lambda n, seed0: sin_configs(n, steps, seed0),
                    load_dataset("sin"), groups, solo_runs, rounds)


def bench_table7(steps: int, workers: int) -> None:
    exp = get_experiment("table7")
    configs = [RunConfig.from_dict(p.config.to_dict() | {"overrides": dict(p.config.overrides) | {"steps": steps}})
               for p in exp.plan()]
    cores = default_workers("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        one = run_sweep(configs, Path(tmp) / "one.db", workers=1, threads=cores, group_size=1, progress=False)
        t_one = time.perf_counter() - t
        t = time.perf_counter()
        fast = run_sweep(configs, Path(tmp) / "fast.db", workers=workers, threads=1, progress=False)
        t_fast = time.perf_counter() - t
    assert one.done + one.diverged == fast.done + fast.diverged == len(configs), (one, fast)
    print(f"\ntable7 end to end: {len(configs)} runs x {steps} steps")
    print(f"  one by one (1 process, {cores} threads, group_size=1): {t_one:7.1f} s")
    print(f"  gradreg sweep defaults ({workers} workers x 1 thread, auto groups): {t_fast:7.1f} s")
    print(f"  speed-up: {t_one / t_fast:.2f}x")


def straightforward_run(config: RunConfig, ds) -> float:
    """One run as a plain PyTorch script would write it: DataLoader, model, optimizer, loop, evaluate."""
    from torch.utils.data import DataLoader, TensorDataset

    recipe = config.resolved_recipe()
    idx = ds.subset_indices(config.train_size, config.seed_for("subset"))
    torch.manual_seed(config.seed_for("init"))
    model = create_model("lenet5", input_shape=tuple(ds.input_shape), num_outputs=ds.num_outputs,
                         dropout=recipe.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, betas=recipe.betas)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, recipe.milestones(), gamma=recipe.lr_factor)
    terms = [(paper_weight(n, w, recipe.batch_size), get_regularizer(n)) for n, w in config.terms]
    objective = gradreg.Objective("cross_entropy", terms)
    loader = DataLoader(TensorDataset(ds.x_pool[idx], ds.y_pool[idx]), batch_size=recipe.batch_size,
                        shuffle=True, drop_last=True)
    step = 0
    while step < recipe.steps:
        for xb, yb in loader:
            loss = objective(model, xb, yb).loss
            loss = loss + recipe.weight_decay * sum(p.pow(2).sum() for p in model.parameters() if p.dim() > 1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step == recipe.steps:
                break
    model.eval()
    correct = 0
    with torch.no_grad():
        for xs, ys in ((ds.x_dev, ds.y_dev), (ds.x_test, ds.y_test)):
            for xb, yb in DataLoader(TensorDataset(xs, ys), batch_size=recipe.eval_batch_size):
                correct += (model(xb).argmax(1) == yb).sum().item()
    return correct


def bench_lenet(data_dir: str, steps: int, workers: int) -> None:
    exp = get_experiment("table4")
    first_seed = {}
    for p in exp.plan():
        first_seed.setdefault((p.cell.row, p.cell.column), p.config)
    configs = [RunConfig.from_dict(c.to_dict() | {"overrides": dict(c.overrides) | {"steps": steps, "eval_points": 1}})
               for c in first_seed.values()]
    ds = load_dataset("mnist", data_dir)
    t = time.perf_counter()
    for c in configs:
        straightforward_run(c, ds)
    t_plain = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        s = run_sweep(configs, Path(tmp) / "fast.db", workers=workers, threads=1, data_dir=data_dir, progress=False)
        t_fast = time.perf_counter() - t
    assert s.done == len(configs), s
    print(f"\ntable4 (LeNet-5, MNIST 2000): {len(configs)} runs x {steps} steps, one per cell")
    print(f"  straightforward loop (1 process, {torch.get_num_threads()} threads, DataLoader): {t_plain:7.1f} s")
    print(f"  gradreg sweep defaults ({workers} workers x 1 thread, data loaded once per worker): {t_fast:7.1f} s")
    print(f"  speed-up: {t_plain / t_fast:.2f}x")


def bench_lenet_group(data_dir: str, groups: list[int], solo_runs: int, steps: int, rounds: int,
                      device: str) -> None:
    ds = load_dataset("mnist", data_dir)

    def configs(n: int, seed0: int) -> list[RunConfig]:
        return [RunConfig(dataset="mnist", train_size=2000, seed=seed0 + i, terms=(("spectreg", 0.03),),
                          overrides=(("steps", steps), ("eval_points", 1))) for i in range(n)]

    train_group(configs(2, 10_000), dataset=ds, device=device, progress=False)  # warm-up (CUDA context, kernels)
    compare_grouped(f"MNIST LeNet-5 (dropout 0.5, spectreg), {steps} steps per run, device {device}",
                    configs, ds, groups, solo_runs, rounds, device)


def profile_sin(group: int, steps: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    ds = load_dataset("sin")
    train_group(sin_configs(group, 20), dataset=ds, progress=False)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_group(sin_configs(group, steps), dataset=ds, progress=False)
    print(f"\nprofile: {group} SIN runs grouped, {steps} steps")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["sin", "table7", "lenet", "lenet-group", "all"], default="all")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=500, help="steps per SIN run")
    ap.add_argument("--groups", default="10,50,100")
    ap.add_argument("--solo-runs", type=int, default=5)
    ap.add_argument("--lenet-steps", type=int, default=300)
    ap.add_argument("--lenet-groups", default="8,32,128", help="group sizes for --part lenet-group")
    ap.add_argument("--device", default="auto", help="device for --part lenet-group")
    ap.add_argument("--workers", type=int, default=default_workers("cpu"))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for the sin part")
    ap.add_argument("--data-dir", default=os.environ.get("GRADREG_DATA_DIR", "../shared/data"))
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    if args.part in ("sin", "all"):
        torch.set_num_threads(args.threads)
        bench_sin([int(g) for g in args.groups.split(",")], args.solo_runs, args.steps, args.rounds)
    if args.profile:
        profile_sin(100, 100)
    if args.part in ("table7", "all"):
        bench_table7(args.steps * 2, args.workers)
    if args.part in ("lenet", "all"):
        torch.set_num_threads(default_workers("cpu"))
        bench_lenet(args.data_dir, args.lenet_steps, args.workers)
    if args.part == "lenet-group":  # not in "all": on a CPU it takes long and is not expected to pay
        device = str(resolve_device(args.device))
        bench_lenet_group(args.data_dir, [int(g) for g in args.lenet_groups.split(",")], args.solo_runs,
                          args.lenet_steps, args.rounds, device)


if __name__ == "__main__":
    main()
