r"""Gradient regularizers without double backward: finite-difference and forward-mode estimators.

Every exact gradreg term differentiates an input gradient (double backward). That fails on fused
kernels without a double-backward formula (``F.scaled_dot_product_attention``'s CPU flash kernel), on
models run through ``torch.compile`` (aot_autograd has no double backward) and is the expensive part of
a step on CPU conv nets. The terms here estimate the same per-sample quantities from forward passes and
first-order autograd only, so ``loss.backward()`` is an ordinary backward pass.

``fd_spectreg`` (:class:`FDSpectReg`)
    :math:`\|J_g\|_F^2` by Hutchinson's identity on the input side: for v with :math:`E[v v^T] = I_d`,
    :math:`E_v \|J_g v\|^2 = \|J_g\|_F^2`, and :math:`J_g v \approx (g(x + h v) - g(x)) / h` (forward
    difference, bias O(h)) or :math:`(g(x + h v) - g(x - h v)) / 2h` (``scheme="central"``, O(h²)). The
    same quantity SpectReg estimates with an output-side r, so SpectReg's λ applies.
``fd_datagrad`` (:class:`FDDataGrad`)
    DataGrad's :math:`\|\nabla_x L(x, y)\|^2` as the squared directional difference of the per-sample
    loss along its own (detached) input-gradient direction :math:`d = \nabla_x L / \|\nabla_x L\|`:
    :math:`((L(x + h d) - L(x)) / h)^2` (Finlay & Oberman 2019, "Scaleable input gradient
    regularization for adversarial robustness"). The direction costs one first-order backward to the
    input (no graph kept); the weight gradient flows through the two loss values. DataGrad's
    (gradreg-convention) λ applies.
``jvp_spectreg`` (:class:`JVPSpectReg`)
    :math:`\|J_g v\|^2` with :math:`J_g v` exact, by forward-mode AD (``torch.func.jvp``); no step size.
    Backpropagating it to the weights is reverse-over-forward: it needs a forward-AD formula for every
    op, and those formulas' own backward. It composes with the weight gradient for the common layers
    (linear, conv, pooling, normalization, activations, the math form of attention); it fails on
    ``F.scaled_dot_product_attention``'s fused CPU kernel (no forward-AD formula) and inside
    ``torch.compile`` (checked in ``tests/test_estimators.py``).

**Which tensor.** ``wrt``, several inputs, ``output=`` and ``couples_batch`` mean what they mean for
the exact terms (:mod:`gradreg.wrt`): the estimate perturbs the differentiated tensor t (the input, one
of several inputs, or a submodule's output, which the model is re-run with in place of the module's
own) and reads the outputs ``output=`` picks. With ``features=`` only the selected features move (v and
d are zero elsewhere), which estimates the selected columns' :math:`\|J_{:,S}\|_F^2`, or
:math:`\|(\nabla_t L)_S\|^2`. t is not detached, so the penalty reaches the parameters upstream of a
hidden t (and a user input's own graph). Inside an ``Objective``, ``fd_datagrad`` without its own
``loss`` differentiates the objective's per-sample task loss, as :class:`~gradreg.DataGrad` does.

**The step size.** ``eps`` is the length of the perturbation relative to the sample's own norm:
:math:`\|x' - x\| = \varepsilon \|x_i\|` (with ``features=``: of the selected
features, :math:`\|x'_S - x_S\| = \varepsilon \|x_{i,S}\|`, d = |S|). So ``fd_datagrad`` steps :math:`h_i = \varepsilon \|x_i\|`
along a unit direction, and ``fd_spectreg`` steps :math:`h_i = \varepsilon \|x_i\| / \sqrt d` along a
v of norm :math:`\sqrt d` (exactly, for ``distribution="spherical"``). An all-zero sample takes
:math:`\|x_i\| = \sqrt d` (unit RMS). The step is detached: it scales the estimate, nothing flows
through it. On a smooth net the bias vanishes as ε → 0 until float32 rounding takes over (relative
rounding error about :math:`10^{-7} / \varepsilon`); on a ReLU/max-pool net the finite difference is
the secant over a region that crosses kinks, a smoothed Jacobian (measured in
``benchmarks/bench_estimators.py`` and the README).

**Randomness in the model.** A difference of two forward passes must see the same dropout masks, or
it measures the masks. When the model is an ``nn.Module`` with a dropout layer in training mode, every
forward pass of the estimate replays the same random state (the global generators and each
:class:`~gradreg.models.StreamDropout`'s own), and g(x) is recomputed under it instead of taking the
shared logits (one more forward pass). A plain callable is taken as deterministic.

**BatchNorm.** The perturbed forward passes leave BatchNorm running statistics as they were.
``batch_mode`` means what it means for the exact terms. On a model that couples the samples of a batch
(train-mode BatchNorm), ``"batch"`` perturbs the whole batch at once, which estimates the batch form
(cross-sample blocks included; per-sample values differ from the exact batch-form term's, their batch
mean is unbiased for it), and ``"sample"`` (the default) perturbs one sample per forward pass, the true
per-sample :math:`J_{ii}`, at B forward passes per direction (as the exact terms pay B backward passes).

Options: ``eps`` (relative step), ``n_directions`` (k directions averaged, variance / k),
``scheme`` (``"forward"``: one extra forward pass per direction, sharing the task loss's g(x);
``"central"``: two), ``distribution`` (``"spherical"``: v uniform on the sphere of radius √d, lower
variance; ``"gaussian"``: v ~ N(0, I_d)). All three are squared-norm estimators: ``norm`` must stay
``"l2sq"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor

from .perturb import Generators, _is_stochastic, _only_row, _per_sample, _Probe, _Replay, _running_stats_kept
from .perturb import _draw_directions  # noqa: F401  (benchmarks/bench_estimators.py imports it from here)
from .regularizers import (
    _SAMPLE_LOSSES, Regularizer, _as_outputs, _check_choice, _cross_entropy, couples_batch, register_regularizer,
)
from .wrt import pick_output

__all__ = ["FDSpectReg", "FDDataGrad", "JVPSpectReg"]

_SCHEMES = ("forward", "central")
_DISTRIBUTIONS = ("spherical", "gaussian")

@dataclass(frozen=True)
class _Estimator(Regularizer):
    """Shared checks and setup of the estimators; subclasses implement :meth:`estimate`."""

    n_directions: int = 1
    approximate: ClassVar[bool] = True  # an estimate with its own error, not an exact-oracle term
    coupled_cost: ClassVar[tuple[str, str]] = (
        "estimates each sample's own Jacobian with one forward pass per sample and direction (that sample "
        "perturbed alone)", "perturbs the whole batch in one forward pass per direction")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm != "l2sq":
            raise ValueError(f"{self.name}: estimates a squared L2 norm; norm must be 'l2sq', got {self.norm!r}")
        if not isinstance(self.n_directions, int) or self.n_directions < 1:
            raise ValueError(f"{self.name}: n_directions must be a positive integer, got {self.n_directions!r}")

    def evaluate(self, model, x: Tensor, logits: Tensor, y: Tensor | None = None, *,
                 generator: Generators = None, differentiable: bool = True, coupled: bool | None = None,
                 forward: Callable[[Tensor], object] | None = None,
                 sample_loss: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
        """Penalties for the first ``len(logits)`` rows of ``x`` (see :meth:`Regularizer.evaluate`):
        ``forward`` re-evaluates the model's picked outputs with x replaced."""
        z = _as_outputs(logits, self.name)
        if not isinstance(x, Tensor) or x.dim() < 2:
            raise ValueError(f"{self.name}: x must be a batched tensor of shape (B, ...), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if z.shape[0] > x.shape[0]:
            raise ValueError(f"{self.name}: {z.shape[0]} output rows for a batch of {x.shape[0]} inputs")
        y = self._check_labels(y, z)
        self.check_model(model, differentiable)
        if forward is None:
            if self.wrt is not None and (self.wrt.module is not None or self.wrt.input is not None):
                raise ValueError(f"{self.name}: wrt={self.wrt.describe()} needs the term to run the forward "
                                 "pass itself; pass logits=None (gradreg.Objective shares it for you)")
            forward = model if self.output is None else lambda t: pick_output(model(t), self.output, self.name)
        if coupled is None:
            coupled = self.coupling(model)
        # Batch form on a coupled model: output i moves with every sample's step, so all take one step
        # size (the batch mean of the per-sample ones) and dividing by it leaves sum_j J_ij v_j.
        common = self.batch_mode == "batch" and (
            self.couples_batch if self.couples_batch is not None else couples_batch(model))
        probe = _Probe(x=x, z=z, forward=lambda t: _as_outputs(forward(t), self.name), wrt=self.wrt,
                       differentiable=differentiable, coupled=bool(coupled), common=bool(common),
                       replay=_Replay(model, x.device) if _is_stochastic(model) else None)
        with _running_stats_kept(model):
            out = self.estimate(probe, y, generator, sample_loss)
        return out if differentiable else out.detach()

    def check_model(self, model, differentiable: bool) -> None:
        """Refuse a model the estimate cannot handle (before any pass runs)."""

    def penalty(self, ctx) -> Tensor:  # evaluate() above replaces the base class's context path
        raise NotImplementedError(f"{self.name}: evaluated through estimate(), which perturbs the model's input")

    def estimate(self, probe: _Probe, y: Tensor | None, generator: Generators,
                 sample_loss: Callable[[Tensor, Tensor], Tensor] | None) -> Tensor:
        """The per-sample penalty ``(n,)``; ``sample_loss``: the objective's per-sample task loss."""
        raise NotImplementedError


@dataclass(frozen=True)
class _FiniteDifference(_Estimator):
    eps: float = 0.01         # perturbation length relative to the sample's norm, ||x' - x|| = eps ||x||
    scheme: str = "forward"   # "forward": g(x) shared with the task loss; "central": O(eps^2) bias

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"{self.name}: eps must be a finite number > 0, got {self.eps!r}")
        _check_choice("scheme", self.scheme, _SCHEMES)


