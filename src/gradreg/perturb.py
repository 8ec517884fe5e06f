"""The perturbation machinery of :mod:`gradreg.estimators`: input-side directions, step sizes, replayed
random state, BatchNorm running statistics kept, and :class:`_Probe`, which perturbs the differentiated
tensor (an input, a feature subset of it, or a submodule's output) and re-evaluates the outputs."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .models import StreamDropout
from .wrt import Wrt

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


@dataclass
class _Probe:
    """What one estimate perturbs and how: the differentiated tensor ``x`` (not detached, so the penalty
    reaches what x depends on), ``forward`` (x replaced by t -> flat outputs), ``wrt``'s features."""

    x: Tensor                             # (N, ...) the differentiated tensor
    z: Tensor                             # (n, m) outputs of the shared forward pass
    forward: Callable[[Tensor], Tensor]   # t -> (N, m)
    wrt: Wrt | None
    differentiable: bool
    coupled: bool                         # perturb one sample per pass (sample mode, coupled model)
    common: bool                          # one step size for the batch (batch mode, coupled model)
    replay: _Replay | None                # every pass under one random state (stochastic model)

    @property
    def n(self) -> int:
        return self.z.shape[0]

    def selected(self, t: Tensor) -> Tensor:
        """``(N, |S|)``: the features of ``t`` (shaped as x) that move, all of them without ``features=``."""
        return t.flatten(1) if self.wrt is None or self.wrt.features is None else self.wrt.select(t)

    def place(self, v: Tensor) -> Tensor:
        """``(..., N, |S|)`` values of the moving features -> ``(..., N, *x.shape[1:])``, zero elsewhere."""
        lead = v.shape[:-1]
        if self.wrt is not None and self.wrt.features is not None:
            idx = torch.tensor(self.wrt.features, device=v.device)
            v = v.new_zeros(*lead, self.x[0].numel()).index_copy(v.dim() - 1, idx, v)
        return v.view(*lead, *self.x.shape[1:])

    def directions(self, generator: Generators, k: int, distribution: str) -> Tensor:
        """``(k, N, *x.shape[1:])`` directions with identity covariance on the moving features."""
        return self.place(_draw_directions(generator, k, self.selected(self.x.detach()), distribution))

    def norms(self) -> Tensor:
        """``(N,)`` detached norms of each sample's moving features (their batch mean if ``common``)."""
        return _sample_norms(self.selected(self.x.detach()), self.common)

    def grad_mode(self):
        return torch.enable_grad() if self.differentiable else torch.no_grad()

    def run(self, fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
        if self.replay is not None:
            self.replay.restore()
        with self.grad_mode():
            return fn(t)

    def differences(self, fn: Callable[[Tensor], Tensor], base: Tensor, deltas: Sequence[Tensor],
                    scheme: str) -> list[Tensor]:
        """``fn(x + δ) - fn(x)`` (forward) or ``(fn(x + δ) - fn(x - δ)) / 2`` (central) for each δ,
        first ``n`` rows.

        ``base`` is fn(x) from the shared forward pass, used when the model is deterministic; a
        stochastic model gets every pass under one replayed random state, fn(x) included. ``coupled``:
        row i comes from a pass that perturbs row i alone.
        """
        x, n = self.x, self.n
        if scheme == "forward" and self.replay is not None:
            base = self.run(fn, x.clone())  # a copy: an in-place op after a hidden x must not rewrite it

        def difference(delta: Tensor) -> Tensor:
            plus = self.run(fn, x + delta)
            return (plus - base if scheme == "forward" else (plus - self.run(fn, x - delta)) / 2)[:n]

        if not self.coupled:
            return [difference(delta) for delta in deltas]
        return [torch.stack([difference(_only_row(delta, i))[i] for i in range(n)]) for delta in deltas]
