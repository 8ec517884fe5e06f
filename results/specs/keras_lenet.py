"""LeNet-5 with Keras' defaults of the paper's era, for the MNIST baseline probe's arms
(results/specs/probe_mnist_baseline.toml, results/REPRODUCTION.md).

- ``lenet5_glorot``: Keras' initialization (Glorot-uniform weights, zero biases) instead of PyTorch's
  (Kaiming-uniform(a=√5) weights, small uniform biases). The Glorot draws continue the init seed stream
  where PyTorch's own initialization leaves it, on a fork of that stream: the run's dropout masks are
  those of the same seed's ``lenet5`` run.
- ``lenet5_keras_bn``: the BatchNorm LeNet (``batchnorm = true``, required) with Keras' BatchNorm
  defaults (momentum 0.99, i.e. PyTorch momentum 0.01, and ε 1e-3) instead of PyTorch's (0.1, 1e-5).
"""
from __future__ import annotations

import torch
from torch import nn

import gradreg
from gradreg.models import LeNet5, model_info

_LENET5 = model_info("lenet5")


@gradreg.register_model("lenet5_glorot", groupable=_LENET5.groupable, step_seconds=_LENET5.step_seconds,
                        gradient_factor=_LENET5.gradient_factor)
def lenet5_glorot(*, input_shape, num_outputs, batchnorm=False, dropout=0.0):
    model = LeNet5(tuple(input_shape), num_outputs, batchnorm=batchnorm, dropout=dropout)
    stream = torch.Generator().set_state(torch.get_rng_state())
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight, generator=stream)
            nn.init.zeros_(m.bias)
    return model


@gradreg.register_model("lenet5_keras_bn", step_seconds=_LENET5.step_seconds,
                        gradient_factor=_LENET5.gradient_factor)
def lenet5_keras_bn(*, input_shape, num_outputs, batchnorm=True, dropout=0.0):
    if not batchnorm:
        raise ValueError("lenet5_keras_bn sets Keras' BatchNorm defaults, so it needs batchnorm = true")
    model = LeNet5(tuple(input_shape), num_outputs, batchnorm=True, dropout=dropout)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum, m.eps = 0.01, 1e-3
    return model
