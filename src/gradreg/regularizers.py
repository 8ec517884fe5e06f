r"""The paper's gradient regularizers as small, pure, per-sample penalty terms.

Varga, Csiszárik, Zombori, "Gradient Regularization Improves Accuracy of Discriminative Models"
(arXiv:1712.09936), Section 5.1. Notation: x an input, z = g(x) the logits (m of them), p = softmax(z),
y the label, :math:`J_g = \partial z / \partial x` and :math:`J_f = \partial p / \partial x`.

Every term is called as ``term(model, x, y=None, *, logits=None, generator=None)`` and returns a tensor
of shape ``(B,)``, one penalty per sample: the caller chooses the reduction (``gradreg.Objective`` takes
the batch mean). ``model`` is any ``nn.Module`` or callable mapping ``(B, ...)`` inputs to ``(B, m)``
outputs. Pass ``logits`` computed from ``x`` (with ``x.requires_grad``) to share the forward pass with
the task loss; otherwise the term runs the forward itself. Terms switch input gradients on themselves,
also under ``torch.no_grad()`` (then the value is not differentiable w.r.t. the weights, which is what
evaluation code wants) and under ``torch.inference_mode()``.
``generator`` seeds the random projections; a sequence of G generators splits the batch into G equal
chunks, each drawing what it would draw alone (how grouped training keeps each run's own stream).

Options shared by the Jacobian terms:

``norm``
    ``"l2sq"`` (default, the paper's :math:`\|\cdot\|_2^2`) or ``"l1"`` (Section 5.1 calls L1
    reasonable too). For the exact Frobenius terms ``"l1"`` is the entrywise L1 norm of the Jacobian.
``batch_mode``
    What a per-sample Jacobian means when the model couples the samples of a batch (train-mode
    BatchNorm, or BatchNorm without running statistics). ``"sample"`` (default): the diagonal block
    :math:`J_{ii} = \partial z_i / \partial x_i`, the true per-sample Jacobian of the function the batch
    computes; exact, but when coupling is present it costs B backward passes per projection, so train-mode
    BatchNorm nets pay about B times more for the term. ``"batch"``: the paper's own code (Figure 1),
    the gradient w.r.t. :math:`x_i` of the batch-summed projection :math:`\sum_j \langle z_j, w_j\rangle`,
    i.e. :math:`\sum_j J_{ji}^T w_j`; one backward pass, includes cross-sample terms under coupling. For
    models without coupling (eval mode, LayerNorm, GroupNorm, no normalization) both are identical and
    equally cheap. Coupling is detected on ``nn.Module`` models; a plain callable is taken as uncoupled.
``n_projections`` (projection terms)
    k independent draws averaged, cutting the estimator's variance by k.
``projection`` (random projection terms)
    ``"sample"`` (default): an independent r per sample. ``"batch"``: one r shared by the whole batch,
    as the paper's ``tf.random_normal((OUTPUT_DIM,))``.
"""
from __future__ import annotations

import abc
import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Regularizer", "DataGrad", "SpectReg", "FrobReg", "JacReg", "OneHot", "RandomOneHot",
    "ConfidencePenalty", "REGULARIZERS", "register_regularizer", "get_regularizer", "couples_batch",
]

_NORMS = ("l2sq", "l1")
_BATCH_MODES = ("sample", "batch")
_PROJECTIONS = ("sample", "batch")
_STRATEGIES = ("auto", "loop", "batched")


def couples_batch(model) -> bool:
    """True when ``model``'s output for one sample depends on the other samples of the batch.

    That is the case for BatchNorm layers that normalize with batch statistics: in train mode, or in
    any mode when built with ``track_running_stats=False``.
    """
    if not isinstance(model, nn.Module):
        return False
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)
        for m in model.modules()
    )


def _norm(g: Tensor, norm: str) -> Tensor:
    g = g if g.dim() == 2 else g.flatten(1)
    return g.pow(2).sum(1) if norm == "l2sq" else g.abs().sum(1)