@dataclass(frozen=True)
class FDSpectReg(_FiniteDifference):
    r"""Finite-difference Hutchinson estimate of :math:`\|J_g\|_F^2`: :math:`\|(g(x + h v) - g(x)) / h\|^2`.

    v input-side with identity covariance (spherical by default), :math:`h = \varepsilon\|x\|/\sqrt d`;
    k = ``n_directions`` draws averaged. Unbiased for :math:`\|J_g\|_F^2` up to the O(h) (forward) or
    O(h²) (central) difference error. First-order autograd only.
    """

    distribution: str = "spherical"
    name: ClassVar[str] = "fd_spectreg"
    uses_jacobian: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("distribution", self.distribution, _DISTRIBUTIONS)

    def estimate(self, probe, y, generator, sample_loss):
        v = probe.directions(generator, self.n_directions, self.distribution)
        d = probe.selected(v[0]).shape[1]
        h = probe.norms() * (self.eps / math.sqrt(d))
        step = _per_sample(h, probe.x)
        diffs = probe.differences(probe.forward, probe.z, [step * v[j] for j in range(self.n_directions)],
                                  self.scheme)
        hz = h.view(-1, 1)[: probe.n]
        return torch.stack([(dz / hz).pow(2).sum(1) for dz in diffs]).mean(0)


