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

**The step size.** ``eps`` is the length of the perturbation relative to the sample's own norm:
:math:`\|x' - x\| = \varepsilon \|x_i\|`. So ``fd_datagrad`` steps :math:`h_i = \varepsilon \|x_i\|`
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

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator, Sequence

import torch
from torch import Tensor, nn

from .models import StreamDropout
from .regularizers import (
    _SAMPLE_LOSSES, Regularizer, _as_outputs, _check_choice, couples_batch, register_regularizer,
)

__all__ = ["FDSpectReg", "FDDataGrad", "JVPSpectReg"]

_SCHEMES = ("forward", "central")
_DISTRIBUTIONS = ("spherical", "gaussian")

Generators = torch.Generator | Sequence[torch.Generator] | None


def _draw_directions(generator: Generators, k: int, x: Tensor, distribution: str) -> Tensor:
    """``(k, N, *x.shape[1:])`` input-side directions with identity covariance.

    A sequence of G generators splits the batch into G equal chunks, each drawing what it would draw
    alone (as :class:`gradreg.regularizers._Context` does for output-side projections).
    """
    n, shape = x.shape[0], tuple(x.shape[1:])

    def draw(g: torch.Generator | None, rows: int) -> Tensor:
        dev = g.device if g is not None else x.device
        v = torch.randn((k, rows, math.prod(shape)), generator=g, device=dev, dtype=x.dtype).to(x.device)
        if distribution == "spherical":
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-30) * math.sqrt(v.shape[-1])
        return v.view(k, rows, *shape)

    if generator is None or isinstance(generator, torch.Generator):
        return draw(generator, n)
    if n % len(generator):
        raise ValueError(f"{len(generator)} generators for a batch of {n}: one per equal chunk expected")
    return torch.cat([draw(g, n // len(generator)) for g in generator], dim=1)


def _sample_norms(x: Tensor, common: bool = False) -> Tensor:
    """``(N,)`` detached per-sample norms; an all-zero sample counts as unit RMS (norm √d); ``common``:
    their batch mean for every sample."""
    flat = x.detach().flatten(1)
    norms = flat.norm(dim=1)
    norms = torch.where(norms > 0, norms, torch.full_like(norms, math.sqrt(flat.shape[1])))
    return norms.mean().expand_as(norms) if common else norms


def _per_sample(h: Tensor, like: Tensor) -> Tensor:
    """Broadcast a ``(N,)`` step against a ``(N, ...)`` tensor."""
    return h.view(-1, *([1] * (like.dim() - 1)))


def _only_row(t: Tensor, i: int) -> Tensor:
    """``t`` with every row but row i zeroed."""
    mask = torch.zeros(t.shape[0], dtype=t.dtype, device=t.device)
    mask[i] = 1
    return t * _per_sample(mask, t)


def _batch_statistics(model) -> bool:
    """Whether a BatchNorm layer of ``model`` normalizes with the batch's own statistics."""
    return isinstance(model, nn.Module) and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)
        for m in model.modules())


def _is_stochastic(model) -> bool:
    """Whether two forward passes of ``model`` on the same input can differ (dropout in training)."""
    if not isinstance(model, nn.Module):
        return False
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
               and not (isinstance(m, StreamDropout) and m.noise is not None)
               for m in model.modules())


