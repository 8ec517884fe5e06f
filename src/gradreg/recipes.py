"""The paper's training setups (Section 6.1) as typed, frozen configs.

Deviations from the paper's text, each measured (see ``../shared/paper/NOTES.md`` and
``results/REPRODUCTION.md``):

- MNIST: the paper says Adam with learning rate 0.1. With Adam that does not train (11.35% test
  accuracy: chance), so the rate was picked on the dev set (5 dev seeds, weight decay 0.0005,
  ``results/probe_mnist_lr.csv``, the column "lr" of ``results/specs/probe_mnist_baseline.toml``, dev
  seeds 1000-1004; 0.001 from ``results/probe_mnist_init.csv``): dev accuracy 96.89 at
  0.0005, 97.15 at 0.001, 97.34 at 0.002, 97.35 at 0.003, 97.29 at 0.004. The recipe takes 0.003,
  the best mean. Adam's usual 0.001 (the superseded tables of ``results/lr0.001/``; rerun them with
  ``--set lr=0.001``) leaves the baseline about 0.2 points below the paper's.
- Weight decay is an L2 term ``wd * sum(w**2)`` over the weight tensors (not biases, not
  BatchNorm scales) added to the loss, as Keras/TensorFlow code of the paper's time did
  (``kernel_regularizer=l2(wd)``); Figure 4's "weight loss" is the same sum. It is not decoupled
  (AdamW-style): under Adam an L2 term is rescaled per coordinate, and the paper's λ values were tuned
  together with this form.
- SIN: the paper gives no optimizer or step count. Adam (lr 0.001, full batch of the 100 points,
  5,000 steps, the MNIST schedule) fits the noisy training set closely (the unregularized net
  overfits, which is what Table 7's baseline shows), in about 10 s on one CPU core.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from .data import DATASET_INFO
from .registry import MetadataView

__all__ = ["Recipe", "RECIPES", "get_recipe", "DEFAULT_RECIPE"]


@dataclass(frozen=True)
class Recipe:
    optimizer: str = "adam"              # "adam" or "sgd"
    lr: float = 1e-3                     # initial learning rate
    betas: tuple[float, float] = (0.9, 0.999)   # Adam
    momentum: float = 0.9                # SGD (Nesterov, dampening 0)
    nesterov: bool = True
    batch_size: int = 50
    steps: int = 10_000                  # minibatches
    lr_milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of `steps` where lr is divided
    lr_factor: float = 0.1
    weight_decay: float = 0.0005         # L2 term wd * sum(w**2) over weight tensors, in the loss
    dropout: float = 0.5                 # for models with a dropout switch
    augment: bool = False                # random flip + translation by up to 4 px (images only)
    eval_points: int = 20                # learning-curve points recorded over the run
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        _check(self.optimizer in ("adam", "sgd"), f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        for name in ("lr", "batch_size", "steps", "eval_points", "eval_batch_size"):
            _check(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)!r}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        _check(0 <= self.dropout < 1, f"dropout must lie in [0, 1), got {self.dropout!r}")
        _check(all(0 < f < 1 for f in self.lr_milestones), "lr_milestones are fractions in (0, 1)")

    def replace(self, **overrides: Any) -> "Recipe":
        """A copy with ``overrides``; unknown keys and wrong types are errors."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - set(fields))
        _check(not unknown, f"unknown recipe key(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
        coerced = {k: _coerce(k, v, getattr(self, k)) for k, v in overrides.items()}
        return dataclasses.replace(self, **coerced)

    def milestones(self) -> list[int]:
        return [int(round(f * self.steps)) for f in self.lr_milestones]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _coerce(key: str, value: Any, current: Any) -> Any:
    """Type-check an override against the field's current value (CLI values arrive as strings)."""
    kind = type(current)
    if isinstance(value, str) and kind is not str:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{key}: expected a boolean, got {value!r}")
            return value.lower() in ("true", "1", "yes")
        if kind is tuple:
            value = [float(v) for v in value.split(",") if v]
        else:
            try:
                value = kind(float(value)) if kind is int else kind(value)
            except ValueError:
                raise ValueError(f"{key}: expected {kind.__name__}, got {value!r}") from None
    if kind is tuple:
        return tuple(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


RECIPES: dict[str, Recipe] = {
    # 6.1.1: Adam, batch 50, 10k steps, lr /10 at 50% and 75%, wd 0.0005, dropout 0.5; lr from the dev set.
    "mnist": Recipe(lr=3e-3),
    # 6.1.2: SGD Nesterov 0.9, batch 128, 50k steps, lr 0.1 /10 at 50%/75%, wd 0.003.
    "cifar": Recipe(optimizer="sgd", lr=0.1, batch_size=128, steps=50_000, weight_decay=0.003, dropout=0.0),
    # 6.1.3 (optimizer and steps not in the paper; see the module docstring).
    "sin": Recipe(batch_size=100, steps=5_000, weight_decay=0.0, dropout=0.0, eval_batch_size=1000),
    # The embedded demo: the MNIST recipe shortened to suit 8x8 digits and ~1,000 training points.
    "digits": Recipe(batch_size=50, steps=1_500, weight_decay=0.0005, dropout=0.0),
}

# Which recipe a dataset uses unless the run names one: registered with the dataset
# (register_dataset(recipe=...)); this read-only view reads that registry.
DEFAULT_RECIPE: Mapping[str, str] = MetadataView(DATASET_INFO, "recipe")


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]
