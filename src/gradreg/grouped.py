"""Grouped training: G runs that differ only in seed and λ, trained as one vectorized computation.

The paper's protocol is many small runs (seeds × λ × cells). A small model leaves most of the
machine idle; G of them stacked into one model fill it. :class:`GroupedModel` stacks G models of one
architecture: chunk g of its input batch (G·B rows) goes through model g, so every regularizer of
:mod:`gradreg.regularizers` applies to it unchanged and returns per-sample penalties that split back
into G runs. The runs' parameters never meet (each output row depends on one member's weights only),
and the optimizers act elementwise, so :func:`train_group` gives each run what :func:`gradreg.train.train`
gives it alone, to float tolerance: same seed streams for the subset, initialization, batch order and
projections. A member whose loss turns non-finite is recorded as diverged and frozen; the others go on.

Dropout: a run's dropout layers draw their masks from the run's own generator
(:class:`gradreg.models.StreamDropout`, set up by :func:`gradreg.train.init_model`), so a group draws
each member's masks from that member's generator, as the member would alone. Models with plain
``nn.Dropout`` (or no generators) still stack; vmap then draws each member's masks independently from
the global stream: the right distribution, not the solo runs' bit pattern.

Limits: :func:`train_group` refuses models with BatchNorm (running statistics are per-run state).
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from . import data as data_mod
from .models import MODEL_INFO, StreamDropout, use_dropout_stream
from .registry import MetadataView
from .regularizers import evaluate_term
from .train import (RunConfig, RunResult, _augment, _progress, eval_steps, flushing_subnormals, init_model,
                    make_optimizer, mark_nonfinite_diverged, metrics, resolve_device, term_weights)

__all__ = ["GroupedModel", "train_group", "group_key", "groupable", "GROUPABLE_MODELS"]

_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.Identity)


class GroupedModel(nn.Module):
    """G models of one architecture as one module: rows ``[g·B, (g+1)·B)`` of the input go through model g.

    Input ``(G·B, ...)``, output ``(G·B, m)``. The members' parameters are stacked along a new first
    dimension (``stacked[i][g]`` is member g's i-th parameter). Sequential stacks of Linear layers and
    elementwise activations run as batched matrix products (``baddbmm``); any other architecture runs
    through ``torch.func.vmap`` over ``functional_call``.
    """

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("GroupedModel needs at least one model")
        first = models[0]
        names = [n for n, _ in first.named_parameters()]
        for m in models[1:]:
            if type(m) is not type(first) or [(n, p.shape) for n, p in m.named_parameters()] != \
                    [(n, p.shape) for n, p in first.named_parameters()]:
                raise ValueError("GroupedModel needs models of one architecture (same parameter names and shapes)")
        if any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in first.modules()):
            raise ValueError("GroupedModel cannot stack BatchNorm models: their running statistics are per-run "
                             "state; train them one by one")
        self.size = len(models)
        self.names = names
        self.stacked = nn.ParameterList([nn.Parameter(torch.stack([dict(m.named_parameters())[n].detach()
                                                                   for m in models]).clone())
                                         for n in names])
        buffers = [n for n, _ in first.named_buffers()]
        for n in buffers:
            self.register_buffer("_b_" + n.replace(".", "_"),
                                 torch.stack([dict(m.named_buffers())[n] for m in models]).clone())
        self._buffer_names = buffers
        # The architecture without its weights: functional_call supplies the stacked ones (and the
        # dropout noise, drawn outside vmap from each member's generator).
        template = _meta_copy(first)
        use_dropout_stream(template, None)
        self._template = [template]
        self._plan = _linear_plan(first)
        self._dropouts = [(n, m) for n, m in template.named_modules() if isinstance(m, StreamDropout) and m.p > 0]
        gens = [_dropout_generator(m) for m in models]
        self.dropout_generators = gens if self._dropouts and all(g is not None for g in gens) else None
        self._noise_shapes: dict[tuple[int, ...], list[tuple[str, float, torch.Size]]] = {}

    @property
    def template(self) -> nn.Module:
        return self._template[0]

    def train(self, mode: bool = True) -> "GroupedModel":
        self.template.train(mode)
        return super().train(mode)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] % self.size:
            raise ValueError(f"a GroupedModel of {self.size} members needs a batch divisible by {self.size}, "
                             f"got {x.shape[0]} rows")
        xg = x.reshape(self.size, x.shape[0] // self.size, *x.shape[1:])
        out = self._forward_linear(xg) if self._plan is not None else self._forward_vmap(xg)
        return out.reshape(x.shape[0], *out.shape[2:])

    def _forward_linear(self, x: Tensor) -> Tensor:
        params = iter(self.stacked)
        for kind, module in self._plan:
            if kind == "flatten":
                x = x.flatten(2)
            elif kind == "linear":
                w = next(params)
                b = next(params) if module.bias is not None else None
                x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)) if b is not None else \
                    torch.bmm(x, w.transpose(1, 2))
            else:
                x = module(x)
        return x

    def _forward_vmap(self, x: Tensor) -> Tensor:
        buffers = {n: getattr(self, "_b_" + n.replace(".", "_")) for n in self._buffer_names}
        if self.training and self.dropout_generators is not None:
            buffers |= self._draw_noise(x)

        def one(params: tuple[Tensor, ...], bufs: dict[str, Tensor], xb: Tensor) -> Tensor:
            return functional_call(self.template, ({**dict(zip(self.names, params)), **bufs}), (xb,))

        return torch.func.vmap(one, randomness="different")(tuple(self.stacked), buffers, x)

    def _draw_noise(self, x: Tensor) -> dict[str, Tensor]:
        """``{"<dropout>.noise": (G, B, ...)}``: each member's masks for this forward, drawn from its own
        generator in the order its layers draw them alone."""
        layers = self._noise_shapes.get(tuple(x.shape[1:]))
        if layers is None:
            layers = self._noise_shapes[tuple(x.shape[1:])] = self._dropout_inputs(x.shape[1:])
        noise: dict[str, list[Tensor]] = {name: [] for name, _, _ in layers}
        for gen in self.dropout_generators:
            for name, p, shape in layers:
                draw = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - p, generator=gen)
                noise[name].append(draw.div_(1 - p))
        return {f"{name}.noise": torch.stack(draws) for name, draws in noise.items()}

    def _dropout_inputs(self, shape: torch.Size) -> list[tuple[str, float, torch.Size]]:
        """The dropout layers a member's forward on ``shape`` calls, in order, with their inputs' shapes
        (found by running the weightless template on a meta tensor)."""
        seen: list[tuple[str, float, torch.Size]] = []
        hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.append((name, mod.p, args[0].shape)))
                 for name, m in self._dropouts]
        try:
            with torch.no_grad():
                self.template(torch.empty(shape, device="meta"))
        finally:
            for h in hooks:
                h.remove()
        names = [n for n, _, _ in seen]
        if len(names) != len(set(names)):
            raise ValueError("GroupedModel cannot replay dropout layers called more than once per forward")
        return seen

    @torch.no_grad()
    def member(self, g: int, model: nn.Module) -> nn.Module:
        """Copy member g's weights into ``model`` (of the members' architecture) and return it."""
        for n, p in zip(self.names, self.stacked):
            model.get_parameter(n).copy_(p[g])
        for n in self._buffer_names:
            model.get_buffer(n).copy_(getattr(self, "_b_" + n.replace(".", "_"))[g])
        return model


def _dropout_generator(model: nn.Module) -> torch.Generator | None:
    """The generator all of ``model``'s StreamDropout layers share, or None (no such one)."""
    gens = {id(m.generator): m.generator for m in model.modules() if isinstance(m, StreamDropout) and m.p > 0}
    return next(iter(gens.values())) if len(gens) == 1 else None


