"""The training loop: runs of :class:`~gradreg.run_config.RunConfig` -> trained models -> metrics
(the paper's protocol, Section 6).

One loop trains every run. :func:`train` is one run; :func:`train_group` is G runs that differ only in
seed and λ, stacked into one :class:`~gradreg.GroupedModel` and trained as one vectorized computation,
each member on its own training subset, initialization, batch order and projections, as it would be
alone. The objective (task loss plus weighted terms) is :class:`~gradreg.Objective`, with one weight
per member in a group (``groups=G``). A run whose loss turns non-finite is recorded as diverged; in a
group it is frozen and the others go on.
"""
from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import data as data_mod
from .models import create_model, use_dropout_stream
from .numerics import flush_denormal as _flush_denormal
from .objective import Objective
from .planner import GROUPABLE_MODELS, group_key, groupable
from .recipes import Recipe
from .run_config import (DEFAULT_MODEL, DEFAULT_TRAIN_SIZE, RunConfig, RunResult,  # noqa: F401 (importable from here)
                         resolve_device, term_weights)
from .stacking import GroupedModel

__all__ = ["RunConfig", "RunResult", "train", "train_group", "evaluate", "metrics", "resolve_device",
           "DEFAULT_MODEL"]


def _augment(x: Tensor, gen: torch.Generator, pad: int = 4) -> Tensor:
    """Random horizontal flip and translation by up to ``pad`` pixels (zero fill), per sample (6.2.5)."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=gen, device=gen.device).to(x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    xp = F.pad(x, (pad, pad, pad, pad))
    dy, dx = (torch.randint(0, 2 * pad + 1, (2, b), generator=gen, device=gen.device).to(x.device))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    return xp[torch.arange(b, device=x.device)[:, None, None, None],
              torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]


@torch.inference_mode()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, task: str, batch_size: int) -> dict[str, float]:
    """Accuracy (%) / top-5 / mean loss for classification, MSE for regression, in large batches."""
    was_training = model.training
    model.eval()
    outs = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return metrics(outs, y, task)


def metrics(outs: Tensor, y: Tensor, task: str) -> dict[str, float]:
    """The metrics of outputs ``(N, m)`` against targets: what :func:`evaluate` reports."""
    if task == "regression":
        return {"mse": F.mse_loss(outs, y.reshape(outs.shape)).item()}
    res = {"acc": 100.0 * (outs.argmax(1) == y).float().mean().item(),
           "loss": F.cross_entropy(outs, y).item()}
    if outs.shape[1] > 5:  # top-5 means something from 6 classes on (the poster reports it for 200)
        res["top5"] = 100.0 * (outs.topk(5, dim=1).indices == y[:, None]).any(1).float().mean().item()
    return res


def init_model(config: RunConfig, ds: data_mod.Dataset, device: torch.device) -> nn.Module:
    """The run's model, initialized from its own seed stream, which then drives its dropout masks: its
    dropout layers draw from a generator that continues the stream where initialization left it."""
    torch.manual_seed(config.seed_for("init"))
    model = create_model(config.model_name, input_shape=tuple(ds.input_shape), num_outputs=ds.num_outputs,
                         batchnorm=config.batchnorm, dropout=config.resolved_recipe().dropout).to(device)
    use_dropout_stream(model, _forked_default_generator(device))
    return model


def _forked_default_generator(device: torch.device) -> torch.Generator | None:
    """A new generator in the state of ``device``'s default one (which stays where it is); None (draw
    from the default one) on devices other than CPU and CUDA."""
    if device.type not in ("cpu", "cuda"):
        return None
    gen = torch.Generator(device=device)
    gen.set_state(torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state())
    return gen


def make_optimizer(params, recipe: Recipe) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The recipe's optimizer and step-wise learning-rate schedule. Both act elementwise, so a stack of
    runs' parameters (grouped training) steps exactly as each run would alone."""
    if recipe.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=recipe.lr, betas=recipe.betas)
    else:
        opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                              dampening=0.0)
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, recipe.milestones(), gamma=recipe.lr_factor)


def eval_steps(recipe: Recipe) -> list[int]:
    """The steps where the learning curve gets a point (the last one is the run's result)."""
    return sorted({max(1, round(recipe.steps * (i + 1) / recipe.eval_points)) for i in range(recipe.eval_points)})


