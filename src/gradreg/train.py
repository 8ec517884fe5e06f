"""One run: a frozen RunConfig -> trained model -> metrics (the paper's protocol, Section 6).

Seeds are first-class: the run's ``seed`` derives separate streams for the training subset, the
initialization (and dropout), the minibatch order and the regularizers' random projections, so
changing one never shifts another. The same config gives the same numbers on the same machine.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import data as data_mod
from .models import create_model, use_dropout_stream
from .numerics import flush_denormal as _flush_denormal
from .objective import Objective, paper_weight
from .recipes import RECIPES, Recipe, get_recipe
from .registry import MetadataView
from .regularizers import get_regularizer

__all__ = ["RunConfig", "RunResult", "train", "evaluate", "metrics", "resolve_device", "DEFAULT_MODEL"]

# A dataset's default model and training-set size are registered with it (register_dataset); these
# read-only views read that registry.
DEFAULT_MODEL: Mapping[str, str] = MetadataView(data_mod.DATASET_INFO, "model")
DEFAULT_TRAIN_SIZE: Mapping[str, int] = MetadataView(data_mod.DATASET_INFO, "train_size")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result (not where its data lies or which device runs it)."""

    dataset: str = "digits"
    train_size: int | None = None          # points drawn from the pool; None: the dataset's (or the pool)
    model: str | None = None               # None: the dataset's registered model
    batchnorm: bool = False
    recipe: str | None = None              # None: the dataset's registered recipe
    overrides: tuple[tuple[str, Any], ...] = ()   # recipe overrides, e.g. (("weight_decay", 0.0),)
    terms: tuple[tuple[str, float], ...] = ()     # (regularizer, λ) pairs
    weight_convention: str = "paper"       # λ as the paper writes it, or "gradreg" (batch-size independent)
    batch_mode: str = "batch"              # the paper's batch-summed form; same as "sample" without BatchNorm
    n_projections: int = 1
    seed: int = 0
    max_eval: int | None = None            # cap on dev/test points (smoke runs only)

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", tuple(sorted((str(k), v) for k, v in dict(self.overrides).items())))
        object.__setattr__(self, "terms", tuple((str(n), float(w)) for n, w in self.terms))
        if self.weight_convention not in ("paper", "gradreg"):
            raise ValueError(f"weight_convention must be 'paper' or 'gradreg', got {self.weight_convention!r}")
        if self.dataset not in data_mod.DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid: {', '.join(sorted(data_mod.DATASETS))}")
        if self.train_size is None:
            object.__setattr__(self, "train_size", data_mod.dataset_info(self.dataset).train_size)
        if self.train_size is not None and self.train_size < 1:
            raise ValueError(f"train_size must be >= 1, got {self.train_size}")
        for name, weight in self.terms:
            get_regularizer(name, **self._term_options(name))  # unknown names fail here, listing valid ones
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"{name}: weight must be a finite number >= 0, got {weight}")
        # Store overrides as the recipe's typed values so "300" and 300 give the same run key, and drop
        # those equal to the recipe's own value: a run has one key however its recipe was spelled.
        recipe, base = self.resolved_recipe(), self.base_recipe()
        object.__setattr__(self, "overrides", tuple((k, getattr(recipe, k)) for k, _ in self.overrides
                                                    if getattr(recipe, k) != getattr(base, k)))

    def _term_options(self, name: str) -> dict[str, Any]:
        if name == "confidence_penalty":
            return {}
        opts: dict[str, Any] = {"batch_mode": self.batch_mode}
        if name in ("spectreg", "spectreg_spherical", "randomonehot"):
            opts["n_projections"] = self.n_projections
        # DataGrad is given no loss: it differentiates the run's own per-sample task loss (the objective's,
        # which train() and train_group() pick from the loaded dataset's task), whatever the dataset.
        return opts

    @property
    def model_name(self) -> str:
        return self.model or data_mod.dataset_info(self.dataset).model

    def base_recipe(self) -> Recipe:
        """The named recipe (or the dataset's), before overrides."""
        return get_recipe(self.recipe or data_mod.dataset_info(self.dataset).recipe)

    def resolved_recipe(self) -> Recipe:
        return self.base_recipe().replace(**dict(self.overrides))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["overrides"] = dict(self.overrides)
        d["terms"] = [list(t) for t in self.terms]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """The config of ``to_dict()`` or of ``resolved_dict()`` (a results row): the latter names its
        recipe by its values, and gets back the registered recipe those values and overrides come from."""
        d = dict(d)
        d["overrides"] = tuple(dict(d.get("overrides", {})).items())
        d["terms"] = tuple(tuple(t) for t in d.get("terms", ()))
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown run config key(s): {', '.join(unknown)}")
        if isinstance(d.get("recipe"), dict):
            return cls._from_resolved(d)
        return cls(**d)

    @classmethod
    def _from_resolved(cls, d: dict[str, Any]) -> "RunConfig":
        want = _canonical(d | {"overrides": dict(d["overrides"]), "terms": [list(t) for t in d["terms"]]})
        # The dataset's own model and recipe first: a config leaves those unset unless it chose others.
        for model, recipe in itertools.product((None, d["model"]), (None, *sorted(RECIPES))):
            try:
                candidate = cls(**(d | {"model": model, "recipe": recipe}))
            except (TypeError, ValueError):
                continue
            if _canonical(candidate.resolved_dict()) == want:
                return candidate
        raise ValueError(f"a stored run config whose recipe values match no registered recipe with its "
                         f"overrides: {d['recipe']}")

    def resolved_dict(self) -> dict[str, Any]:
        """What the run is: ``to_dict()`` with the model's name and the recipe's values filled in. Results
        rows store it, and :meth:`key` hashes exactly it, so a row says what ran even after a recipe's
        or a dataset's defaults change."""
        return self.to_dict() | {"model": self.model_name, "recipe": dataclasses.asdict(self.resolved_recipe())}

    def key(self) -> str:
        """A stable hash of :meth:`resolved_dict`: the run's identity in the results store."""
        return hashlib.sha256(_canonical(self.resolved_dict()).encode()).hexdigest()[:16]

    def seed_for(self, stream: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{self.seed}:{stream}".encode()).digest()[:7], "little")


def _canonical(d: dict[str, Any]) -> str:
    return json.dumps(d, sort_keys=True)


@dataclass
class RunResult:
    config: RunConfig
    status: str                               # "done" or "diverged" ("failed" is set by the sweep)
    metrics: dict[str, float] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.resolved_dict(), "key": self.config.key(), "status": self.status,
                "metrics": self.metrics, "curve": self.curve, "extras": self.extras,
                "seconds": self.seconds, "error": self.error}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _weight_penalty(model: nn.Module) -> Tensor:
    """sum(w**2) over weight tensors (dim > 1: conv and dense kernels), the paper's weight decay term."""
    return sum(p.pow(2).sum() for p in model.parameters() if p.dim() > 1)


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


