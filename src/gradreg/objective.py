r"""The training objective: a task loss plus weighted regularizer terms, every part returned.

.. math:: \mathcal{L} = L_{task}(g(x), y) + \sum_t \lambda_t \, \frac{1}{B} \sum_i R_t(x_i, y_i)

One forward pass is shared by the task loss and every term (the differentiated tensor gets
``requires_grad`` before or during the forward; the user's own tensors are never detached). Example::

    objective = gradreg.Objective(F.cross_entropy, [(0.03, gradreg.SpectReg())])
    out = objective(model, x, y)
    out.loss.backward()
    log(out.task.item(), {k: v.item() for k, v in out.terms.items()})
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import numbers
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .core import is_plain
from .regularizers import Regularizer, evaluate_term, get_regularizer, regularizer_info
from .wrt import INPUT, Wrt, batch_size, concat_inputs, run_forward

__all__ = ["Objective", "ObjectiveOutput", "paper_weight", "TASK_LOSSES"]

TASK_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "mse": lambda z, y: F.mse_loss(z, y.reshape(z.shape).to(z.dtype)),
}
# Per-sample values whose batch mean is the task loss above (what DataGrad differentiates).
_SAMPLE_TASK_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": lambda z, y: F.cross_entropy(
        z, y if y.dim() == 1 and not y.is_floating_point() else y.to(z.dtype), reduction="none"),
    "mse": lambda z, y: F.mse_loss(z, y.reshape(z.shape).to(z.dtype), reduction="none").flatten(1).mean(1),
}


@dataclass
class ObjectiveOutput:
    """``loss`` to backpropagate, and its parts: ``task`` and each term's unweighted batch mean."""

    loss: Tensor
    task: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    logits: Tensor | None = None

    def parts(self) -> dict[str, float | list[float]]:
        """Plain floats for logging (one host sync for all parts); with ``groups=G``, a list of G per part."""
        names = ["loss", "task", *self.terms]
        values = torch.stack([self.loss.detach(), self.task.detach(), *(t.detach() for t in self.terms.values())])
        return dict(zip(names, values.float().cpu().tolist()))


