r"""The training objective: a task loss plus weighted regularizer terms, every part returned.

.. math:: \mathcal{L} = L_{task}(g(x), y) + \sum_t \lambda_t \, \frac{1}{B} \sum_i R_t(x_i, y_i)

One forward pass is shared by the task loss and every term (the input gets ``requires_grad`` before
the forward). Example::

    objective = gradreg.Objective(F.cross_entropy, [(0.03, gradreg.SpectReg())])
    out = objective(model, x, y)
    out.loss.backward()
    log(out.task.item(), {k: v.item() for k, v in out.terms.items()})
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .regularizers import REGULARIZERS, Regularizer, get_regularizer

__all__ = ["Objective", "ObjectiveOutput", "paper_weight", "TASK_LOSSES"]

TASK_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "mse": lambda z, y: F.mse_loss(z, y.reshape(z.shape).to(z.dtype)),
}


@dataclass
class ObjectiveOutput:
    """``loss`` to backpropagate, and its parts: ``task`` and each term's unweighted batch mean."""

    loss: Tensor
    task: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    logits: Tensor | None = None

    def parts(self) -> dict[str, float]:
        """Plain floats for logging (one host sync for all parts)."""
        names = ["loss", "task", *self.terms]
        values = torch.stack([self.loss.detach(), self.task.detach(), *(t.detach() for t in self.terms.values())])
        return dict(zip(names, values.float().cpu().tolist()))


class Objective:
    """Task loss + Σ λ_t · mean(R_t). ``terms`` are ``(weight, Regularizer or registered name)`` pairs.

    ``task_loss``: a callable ``(logits, y) -> scalar`` (e.g. ``F.cross_entropy``) or the name
    ``"cross_entropy"`` / ``"mse"``. Weights must be finite and non-negative. Terms that need no labels
    can also be evaluated on extra unlabeled inputs (``unlabeled=``), batched into the same forward
    pass; the task loss and label-needing terms see the labeled rows only.
    """

    def __init__(self, task_loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
                 terms: Sequence[tuple[float, Regularizer | str]] = ()):
        if isinstance(task_loss, str):
            if task_loss not in TASK_LOSSES:
                raise ValueError(f"unknown task loss {task_loss!r}; valid: {', '.join(sorted(TASK_LOSSES))}")
            task_loss = TASK_LOSSES[task_loss]
        self.task_loss = task_loss
        self.terms: list[tuple[float, Regularizer]] = []
        for pair in terms:
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError(f"each term must be a (weight, regularizer) pair, got {pair!r}")
            weight, term = pair
            if isinstance(term, str):
                term = get_regularizer(term)
            if not isinstance(term, Regularizer):
                raise ValueError(f"not a gradreg Regularizer: {term!r}")
            if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
                raise ValueError(f"{term.name}: weight must be a finite number >= 0, got {weight!r}")
            self.terms.append((float(weight), term))
        self.names = _unique_names([t.name for _, t in self.terms])

    def __repr__(self) -> str:
        return f"Objective({getattr(self.task_loss, '__name__', self.task_loss)}, {self.terms})"

    def __call__(self, model, x: Tensor, y: Tensor, *, unlabeled: Tensor | None = None,
                 generator: torch.Generator | None = None) -> ObjectiveOutput:
        active = [(w, t, n) for (w, t), n in zip(self.terms, self.names) if w > 0]
        b = x.shape[0]
        if unlabeled is not None:
            x = torch.cat([x, unlabeled.to(x.device, x.dtype)])
        if any(t.uses_jacobian for _, t, _ in active):
            x = x.detach().requires_grad_(True)
        logits = model(x)
        labeled = logits if unlabeled is None else logits[:b]  # no view node when there is nothing to cut
        task = self.task_loss(labeled, y)
        zero = torch.zeros((), device=task.device, dtype=task.dtype)
        loss, parts = task, dict.fromkeys(self.names, zero)  # every term, in the terms' order
        for weight, term, name in active:
            # Label-free terms also see the unlabeled rows; all differentiate w.r.t. the whole x.
            value = term.evaluate(model, x, labeled if term.needs_labels else logits,
                                  y if term.needs_labels else None,
                                  generator=generator)
            parts[name] = value.mean()
            loss = loss + weight * parts[name]
        return ObjectiveOutput(loss=loss, task=task, terms=parts, logits=labeled)


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
    The other terms' per-sample values do not carry the 1/B and map one to one.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if term not in REGULARIZERS:  # a misspelt DataGrad would silently keep a B times too large λ
        raise ValueError(f"unknown regularizer {term!r}; valid: {', '.join(sorted(REGULARIZERS))}")
    return weight / batch_size if term == "datagrad" else weight