def term_weights(config: RunConfig, batch: int) -> list[tuple[float, Any]]:
    """``(λ in gradreg's convention, regularizer)`` for each of the run's terms."""
    convert = paper_weight if config.weight_convention == "paper" else (lambda n, w, b: w)
    return [(convert(n, w, batch), get_regularizer(n, **config._term_options(n))) for n, w in config.terms]


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
    on by default) change speed and the last float digits, not the run.
    """
    start = time.perf_counter()
    dev = resolve_device(device)
    recipe = config.resolved_recipe()
    ds = dataset if dataset is not None else data_mod.load_dataset(config.dataset, data_dir)
    idx = ds.subset_indices(config.train_size, config.seed_for("subset")).to(dev)
    fmt = (torch.channels_last if use_channels_last(memory_format, dev, ds.x_pool.dim(), config.model_name)
           else torch.contiguous_format)
    x_pool, y_pool = ds.x_pool.to(dev, memory_format=fmt), ds.y_pool.to(dev)
    n_eval = config.max_eval
    x_dev, y_dev = ds.x_dev[:n_eval].to(dev, memory_format=fmt), ds.y_dev[:n_eval].to(dev)
    x_test, y_test = ds.x_test[:n_eval].to(dev, memory_format=fmt), ds.y_test[:n_eval].to(dev)

    model = init_model(config, ds, dev).to(memory_format=fmt)
    opt, sched = make_optimizer(model.parameters(), recipe)
    batch = min(recipe.batch_size, len(idx))
    objective = Objective("mse" if ds.task == "regression" else "cross_entropy", term_weights(config, batch))
    gen = {s: torch.Generator(device=dev).manual_seed(config.seed_for(s)) for s in ("order", "projection", "augment")}
    eval_at = eval_steps(recipe)

    result = RunResult(config=config, status="done")
    running = torch.zeros(2 + len(objective.names), device=dev)  # loss, task, terms: summed between logs
    n_running, perm, pos = 0, None, len(idx)
    bar = _progress(recipe.steps, config, progress)
    for step in range(1, recipe.steps + 1):
        if pos + batch > len(idx):
            perm, pos = idx[torch.randperm(len(idx), generator=gen["order"], device=dev)], 0
        b = perm[pos:pos + batch]
        pos += batch
        xb, yb = x_pool[b], y_pool[b]
        if recipe.augment and xb.dim() == 4:
            xb = _augment(xb, gen["augment"])
        out = objective(model, xb, yb, generator=gen["projection"])
        loss = out.loss + recipe.weight_decay * _weight_penalty(model) if recipe.weight_decay else out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += torch.stack([loss.detach(), out.task.detach(), *(t.detach() for t in out.terms.values())])
        n_running += 1
        if step in eval_at or step % 100 == 0:
            avg = dict(zip(["loss", "task", *objective.names], (running / n_running).tolist()))
            running.zero_()
            n_running = 0
            if not all(math.isfinite(v) for v in avg.values()):
                result.status, result.error = "diverged", f"non-finite loss at step {step}"
                break
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in avg.items()}, refresh=False)
            if step in eval_at:
                point = {"step": step, **{f"train_{k}": v for k, v in avg.items()}}
                for split, xs, ys in (("dev", x_dev, y_dev), ("test", x_test, y_test)):
                    if len(xs):
                        point.update({f"{split}_{k}": v for k, v in
                                      evaluate(model, xs, ys, ds.task, recipe.eval_batch_size).items()})
                result.curve.append(point)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    result.metrics["steps"] = step
    result.metrics["weight_sq_norm"] = float(sum(p.detach().pow(2).sum().item() for p in model.parameters()))
    if result.status == "done" and result.curve:
        result.metrics.update({k: v for k, v in result.curve[-1].items() if k != "step"})
        train_eval = evaluate(model, x_pool[idx], y_pool[idx], ds.task, recipe.eval_batch_size)
        result.metrics.update({f"train_{k}": v for k, v in train_eval.items() if k != "loss"})
        mark_nonfinite_diverged(result)
        if result.status == "done" and ds.task == "regression":
            with torch.inference_mode():
                model.eval()
                # Six decimals are far below the fits' errors and keep the results database small.
                for name, values in (("test_pred", model(x_test)), ("train_x", x_pool[idx]), ("train_y", y_pool[idx])):
                    result.extras[name] = [round(v, 6) for v in values.flatten().cpu().tolist()]
    result.seconds = time.perf_counter() - start
    if keep_model:
        result.extras["model"] = model
    return result


def mark_nonfinite_diverged(result: RunResult) -> None:
    """Mark a finished run ``diverged`` when a final metric is not finite. The training loss is checked
    before each update, so the last updates can still break the weights; argmax accuracy would then
    look finite while the losses and the weight norm are NaN."""
    bad = sorted(k for k, v in result.metrics.items() if isinstance(v, float) and not math.isfinite(v))
    if result.status == "done" and bad:
        result.status, result.error = "diverged", f"non-finite final metric(s): {', '.join(bad)}"


def _progress(total: int, config: RunConfig, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    terms = ",".join(f"{n}={w:g}" for n, w in config.terms) or "plain"
    return tqdm(total=total, desc=f"{config.dataset} {terms} seed={config.seed}", unit="step",
                dynamic_ncols=True, leave=False, mininterval=0.5)
