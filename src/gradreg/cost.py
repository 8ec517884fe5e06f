"""The cost model of ``gradreg experiments``: rough single-CPU seconds of a run from its config.

steps x the model's seconds per unregularized step x the extra cost of its terms. Good for "minutes or
days?", not for scheduling. The facts come from the registries: a model's ``step_seconds`` and
``gradient_factor`` (:func:`gradreg.models.model_info`, measured as the comment at the models'
registrations says), a dataset's ``num_outputs`` and ``cost_factor`` (:func:`gradreg.data.dataset_info`).
They were measured with subnormal flushing on, the harness's default (:mod:`gradreg.numerics`); without it
late LeNet-5 steps run several times slower and these estimates are low.
"""
from __future__ import annotations

from typing import Mapping

from .data import dataset_info
from .models import MODEL_INFO, ModelInfo
from .registry import MetadataView
from .train import RunConfig

__all__ = ["STEP_SECONDS", "estimate_run_seconds"]

# Each model's registered step cost (read-only; register_model(step_seconds=...) sets it).
STEP_SECONDS: Mapping[str, float] = MetadataView(MODEL_INFO, "step_seconds")
# Guesses for what was not measured: a small model's step, and a double backward's usual ~2x.
_UNMEASURED_STEP_SECONDS, _UNMEASURED_GRADIENT_FACTOR, _UNKNOWN_OUTPUTS = 0.01, 2.0, 10
# Confidence penalty adds ~5%; an exact Jacobian term (JacReg 1,340 s per 10,000 LeNet-5 steps on MNIST,
# x10.3) takes one backward pass per output, modelled as 1 + 0.93 m for m outputs.
_CONFIDENCE_FACTOR, _PER_OUTPUT_FACTOR = 1.05, 0.93


def estimate_run_seconds(config: RunConfig, seconds_per_step: dict[str, float] | None = None) -> float:
    """Rough seconds for one run: steps x per-step cost of its model x the extra cost of its terms.

    ``seconds_per_step`` overrides the unregularized per-step cost of a model (keys: model names).
    """
    name = config.model_name
    # A model not registered here (a plugin not imported yet) costs what an unmeasured one does.
    model, data = MODEL_INFO.get(name, ModelInfo()), dataset_info(config.dataset)
    base = (seconds_per_step or {}).get(name, model.step_seconds)
    base = _UNMEASURED_STEP_SECONDS if base is None else base
    grad = model.gradient_factor if model.gradient_factor is not None else _UNMEASURED_GRADIENT_FACTOR
    m = data.num_outputs if data.num_outputs is not None else _UNKNOWN_OUTPUTS
    extra = 0.0
    for term, weight in config.terms:
        if weight == 0:
            continue
        if term == "confidence_penalty":
            factor = _CONFIDENCE_FACTOR
        elif term in ("jacreg", "frobreg"):
            factor = max(grad, 1 + _PER_OUTPUT_FACTOR * m)
        else:
            factor = grad
        extra += factor - 1
    return config.resolved_recipe().steps * base * data.cost_factor * (1 + extra)