def use_channels_last(memory_format: str, device: torch.device, input_dim: int, model: str | None = None) -> bool:
    """Whether a run stores images and conv weights channels-last. ``"auto"``: on CPU as measured for
    ``model`` (:data:`gradreg.models.CPU_CHANNELS_LAST`: faster for LeNet-5 and, with
    :mod:`gradreg.layers`, for the CIFAR ResNet, in plain and double-backprop steps alike;
    ``benchmarks/README.md``), channels-last for a model not measured there; on CUDA it was not measured,
    so it stays off there."""
    from .models import CPU_CHANNELS_LAST

    if memory_format not in ("auto", "channels_last", "contiguous"):
        raise ValueError(f"memory_format must be auto, channels_last or contiguous, got {memory_format!r}")
    if input_dim != 4 or memory_format == "contiguous":
        return False
    if memory_format == "channels_last":
        return True
    return device.type == "cpu" and CPU_CHANNELS_LAST.get(model, True)


def flushing_subnormals(fn):
    """Give a training function the keyword ``flush_denormal`` (bool or None: the process default,
    :func:`gradreg.numerics.default_flush_denormal`): subnormal floats are flushed to zero on CPU for the
    whole call, training and evaluation, and each result's ``extras["flush_denormal"]`` records whether
    they were, as measured. An execution setting like the memory format: it changes speed and the last
    float digits, not the run, so it is not part of the run key (``results/REPRODUCTION.md``).

    Each result's ``extras["cpu_seconds"]`` is the process's CPU time for the call (divided among a
    group's runs, as ``seconds`` is): unlike wall time it does not grow when other processes share the
    cores, so it is what the cost model of ``gradreg experiments`` is checked against."""
    @functools.wraps(fn)
    def wrapper(*args: Any, flush_denormal: bool | None = None, **kwargs: Any):
        cpu = time.process_time()
        with _flush_denormal(flush_denormal) as flushed:
            out = fn(*args, **kwargs)
        results = out if isinstance(out, list) else [out]
        cpu = (time.process_time() - cpu) / max(1, len(results))
        for result in results:
            result.extras["flush_denormal"] = flushed
            result.extras["cpu_seconds"] = round(cpu, 3)
        return out
    return wrapper


@flushing_subnormals
def train(config: RunConfig, *, dataset: data_mod.Dataset | None = None, data_dir=None,
          device: str | torch.device = "auto", progress: bool = True, keep_model: bool = False,
          memory_format: str = "auto") -> RunResult:
    """Train one run and return its metrics. A non-finite loss stops it early as ``diverged``.

    ``memory_format`` (:func:`use_channels_last`) and ``flush_denormal`` (:func:`flushing_subnormals`,
    on by default) change speed and the last float digits, not the run. ``keep_model``: the trained
    model in ``extras["model"]``.
    """
    return _train([config], dataset=dataset, data_dir=data_dir, device=device, progress=progress,
                  keep_model=keep_model, memory_format=memory_format)[0]


@flushing_subnormals
def train_group(configs: Sequence[RunConfig], *, dataset: data_mod.Dataset | None = None, data_dir=None,
                device: str | torch.device = "auto", progress: bool = True) -> list[RunResult]:
    """Train runs that share a :func:`~gradreg.planner.group_key` together, stacked into one
    :class:`~gradreg.GroupedModel`; one :class:`RunResult` per config, in order.

    Each result matches ``train(config)`` alone to float tolerance (a group of one is ``train``
    itself). ``seconds`` is the group's wall time divided by its size; ``extras["group_size"]`` is G.
    """
    configs = list(configs)
    if not configs:
        return []
    keys = {group_key(c) for c in configs}
    if len(keys) > 1:
        raise ValueError("train_group needs runs that differ only in seed and λ (equal group_key); "
                         f"got {len(keys)} different groups")
    if not groupable(configs[0]):
        raise ValueError(f"{configs[0].model_name} (batchnorm={configs[0].batchnorm}) cannot train grouped; "
                         f"groupable: {', '.join(sorted(GROUPABLE_MODELS))} without BatchNorm")
    results = _train(configs, dataset=dataset, data_dir=data_dir, device=device, progress=progress)
    for result in results:
        result.extras["group_size"] = len(configs)
    return results


