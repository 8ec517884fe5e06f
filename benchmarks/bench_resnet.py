"""Regularized training steps on the CIFAR ResNet: plain / SpectReg / DataGrad, as ratios to a plain step.

A step is what ``gradreg.train`` does: forward, ``gradreg.Objective`` (cross-entropy + the term at
``batch_mode="batch"``), backward, SGD Nesterov. Variants, all built from the same weights and timed
side by side in one process (every variant's step once per round, medians over rounds):

* ``layers``: ``gradreg`` (the model as built, with :mod:`gradreg.layers`' convolution and BatchNorm)
  or ``stock`` (the same weights in ``nn.Conv2d`` / ``nn.BatchNorm2d``, PyTorch's own double backward);
* ``layout``: ``contiguous`` or ``channels_last`` (images and conv weights);
* ``bn``: BatchNorm in ``train`` mode (batch statistics, as in training) or ``eval`` (running statistics).

``--profile`` prints torch.profiler's operator table for one SpectReg step of each layers choice.
Subnormal floats are flushed to zero, as in gradreg's training on CPU.

    OMP_NUM_THREADS=1 python benchmarks/bench_resnet.py --widths 16,32,64 --blocks 1 --rounds 7
    OMP_NUM_THREADS=1 python benchmarks/bench_resnet.py --widths 48,96,192 --blocks 3 --rounds 3   # the paper's
"""
from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time

import torch
from torch import nn

import gradreg
from gradreg.layers import stock_copy
from gradreg.models import CifarResNet

TERMS = {"plain": None, "spectreg": lambda: gradreg.SpectReg(batch_mode="batch"),
         "datagrad": lambda: gradreg.DataGrad(batch_mode="batch")}


def stock_layers(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose gradreg.layers are PyTorch's own, same weights and buffers."""
    return stock_copy(model)


def make_step(base: nn.Module, x, y, *, layers: str, layout: str, bn: str, term: str, device,
              autocast_dtype=None):
    model = (stock_layers(base) if layers == "stock" else copy.deepcopy(base)).to(device)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = x.to(device).contiguous(memory_format=fmt)
    y = y.to(device)
    if bn == "eval":
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    objective = gradreg.Objective("cross_entropy", [(0.01, TERMS[term]())] if TERMS[term] else [])
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = objective(model, x, y, generator=gen).loss
        loss.backward()
        opt.step()
    return step


def measure(steps: dict, rounds: int, sync=lambda: None, warmup: int = 2) -> dict:
    """Median seconds per step of each variant, every variant once per round, interleaved."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for k, fn in steps.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="16,32,64")
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--layers", default="stock,gradreg")
    ap.add_argument("--layouts", default="contiguous,channels_last")
    ap.add_argument("--bn", default="train")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each variant first")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = torch.device("cpu")
    widths = tuple(int(w) for w in args.widths.split(","))
    torch.manual_seed(0)
    base = CifarResNet((3, 32, 32), 10, widths=widths, blocks=args.blocks)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (args.batch,), generator=g)
    combos = list(itertools.product(args.layers.split(","), args.layouts.split(","), args.bn.split(",")))
    steps = {(c, t): make_step(base, x, y, layers=c[0], layout=c[1], bn=c[2], term=t, device=device)
             for c in combos for t in TERMS}
    print(f"torch {torch.__version__}, CifarResNet {widths} x{args.blocks} "
          f"({sum(p.numel() for p in base.parameters()):,} parameters), batch {args.batch}, "
          f"{torch.get_num_threads()} thread(s), median of {args.rounds} interleaved rounds")
    med = measure(steps, args.rounds, warmup=args.warmup)
    print(f"\n| layers | layout | BatchNorm | plain s/step | SpectReg s/step | x plain | DataGrad s/step | x plain |")
    print("|---|---|---|---|---|---|---|---|")
    for c in combos:
        p, s, d = (med[(c, t)] for t in TERMS)
        print(f"| {c[0]} | {c[1]} | {c[2]} | {p:.3f} | {s:.3f} | {s / p:.2f} | {d:.3f} | {d / p:.2f} |")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        for layers in args.layers.split(","):
            fn = steps[((layers, args.layouts.split(",")[0], "train"), "spectreg")]
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                fn()
            print(f"\nSpectReg step, {layers} layers, {args.layouts.split(',')[0]}: top operators by self CPU time")
            print(prof.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=34, max_shapes_column_width=70))


if __name__ == "__main__":
    main()