class Objective:
    """Task loss + Σ λ_t · mean(R_t). ``terms`` are ``(weight, Regularizer or registered name)`` pairs.

    ``task_loss``: a callable ``(logits, y) -> scalar`` (e.g. ``F.cross_entropy``; one returning
    per-sample values ``(B,)`` is averaged) or the name ``"cross_entropy"`` / ``"mse"``. Weights are
    real scalars (Python, NumPy or 0-d tensors), finite and >= 0; bools are refused. Terms that need no
    labels can also be evaluated on extra unlabeled inputs (``unlabeled=``), batched into the same
    forward pass; the task loss and label-needing terms see the labeled rows only.

    ``wrt``: the tensor every term differentiates unless the term names its own (see
    :class:`gradreg.Wrt`); ``output``: picks the logits from a structured model return, for the task
    loss and every term; ``couples_batch``: says whether the model couples the samples (None: detect).
    A :class:`~gradreg.DataGrad` (or ``fd_datagrad``) without its own ``loss`` differentiates this objective's per-sample
    task loss: a named loss, an ``nn`` loss module, a callable taking ``reduction="none"`` or one
    returning per-sample values.

    Under ``torch.no_grad()`` or ``torch.inference_mode()`` every part is computed and returned without
    a graph (validation logging).

    ``groups=G``: the batch is G equal chunks, each one run's (a :class:`~gradreg.GroupedModel`'s
    members, or any model whose output rows depend on their own chunk only). A weight may then be G
    values, one per group (a scalar applies to all), and ``loss``, ``task`` and every term come back as
    ``(G,)`` tensors: group g's task-loss mean plus its own weighted term means, as that run alone would
    get them. ``generator`` may be G generators, one per chunk; a group whose weight for a term is 0
    draws nothing from its generator for that term, as a run without the term draws nothing.
    """

    def __init__(self, task_loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
                 terms: Sequence[tuple[Any, Regularizer | str]] = (), *, wrt: Any = None, output: Any = None,
                 couples_batch: bool | None = None, groups: int | None = None):
        if isinstance(task_loss, str):
            if task_loss not in TASK_LOSSES:
                raise ValueError(f"unknown task loss {task_loss!r}; valid: {', '.join(sorted(TASK_LOSSES))}")
            self._sample_loss = _SAMPLE_TASK_LOSSES[task_loss]
            task_loss = TASK_LOSSES[task_loss]
        else:
            self._sample_loss = _PerSample(task_loss)
        self.task_loss = task_loss
        self.wrt, self.output = Wrt.of(wrt), output
        if couples_batch not in (None, True, False):
            raise ValueError(f"couples_batch must be None, True or False, got {couples_batch!r}")
        self.couples_batch = couples_batch
        self.groups = None if groups is None else _groups(groups)
        self.terms: list[tuple[float | tuple[float, ...], Regularizer]] = []
        for pair in terms:
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError(f"each term must be a (weight, regularizer) pair, got {pair!r}")
            weight, term = pair
            if isinstance(term, str):
                term = get_regularizer(term)
            if not isinstance(term, Regularizer):
                raise ValueError(f"not a gradreg Regularizer: {term!r}")
            if term.output is not None:
                raise ValueError(f"{term.name}: inside an Objective, give output= to the Objective; it picks the "
                                 "logits for the task loss and every term")
            if term.wrt is None and self.wrt is not None:  # the term reads its features= from its own wrt
                term = dataclasses.replace(term, wrt=self.wrt)
            self.terms.append((_weights(weight, term.name, groups), term))
        self.names = _unique_names([t.name for _, t in self.terms])

    def __repr__(self) -> str:
        return f"Objective({getattr(self.task_loss, '__name__', self.task_loss)}, {self.terms})"

    def __call__(self, model, x, y: Tensor, *, unlabeled=None,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None) -> ObjectiveOutput:
        """``x``: a tensor, a tuple (``model(*x)``) or a dict (``model(**x)``); ``unlabeled``: extra rows
        of the same structure; ``generator``: as the terms take it (a sequence: one per equal chunk)."""
        if self.groups is not None and unlabeled is not None:
            raise ValueError("unlabeled= and groups= do not go together: each group is one run's labeled chunk")
        if self.groups is not None and not (generator is None or isinstance(generator, torch.Generator)) \
                and len(generator) != self.groups:
            raise ValueError(f"groups={self.groups} takes one generator, or one per group, not {len(generator)}")
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            return self._run(model, x, y, unlabeled, generator, differentiable=True)
        with torch.inference_mode(False), torch.enable_grad():
            out = self._run(model, x, y, unlabeled, generator, differentiable=False)
        return ObjectiveOutput(loss=out.loss.detach(), task=out.task.detach(), logits=out.logits.detach(),
                               terms={k: v.detach() for k, v in out.terms.items()})

    def _run(self, model, x, y, unlabeled, generator, differentiable: bool) -> ObjectiveOutput:
        active = [(w, t, n, t.wrt or self.wrt or INPUT) for (w, t), n in zip(self.terms, self.names)
                  if max(w if isinstance(w, tuple) else (w,)) > 0]
        b, groups = batch_size(x), self.groups
        if groups is not None and b % groups:
            raise ValueError(f"groups={groups} needs a batch divisible by {groups}, got {b} rows")
        if unlabeled is not None:
            x = concat_inputs(x, unlabeled)
        detect = self.couples_batch is None and any(
            t.uses_input and t.batch_mode == "sample" and t.couples_batch is None for _, t, _, _ in active)
        fwd = run_forward(model, x, [(wrt, t.uses_jacobian) for _, t, _, wrt in active if t.uses_input],
                          output=self.output, where="objective", detect=detect)
        logits = fwd.z
        labeled = logits if unlabeled is None else logits[:b]  # no view node when there is nothing to cut
        if isinstance(y, Tensor) and y.is_inference():  # made under inference mode: cannot be saved for backward
            y = y.clone()
        if groups is not None:
            task = self._sample_loss(labeled, y).view(groups, -1).mean(1)
        else:
            task = self.task_loss(labeled, y)
            if task.dim() > 0:  # a callable returning per-sample values
                task = _per_sample_values(task, labeled.shape[0], self.task_loss).mean()
        zero = torch.zeros(() if groups is None else (groups,), device=task.device, dtype=task.dtype)
        loss, parts = task, dict.fromkeys(self.names, zero)  # every term, in the terms' order
        plain = isinstance(x, Tensor) and self.output is None
        for weight, term, name, wrt in active:
            key = (wrt.module, wrt.input)
            extras = {}
            if term.uses_input:
                extras = {"coupled": term.coupling(model, fwd.coupled.get(key, "static"), self.couples_batch),
                          "forward": fwd.rerun(wrt)}
            if term.needs_labels:  # DataGrad, fd_datagrad: differentiated unless the term has its own loss=
                extras["sample_loss"] = self._sample_loss
            # Label-free terms also see the unlabeled rows; all differentiate w.r.t. the whole tensor.
            gen = generator if groups is None else _member_generators(generator, weight)
            value = evaluate_term(term, model, fwd.tensors.get(key), labeled if term.needs_labels else logits,
                                  y if term.needs_labels else None, generator=gen,
                                  differentiable=differentiable, plain=plain and is_plain(wrt), **extras)
            if groups is None:
                parts[name] = value.mean()
                loss = loss + weight * parts[name]
            else:
                on = torch.tensor([w > 0 for w in weight], device=value.device)
                parts[name] = torch.where(on, value.view(groups, -1).mean(1), 0.0)
                loss = loss + torch.tensor(weight, device=task.device, dtype=task.dtype) * parts[name]
        return ObjectiveOutput(loss=loss, task=task, terms=parts, logits=labeled)


