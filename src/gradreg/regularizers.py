r"""The paper's gradient regularizers as small, pure, per-sample penalty terms.

Varga, Csiszárik, Zombori, "Gradient Regularization Improves Accuracy of Discriminative Models"
(arXiv:1712.09936), Section 5.1. Notation: x an input, z = g(x) the logits (m of them), p = softmax(z),
y the label, :math:`J_g = \partial z / \partial x` and :math:`J_f = \partial p / \partial x`.

Every term is called as ``term(model, x, y=None, *, logits=None, generator=None)`` and returns a tensor
of shape ``(B,)``, one penalty per sample: the caller chooses the reduction (``gradreg.Objective`` takes
the batch mean). ``model`` is any ``nn.Module`` or callable; ``x`` a tensor (``model(x)``), a tuple
(``model(*x)``) or a dict (``model(**x)``); the model returns ``(B, m)`` outputs, or a structure from
which ``output=`` picks them. ``wrt`` names the tensor differentiated (:mod:`gradreg.wrt`: the input, a
few of its features, or a submodule's output). Pass ``logits`` computed from ``x`` (with
``x.requires_grad``) to share the forward pass with the task loss; otherwise the term runs the forward
itself. Terms switch input gradients on themselves, also under ``torch.no_grad()`` (then the value is
not differentiable w.r.t. the weights, which is what evaluation code wants) and under
``torch.inference_mode()``.
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
    equally cheap. Coupling is detected from the BatchNorm modules of an ``nn.Module`` model (for a
    hidden ``wrt``, those that run after it), and from the BatchNorm modules that run inside a plain
    callable; a callable in which none runs is taken as uncoupled with a warning (functional batch
    statistics cannot be seen). ``couples_batch=True/False`` says it explicitly. The costly exact path
    warns once unless ``couples_batch=True`` was given.
``n_projections`` (projection terms)
    k independent draws averaged, cutting the estimator's variance by k.
``projection`` (random projection terms)
    ``"sample"`` (default): an independent r per sample. ``"batch"``: one r shared by the whole batch,
    as the paper's ``tf.random_normal((OUTPUT_DIM,))``.
"""
from __future__ import annotations

import abc
import functools
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .core import (  # noqa: F401  (the base names stay importable from here, as estimators do)
    REGULARIZER_INFO, REGULARIZERS, Regularizer, RegularizerInfo, Wrt, _as_outputs, _check_choice, _Context,
    _norm, _one_hot, _PROJECTIONS, _STRATEGIES, couples_batch, evaluate_term, get_regularizer,
    register_regularizer, regularizer_info,
)

__all__ = [
    "Regularizer", "DataGrad", "SpectReg", "FrobReg", "JacReg", "OneHot", "RandomOneHot",
    "ConfidencePenalty", "REGULARIZERS", "register_regularizer", "get_regularizer", "couples_batch", "Wrt",
    "RegularizerInfo", "regularizer_info",
]


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
    equals :math:`\|J_g^T (p - y)\|^2` (Claim 2). ``loss``: None (default) takes the objective's own
    task loss inside ``gradreg.Objective`` (its per-sample values, whose batch mean is the task loss)
    and cross-entropy when the term is called alone; or ``"cross_entropy"``, ``"mse"`` (sum of squared
    errors over the outputs, the per-sample loss of a regression head) or a callable
    ``(logits, y) -> (B,)``, which an Objective then uses instead of its task loss.

    λ scale: this is the per-sample gradient, so λ does not depend on the batch size. The paper's
    code differentiates the batch-*mean* loss and sums over the batch, which is this term's batch
    mean divided by B: a paper λ equals B times a gradreg λ (``gradreg.paper_weight``).
    """

    loss: str | Callable[[Tensor, Tensor], Tensor] | None = None
    name: ClassVar[str] = "datagrad"
    needs_labels: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.loss, str):
            _check_choice("loss", self.loss, tuple(_SAMPLE_LOSSES))

    def penalty(self, ctx: _Context) -> Tensor:
        if self.loss is None:
            fn = ctx.sample_loss or _cross_entropy
        else:
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
    uses_input: ClassVar[bool] = False

    def penalty(self, ctx: _Context) -> Tensor:
        logp = ctx.z.log_softmax(dim=1)
        return (logp.exp() * logp).sum(1)


# --- the paper's λ grids for dev-set selection (Section 6.1, "fixed sets"), in the paper's convention ---
DATAGRAD_GRID = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
SPECTREG_GRID = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
JACREG_GRID = SPECTREG_GRID
# Printed as "0.0001, 0.003, 0.001, 0.003, ...": the second entry is read as 0.0003 (a typo; the
# list is otherwise SpectReg's and must increase).
CP_GRID = SPECTREG_GRID
# The paper gives no FrobReg grid. SpectReg (unscaled r ~ N(0, I)) is an unbiased estimate of FrobReg
# (Claim 1), so the two share a λ scale: SpectReg's grid.
FROBREG_GRID = SPECTREG_GRID

# The paper's DataGrad differentiates the batch-mean loss (Figure 1): its λ is B times gradreg's.
register_regularizer("datagrad", DataGrad, grid=DATAGRAD_GRID, lambda_scale="batch_mean")
register_regularizer("spectreg", SpectReg, grid=SPECTREG_GRID)
register_regularizer("spectreg_spherical", functools.partial(SpectReg, distribution="spherical"), grid=SPECTREG_GRID)
register_regularizer("jacreg", JacReg, grid=JACREG_GRID)
register_regularizer("frobreg", FrobReg, grid=FROBREG_GRID)
register_regularizer("confidence_penalty", ConfidencePenalty, grid=CP_GRID)
# Not tuned in any table; a log grid like SpectReg's (not stated in the paper).
register_regularizer("onehot", OneHot, grid=SPECTREG_GRID)
register_regularizer("randomonehot", RandomOneHot, grid=SPECTREG_GRID)
