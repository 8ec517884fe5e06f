"""Stacked models: G models of one architecture trained as one vectorized computation.

The paper's protocol is many small runs (seeds × λ × cells). A small model leaves most of the
machine idle; G of them stacked into one model fill it. :class:`GroupedModel` stacks G models of one
architecture: chunk g of its input batch (G·B rows) goes through model g, so every regularizer of
:mod:`gradreg.regularizers` applies to it unchanged and an :class:`~gradreg.Objective` with per-group
weights (``groups=G``) returns each member's loss. The members' parameters never meet (each output row
depends on one member's weights only), and the optimizers act elementwise, so the training loop
(:func:`gradreg.train.train_group`) gives each run what it gets alone, to float tolerance.

Dropout: a run's dropout layers draw their masks from the run's own generator
(:class:`gradreg.models.StreamDropout`, set up by :func:`gradreg.train.init_model`), so a group draws
each member's masks from that member's generator, as the member would alone. Models with plain
``nn.Dropout`` (or no generators) still stack; vmap then draws each member's masks independently from
the global stream: the right distribution, not the solo runs' bit pattern.

Limits: models with BatchNorm do not stack (running statistics are per-run state).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .models import StreamDropout, use_dropout_stream

__all__ = ["GroupedModel"]

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

    @torch.inference_mode()
    def outputs(self, x: Tensor, rows: Tensor, batch_size: int) -> Tensor:
        """``(G, N, m)``: member g's outputs on ``x[rows[g]]`` in eval mode, gathered chunk by chunk so
        that one forward pass holds about ``batch_size`` points in all (at least 64 per member), not G
        times as many."""
        was_training = self.training
        self.eval()
        per_member = max(64, batch_size // self.size)
        chunks = []
        for i in range(0, rows.shape[1], per_member):
            r = rows[:, i:i + per_member]
            out = self(x[r.reshape(-1)])
            chunks.append(out.reshape(*r.shape, *out.shape[1:]))
        self.train(was_training)
        return torch.cat(chunks, dim=1)

    def weight_penalty(self) -> Tensor:
        """``(G,)``: each member's sum of squared weight-tensor entries (conv and dense kernels, not
        biases), the paper's weight decay term."""
        return sum(p.pow(2).flatten(1).sum(1) for p in self.stacked if p.dim() > 2)

    def sq_norm(self, g: int) -> float:
        """Member g's sum of squared parameters."""
        return float(sum(p[g].detach().pow(2).sum().item() for p in self.stacked))

    @torch.no_grad()
    def freeze(self, g: int, opt: torch.optim.Optimizer) -> None:
        """Zero member g's weights and optimizer state: with its loss masked it then stays put."""
        for p in self.stacked:
            p[g] = 0
            for v in opt.state.get(p, {}).values():
                if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == self.size:
                    v[g] = 0


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