@dataclass(frozen=True)
class FDDataGrad(_FiniteDifference):
    r"""Finite-difference DataGrad: :math:`((L(x + h d) - L(x)) / h)^2`, d the unit input gradient of L.

    :math:`d = \nabla_x L / \|\nabla_x L\|` detached (one first-order backward to the input, no graph
    kept), :math:`h = \varepsilon \|x\|`. The directional derivative of L along its own gradient is
    :math:`\|\nabla_x L\|`, so this estimates DataGrad's per-sample :math:`\|\nabla_x L\|^2`, with an
    O(h) error (the curvature of L along d); deterministic, so ``n_directions`` has no effect. A sample
    whose gradient is exactly zero gets 0. ``loss`` as :class:`~gradreg.DataGrad`'s: None takes the
    objective's per-sample task loss inside an ``Objective``, cross-entropy alone.
    """

    loss: str | Callable[[Tensor, Tensor], Tensor] | None = None
    name: ClassVar[str] = "fd_datagrad"
    needs_labels: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.loss, str):
            _check_choice("loss", self.loss, tuple(_SAMPLE_LOSSES))

    def estimate(self, probe, y, generator, sample_loss):
        x, z, n = probe.x, probe.z, probe.n
        if not (x.requires_grad and z.requires_grad):
            raise ValueError(
                f"{self.name}: the given logits are not connected to x (the step direction is the loss's "
                "input gradient). Compute them as model(x) after x.requires_grad_(True), or pass "
                "logits=None to let the regularizer run the forward pass")
        if self.loss is None:
            fn = sample_loss or _cross_entropy
        else:
            fn = _SAMPLE_LOSSES[self.loss] if isinstance(self.loss, str) else self.loss
        with torch.enable_grad():
            losses = fn(z, y)
            if losses.shape != (n,):
                raise ValueError(f"{self.name}: the loss must return one value per sample ({n},), "
                                 f"got {tuple(losses.shape)}")
            # First order, no graph kept: the direction is a constant of the penalty, as in Finlay & Oberman.
            (g,) = torch.autograd.grad(losses.sum(), x, retain_graph=True)
        g = probe.selected(g.detach()).clone()  # only the selected features move
        g[n:] = 0  # unlabeled extra rows (no loss) stay where they are
        gnorm = g.norm(dim=1)
        h = probe.norms() * self.eps
        step = probe.place(_per_sample(torch.where(gnorm > 0, h / gnorm.clamp_min(1e-30), torch.zeros_like(h)), g) * g)
        per_sample = lambda t: fn(probe.forward(t)[:n], y)  # noqa: E731
        (dl,) = probe.differences(per_sample, losses, [step], self.scheme)
        return (dl / h[:n]).pow(2)


