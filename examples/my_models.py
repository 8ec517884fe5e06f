"""Your own model for gradreg's sweeps: register it here, list this file in an experiment file's ``imports``.

``gradreg sweep examples/my_model_sweep.toml`` imports this file in every worker process, so the
model is known wherever a run trains. Any builder ``fn(*, input_shape, num_outputs, batchnorm, dropout)``
that returns an ``nn.Module`` mapping inputs to logits will do.
"""
import math

from torch import nn

import gradreg


@gradreg.register_model("wide_mlp")
def wide_mlp(*, input_shape, num_outputs, batchnorm, dropout, width=256):
    """One hidden ReLU layer of ``width`` units; BatchNorm and dropout where the run asks for them."""
    layers = [nn.Flatten(), nn.Linear(math.prod(input_shape), width)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(width))
    layers.append(nn.ReLU())
    if dropout:
        layers.append(gradreg.StreamDropout(dropout))  # the run's own dropout stream: reproducible per seed
    layers.append(nn.Linear(width, num_outputs))
    return nn.Sequential(*layers)
