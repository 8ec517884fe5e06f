"""The base of every term: the per-sample context a term differentiates in, the :class:`Regularizer`
base class (input checks, the shared forward pass, batch coupling) and the registry.

The terms themselves, and what the options mean, are in :mod:`gradreg.regularizers`.
"""
from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .wrt import INPUT, Wrt, coupling_modules, pick_output, run_forward, warn_once
from .wrt import _entries as _items


_NORMS = ("l2sq", "l1")
_BATCH_MODES = ("sample", "batch")
_PROJECTIONS = ("sample", "batch")
_STRATEGIES = ("auto", "loop", "batched")


def couples_batch(model) -> bool:
    """True when ``model``'s output for one sample depends on the other samples of the batch.

    That is the case for BatchNorm layers that normalize with batch statistics: in train mode, or in
    any mode when built with ``track_running_stats=False``.
    """
    return bool(coupling_modules(model))


def _norm(g: Tensor, norm: str) -> Tensor:
    g = g if g.dim() == 2 else g.flatten(1)
    return g.pow(2).sum(1) if norm == "l2sq" else g.abs().sum(1)


@dataclass
class _Context:
    """Everything a term needs after the shared forward pass.

    A term differentiates ``z`` w.r.t. ``x`` through :meth:`vjp` / :meth:`vjp_norms`, which return
    per-sample gradients already restricted to ``wrt``'s features. ``forward(t)`` re-evaluates the
    outputs with ``x`` replaced by ``t`` (for estimators that perturb x instead of backpropagating);
    ``sample_loss(z, y)`` is the objective's per-sample task loss (None outside an Objective).
    """

    x: Tensor            # (N, ...) the differentiated tensor (input or hidden), requires grad
    z: Tensor            # (n, m) outputs, n <= N, row i computed from x[i]
    y: Tensor | None     # (n,) class indices or (n, m) targets
    coupled: bool        # compute diagonal blocks exactly (sample mode on a coupling model)
    create_graph: bool   # keep the graph so the penalty can be backpropagated to the weights
    generator: torch.Generator | Sequence[torch.Generator] | None
    strategy: str = "auto"
    wrt: Wrt | None = None                                           # None: all of x's features
    forward: Callable[[Tensor], Tensor] | None = None                # t -> (N, m) outputs
    sample_loss: Callable[[Tensor, Tensor], Tensor] | None = None    # (z, y) -> (n,)

    def select(self, g: Tensor, start: int = 1) -> Tensor:
        """``g``'s selected features (dims from ``start`` on are one sample's); ``g`` when all are."""
        return g if self.wrt is None or self.wrt.features is None else self.wrt.select(g, start)

    @property
    def n(self) -> int:
        return self.z.shape[0]

    def randn(self, k: int, rows: int, m: int) -> Tensor:
        """``(k, rows, m)`` standard normal draws; ``rows`` is ``n`` or 1 (one draw shared by the batch)."""
        return self._draw(lambda g, dev, r: torch.randn((k, r, m), generator=g, device=dev, dtype=self.z.dtype),
                          rows)

    def randint(self, high: int, k: int, rows: int) -> Tensor:
        """``(k, rows)`` integers in ``[0, high)``, drawn like :meth:`randn`."""
        return self._draw(lambda g, dev, r: torch.randint(high, (k, r), generator=g, device=dev), rows)

    def _draw(self, sample, rows: int) -> Tensor:
        gens = self.generator
        if gens is None or isinstance(gens, torch.Generator):
            return sample(gens, gens.device if gens is not None else self.z.device, rows).to(self.z.device)
        # One generator per equal chunk of the batch (grouped training): chunk c draws exactly what a
        # run of its own, with that generator and that batch, would draw.
        if self.n % len(gens):
            raise ValueError(f"{len(gens)} generators for a batch of {self.n}: one per equal chunk expected")
        chunk = self.n // len(gens)
        parts = [sample(g, g.device, chunk if rows == self.n else 1).to(self.z.device) for g in gens]
        return torch.cat([p.expand(p.shape[0], chunk, *p.shape[2:]) for p in parts], dim=1)

    def vjp(self, outputs: Tensor, cotangent: Tensor) -> Tensor:
        """Per-sample input gradients ``(n, ...)`` of ``<outputs, cotangent>``, diagonal blocks if coupled."""
        if not self.coupled:
            (g,) = torch.autograd.grad(outputs, self.x, cotangent, retain_graph=True,
                                       create_graph=self.create_graph)
            # Slicing only when there are extra rows: every view is one more node in the double backward.
            return self.select(g if g.shape[0] == self.n else g[: self.n])
        # Sample i's own block only: probe i carries cotangent row i alone, and we keep gradient row i.
        n = self.n
        eye = torch.arange(n, device=cotangent.device)
        probes = torch.zeros((n,) + tuple(cotangent.shape), dtype=cotangent.dtype, device=cotangent.device)
        probes[eye, eye] = cotangent
        g = self._batched_grad(outputs, probes)
        return self.select(g[eye, eye])

    def vjp_norms(self, outputs: Tensor, cotangents: Tensor, norm: str) -> Tensor:
        """``(P, n)`` norms of the per-sample input gradients for P cotangents ``(P, n, m)``."""
        if cotangents.shape[0] == 1:
            return _norm(self.vjp(outputs, cotangents[0]), norm).unsqueeze(0)
        if self.coupled or self._strategy(cotangents.shape[0]) == "loop":
            return torch.stack([_norm(self.vjp(outputs, c), norm) for c in cotangents])
        g = self.select(self._batched_grad(outputs, cotangents)[:, : self.n], 2)
        return _norm(g.flatten(0, 1), norm).view(cotangents.shape[0], self.n)

    def _strategy(self, p: int) -> str:
        if self.strategy != "auto":
            return self.strategy
        # Measured in benchmarks/bench_regularizers.py: on CPU a loop of VJPs beats vmap-batched VJPs
        # (the batched double-backward materializes P copies of every activation gradient); on CUDA
        # batching removes P-1 kernel-launch rounds and wins.
        return "batched" if self.z.is_cuda else "loop"

    def _batched_grad(self, outputs: Tensor, probes: Tensor) -> Tensor:
        if self.strategy == "loop" or (self.strategy == "auto" and not self.z.is_cuda and self.coupled):
            return torch.stack([
                torch.autograd.grad(outputs, self.x, c, retain_graph=True, create_graph=self.create_graph)[0]
                for c in probes
            ])
        (g,) = torch.autograd.grad(outputs, self.x, probes, retain_graph=True,
                                   create_graph=self.create_graph, is_grads_batched=True)
        return g


