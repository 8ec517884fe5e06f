"""The cost model of ``gradreg experiments``: rough single-CPU seconds of a run from its config.

steps x the model's seconds per unregularized step x the extra cost of its terms. Good for "minutes or
days?", not for scheduling. The constants are measured (see the comment above them) with subnormal
flushing on, the harness's default (:mod:`gradreg.numerics`); without it late LeNet-5 steps run several
times slower and these estimates are low.
"""
from __future__ import annotations

from .train import RunConfig

__all__ = ["STEP_SECONDS", "estimate_run_seconds"]

# Seconds of one single-thread sweep run per step, evaluation and start-up included, on this project's
# 2-core CPU with two runs at once (medians of results/mnist.db): LeNet-5 on MNIST 13 ms
# unregularized (130 s per 10,000-step run), x2.3 with one double-backprop term (DataGrad 320 s,
# SpectReg 283 s; OneHot etc. alike), x10.3 with an exact Jacobian term (JacReg 1,340 s: one backward
# pass per output, modelled as 1 + 0.93 m for m outputs). The SIN MLP ~1.5 ms (x1.7 with a gradient
# term) and the CIFAR ResNet ~0.6 s per step (x2.1 assumed) are step timings from benchmarks, not runs.
# Confidence penalty adds ~5%. TinyImageNet's 64x64 inputs cost ~4x CIFAR's 32x32.
STEP_SECONDS: dict[str, float] = {"lenet5": 0.013, "mlp": 0.0015, "cifar_resnet": 0.6}
_GRADIENT_FACTOR = {"lenet5": 2.3, "mlp": 1.7, "cifar_resnet": 2.1}
_INPUT_FACTOR = {"tinyimagenet": 4.0}
_OUTPUTS = {"mnist": 10, "digits": 10, "cifar10": 10, "cifar100": 100, "tinyimagenet": 200, "sin": 1, "sin2": 1,
            "sin_lownoise": 1}


def estimate_run_seconds(config: RunConfig, seconds_per_step: dict[str, float] | None = None) -> float:
    """Rough seconds for one run: steps x per-step cost of its model x the extra cost of its terms.

    ``seconds_per_step`` overrides the unregularized per-step cost of a model (keys: model names).
    """
    model = config.model_name
    base = {**STEP_SECONDS, **(seconds_per_step or {})}.get(model, 0.01)
    grad = _GRADIENT_FACTOR.get(model, 2.0)
    m = _OUTPUTS.get(config.dataset, 10)
    extra = 0.0
    for name, weight in config.terms:
        if weight == 0:
            continue
        if name == "confidence_penalty":
            factor = 1.05
        elif name in ("jacreg", "frobreg"):
            factor = max(grad, 1 + 0.93 * m)
        else:
            factor = grad
        extra += factor - 1
    return config.resolved_recipe().steps * base * _INPUT_FACTOR.get(config.dataset, 1.0) * (1 + extra)