def _train(configs: list[RunConfig], *, dataset: data_mod.Dataset | None, data_dir, device: str | torch.device,
           progress: bool, keep_model: bool = False, memory_format: str = "auto") -> list[RunResult]:
    """The loop: G runs of one group (G = 1: a plain model, else a GroupedModel of G members)."""
    start = time.perf_counter()
    dev = resolve_device(device)
    first, G = configs[0], len(configs)
    recipe = first.resolved_recipe()
    ds = dataset if dataset is not None else data_mod.load_dataset(first.dataset, data_dir)
    idx = [ds.subset_indices(c.train_size, c.seed_for("subset")).to(dev) for c in configs]
    fmt = (torch.channels_last if G == 1 and use_channels_last(memory_format, dev, ds.x_pool.dim(), first.model_name)
           else torch.contiguous_format)
    x_pool, y_pool = ds.x_pool.to(dev, memory_format=fmt), ds.y_pool.to(dev)
    n_eval = first.max_eval
    x_dev, y_dev = ds.x_dev[:n_eval].to(dev, memory_format=fmt), ds.y_dev[:n_eval].to(dev)
    x_test, y_test = ds.x_test[:n_eval].to(dev, memory_format=fmt), ds.y_test[:n_eval].to(dev)

    members = [init_model(c, ds, dev) for c in configs]
    model = members[0].to(memory_format=fmt) if G == 1 else GroupedModel(members).to(dev)
    opt, sched = make_optimizer(model.parameters(), recipe)
    batch = min(recipe.batch_size, len(idx[0]))
    task_loss = "mse" if ds.task == "regression" else "cross_entropy"
    weights = [term_weights(c, batch) for c in configs]
    if G == 1:
        objective = Objective(task_loss, weights[0])
    else:  # term t of the group: one weight per member
        objective = Objective(task_loss, [(tuple(w[t][0] for w in weights), reg)
                                          for t, (_, reg) in enumerate(weights[0])], groups=G)
    gen = {s: [torch.Generator(device=dev).manual_seed(c.seed_for(s)) for c in configs]
           for s in ("order", "projection", "augment")}
    projection = gen["projection"][0] if G == 1 else gen["projection"]
    eval_at = eval_steps(recipe)

    results = [RunResult(config=c, status="done") for c in configs]
    alive = torch.ones(G, device=dev)
    running = torch.zeros(G, 2 + len(objective.names), device=dev)  # loss, task, terms: summed between logs
    n_running = 0
    perms: list[Tensor | None] = [None] * G
    pos = [len(i) for i in idx]
    bar = _progress(recipe.steps, first, progress, G)
    for step in range(1, recipe.steps + 1):
        rows = []
        for g in range(G):
            if pos[g] + batch > len(idx[g]):
                perms[g], pos[g] = idx[g][torch.randperm(len(idx[g]), generator=gen["order"][g], device=dev)], 0
            rows.append(perms[g][pos[g]:pos[g] + batch])
            pos[g] += batch
        b = rows[0] if G == 1 else torch.cat(rows)
        xb, yb = x_pool[b], y_pool[b]
        if recipe.augment and xb.dim() == 4:
            xb = _augment(xb, gen["augment"][0]) if G == 1 else \
                torch.cat([_augment(c, gn) for c, gn in zip(xb.split(batch), gen["augment"])])
        out = objective(model, xb, yb, generator=projection)
        loss = out.loss + recipe.weight_decay * _weight_penalty(model) if recipe.weight_decay else out.loss
        opt.zero_grad(set_to_none=True)
        (loss if G == 1 else (loss * alive).sum()).backward()
        if not alive.all():  # a stopped member's data may still give 0·NaN gradients: keep it put
            for p in model.parameters():
                if p.grad is not None:
                    p.grad[alive == 0] = 0
        opt.step()
        sched.step()
        running += torch.stack([loss.detach(), out.task.detach(), *(t.detach() for t in out.terms.values())],
                               dim=-1).reshape(G, -1)
        n_running += 1
        if step in eval_at or step % 100 == 0:
            avg = (running / n_running).tolist()
            running.zero_()
            n_running = 0
            for g, res in enumerate(results):
                if alive[g] and not all(math.isfinite(v) for v in avg[g]):
                    res.status, res.error = "diverged", f"non-finite loss at step {step}"
                    res.metrics.update(steps=step, weight_sq_norm=_sq_norm(model, g))
                    alive[g] = 0
                    if G > 1:
                        model.freeze(g, opt)
            if not alive.any():
                break
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in zip(["loss", "task", *objective.names], avg[0])}
                                if G == 1 else {"alive": int(alive.sum().item())}, refresh=False)
            if step in eval_at:
                evals = {split: [metrics(o, ys, ds.task) for o in _outputs(model, xs, recipe.eval_batch_size)]
                         for split, xs, ys in (("dev", x_dev, y_dev), ("test", x_test, y_test)) if len(xs)}
                for g, res in enumerate(results):
                    if alive[g]:
                        point = {"step": step, **{f"train_{k}": v for k, v in
                                                  zip(["loss", "task", *objective.names], avg[g])}}
                        for split, per_member in evals.items():
                            point.update({f"{split}_{k}": v for k, v in per_member[g].items()})
                        res.curve.append(point)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    finished = any(res.status == "done" and res.curve for res in results)
    test_outs = _outputs(model, x_test, recipe.eval_batch_size) if finished and ds.task == "regression" else None
    train_outs = _own_outputs(model, x_pool, idx, recipe.eval_batch_size) if finished else None
    for g, res in enumerate(results):
        if res.status != "done":
            continue
        res.metrics.update(steps=step, weight_sq_norm=_sq_norm(model, g))
        if res.curve:
            res.metrics.update({k: v for k, v in res.curve[-1].items() if k != "step"})
            res.metrics.update({f"train_{k}": v for k, v in metrics(train_outs[g], y_pool[idx[g]], ds.task).items()
                                if k != "loss"})
            mark_nonfinite_diverged(res)
            if test_outs is not None and res.status == "done":
                # Six decimals are far below the fits' errors and keep the results database small.
                for name, values in (("test_pred", test_outs[g]), ("train_x", x_pool[idx[g]]),
                                     ("train_y", y_pool[idx[g]])):
                    res.extras[name] = [round(v, 6) for v in values.flatten().cpu().tolist()]
    seconds = (time.perf_counter() - start) / G
    for g, res in enumerate(results):
        res.seconds = seconds
        if keep_model:
            res.extras["model"] = model if G == 1 else model.member(g, members[g])
    return results