@dataclass
class _Context:
    """Everything a term needs after the shared forward pass."""

    x: Tensor            # (N, ...) leaf-like input with requires_grad
    z: Tensor            # (n, m) outputs, n <= N, row i computed from x[i]
    y: Tensor | None     # (n,) class indices or (n, m) targets
    coupled: bool        # compute diagonal blocks exactly (sample mode on a coupling model)
    create_graph: bool   # keep the graph so the penalty can be backpropagated to the weights
    generator: torch.Generator | Sequence[torch.Generator] | None
    strategy: str = "auto"

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
            return g if g.shape[0] == self.n else g[: self.n]
        # Sample i's own block only: probe i carries cotangent row i alone, and we keep gradient row i.
        n = self.n
        eye = torch.arange(n, device=cotangent.device)
        probes = torch.zeros((n,) + tuple(cotangent.shape), dtype=cotangent.dtype, device=cotangent.device)
        probes[eye, eye] = cotangent
        g = self._batched_grad(outputs, probes)
        return g[eye, eye]

    def vjp_norms(self, outputs: Tensor, cotangents: Tensor, norm: str) -> Tensor:
        """``(P, n)`` norms of the per-sample input gradients for P cotangents ``(P, n, m)``."""
        if cotangents.shape[0] == 1:
            return _norm(self.vjp(outputs, cotangents[0]), norm).unsqueeze(0)
        if self.coupled or self._strategy(cotangents.shape[0]) == "loop":
            return torch.stack([_norm(self.vjp(outputs, c), norm) for c in cotangents])
        g = self._batched_grad(outputs, cotangents)[:, : self.n]
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
    """Base class: validates inputs, prepares the forward pass, returns per-sample penalties ``(B,)``."""

    norm: str = "l2sq"
    batch_mode: str = "sample"

    name: ClassVar[str] = ""
    needs_labels: ClassVar[bool] = False
    uses_jacobian: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_choice("norm", self.norm, _NORMS)
        _check_choice("batch_mode", self.batch_mode, _BATCH_MODES)

    def __call__(self, model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor | None = None, *,
                 logits: Tensor | None = None,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() < 2:
            raise ValueError(f"{self.name}: x must be a batched tensor of shape (B, ...), "
                             f"got {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if not (x.is_floating_point()):
            raise ValueError(f"{self.name}: x must be floating point to differentiate, got {x.dtype}")
        differentiable = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        with torch.inference_mode(False), torch.enable_grad():
            if logits is None:
                if x.is_inference():
                    x = x.clone()
                if not x.requires_grad:
                    x = x.detach().requires_grad_(True)
                logits = model(x)
            if isinstance(logits, Tensor) and logits.dim() > 0 and logits.shape[0] != x.shape[0]:
                raise ValueError(f"{self.name}: model output has {logits.shape[0]} rows for a batch of "
                                 f"{x.shape[0]} inputs; expected ({x.shape[0]}, m)")
            return self.evaluate(model, x, logits, y, generator=generator, differentiable=differentiable)

    def evaluate(self, model, x: Tensor, logits: Tensor, y: Tensor | None = None, *,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 differentiable: bool = True) -> Tensor:
        """Penalties for the first ``len(logits)`` rows of ``x``, from logits already computed from ``x``.

        The lower-level entry ``gradreg.Objective`` uses to share one forward pass (also over extra
        unlabeled rows of ``x`` beyond the logits given). ``differentiable=False`` skips the graph
        needed to backpropagate the penalty to the weights.
        """
        if self.uses_jacobian and not (x.requires_grad and logits.requires_grad):
            raise ValueError(
                f"{self.name}: the given logits are not connected to x. Compute them as "
                "model(x) after x.requires_grad_(True), or pass logits=None to let the "
                "regularizer run the forward pass (gradreg.Objective shares it for you).")
        z = _as_outputs(logits, self.name)
        if z.shape[0] > x.shape[0]:
            raise ValueError(f"{self.name}: {z.shape[0]} output rows for a batch of {x.shape[0]} inputs")
        y = self._check_labels(y, z)
        ctx = _Context(x=x, z=z, y=y, create_graph=differentiable, generator=generator,
                       coupled=self.batch_mode == "sample" and couples_batch(model),
                       strategy=getattr(self, "strategy", "auto"))
        with torch.enable_grad():
            try:
                out = self.penalty(ctx)
            except RuntimeError as e:
                if "not have been used in the graph" in str(e) or "does not require grad" in str(e):
                    raise ValueError(f"{self.name}: the logits do not depend on x ({e})") from e
                raise
        return out if differentiable else out.detach()

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


@dataclass(frozen=True)
class _Projected(Regularizer):
    """Terms of the form ``mean_k ||J^T w_k||`` for k drawn (or fixed) projection vectors."""

    n_projections: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.n_projections, int) or self.n_projections < 1:
            raise ValueError(f"{self.name}: n_projections must be a positive integer, got {self.n_projections!r}")

    def penalty(self, ctx: _Context) -> Tensor:
        cotangents = self.cotangents(ctx)
        if cotangents.shape[0] == 1:  # the common k = 1 case without the stack-and-mean nodes
            return _norm(ctx.vjp(ctx.z, cotangents[0]), self.norm)
        return ctx.vjp_norms(ctx.z, cotangents, self.norm).mean(0)

    @abc.abstractmethod
    def cotangents(self, ctx: _Context) -> Tensor:
        """``(k, n, m)`` projection vectors."""


@dataclass(frozen=True)
class SpectReg(_Projected):
    r"""SpectReg: :math:`\|J_g^T r\|_2^2`, r a random vector with identity covariance (Section 5.1).

    By Claim 1, :math:`E_r \|J_g^T r\|^2 = \|J_g\|_F^2`: an unbiased estimate of FrobReg at the cost of
    one backward pass. ``distribution="gaussian"``: :math:`r \sim N(0, I_m)`; ``"spherical"``: r uniform
    on the sphere of radius :math:`\sqrt m`, equally unbiased and of lower variance. By default r is
    not scaled by :math:`1/\sqrt m`: the paper's code (Figure 1) and poster use unscaled
    :math:`N(0, I_m)`, so the paper's λ values apply as they are; ``scale_by_m=True`` gives the
    :math:`1/\sqrt m` of Section 5.1's text (estimating :math:`\|J_g\|_F^2 / m`).
    """

    distribution: str = "gaussian"
    projection: str = "sample"
    scale_by_m: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("distribution", self.distribution, ("gaussian", "spherical"))
        _check_choice("projection", self.projection, _PROJECTIONS)

    @property
    def name(self) -> str:  # type: ignore[override]
        return "spectreg" if self.distribution == "gaussian" else "spectreg_spherical"

    def cotangents(self, ctx: _Context) -> Tensor:
        n, m = ctx.z.shape
        r = ctx.randn(self.n_projections, 1 if self.projection == "batch" else n, m)
        if self.distribution == "spherical":
            r = r / r.norm(dim=-1, keepdim=True) * math.sqrt(m)
        if self.scale_by_m:
            r = r / math.sqrt(m)
        return r.expand(self.n_projections, n, m)


@dataclass(frozen=True)
class RandomOneHot(_Projected):
    r"""RandomOneHot: :math:`\|J_g^T \sqrt m\, e_k\|_2^2`, k uniform over the m outputs (Section 5.1).

    :math:`\sqrt m\, e_k` has identity covariance, so by Claim 1 this is unbiased for
    :math:`\|J_g\|_F^2`.
    """

    projection: str = "sample"
    name: ClassVar[str] = "randomonehot"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("projection", self.projection, _PROJECTIONS)

    def cotangents(self, ctx: _Context) -> Tensor:
        n, m = ctx.z.shape
        k = ctx.randint(m, self.n_projections, 1 if self.projection == "batch" else n)
        return (F.one_hot(k, m).to(ctx.z.dtype) * math.sqrt(m)).expand(self.n_projections, n, m)


@dataclass(frozen=True)
class OneHot(_Projected):
    r"""OneHot: :math:`\|J_g^T y\|_2^2`, the gradient of the true label's logit (Section 5.1).

    Deterministic, so ``n_projections`` has no effect. Soft targets ``(B, m)`` are used as given.
    """

    name: ClassVar[str] = "onehot"
    needs_labels: ClassVar[bool] = True

    def cotangents(self, ctx: _Context) -> Tensor:
        return _one_hot(ctx.y, ctx.z.shape[1], ctx.z.dtype).unsqueeze(0)


@dataclass(frozen=True)
class DataGrad(Regularizer):
    r"""DataGrad / Double Backpropagation: :math:`\|\partial L(x_i, y_i) / \partial x_i\|_2^2`.

    L is the per-sample training loss (Drucker & LeCun 1991; Section 5.1). With cross-entropy this
    equals :math:`\|J_g^T (p - y)\|^2` (Claim 2). ``loss`` is ``"cross_entropy"``, ``"mse"`` (sum of
    squared errors over the outputs, the per-sample loss of a regression head) or a callable
    ``(logits, y) -> (B,)``.

    λ scale: this is the per-sample gradient, so λ does not depend on the batch size. The paper's
    code differentiates the batch-*mean* loss and sums over the batch, which is this term's batch
    mean divided by B: a paper λ equals B times a gradreg λ (``gradreg.paper_weight``).
    """

    loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy"
    name: ClassVar[str] = "datagrad"
    needs_labels: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.loss, str):
            _check_choice("loss", self.loss, tuple(_SAMPLE_LOSSES))

    def penalty(self, ctx: _Context) -> Tensor:
        fn = _SAMPLE_LOSSES[self.loss] if isinstance(self.loss, str) else self.loss
        losses = fn(ctx.z, ctx.y)
        if losses.shape != (ctx.n,):
            raise ValueError(f"datagrad: the loss must return one value per sample ({ctx.n},), "
                             f"got {tuple(losses.shape)}")
        return _norm(ctx.vjp(losses, torch.ones_like(losses)), self.norm)