def _meta_copy(model: nn.Module) -> nn.Module:
    import copy

    # The copy shares no generator with the member (the memo maps each to None).
    memo = {id(m.generator): None for m in model.modules() if isinstance(m, StreamDropout) and m.generator is not None}
    return copy.deepcopy(model, memo).to("meta")


def _linear_plan(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The layers of a Sequential of Linear / Flatten / elementwise activations, or None for anything else."""
    if not isinstance(model, nn.Sequential):
        return None
    plan: list[tuple[str, nn.Module]] = []
    for m in model:
        if isinstance(m, nn.Linear):
            plan.append(("linear", m))
        elif isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            plan.append(("flatten", m))
        elif isinstance(m, _ELEMENTWISE) or (isinstance(m, nn.Dropout) and m.p == 0):
            plan.append(("elementwise", m))
        else:
            return None
    return plan


# -- which runs may train together ------------------------------------------------------------------

def group_key(config: RunConfig) -> str:
    """Runs with equal group keys can train as one group: all but seed and λ values agree."""
    same = RunConfig.from_dict(config.to_dict() | {"seed": 0, "terms": [[n, 1.0] for n, _ in config.terms]})
    return same.key()


# The models registered with groupable=True (register_model); a read-only view of that registry.
GROUPABLE_MODELS: Mapping[str, bool] = MetadataView(MODEL_INFO, "groupable")


def groupable(config: RunConfig) -> bool:
    """Whether the run can train in a group and still give its solo result: a model registered as
    groupable, without BatchNorm (per-run running statistics); dropout masks come from each run's own
    stream."""
    info = MODEL_INFO.get(config.model_name)
    return info is not None and info.groupable and not config.batchnorm


# -- training ------------------------------------------------------------------------------------------

def _task_losses(task: str) -> callable:
    """Per-sample task losses ``(N,)`` whose batch mean is the solo run's task loss."""
    if task == "regression":
        return lambda z, y: (z - y.reshape(z.shape).to(z.dtype)).pow(2).flatten(1).mean(1)
    return lambda z, y: F.cross_entropy(z, y, reduction="none")


@torch.inference_mode()
def _evaluate_group(model: GroupedModel, x: Tensor, y: Tensor, task: str, batch_size: int) -> list[dict[str, float]]:
    """Each member's :func:`gradreg.train.evaluate` metrics on the same points."""
    outs = _group_outputs(model, x, batch_size)
    return [metrics(o, y, task) for o in outs]


def _group_outputs(model: GroupedModel, x: Tensor, batch_size: int) -> Tensor:
    """``(G, N, m)``: every member's outputs on the same points ``x`` ``(N, ...)``."""
    rows = torch.arange(len(x), device=x.device)
    return _own_outputs(model, x, rows.unsqueeze(0).expand(model.size, len(x)), batch_size)


@torch.inference_mode()
def _own_outputs(model: GroupedModel, x: Tensor, rows: Tensor, batch_size: int) -> Tensor:
    """``(G, N, m)``: member g's outputs on ``x[rows[g]]``, gathered chunk by chunk so that one forward
    pass holds about ``batch_size`` points in all (at least 64 per member), not G times as many."""
    was_training = model.training
    model.eval()
    per_member = max(64, batch_size // model.size)
    chunks = []
    for i in range(0, rows.shape[1], per_member):
        r = rows[:, i:i + per_member]
        out = model(x[r.reshape(-1)])
        chunks.append(out.reshape(*r.shape, *out.shape[1:]))
    model.train(was_training)
    return torch.cat(chunks, dim=1)


@flushing_subnormals
def train_group(configs: Sequence[RunConfig], *, dataset: data_mod.Dataset | None = None, data_dir=None,
                device: str | torch.device = "auto", progress: bool = True) -> list[RunResult]:
    """Train runs that share a :func:`group_key` together; one :class:`RunResult` per config, in order.

    Each result matches ``train(config)`` alone to float tolerance. ``seconds`` is the group's wall
    time divided by its size.
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
    start = time.perf_counter()
    dev = resolve_device(device)
    first = configs[0]
    recipe = first.resolved_recipe()
    ds = dataset if dataset is not None else data_mod.load_dataset(first.dataset, data_dir)
    G = len(configs)
    idx = [ds.subset_indices(c.train_size, c.seed_for("subset")).to(dev) for c in configs]
    x_pool, y_pool = ds.x_pool.to(dev), ds.y_pool.to(dev)
    n_eval = first.max_eval
    x_dev, y_dev = ds.x_dev[:n_eval].to(dev), ds.y_dev[:n_eval].to(dev)
    x_test, y_test = ds.x_test[:n_eval].to(dev), ds.y_test[:n_eval].to(dev)

    model = GroupedModel([init_model(c, ds, dev) for c in configs]).to(dev)
    opt, sched = make_optimizer(model.parameters(), recipe)
    batch = min(recipe.batch_size, len(idx[0]))
    terms = [term_weights(c, batch) for c in configs]
    regs = [reg for _, reg in terms[0]]
    names = [n for n, _ in first.terms]
    weights = torch.tensor([[w for w, _ in t] for t in terms], device=dev).reshape(G, len(regs))
    task_loss = _task_losses(ds.task)
    gen = {s: [torch.Generator(device=dev).manual_seed(c.seed_for(s)) for c in configs]
           for s in ("order", "projection", "augment")}
    scratch = [torch.Generator(device=dev).manual_seed(g) for g in range(G)]
    eval_at = eval_steps(recipe)
    decay = [p for p, n in zip(model.stacked, model.names) if p.dim() > 2]  # members' weight tensors

    results = [RunResult(config=c, status="done") for c in configs]
    alive = torch.ones(G, device=dev)
    running = torch.zeros(G, 2 + len(regs), device=dev)
    n_running = 0
    perms: list[Tensor | None] = [None] * G
    pos = [len(i) for i in idx]
    bar = _progress(recipe.steps, first, progress)
    if bar is not None:
        bar.set_description(f"{first.dataset} group of {G}")
    stopped = [None] * G  # step at which a member stopped (diverged)
    for step in range(1, recipe.steps + 1):
        rows = []
        for g in range(G):
            if pos[g] + batch > len(idx[g]):
                perms[g], pos[g] = idx[g][torch.randperm(len(idx[g]), generator=gen["order"][g], device=dev)], 0
            rows.append(perms[g][pos[g]:pos[g] + batch])
            pos[g] += batch
        b = torch.cat(rows)
        xb, yb = x_pool[b], y_pool[b]
        if recipe.augment and xb.dim() == 4:
            xb = torch.cat([_augment(c, gn) for c, gn in zip(xb.split(batch), gen["augment"])])
        x = xb.detach().requires_grad_(True) if regs else xb
        logits = model(x)
        task = task_loss(logits, yb).view(G, batch).mean(1)
        parts = []
        for t, reg in enumerate(regs):
            on = weights[:, t] > 0
            if not on.any():
                parts.append(torch.zeros_like(task))
                continue
            # A solo run skips a term whose λ is 0: it draws no projections from the run's stream and
            # logs 0. A member with λ = 0 therefore draws from a scratch generator and is masked out.
            gens = [gen["projection"][g] if w > 0 else scratch[g] for g, w in enumerate(on.tolist())]
            # sample_loss: a DataGrad without a loss of its own differentiates the task's per-sample loss,
            # as inside train()'s Objective (evaluate_term passes it to the terms that take it).
            value = evaluate_term(reg, model, x, logits, yb if reg.needs_labels else None, generator=gens,
                                  differentiable=True, plain=True, sample_loss=task_loss)
            parts.append(torch.where(on, value.view(G, batch).mean(1), 0.0))
        loss = task + sum(weights[:, t] * p for t, p in enumerate(parts)) if parts else task
        if recipe.weight_decay:
            loss = loss + recipe.weight_decay * sum(p.pow(2).flatten(1).sum(1) for p in decay)
        opt.zero_grad(set_to_none=True)
        (loss * alive).sum().backward()
        if not alive.all():  # a stopped member's data may still give 0·NaN gradients: keep it put
            dead = alive == 0
            for p in model.stacked:
                if p.grad is not None:
                    p.grad[dead] = 0
        opt.step()
        sched.step()
        running += torch.stack([loss.detach(), task.detach(), *(p.detach() for p in parts)], dim=1)
        n_running += 1
        if step in eval_at or step % 100 == 0:
            avg = (running / n_running).tolist()
            running.zero_()
            n_running = 0
            for g in range(G):
                if stopped[g] is None and not all(math.isfinite(v) for v in avg[g]):
                    stopped[g] = step
                    results[g].status, results[g].error = "diverged", f"non-finite loss at step {step}"
                    results[g].metrics.update(steps=step, weight_sq_norm=_member_sq_norm(model, g))
                    _freeze(model, opt, g)
                    alive[g] = 0
            if bar is not None:
                bar.set_postfix(alive=int(alive.sum().item()), refresh=False)
            if not alive.any():
                break
            if step in eval_at:
                evals = {split: _evaluate_group(model, xs, ys, ds.task, recipe.eval_batch_size)
                         for split, xs, ys in (("dev", x_dev, y_dev), ("test", x_test, y_test)) if len(xs)}
                for g in range(G):
                    if stopped[g] is None:
                        point = {"step": step, **{f"train_{k}": v for k, v in
                                                  zip(["loss", "task", *_unique(names)], avg[g])}}
                        for split, per_member in evals.items():
                            point.update({f"{split}_{k}": v for k, v in per_member[g].items()})
                        results[g].curve.append(point)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    seconds = (time.perf_counter() - start) / G
    test_outs = _group_outputs(model, x_test, recipe.eval_batch_size) if ds.task == "regression" else None
    train_outs = _own_outputs(model, x_pool, torch.stack(idx), recipe.eval_batch_size)
    for g, (res, cfg) in enumerate(zip(results, configs)):
        res.seconds = seconds
        res.extras["group_size"] = G
        if res.status != "done":
            continue
        res.metrics.update(steps=step, weight_sq_norm=_member_sq_norm(model, g))
        if res.curve:
            res.metrics.update({k: v for k, v in res.curve[-1].items() if k != "step"})
            res.metrics.update({f"train_{k}": v for k, v in metrics(train_outs[g], y_pool[idx[g]], ds.task).items()
                                if k != "loss"})
            mark_nonfinite_diverged(res)
            if test_outs is not None and res.status == "done":
                for name, values in (("test_pred", test_outs[g]), ("train_x", x_pool[idx[g]]),
                                     ("train_y", y_pool[idx[g]])):
                    res.extras[name] = [round(v, 6) for v in values.flatten().cpu().tolist()]
    return results


def _unique(names: list[str]) -> list[str]:
    from .objective import _unique_names

    return _unique_names(names)


def _member_sq_norm(model: GroupedModel, g: int) -> float:
    return float(sum(p[g].detach().pow(2).sum().item() for p in model.stacked))


@torch.no_grad()
def _freeze(model: GroupedModel, opt: torch.optim.Optimizer, g: int) -> None:
    """Zero a diverged member's weights and optimizer state: with its loss masked it then stays put."""
    for p in model.stacked:
        p[g] = 0
        for v in opt.state.get(p, {}).values():
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == model.size:
                v[g] = 0
