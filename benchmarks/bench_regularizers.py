"""Training-step cost of each regularizer as a ratio to a plain step, measured in one process.

A step is forward, backward and Adam on LeNet-5 (batch 50, MNIST-shaped inputs, 10 classes) and on the
paper's 5x64 MLP (batch 100, one input, regression as on SIN, so m = 1 and exact terms cost one VJP).
Also the exact Frobenius term with both VJP strategies ("loop" and "batched" = vmap via
``is_grads_batched``) on LeNet-5, m = 10. Steps alternate between variants within each round so that
drifts in machine load hit all of them alike; the reported time is the median over rounds.

    python benchmarks/bench_regularizers.py [--rounds 7] [--steps 20] [--threads N] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import gradreg
from gradreg.models import create_model

TERMS = {
    "datagrad": lambda task: gradreg.DataGrad(loss="mse" if task == "regression" else "cross_entropy"),
    "spectreg": lambda task: gradreg.SpectReg(),
    "spectreg_spherical": lambda task: gradreg.SpectReg(distribution="spherical"),
    "randomonehot": lambda task: gradreg.RandomOneHot(),
    "onehot": lambda task: gradreg.OneHot(),
    "confidence_penalty": lambda task: gradreg.ConfidencePenalty(),
    "jacreg": lambda task: gradreg.JacReg(),
    "frobreg (loop)": lambda task: gradreg.FrobReg(strategy="loop"),
    "frobreg (batched)": lambda task: gradreg.FrobReg(strategy="batched"),
}


def setups(device):
    g = torch.Generator().manual_seed(0)
    yield ("LeNet-5, batch 50", "classification",
           create_model("lenet5", input_shape=(1, 28, 28), num_outputs=10, dropout=0.5).to(device),
           torch.rand(50, 1, 28, 28, generator=g).to(device), torch.randint(0, 10, (50,), generator=g).to(device))
    yield ("MLP 5x64, batch 100", "regression",
           create_model("mlp", input_shape=(1,), num_outputs=1).to(device),
           (torch.rand(100, 1, generator=g) * 2 - 1).to(device), torch.randn(100, 1, generator=g).to(device))


def make_step(model, x, y, task, term):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_name = "mse" if task == "regression" else "cross_entropy"
    if term is None:
        loss_fn = F.mse_loss if task == "regression" else F.cross_entropy

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
    else:
        objective = gradreg.Objective(loss_name, [(0.01, term)])
        gen = torch.Generator(device=x.device).manual_seed(0)

        def step():
            opt.zero_grad(set_to_none=True)
            objective(model, x, y, generator=gen).loss.backward()
            opt.step()
    return step


def measure(steps_by_name, rounds, steps, sync):
    times = {name: [] for name in steps_by_name}
    for fn in steps_by_name.values():  # warm-up
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for name, fn in steps_by_name.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            sync()
            times[name].append((time.perf_counter() - t0) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", nargs="*", default=None, help="term names to measure (default: all)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"median of {args.rounds} rounds x {args.steps} steps")
    for title, task, model, x, y in setups(device):
        names = [n for n in TERMS if args.only is None or n in args.only]
        if task == "regression":
            names = [n for n in names if n not in ("onehot", "confidence_penalty", "jacreg")]
        fns = {"plain": make_step(model, x, y, task, None)}
        fns.update({n: make_step(model, x, y, task, TERMS[n](task)) for n in names})
        med = measure(fns, args.rounds, args.steps, sync)
        print(f"\n{title}: plain step {med['plain'] * 1e3:.2f} ms")
        print(f"  {'term':22s} {'ms/step':>8s} {'x plain':>8s}")
        for n in names:
            print(f"  {n:22s} {med[n] * 1e3:8.2f} {med[n] / med['plain']:8.2f}")


if __name__ == "__main__":
    main()