def _weight_penalty(model: nn.Module) -> Tensor:
    """sum(w**2) over weight tensors (dim > 1: conv and dense kernels), the paper's weight decay term;
    ``(G,)`` for a GroupedModel, one per member."""
    if isinstance(model, GroupedModel):
        return model.weight_penalty()
    return sum(p.pow(2).sum() for p in model.parameters() if p.dim() > 1)


def _sq_norm(model: nn.Module, g: int) -> float:
    if isinstance(model, GroupedModel):
        return model.sq_norm(g)
    return float(sum(p.detach().pow(2).sum().item() for p in model.parameters()))


@torch.inference_mode()
def _outputs(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """``(G, N, m)``: every member's eval-mode outputs on the same points ``x``, in chunks."""
    if isinstance(model, GroupedModel):
        rows = torch.arange(len(x), device=x.device)
        return model.outputs(x, rows.unsqueeze(0).expand(model.size, len(x)), batch_size)
    was_training = model.training
    model.eval()
    outs = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return outs.unsqueeze(0)


def _own_outputs(model: nn.Module, x: Tensor, idx: list[Tensor], batch_size: int) -> Tensor:
    """``(G, N, m)``: member g's eval-mode outputs on its own points ``x[idx[g]]``."""
    if isinstance(model, GroupedModel):
        return model.outputs(x, torch.stack(idx), batch_size)
    return _outputs(model, x[idx[0]], batch_size)


def mark_nonfinite_diverged(result: RunResult) -> None:
    """Mark a finished run ``diverged`` when a final metric is not finite. The training loss is checked
    before each update, so the last updates can still break the weights; argmax accuracy would then
    look finite while the losses and the weight norm are NaN."""
    bad = sorted(k for k, v in result.metrics.items() if isinstance(v, float) and not math.isfinite(v))
    if result.status == "done" and bad:
        result.status, result.error = "diverged", f"non-finite final metric(s): {', '.join(bad)}"


def _progress(total: int, config: RunConfig, enabled: bool, group: int = 1):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    terms = ",".join(f"{n}={w:g}" for n, w in config.terms) or "plain"
    desc = f"{config.dataset} {terms} seed={config.seed}" if group == 1 else f"{config.dataset} group of {group}"
    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=False, mininterval=0.5)