@dataclass(frozen=True)
class Regularizer(abc.ABC):
    """Base class: validates inputs, prepares the forward pass, returns per-sample penalties ``(B,)``.

    Keyword-only options of every term: ``wrt`` (the differentiated tensor: None for the model input, a
    submodule name, feature indices or mask, or a :class:`gradreg.Wrt`); ``output`` (picks the outputs
    from a structured model return: index, key, attribute name or callable); ``couples_batch`` (True or
    False says whether the model couples the samples of a batch; None detects it).
    """

    norm: str = "l2sq"
    batch_mode: str = "sample"
    _: dataclasses.KW_ONLY
    wrt: Any = None
    output: Any = None
    couples_batch: bool | None = None

    name: ClassVar[str] = ""
    needs_labels: ClassVar[bool] = False
    uses_jacobian: ClassVar[bool] = True   # differentiates the wrt tensor (it is made to require grad)
    uses_input: ClassVar[bool] = True      # reads the wrt tensor (estimators perturb it)
    # What the costly-path warning says the exact per-sample path does, and the batch form instead.
    coupled_cost: ClassVar[tuple[str, str]] = (
        "computes each sample's own Jacobian exactly, with one backward pass per sample and projection",
        "takes one backward pass")

    def __post_init__(self) -> None:
        _check_choice("norm", self.norm, _NORMS)
        _check_choice("batch_mode", self.batch_mode, _BATCH_MODES)
        object.__setattr__(self, "wrt", Wrt.of(self.wrt))
        if self.couples_batch not in (None, True, False):
            raise ValueError(f"{self.name}: couples_batch must be None, True or False, got {self.couples_batch!r}")

    def __call__(self, model: Callable, x, y: Tensor | None = None, *,
                 logits: Tensor | None = None,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Tensor:
        differentiable = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        wrt = self.wrt or INPUT
        with torch.inference_mode(False), torch.enable_grad():
            if logits is None:
                detect = self.uses_input and self.batch_mode == "sample" and self.couples_batch is None
                fwd = run_forward(model, x, [(wrt, self.uses_jacobian)] if self.uses_input else [],
                                  output=self.output, where=self.name, detect=detect)
                t, z = fwd.tensors.get((wrt.module, wrt.input)), fwd.z
                coupled = self.coupling(model, fwd.coupled.get((wrt.module, wrt.input)))
                forward = fwd.rerun(wrt) if self.uses_input else None
            else:
                if wrt.module is not None:
                    raise ValueError(f"{self.name}: wrt names module {wrt.module!r}; pass logits=None so the "
                                     "term runs the forward pass and captures that module's output")
                t = x if isinstance(x, Tensor) else dict(_items(x)).get(wrt.input)
                if not isinstance(t, Tensor) or t.dim() < 2:
                    raise ValueError(f"{self.name}: x must be a batched tensor of shape (B, ...), "
                                     f"got {tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
                z, coupled, forward = pick_output(logits, self.output, self.name), None, None
            if t is not None and z.dim() > 0 and z.shape[0] != t.shape[0]:
                raise ValueError(f"{self.name}: model output has {z.shape[0]} rows for a batch of "
                                 f"{t.shape[0]} inputs; expected ({t.shape[0]}, m)")
            plain = isinstance(x, Tensor) and is_plain(wrt) and self.output is None
            return evaluate_term(self, model, t, z, y, generator=generator, differentiable=differentiable,
                                 plain=plain, coupled=coupled, forward=forward)

    def evaluate(self, model, x: Tensor | None, logits: Tensor, y: Tensor | None = None, *,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 differentiable: bool = True, coupled: bool | None = None,
                 forward: Callable[[Tensor], Tensor] | None = None,
                 sample_loss: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
        """Penalties for the first ``len(logits)`` rows of ``x``, from logits already computed from ``x``.

        The lower-level entry ``gradreg.Objective`` uses to share one forward pass (also over extra
        unlabeled rows of ``x`` beyond the logits given). ``x`` is the differentiated tensor (the
        input, or a captured hidden tensor). ``differentiable=False`` skips the graph needed to
        backpropagate the penalty to the weights. ``coupled``: whether to take the exact per-sample
        path (None: :meth:`coupling` of ``model``). ``forward``: ``t -> outputs`` with ``x`` replaced
        by ``t``; ``sample_loss``: the objective's per-sample task loss.
        """
        if self.uses_jacobian and not (isinstance(x, Tensor) and x.requires_grad and logits.requires_grad):
            raise ValueError(
                f"{self.name}: the given logits are not connected to x. Compute them as "
                "model(x) after x.requires_grad_(True), or pass logits=None to let the "
                "regularizer run the forward pass (gradreg.Objective shares it for you).")
        z = _as_outputs(logits, self.name)
        if x is not None and z.shape[0] > x.shape[0]:
            raise ValueError(f"{self.name}: {z.shape[0]} output rows for a batch of {x.shape[0]} inputs")
        y = self._check_labels(y, z)
        if coupled is None:
            coupled = self.coupling(model)
        if forward is None and isinstance(x, Tensor) and (self.wrt is None or self.wrt.module is None):
            forward = model
        ctx = _Context(x=x, z=z, y=y, create_graph=differentiable, generator=generator, coupled=coupled,
                       strategy=getattr(self, "strategy", "auto"), wrt=self.wrt, forward=forward,
                       sample_loss=sample_loss)
        with torch.enable_grad():
            try:
                out = self.penalty(ctx)
            except RuntimeError as e:
                if "not have been used in the graph" in str(e) or "does not require grad" in str(e):
                    raise ValueError(f"{self.name}: the logits do not depend on x ({e})") from e
                raise
        return out if differentiable else out.detach()

    def coupling(self, model, detected: bool | None | str = "static", default: bool | None = None) -> bool:
        """Whether to take the exact per-sample path: ``couples_batch`` if given (else ``default``, the
        objective's), else ``detected`` (``"static"``: from ``model``'s BatchNorm modules; None:
        undetectable, taken as uncoupled with a warning). Warns once when the costly path is taken."""
        if self.batch_mode == "batch" or not self.uses_input:
            return False
        explicit = self.couples_batch if self.couples_batch is not None else default
        if explicit is not None:
            return explicit
        if detected == "static":
            detected = couples_batch(model) if isinstance(model, nn.Module) else None
        if detected is None:
            warn_once(f"undetectable:{self.name}", (
                f"{self.name}: batch_mode='sample' on a {type(model).__name__}, not an nn.Module, in which no "
                "BatchNorm module ran: whether it couples the samples of a batch (e.g. functional batch "
                "statistics) cannot be detected, so it is taken as uncoupled. Pass couples_batch=False to say "
                "so, couples_batch=True for the exact per-sample path, or pass the nn.Module itself."))
            return False
        if detected:
            warn_once(f"coupled:{self.name}", (
                f"{self.name}: the model couples the samples of the batch (BatchNorm with batch statistics: "
                "train mode, or track_running_stats=False), so "
                f"batch_mode='sample' {self.coupled_cost[0]}: about B times the cost of the term on an "
                f"uncoupled model. batch_mode='batch' {self.coupled_cost[1]} (the paper's batch-summed form, "
                "with cross-sample terms); eval mode, LayerNorm or GroupNorm do not couple. couples_batch=True "
                "keeps this per-sample path without this warning."))
        return bool(detected)

    @abc.abstractmethod
    def penalty(self, ctx: _Context) -> Tensor:
        """The per-sample penalty ``(n,)`` from a prepared context."""

    def _check_labels(self, y: Tensor | None, z: Tensor) -> Tensor | None:
        if y is None:
            if self.needs_labels:
                raise ValueError(f"{self.name} needs labels y; the label-free terms are: "
                                 f"{', '.join(n for n, c in sorted(REGULARIZERS.items()) if not _needs_labels(c))}")
            return None
        if not isinstance(y, Tensor):
            y = torch.as_tensor(y, device=z.device)
        if y.is_inference():  # labels made under inference mode cannot be saved for backward
            y = y.clone()
        n, m = z.shape
        if y.shape[0] != n:
            raise ValueError(f"{self.name}: y has {y.shape[0]} rows but the batch has {n}")
        if y.dim() == 1 and not y.is_floating_point():
            if y.numel() and (y.min() < 0 or y.max() >= m):
                raise ValueError(f"{self.name}: class labels must lie in [0, {m}), got "
                                 f"[{int(y.min())}, {int(y.max())}]")
        elif tuple(y.shape) != (n, m) and not (y.dim() == 1 and m == 1):
            raise ValueError(f"{self.name}: y must be class indices (B,) or targets (B, {m}), "
                             f"got shape {tuple(y.shape)}")
        return y.to(z.device)


def evaluate_term(term: Regularizer, model, x, z, y, *, generator, differentiable: bool, plain: bool,
                  **extras) -> Tensor:
    """``term.evaluate`` with the keyword arguments its class accepts. A subclass whose ``evaluate``
    predates ``forward=`` re-runs ``model(x)`` itself, which is only right for a plain single-tensor
    input without ``wrt`` or ``output``: anything else is refused rather than silently wrong."""
    accepted = _evaluate_keywords(type(term))
    if accepted is not None:
        if "forward" not in accepted and not plain:
            raise ValueError(f"{term.name} re-runs model(x) itself and does not support wrt=, several "
                             "inputs or output= (yet); use it on a plain tensor input and output")
        extras = {k: v for k, v in extras.items() if k in accepted}
    return term.evaluate(model, x, z, y, generator=generator, differentiable=differentiable, **extras)


def is_plain(wrt: Wrt) -> bool:
    """The whole of the model's only input: what a term that re-runs ``model(x)`` itself can handle."""
    return wrt is INPUT or (wrt.module is None and wrt.input is None and wrt.features is None)


@functools.lru_cache(maxsize=None)
def _evaluate_keywords(cls) -> frozenset | None:
    params = inspect.signature(cls.evaluate).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


def _check_choice(what: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(map(repr, valid))}")


def _as_outputs(logits: Tensor, name: str) -> Tensor:
    if not isinstance(logits, Tensor) or logits.dim() == 0:
        raise ValueError(f"{name}: the model must return a (B, m) tensor, got "
                         f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
    return logits if logits.dim() == 2 else logits.reshape(logits.shape[0], -1)


def _one_hot(y: Tensor, m: int, dtype: torch.dtype) -> Tensor:
    return F.one_hot(y.long(), m).to(dtype) if y.dim() == 1 and not y.is_floating_point() else y.to(dtype)


LAMBDA_SCALES = ("sample", "batch_mean")


@dataclass(frozen=True)
class RegularizerInfo:
    """What the registry knows of a term besides its factory.

    ``grid``: the paper's λ candidates for dev-set selection (Section 6.1), increasing, in the paper's
    convention; () where the paper tunes none. ``lambda_scale``: how a λ written as the paper writes it
    maps to gradreg's (:func:`gradreg.paper_weight`): ``"sample"`` one to one (the paper's term is a batch
    mean of per-sample values, as gradreg's); ``"batch_mean"`` for terms the paper's code takes as the
    input gradient of the batch-*mean* loss summed over the batch, which is 1/B times gradreg's batch mean
    of per-sample values, so gradreg's λ is the paper's divided by the batch size B.
    """

    grid: tuple[float, ...] = ()
    lambda_scale: str = "sample"

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(float(v) for v in self.grid))
        _check_choice("lambda_scale", self.lambda_scale, LAMBDA_SCALES)
        if any(not (v > 0 and math.isfinite(v)) for v in self.grid) or list(self.grid) != sorted(set(self.grid)):
            raise ValueError(f"a λ grid must be increasing finite values > 0, got {self.grid}")


REGULARIZERS: dict[str, Callable[..., Regularizer]] = {}
REGULARIZER_INFO: dict[str, RegularizerInfo] = {}


def register_regularizer(name: str, factory: Callable[..., Regularizer] | None = None, *,
                         grid: Sequence[float] = (), lambda_scale: str = "sample"):
    """Register ``factory`` under ``name``: a :class:`Regularizer` dataclass, or a ``functools.partial``
    of one fixing some options (as ``spectreg_spherical`` is). Usable as a class decorator.
    ``grid`` and ``lambda_scale``: the term's :class:`RegularizerInfo` (:func:`regularizer_info`).

    Only these two forms are accepted because :func:`get_regularizer` checks options against the
    dataclass's fields and the objective asks the class whether the term needs labels.
    """
    info = RegularizerInfo(tuple(grid), lambda_scale)

    def add(f):
        target = _target_class(f)
        if not (isinstance(target, type) and issubclass(target, Regularizer) and dataclasses.is_dataclass(target)):
            raise TypeError(f"regularizer {name!r}: the factory must be a Regularizer dataclass or a "
                            f"functools.partial of one, got {f!r}")
        if name in REGULARIZERS:
            raise ValueError(f"regularizer {name!r} is already registered")
        REGULARIZERS[name] = f
        REGULARIZER_INFO[name] = info
        return f
    return add(factory) if factory is not None else add


def regularizer_info(name: str) -> RegularizerInfo:
    """The registered term ``name``'s λ grid and λ scale; unknown names list the valid ones."""
    if name not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {name!r}; valid: {', '.join(sorted(REGULARIZERS))}")
    # A term put into REGULARIZERS directly (not through register_regularizer) has the defaults.
    return REGULARIZER_INFO.get(name, RegularizerInfo())


def get_regularizer(name: str, **options) -> Regularizer:
    """Build the registered regularizer ``name`` with ``options``; unknown names list the valid ones."""
    if name not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {name!r}; valid: {', '.join(sorted(REGULARIZERS))}")
    factory = REGULARIZERS[name]
    fields = {f.name for f in dataclasses.fields(_target_class(factory))}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    return factory(**options)


def _target_class(factory) -> type:
    return factory.func if isinstance(factory, functools.partial) else factory


def _needs_labels(factory) -> bool:
    return _target_class(factory).needs_labels