class _Replay:
    """Snapshot of every random state a forward pass may draw from; ``restore()`` rewinds to it."""

    def __init__(self, model, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.device = device
        self.streams = []
        if isinstance(model, nn.Module):
            gens = {id(m.generator): m.generator for m in model.modules()
                    if isinstance(m, StreamDropout) and m.generator is not None}
            self.streams = [(g, g.get_state()) for g in gens.values()]

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        for g, state in self.streams:
            g.set_state(state)


@contextlib.contextmanager
def _running_stats_kept(model) -> Iterator[None]:
    """Extra forward passes must not move BatchNorm's running statistics.

    A training-mode BatchNorm with ``track_running_stats=False`` normalizes with the batch's statistics,
    as it does anyway in training, and updates nothing: no in-place update either, which
    ``torch.func.jvp`` refuses on a captured buffer. (Under ``torch.compile`` the switch is one more
    guard: the module gets a second graph.)
    """
    switched = []
    if isinstance(model, nn.Module):
        switched = [m for m in model.modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    for m in switched:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in switched:
            m.track_running_stats = True


@dataclass(frozen=True)
class _Estimator(Regularizer):
    """Shared checks and setup of the estimators; subclasses implement :meth:`estimate`."""

    n_directions: int = 1
    approximate: ClassVar[bool] = True  # an estimate with its own error, not an exact-oracle term

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm != "l2sq":
            raise ValueError(f"{self.name}: estimates a squared L2 norm; norm must be 'l2sq', got {self.norm!r}")
        if not isinstance(self.n_directions, int) or self.n_directions < 1:
            raise ValueError(f"{self.name}: n_directions must be a positive integer, got {self.n_directions!r}")

    def evaluate(self, model, x: Tensor, logits: Tensor, y: Tensor | None = None, *,
                 generator: Generators = None, differentiable: bool = True) -> Tensor:
        """Penalties for the first ``len(logits)`` rows of ``x`` (see :meth:`Regularizer.evaluate`)."""
        z = _as_outputs(logits, self.name)
        if z.shape[0] > x.shape[0]:
            raise ValueError(f"{self.name}: {z.shape[0]} output rows for a batch of {x.shape[0]} inputs")
        y = self._check_labels(y, z)
        couples = couples_batch(model)
        coupled = self.batch_mode == "sample" and couples
        # Batch form on a coupled model: output i moves with every sample's step, so all take one step
        # size (the batch mean of the per-sample ones) and dividing by it leaves sum_j J_ij v_j.
        grad_ctx = torch.enable_grad() if differentiable else torch.no_grad()
        with _running_stats_kept(model):
            out = self.estimate(model, x, z, y, generator, grad_ctx, coupled, couples and not coupled)
        return out if differentiable else out.detach()

    def penalty(self, ctx) -> Tensor:  # evaluate() above replaces the base class's context path
        raise NotImplementedError(f"{self.name}: evaluated through estimate(), which needs the model")

    def estimate(self, model, x: Tensor, z: Tensor, y: Tensor | None, generator: Generators,
                 grad_ctx, coupled: bool, common_step: bool) -> Tensor:
        """The per-sample penalty ``(n,)``; ``grad_ctx`` wraps the forward passes whose graph is kept;
        ``coupled``: perturb one sample per pass (sample mode on a batch-coupled model); ``common_step``:
        one step size for the whole batch (batch mode on a coupled model: output i moves with every
        sample's step, and dividing by a common h leaves sum_j J_ij v_j)."""
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

    def _differences(self, fn: Callable[[Tensor], Tensor], model, x: Tensor, base: Tensor,
                     deltas: Sequence[Tensor], grad_ctx, coupled: bool, n: int) -> list[Tensor]:
        """``fn(x + δ) - fn(x)`` (forward) or ``(fn(x + δ) - fn(x - δ)) / 2`` (central) for each δ,
        first ``n`` rows.

        ``base`` is fn(x) from the shared forward pass, used when the model is deterministic; a
        stochastic model gets every pass under one replayed random state, g(x) included. ``coupled``:
        row i comes from a pass that perturbs row i alone.
        """
        replay = _Replay(model, x.device) if _is_stochastic(model) else None
        x = x.detach()

        def run(inp: Tensor) -> Tensor:
            if replay is not None:
                replay.restore()
            with grad_ctx:
                return fn(inp)

        if self.scheme == "forward" and replay is not None:
            base = run(x)
        def difference(delta: Tensor) -> Tensor:
            plus = run(x + delta)
            return (plus - base if self.scheme == "forward" else (plus - run(x - delta)) / 2)[:n]

        if not coupled:
            return [difference(delta) for delta in deltas]
        return [torch.stack([difference(_only_row(delta, i))[i] for i in range(n)]) for delta in deltas]


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

    def estimate(self, model, x, z, y, generator, grad_ctx, coupled, common_step):
        n = z.shape[0]
        v = _draw_directions(generator, self.n_directions, x.detach(), self.distribution)
        d = v[0, 0].numel()
        h = _per_sample(_sample_norms(x, common_step) * (self.eps / math.sqrt(d)), x)
        flat = lambda inp: _as_outputs(model(inp), self.name)  # noqa: E731
        diffs = self._differences(flat, model, x, z, [h * v[j] for j in range(self.n_directions)], grad_ctx,
                                  coupled, n)
        hz = h.view(-1, 1)[:n]
        return torch.stack([(dz / hz).pow(2).sum(1) for dz in diffs]).mean(0)


@dataclass(frozen=True)
class FDDataGrad(_FiniteDifference):
    r"""Finite-difference DataGrad: :math:`((L(x + h d) - L(x)) / h)^2`, d the unit input gradient of L.

    :math:`d = \nabla_x L / \|\nabla_x L\|` detached (one first-order backward to the input, no graph
    kept), :math:`h = \varepsilon \|x\|`. The directional derivative of L along its own gradient is
    :math:`\|\nabla_x L\|`, so this estimates DataGrad's per-sample :math:`\|\nabla_x L\|^2`, with an
    O(h) error (the curvature of L along d); deterministic, so ``n_directions`` has no effect. A sample
    whose gradient is exactly zero gets 0. ``loss`` as :class:`~gradreg.DataGrad`'s.
    """

    loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy"
    name: ClassVar[str] = "fd_datagrad"
    needs_labels: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.loss, str):
            _check_choice("loss", self.loss, tuple(_SAMPLE_LOSSES))

    def estimate(self, model, x, z, y, generator, grad_ctx, coupled, common_step):
        if not (x.requires_grad and z.requires_grad):
            raise ValueError(
                f"{self.name}: the given logits are not connected to x (the step direction is the loss's "
                "input gradient). Compute them as model(x) after x.requires_grad_(True), or pass "
                "logits=None to let the regularizer run the forward pass")
        fn = _SAMPLE_LOSSES[self.loss] if isinstance(self.loss, str) else self.loss
        n = z.shape[0]
        with torch.enable_grad():
            losses = fn(z, y)
            if losses.shape != (n,):
                raise ValueError(f"{self.name}: the loss must return one value per sample ({n},), "
                                 f"got {tuple(losses.shape)}")
            # First order, no graph kept: the direction is a constant of the penalty, as in Finlay & Oberman.
            (g,) = torch.autograd.grad(losses.sum(), x, retain_graph=True)
        g = g.detach()
        g[n:] = 0  # unlabeled extra rows (no loss) stay where they are
        gnorm = g.flatten(1).norm(dim=1)
        h = _sample_norms(x, common_step) * self.eps
        step = _per_sample(torch.where(gnorm > 0, h / gnorm.clamp_min(1e-30), torch.zeros_like(h)), g) * g
        per_sample = lambda inp: fn(_as_outputs(model(inp), self.name)[:n], y)  # noqa: E731
        (dl,) = self._differences(per_sample, model, x, losses, [step], grad_ctx, coupled, n)
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

    def estimate(self, model, x, z, y, generator, grad_ctx, coupled, common_step):
        if isinstance(grad_ctx, torch.enable_grad) and _batch_statistics(model):
            raise ValueError(
                f"{self.name}: the model normalizes with batch statistics (train-mode BatchNorm), and "
                "backpropagating a forward-mode JVP through F.batch_norm there gives wrong weight gradients "
                "in torch 2.13 (tests/test_estimators.py measures it). Use fd_spectreg or spectreg, or "
                "BatchNorm in eval mode; the value alone (under torch.no_grad()) is right")
        n = z.shape[0]
        x = x.detach()
        v = _draw_directions(generator, self.n_directions, x, self.distribution)
        flat = lambda inp: _as_outputs(model(inp), self.name)  # noqa: E731

        def jvp(tangent: Tensor) -> Tensor:
            with grad_ctx:
                return torch.func.jvp(flat, (x,), (tangent,))[1]

        out = []
        for j in range(self.n_directions):
            jv = (jvp(v[j])[:n] if not coupled
                  else torch.stack([jvp(_only_row(v[j], i))[i] for i in range(n)]))
            out.append(jv.pow(2).sum(1))
        return torch.stack(out).mean(0)


for _cls in (FDSpectReg, FDDataGrad, JVPSpectReg):
    register_regularizer(_cls.name, _cls)