def _cross_entropy(z: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(z, y if y.dim() == 1 and not y.is_floating_point() else y.to(z.dtype),
                           reduction="none")


def _squared_error(z: Tensor, y: Tensor) -> Tensor:
    return (z - y.reshape(z.shape).to(z.dtype)).pow(2).sum(1)


_SAMPLE_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": _cross_entropy, "mse": _squared_error}


@dataclass(frozen=True)
class _Exact(Regularizer):
    """Exact Frobenius-type terms: one VJP per output, sharing one forward pass.

    ``strategy``: ``"loop"`` (m sequential VJPs), ``"batched"`` (one vmapped VJP via
    ``is_grads_batched``) or ``"auto"`` (the faster on the device, measured in
    ``benchmarks/bench_regularizers.py``).
    """

    strategy: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("strategy", self.strategy, _STRATEGIES)

    def _frobenius(self, ctx: _Context, outputs: Tensor) -> Tensor:
        n, m = outputs.shape
        basis = torch.eye(m, dtype=outputs.dtype, device=outputs.device).unsqueeze(1).expand(m, n, m)
        return ctx.vjp_norms(outputs, basis, self.norm).sum(0)


@dataclass(frozen=True)
class FrobReg(_Exact):
    r"""FrobReg: :math:`\|J_g\|_F^2`, the exact squared Frobenius norm of the logits' Jacobian (5.1).

    For a single linear layer z = Wx + b it equals :math:`\|W\|_F^2` (Section 5.2's toy case).
    """

    name: ClassVar[str] = "frobreg"

    def penalty(self, ctx: _Context) -> Tensor:
        return self._frobenius(ctx, ctx.z)


@dataclass(frozen=True)
class JacReg(_Exact):
    r"""JacReg: :math:`\|J_f\|_F^2` of the softmax probabilities (Sokolic et al. 2017; Section 5.1).

    :math:`J_f = (\mathrm{diag}(p) - p p^T) J_g`.
    """

    name: ClassVar[str] = "jacreg"

    def penalty(self, ctx: _Context) -> Tensor:
        return self._frobenius(ctx, ctx.z.softmax(dim=1))


@dataclass(frozen=True)
class ConfidencePenalty(Regularizer):
    r"""Confidence penalty: :math:`-H(p) = \sum_c p_c \log p_c` (Pereyra et al. 2017; Section 6.2.2).

    Not a gradient term; the paper compares it throughout. ``norm`` and ``batch_mode`` do not apply.
    """

    name: ClassVar[str] = "confidence_penalty"
    uses_jacobian: ClassVar[bool] = False

    def penalty(self, ctx: _Context) -> Tensor:
        logp = ctx.z.log_softmax(dim=1)
        return (logp.exp() * logp).sum(1)


REGULARIZERS: dict[str, Callable[..., Regularizer]] = {}


def register_regularizer(name: str, factory: Callable[..., Regularizer] | None = None):
    """Register ``factory`` under ``name``: a :class:`Regularizer` dataclass, or a ``functools.partial``
    of one fixing some options (as ``spectreg_spherical`` is). Usable as a class decorator.

    Only these two forms are accepted because :func:`get_regularizer` checks options against the
    dataclass's fields and the objective asks the class whether the term needs labels.
    """
    def add(f):
        target = _target_class(f)
        if not (isinstance(target, type) and issubclass(target, Regularizer) and dataclasses.is_dataclass(target)):
            raise TypeError(f"regularizer {name!r}: the factory must be a Regularizer dataclass or a "
                            f"functools.partial of one, got {f!r}")
        if name in REGULARIZERS:
            raise ValueError(f"regularizer {name!r} is already registered")
        REGULARIZERS[name] = f
        return f
    return add(factory) if factory is not None else add


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


for _cls in (DataGrad, FrobReg, JacReg, OneHot, RandomOneHot, ConfidencePenalty):
    register_regularizer(_cls.name, _cls)
register_regularizer("spectreg", SpectReg)
register_regularizer("spectreg_spherical", functools.partial(SpectReg, distribution="spherical"))
