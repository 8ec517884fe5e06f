"""Subnormal floats and step cost: steps of a trained LeNet-5 against a fresh one, flushed and not.

Two measurements, each in one process on real MNIST (``--data-dir``, the official IDX files):

Times are CPU seconds of the (single-thread) process, which other processes sharing the cores
do not inflate; the whole-run part also prints wall seconds.

``--part steps``: train LeNet-5 with the MNIST recipe (2,000 points, DataGrad at the paper's λ 50) for
``--train-steps`` steps, then time training steps (forward, backward, Adam) of a freshly initialized
copy and of the trained model, unregularized, SpectReg 0.03 and DataGrad 50, with subnormals flushed
to zero and not. Variants alternate within each round so that load drifts hit them alike; medians.

``--part run``: the cost of a whole 10,000-step run against ten times its first 1,000 steps (the same
run cut at step 1,000: its learning rate drops only after the last step, so the 1,000 steps are the
full run's first 1,000 exactly). A run whose late steps slow down shows a ratio above 1.

    python benchmarks/bench_subnormals.py --data-dir ../shared/data --part all [--flush both]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import gradreg
from gradreg import data as data_mod
from gradreg.numerics import flush_denormal
from gradreg.train import RunConfig, init_model, train

RECIPE_TERMS = {"plain": (), "spectreg 0.03": (("spectreg", 0.03),), "datagrad 50": (("datagrad", 50.0),)}


def _config(terms, **overrides) -> RunConfig:
    return RunConfig(dataset="mnist", train_size=2000, terms=terms, overrides=tuple(overrides.items()))


def _step_fn(model: torch.nn.Module, x, y, config: RunConfig):
    from gradreg.train import term_weights
    objective = gradreg.Objective("cross_entropy", term_weights(config, len(x)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)  # tiny: the state barely moves while timed
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        out = objective(model, x, y, generator=gen)
        opt.zero_grad(set_to_none=True)
        (out.loss + 0.0005 * sum(p.pow(2).sum() for p in model.parameters() if p.dim() > 1)).backward()
        opt.step()
    return step


def _subnormal_share(model: torch.nn.Module, x, y) -> float:
    """The share of float32 values that are subnormal in one unflushed DataGrad step: every module's
    output and output gradient, the parameters and their gradients."""
    tensors: list[torch.Tensor] = []

    def keep(module, inputs, output):
        if isinstance(output, torch.Tensor):
            tensors.append(output.detach().clone())
            if output.requires_grad:
                output.register_hook(lambda g: tensors.append(g.detach().clone()))
    handles = [m.register_forward_hook(keep) for m in model.modules() if m is not model]
    with flush_denormal(False):
        _step_fn(model, x, y, _config((("datagrad", 50.0),)))()
    for h in handles:
        h.remove()
    tensors += [p.detach() for p in model.parameters()] + [p.grad for p in model.parameters() if p.grad is not None]
    tiny = torch.finfo(torch.float32).tiny
    sub = sum(int(((t != 0) & (t.abs() < tiny)).sum()) for t in tensors)
    return sub / sum(t.numel() for t in tensors)


def part_steps(ds, args) -> None:
    print(f"training LeNet-5 for {args.train_steps} steps (DataGrad 50, flushed) ...", flush=True)
    trained = train(_config((("datagrad", 50.0),), steps=args.train_steps, eval_points=1), dataset=ds,
                    progress=False, keep_model=True).extras["model"]
    fresh = init_model(_config(()), ds, torch.device("cpu")).to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    b = torch.randint(0, len(ds.x_pool), (50,), generator=g)
    x, y = ds.x_pool[b].contiguous(memory_format=torch.channels_last), ds.y_pool[b]
    variants = {}
    for state, model in (("fresh", fresh), ("trained", trained)):
        for name, terms in RECIPE_TERMS.items():
            for flush in args.flush:
                variants[(state, name, flush)] = _step_fn(copy.deepcopy(model), x, y, _config(terms))
    times: dict = {k: [] for k in variants}
    for _ in range(args.rounds):
        for key, step in variants.items():
            with flush_denormal(key[2]):
                step()  # warm-up of this variant's caches
                t0 = time.process_time()  # CPU time: other processes on the cores do not inflate it
                for _ in range(args.steps):
                    step()
                times[key].append((time.process_time() - t0) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    for state, model in (("fresh", fresh), ("trained", trained)):
        share = _subnormal_share(copy.deepcopy(model), x, y)
        print(f"{state}: subnormal floats among one DataGrad step's activations, gradients and parameters, "
              f"not flushed: {100 * share:.3f}%")
    print(f"\nCPU ms per step, median of {args.rounds} rounds x {args.steps} steps, {torch.get_num_threads()} thread(s)")
    head = " | ".join(f"{s}, {'flushed' if f else 'not flushed'}" for s in ("fresh", "trained") for f in args.flush)
    print(f"| term | {head} |\n|---|{'---|' * (2 * len(args.flush))}")
    for name in RECIPE_TERMS:
        cells = " | ".join(f"{1000 * med[(s, name, f)]:.1f}" for s in ("fresh", "trained") for f in args.flush)
        print(f"| {name} | {cells} |")


def part_run(ds, args) -> None:
    print(f"\nwhole run vs its first 1,000 steps (DataGrad 50, {torch.get_num_threads()} thread(s))")
    print("CPU seconds (wall seconds in brackets)")
    print("| subnormals | first 1,000 steps | 10,000-step run | run / (10 x first 1,000) |\n|---|---|---|---|")
    for flush in args.flush:
        cut = train(_config((("datagrad", 50.0),), steps=1000, eval_points=2, lr_milestones=(0.9999,)),
                    dataset=ds, progress=False, flush_denormal=flush)
        full = train(_config((("datagrad", 50.0),)), dataset=ds, progress=False, flush_denormal=flush)
        assert full.curve[1]["test_acc"] == cut.curve[1]["test_acc"], "the cut run must be the full run's start"
        c_cut, c_full = cut.extras["cpu_seconds"], full.extras["cpu_seconds"]
        print(f"| {'flushed' if flush else 'not flushed'} | {c_cut:.1f} ({cut.seconds:.1f}) | "
              f"{c_full:.1f} ({full.seconds:.1f}) | {c_full / (10 * c_cut):.2f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files (or mnist/ under it)")
    p.add_argument("--part", choices=["steps", "run", "all"], default="all")
    p.add_argument("--flush", choices=["on", "off", "both"], default="both")
    p.add_argument("--train-steps", type=int, default=4000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    args.flush = {"on": [True], "off": [False], "both": [True, False]}[args.flush]
    torch.set_num_threads(args.threads)
    ds = data_mod.load_dataset("mnist", args.data_dir)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    if args.part in ("steps", "all"):
        part_steps(ds, args)
    if args.part in ("run", "all"):
        part_run(ds, args)


if __name__ == "__main__":
    main()
