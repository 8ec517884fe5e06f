"""One prepared GPU check: step ratios, grouped throughput, ResNet steps in fp32/bf16, a short real training.

Writes ``OUT/results.json`` (every number, the machine and the settings) and ``OUT/summary.md`` (the same
as tables), rewriting both after each part, so a run cut short keeps what it measured. A part that fails
records its error and the next one runs. Parts:

1. ``regularizers``: each regularizer's training step as a ratio to a plain step (LeNet-5 batch 50,
   MLP 5x64 batch 100; ``benchmarks/bench_regularizers.py``), FrobReg with ``strategy="auto"``, ``"loop"``
   and ``"batched"`` (on CUDA "auto" picks batched VJPs).
2. ``grouped``: per-run seconds of SpectReg LeNet-5 runs trained one at a time against in groups.
3. ``resnet_steps``: plain / SpectReg / DataGrad steps of the paper's CIFAR ResNet (48/96/192 x3,
   batch 128) in fp32 and under bf16 autocast, contiguous and channels-last (``bench_resnet.py``).
4. ``cifar_train``: a short real CIFAR-10 training (2,000 points) of the paper's full-width ResNet, the
   baseline and SpectReg (λ 0.003, Table 3's), to confirm the device path trains.

The data travels with the repository: ``python scripts/prepare_gpu_data.py`` copies one CIFAR-10 train
chunk, one test chunk and MNIST into ``.data/gpu`` (ignored by git, about 40 MB). Then, on the GPU machine:

    python benchmarks/gpu_check.py --out results/gpu/h200 --data-dir .data/gpu            # about 8 minutes
    python benchmarks/gpu_check.py --out /tmp/gpu_tiny --budget tiny --device cpu ...     # CI, seconds
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_regularizers  # noqa: E402
import bench_resnet  # noqa: E402

import gradreg  # noqa: E402
from gradreg.data import load_dataset  # noqa: E402
from gradreg.models import CifarResNet  # noqa: E402
from gradreg.train import RunConfig, resolve_device, train, train_group  # noqa: E402


@dataclass(frozen=True)
class Budget:
    reg_rounds: int
    reg_steps: int
    reg_terms: tuple[str, ...] | None   # None: all of bench_regularizers' terms
    group_dataset: str       # "mnist" on the GPU; "digits" (built in) where no MNIST files travel
    group_sizes: tuple[int, ...]
    group_solo: int
    group_steps: int
    resnet_batch: int
    resnet_rounds: int
    layouts: tuple[str, ...]
    train_size: int
    train_steps: int
    eval_points: int
    max_eval: int | None


BUDGETS = {
    # Sized for one H200 within about 8 minutes of wall time, start-up included (unmeasured: no GPU was lent).
    "full": Budget(reg_rounds=5, reg_steps=20, reg_terms=None, group_dataset="mnist", group_sizes=(8, 32, 128), group_solo=4,
                   group_steps=300, resnet_batch=128, resnet_rounds=10, layouts=("contiguous", "channels_last"),
                   train_size=2000, train_steps=3000, eval_points=6, max_eval=None),
    # A smoke test of every code path on a CPU in seconds (tests/test_gpu_check.py).
    "tiny": Budget(reg_rounds=1, reg_steps=1, reg_terms=("spectreg", "frobreg (auto)"), group_dataset="digits", group_sizes=(2,), group_solo=1,
                   group_steps=3, resnet_batch=4, resnet_rounds=1, layouts=("contiguous",),
                   train_size=16, train_steps=2, eval_points=1, max_eval=32),
}


def part_regularizers(b: Budget, device: torch.device, sync) -> dict:
    terms = dict(bench_regularizers.TERMS)
    terms["frobreg (auto)"] = lambda task: gradreg.FrobReg()
    out = {}
    for title, task, model, x, y in bench_regularizers.setups(device):
        names = [n for n in terms if not (task == "regression" and n in ("onehot", "confidence_penalty", "jacreg"))
                 and (b.reg_terms is None or n in b.reg_terms)]
        fns = {"plain": bench_regularizers.make_step(model, x, y, task, None)}
        fns.update({n: bench_regularizers.make_step(model, x, y, task, terms[n](task)) for n in names})
        med = bench_regularizers.measure(fns, b.reg_rounds, b.reg_steps, sync)
        out[title] = {n: {"ms": med[n] * 1e3, "x_plain": med[n] / med["plain"]} for n in fns}
    return out


def part_grouped(b: Budget, device: torch.device, data_dir) -> dict:
    ds = load_dataset(b.group_dataset, data_dir)

    def configs(n: int, seed0: int) -> list[RunConfig]:
        return [RunConfig(dataset=b.group_dataset, train_size=500 if b.group_dataset == "digits" else 2000,
                          model="lenet5", seed=seed0 + i, terms=(("spectreg", 0.03),),
                          overrides=(("steps", b.group_steps), ("eval_points", 1))) for i in range(n)]

    train_group(configs(2, 10_000), dataset=ds, device=device, progress=False)  # warm-up: context, kernels
    t = time.perf_counter()
    for c in configs(b.group_solo, 0):
        train(c, dataset=ds, device=device, progress=False)
    solo = (time.perf_counter() - t) / b.group_solo
    out = {"dataset": b.group_dataset, "steps": b.group_steps, "solo_s_per_run": solo, "groups": {}}
    for g in b.group_sizes:
        t = time.perf_counter()
        train_group(configs(g, 1000), dataset=ds, device=device, progress=False)
        per_run = (time.perf_counter() - t) / g
        out["groups"][str(g)] = {"s_per_run": per_run, "x_solo_throughput": solo / per_run}
    return out


def part_resnet_steps(b: Budget, device: torch.device, sync) -> dict:
    torch.manual_seed(0)
    base = CifarResNet((3, 32, 32), 10)  # the paper's 48/96/192 x3
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(b.resnet_batch, 3, 32, 32, generator=g), torch.randint(0, 10, (b.resnet_batch,), generator=g)
    variants = [(dt, lay) for dt in ("fp32", "bf16") for lay in b.layouts]
    steps = {(dt, lay, t): bench_resnet.make_step(base, x, y, layers="gradreg", layout=lay, bn="train", term=t,
                                                  device=device,
                                                  autocast_dtype=torch.bfloat16 if dt == "bf16" else None)
             for dt, lay in variants for t in bench_resnet.TERMS}
    med = bench_resnet.measure(steps, b.resnet_rounds, sync, warmup=1 if b.resnet_rounds == 1 else 2)
    out = {"batch": b.resnet_batch, "rows": []}
    for dt, lay in variants:
        p = med[(dt, lay, "plain")]
        out["rows"].append({"dtype": dt, "layout": lay, "plain_ms": p * 1e3,
                            **{f"{t}_ms": med[(dt, lay, t)] * 1e3 for t in ("spectreg", "datagrad")},
                            **{f"{t}_x_plain": med[(dt, lay, t)] / p for t in ("spectreg", "datagrad")}})
    return out


def part_cifar_train(b: Budget, device: torch.device, data_dir) -> dict:
    ds = load_dataset("cifar10", data_dir)
    out = {"pool": len(ds.y_pool), "dev": len(ds.y_dev), "test": len(ds.y_test), "runs": {}}
    for name, terms in (("baseline", ()), ("spectreg 0.003", (("spectreg", 0.003),))):
        config = RunConfig(dataset="cifar10", train_size=b.train_size, model="cifar_resnet", terms=terms,
                           max_eval=b.max_eval, overrides=(("steps", b.train_steps), ("eval_points", b.eval_points)))
        r = train(config, dataset=ds, device=device, progress=False)
        out["runs"][name] = {"status": r.status, "seconds": r.seconds, "steps": b.train_steps,
                             **{k: r.metrics.get(k) for k in ("dev_acc", "test_acc", "train_acc")},
                             "curve": [{k: p.get(k) for k in ("step", "train_loss", "dev_acc", "test_acc")}
                                       for p in r.curve]}
    return out


def summary_markdown(res: dict) -> str:
    env = res["environment"]
    lines = [f"# GPU check: {env['device_name']}", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, budget `{res['budget']}`, started {res['started']}, "
             f"{res.get('wall_s', 0):.0f} s wall.", ""]
    parts = res["parts"]
    if "regularizers" in parts and "error" not in parts["regularizers"]:
        lines += ["## Regularizer steps (x plain)", "", "| setup | term | ms/step | x plain |", "|---|---|---|---|"]
        for setup, rows in parts["regularizers"].items():
            lines += [f"| {setup} | {n} | {v['ms']:.2f} | {v['x_plain']:.2f} |" for n, v in rows.items()]
        lines.append("")
    if "grouped" in parts and "error" not in parts["grouped"]:
        gr = parts["grouped"]
        lines += [f"## Grouped LeNet-5 ({gr['dataset']}, SpectReg, {gr['steps']} steps a run)", "",
                  "| runs | s per run | throughput x one at a time |", "|---|---|---|",
                  f"| 1 (one at a time) | {gr['solo_s_per_run']:.3f} | 1.00 |"]
        lines += [f"| {g} grouped | {v['s_per_run']:.3f} | {v['x_solo_throughput']:.2f} |" for g, v in gr["groups"].items()]
        lines.append("")
    if "resnet_steps" in parts and "error" not in parts["resnet_steps"]:
        rs = parts["resnet_steps"]
        lines += [f"## CIFAR ResNet 48/96/192 x3 steps (batch {rs['batch']})", "",
                  "| dtype | layout | plain ms | SpectReg ms | x plain | DataGrad ms | x plain |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['dtype']} | {r['layout']} | {r['plain_ms']:.1f} | {r['spectreg_ms']:.1f} | "
                  f"{r['spectreg_x_plain']:.2f} | {r['datagrad_ms']:.1f} | {r['datagrad_x_plain']:.2f} |" for r in rs["rows"]]
        lines.append("")
    if "cifar_train" in parts and "error" not in parts["cifar_train"]:
        ct = parts["cifar_train"]
        lines += ["## Short CIFAR-10 training, full-width ResNet", "",
                  f"pool {ct['pool']}, dev {ct['dev']}, test {ct['test']} images", "",
                  "| run | status | steps | seconds | dev acc | test acc | train acc |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {n} | {r['status']} | {r['steps']} | {r['seconds']:.1f} | " + " | ".join(
            f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in ("dev_acc", "test_acc", "train_acc")) + " |"
            for n, r in ct["runs"].items()]
        lines.append("")
    failed = [f"- {p}: {v['error'].splitlines()[-1]}" for p, v in parts.items() if "error" in v]
    return "\n".join(lines + (["## Failed parts", "", *failed, ""] if failed else []))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for results.json and summary.md")
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    ap.add_argument("--data-dir", default=".data/gpu", help="CIFAR-10 and MNIST (scripts/prepare_gpu_data.py)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--parts", default="regularizers,grouped,resnet_steps,cifar_train")
    args = ap.parse_args(argv)
    b, device = BUDGETS[args.budget], resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    args.out.mkdir(parents=True, exist_ok=True)
    res = {"budget": args.budget, "settings": b.__dict__, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           "environment": {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                           "device": str(device), "threads": torch.get_num_threads(),
                           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
                           else platform.processor() or platform.machine()},
           "parts": {}, "part_seconds": {}}
    runners = {"regularizers": lambda: part_regularizers(b, device, sync),
               "grouped": lambda: part_grouped(b, device, args.data_dir),
               "resnet_steps": lambda: part_resnet_steps(b, device, sync),
               "cifar_train": lambda: part_cifar_train(b, device, args.data_dir)}
    t0 = time.perf_counter()
    for name in args.parts.split(","):
        if name not in runners:
            raise SystemExit(f"unknown part {name!r}; valid: {', '.join(runners)}")
        t = time.perf_counter()
        try:
            res["parts"][name] = runners[name]()
        except Exception:  # noqa: BLE001  a failed part must not lose the others' measurements
            res["parts"][name] = {"error": traceback.format_exc()}
        res["part_seconds"][name] = time.perf_counter() - t
        res["wall_s"] = time.perf_counter() - t0
        (args.out / "results.json").write_text(json.dumps(res, indent=1, default=str))
        (args.out / "summary.md").write_text(summary_markdown(res))
        print(f"{name}: {res['part_seconds'][name]:.1f} s{' (FAILED)' if 'error' in res['parts'][name] else ''}",
              flush=True)
    return res


if __name__ == "__main__":
    main()