def _groups(groups) -> int:
    """An integer >= 1 (any integral type: int, NumPy, 0-d tensor); bools refused."""
    try:
        n = None if isinstance(groups, bool) else operator.index(groups)
    except TypeError:
        n = None
    if n is None or n < 1:
        raise ValueError(f"groups must be None or an integer >= 1, got {groups!r}")
    return n


def _weights(weight, name: str, groups: int | None) -> float | tuple[float, ...]:
    """One weight, or with ``groups`` one per group (a scalar applies to every group)."""
    many = isinstance(weight, (list, tuple)) or (isinstance(weight, Tensor) and weight.dim() == 1) \
        or (type(weight).__name__ == "ndarray" and getattr(weight, "ndim", 0) == 1)
    if groups is None:
        if many:
            raise ValueError(f"{name}: weight must be a finite number >= 0 (one real scalar), got {weight!r}; "
                             f"one weight per group needs Objective(..., groups=N)")
        return _weight(weight, name)
    values = [_weight(w, name) for w in weight] if many else [_weight(weight, name)] * groups
    if len(values) != groups:
        raise ValueError(f"{name}: {len(values)} weights for groups={groups}; give one per group or a scalar")
    return tuple(values)


def _member_generators(generator, weights: tuple[float, ...]):
    """Per-group generators for a term: a group whose weight is 0 gets a scratch generator, so its own
    stream stays where a run without the term would leave it (its values are masked out anyway)."""
    if generator is None or isinstance(generator, torch.Generator) or min(weights) > 0:
        return generator
    return [g if w > 0 else torch.Generator(device=g.device).manual_seed(i)
            for i, (g, w) in enumerate(zip(generator, weights))]


def _weight(weight, name: str) -> float:
    """Any real scalar: Python, NumPy, or a 0-d real tensor; bools (True silently meaning 1.0) refused."""
    if isinstance(weight, Tensor) and weight.dim() == 0 and weight.dtype != torch.bool \
            and not weight.is_complex():
        weight = weight.item()
    if isinstance(weight, bool) or type(weight).__name__ == "bool_" or not isinstance(weight, numbers.Real) \
            or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"{name}: weight must be a finite number >= 0 (a real Python, NumPy or 0-d tensor scalar, not a bool), "
                         f"got {weight!r}")
    return float(weight)


class _PerSample:
    """The per-sample values of a user's task loss: an ``nn`` loss module with ``reduction="none"``, a
    callable taking ``reduction="none"``, or one that returns them. Non-batch dims are averaged, so the
    batch mean equals a mean-reduced task loss."""

    def __init__(self, fn):
        self.fn = fn
        if isinstance(fn, nn.modules.loss._Loss) and hasattr(fn, "reduction"):
            self.fn = copy.copy(fn)
            self.fn.reduction = "none"
            self.takes_reduction = False
        else:
            try:
                params = inspect.signature(fn).parameters
            except (TypeError, ValueError):
                params = {}
            self.takes_reduction = "reduction" in params

    def __call__(self, z: Tensor, y: Tensor) -> Tensor:
        values = self.fn(z, y, reduction="none") if self.takes_reduction else self.fn(z, y)
        return _per_sample_values(values, z.shape[0], self.fn)


def _per_sample_values(values: Tensor, n: int, fn) -> Tensor:
    if values.dim() >= 1 and values.shape[0] == n:
        return values if values.dim() == 1 else values.flatten(1).mean(1)
    name = getattr(fn, "__name__", type(fn).__name__)
    raise ValueError(
        f"the task loss {name} gives {tuple(values.shape)} for a batch of {n}, not one value per sample: "
        "DataGrad (and an Objective with groups=) needs each sample's own loss. Pass a task loss that "
        "accepts reduction='none' "
        "(as F.cross_entropy does) or returns per-sample values (B,), or give DataGrad its own loss=")


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def paper_weight(term: str, weight: float, batch_size: int) -> float:
    """Convert a λ written in the paper's convention to gradreg's batch-size-independent one.

    The paper's DataGrad (Figure 1) is the gradient of the batch-*mean* loss, whose row i is
    :math:`\\partial L_i / \\partial x_i / B`; squared and summed over the batch it is
    :math:`\\frac{1}{B}` times gradreg's batch mean of per-sample squared gradients. So
    λ_gradreg = λ_paper / B for DataGrad (NOTES.md: paper λ=50 at B=50 behaves like λ=1 here).
    The other terms' per-sample values do not carry the 1/B and map one to one. Which terms do is
    registered with each (``lambda_scale`` of :func:`gradreg.regularizer_info`): DataGrad and its
    finite-difference estimate ``fd_datagrad``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # Unknown names are errors: a misspelt DataGrad would silently keep a B times too large λ.
    scale = regularizer_info(term).lambda_scale
    return weight / batch_size if scale == "batch_mean" else weight
