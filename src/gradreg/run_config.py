"""What a run is: :class:`RunConfig` (everything that determines its result, with its key) and
:class:`RunResult` (what it gave). The loop that trains runs is :mod:`gradreg.train`.

Seeds are first-class: the run's ``seed`` derives separate streams for the training subset, the
initialization (and dropout), the minibatch order and the regularizers' random projections, so
changing one never shifts another. The same config gives the same numbers on the same machine.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from . import data as data_mod
from .objective import paper_weight
from .recipes import RECIPES, Recipe, get_recipe
from .registry import MetadataView
from .regularizers import get_regularizer

__all__ = ["RunConfig", "RunResult", "term_weights", "resolve_device", "DEFAULT_MODEL", "DEFAULT_TRAIN_SIZE"]

# A dataset's default model and training-set size are registered with it (register_dataset); these
# read-only views read that registry.
DEFAULT_MODEL: Mapping[str, str] = MetadataView(data_mod.DATASET_INFO, "model")
DEFAULT_TRAIN_SIZE: Mapping[str, int] = MetadataView(data_mod.DATASET_INFO, "train_size")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result (not where its data lies or which device runs it)."""

    dataset: str = "digits"
    train_size: int | None = None          # points drawn from the pool; None: the dataset's (or the pool)
    model: str | None = None               # None: the dataset's registered model
    batchnorm: bool = False
    recipe: str | None = None              # None: the dataset's registered recipe
    overrides: tuple[tuple[str, Any], ...] = ()   # recipe overrides, e.g. (("weight_decay", 0.0),)
    terms: tuple[tuple[str, float], ...] = ()     # (regularizer, λ) pairs
    weight_convention: str = "paper"       # λ as the paper writes it, or "gradreg" (batch-size independent)
    batch_mode: str = "batch"              # the paper's batch-summed form; same as "sample" without BatchNorm
    n_projections: int = 1
    seed: int = 0
    max_eval: int | None = None            # cap on dev/test points (smoke runs only)

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", tuple(sorted((str(k), v) for k, v in dict(self.overrides).items())))
        object.__setattr__(self, "terms", tuple((str(n), float(w)) for n, w in self.terms))
        if self.weight_convention not in ("paper", "gradreg"):
            raise ValueError(f"weight_convention must be 'paper' or 'gradreg', got {self.weight_convention!r}")
        if self.dataset not in data_mod.DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid: {', '.join(sorted(data_mod.DATASETS))}")
        if self.train_size is None:
            object.__setattr__(self, "train_size", data_mod.dataset_info(self.dataset).train_size)
        if self.train_size is not None and self.train_size < 1:
            raise ValueError(f"train_size must be >= 1, got {self.train_size}")
        for name, weight in self.terms:
            get_regularizer(name, **self._term_options(name))  # unknown names fail here, listing valid ones
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"{name}: weight must be a finite number >= 0, got {weight}")
        # Store overrides as the recipe's typed values so "300" and 300 give the same run key, and drop
        # those equal to the recipe's own value: a run has one key however its recipe was spelled.
        recipe, base = self.resolved_recipe(), self.base_recipe()
        object.__setattr__(self, "overrides", tuple((k, getattr(recipe, k)) for k, _ in self.overrides
                                                    if getattr(recipe, k) != getattr(base, k)))

    def _term_options(self, name: str) -> dict[str, Any]:
        if name == "confidence_penalty":
            return {}
        opts: dict[str, Any] = {"batch_mode": self.batch_mode}
        if name in ("spectreg", "spectreg_spherical", "randomonehot"):
            opts["n_projections"] = self.n_projections
        # DataGrad is given no loss: it differentiates the run's own per-sample task loss (the objective's,
        # which the training loop picks from the loaded dataset's task), whatever the dataset.
        return opts

    @property
    def model_name(self) -> str:
        return self.model or data_mod.dataset_info(self.dataset).model

    def base_recipe(self) -> Recipe:
        """The named recipe (or the dataset's), before overrides."""
        return get_recipe(self.recipe or data_mod.dataset_info(self.dataset).recipe)

    def resolved_recipe(self) -> Recipe:
        return self.base_recipe().replace(**dict(self.overrides))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["overrides"] = dict(self.overrides)
        d["terms"] = [list(t) for t in self.terms]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """The config of ``to_dict()`` or of ``resolved_dict()`` (a results row): the latter names its
        recipe by its values, and gets back the registered recipe those values and overrides come from."""
        d = dict(d)
        d["overrides"] = tuple(dict(d.get("overrides", {})).items())
        d["terms"] = tuple(tuple(t) for t in d.get("terms", ()))
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown run config key(s): {', '.join(unknown)}")
        if isinstance(d.get("recipe"), dict):
            return cls._from_resolved(d)
        return cls(**d)

    @classmethod
    def _from_resolved(cls, d: dict[str, Any]) -> "RunConfig":
        want = _canonical(d | {"overrides": dict(d["overrides"]), "terms": [list(t) for t in d["terms"]]})
        # The dataset's own model and recipe first: a config leaves those unset unless it chose others.
        for model, recipe in itertools.product((None, d["model"]), (None, *sorted(RECIPES))):
            try:
                candidate = cls(**(d | {"model": model, "recipe": recipe}))
            except (TypeError, ValueError):
                continue
            if _canonical(candidate.resolved_dict()) == want:
                return candidate
        raise ValueError(f"a stored run config whose recipe values match no registered recipe with its "
                         f"overrides: {d['recipe']}")

    def resolved_dict(self) -> dict[str, Any]:
        """What the run is: ``to_dict()`` with the model's name and the recipe's values filled in. Results
        rows store it, and :meth:`key` hashes exactly it, so a row says what ran even after a recipe's
        or a dataset's defaults change."""
        return self.to_dict() | {"model": self.model_name, "recipe": dataclasses.asdict(self.resolved_recipe())}

    def key(self) -> str:
        """A stable hash of :meth:`resolved_dict`: the run's identity in the results store."""
        return hashlib.sha256(_canonical(self.resolved_dict()).encode()).hexdigest()[:16]

    def seed_for(self, stream: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{self.seed}:{stream}".encode()).digest()[:7], "little")


def _canonical(d: dict[str, Any]) -> str:
    return json.dumps(d, sort_keys=True)


@dataclass
class RunResult:
    config: RunConfig
    status: str                               # "done" or "diverged" ("failed" is set by the sweep)
    metrics: dict[str, float] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.resolved_dict(), "key": self.config.key(), "status": self.status,
                "metrics": self.metrics, "curve": self.curve, "extras": self.extras,
                "seconds": self.seconds, "error": self.error}


def term_weights(config: RunConfig, batch: int) -> list[tuple[float, Any]]:
    """``(λ in gradreg's convention, regularizer)`` for each of the run's terms."""
    convert = paper_weight if config.weight_convention == "paper" else (lambda n, w, b: w)
    return [(convert(n, w, batch), get_regularizer(n, **config._term_options(n))) for n, w in config.terms]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA where there is one, else the CPU; otherwise the device named."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