@dataclass(frozen=True)
class JVPSpectReg(_Estimator):
    r"""Forward-mode Hutchinson estimate of :math:`\|J_g\|_F^2`: :math:`\|J_g v\|^2`, :math:`J_g v` exact.

    ``torch.func.jvp`` gives g(x) and :math:`J_g v` in one forward pass (about 2-3 forward passes'
    cost); v input-side with identity covariance (spherical by default), k draws averaged. No step
    size and no bias. Backpropagating to the weights is reverse-over-forward AD; see the module
    docstring for where that composes.
    """

    distribution: str = "spherical"
    name: ClassVar[str] = "jvp_spectreg"
    uses_jacobian: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("distribution", self.distribution, _DISTRIBUTIONS)

    def check_model(self, model, differentiable: bool) -> None:
        if differentiable and couples_batch(model):  # a BatchNorm normalizing with batch statistics
            raise ValueError(
                f"{self.name}: the model normalizes with batch statistics (train-mode BatchNorm), and "
                "backpropagating a forward-mode JVP through F.batch_norm there gives wrong weight gradients "
                "in torch 2.13 (tests/test_estimators.py measures it). Use fd_spectreg or spectreg, or "
                "BatchNorm in eval mode; the value alone (under torch.no_grad()) is right")

    def estimate(self, probe, y, generator, sample_loss):
        v = probe.directions(generator, self.n_directions, self.distribution)

        def jvp(tangent: Tensor) -> Tensor:
            with probe.grad_mode():
                return torch.func.jvp(probe.forward, (probe.x,), (tangent,))[1]

        out = []
        for j in range(self.n_directions):
            jv = (jvp(v[j])[: probe.n] if not probe.coupled
                  else torch.stack([jvp(_only_row(v[j], i))[i] for i in range(probe.n)]))
            out.append(jv.pow(2).sum(1))
        return torch.stack(out).mean(0)


for _cls in (FDSpectReg, JVPSpectReg):
    register_regularizer(_cls.name, _cls)
# An estimate of DataGrad's term, so a paper-convention λ maps to it as to DataGrad's (gradreg.paper_weight).
register_regularizer(FDDataGrad.name, FDDataGrad, lambda_scale="batch_mean")
