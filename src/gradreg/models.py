"""The paper's models (Section 6.1) in a registry: LeNet-5, the CIFAR ResNet, the SIN MLP.

Every builder takes ``input_shape`` (C, H, W) or (D,), ``num_outputs``, ``batchnorm`` and ``dropout``
and returns a plain ``nn.Module`` that maps a batch of inputs to logits (no softmax): the
regularizers differentiate those logits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from .layers import BatchNorm2d, Conv2d, ReLU

__all__ = ["MODELS", "MODEL_INFO", "ModelInfo", "model_info", "register_model", "create_model", "count_parameters",
           "LeNet5", "CifarResNet", "MLP", "StreamDropout", "use_dropout_stream"]

ModelBuilder = Callable[..., nn.Module]
MODELS: dict[str, ModelBuilder] = {}


@dataclass(frozen=True)
class ModelInfo:
    """What the harness knows of a model besides its builder (:func:`register_model` records it)."""

    groupable: bool = False          # G copies stack into one GroupedModel and each gives its solo result
    group_on_cpu: bool = False       # stacking was measured faster than single runs on CPU too
    step_seconds: float | None = None     # cost model: seconds per unregularized step (None: not measured)
    gradient_factor: float | None = None  # cost model: a step with one double-backprop term / a plain one


MODEL_INFO: dict[str, ModelInfo] = {}


def register_model(name: str, *, groupable: bool = False, group_on_cpu: bool = False,
                   step_seconds: float | None = None, gradient_factor: float | None = None
                   ) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a builder ``fn(*, input_shape, num_outputs, batchnorm, dropout)`` to MODELS, with
    its :class:`ModelInfo` (:func:`model_info`): whether it can train grouped and its step cost."""
    info = ModelInfo(groupable, group_on_cpu, step_seconds, gradient_factor)

    def decorator(fn: ModelBuilder) -> ModelBuilder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = fn
        MODEL_INFO[name] = info
        return fn
    return decorator


def model_info(name: str) -> ModelInfo:
    """The registered model ``name``'s :class:`ModelInfo`; unknown names list the valid ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    return MODEL_INFO.get(name, ModelInfo())  # put into MODELS directly: the defaults


def create_model(name: str, *, input_shape: tuple[int, ...], num_outputs: int, batchnorm: bool = False,
                 dropout: float = 0.0) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    return MODELS[name](input_shape=tuple(input_shape), num_outputs=num_outputs, batchnorm=batchnorm,
                        dropout=dropout)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class StreamDropout(nn.Dropout):
    """``nn.Dropout`` that draws its masks from its own generator, or takes them given.

    The mask is drawn as ``F.dropout`` draws it on CPU: ``empty_like(x).bernoulli_(1 - p)`` divided by
    ``1 - p``, here from ``generator``. On CPU a StreamDropout whose generator holds the global state
    therefore gives ``nn.Dropout``'s masks bit for bit. Why a run's dropout has its own stream: G runs
    trained as one group (:func:`gradreg.train.train_group`) can then each replay their own masks, and solo and
    grouped runs agree on CUDA too, whose fused dropout kernel lays out its random numbers differently.
    A given ``noise`` buffer (the scaled mask; set by grouped training) is used instead of a draw.
    """

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        super().__init__(p)
        self.generator = generator
        self.register_buffer("noise", None, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        noise = self.noise
        if noise is None:
            noise = torch.empty_like(x).bernoulli_(1 - self.p, generator=self.generator).div_(1 - self.p)
        return x * noise


def use_dropout_stream(model: nn.Module, generator: torch.Generator | None) -> int:
    """Replace every ``nn.Dropout`` of ``model`` (in place) by a :class:`StreamDropout` drawing from
    ``generator`` (shared by all of them, as one model's layers share the global stream); returns how
    many were replaced."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout or isinstance(child, StreamDropout):
                new = StreamDropout(child.p, generator)
                new.train(child.training)
                setattr(parent, name, new)
                swapped += 1
    return swapped


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"{name} needs image inputs (C, H, W), got input_shape {input_shape}")
    return input_shape  # type: ignore[return-value]


class LeNet5(nn.Sequential):
    """The modern LeNet-5 of paper 6.1.1: conv5x5(6)-pool-conv5x5(16)-pool-fc120-fc84-dropout-fc.

    ReLU activations and max-pooling; dropout after the last dense hidden layer. On 1x28x28 inputs
    the first convolution is zero-padded to keep 28x28, giving exactly 61,706 parameters for 10 classes.
    Smaller images (8x8 digits) pad the second convolution too, so both pools have something to pool.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_outputs: int, batchnorm: bool = False,
                 dropout: float = 0.5):
        c, h, w = input_shape
        pad2 = 0 if min(h, w) >= 16 else 2
        side = lambda s: ((s // 2) + 2 * pad2 - 4) // 2  # noqa: E731  spatial size after both pools
        fh, fw = side(h), side(w)
        if fh < 1 or fw < 1:
            raise ValueError(f"lenet5 needs images of at least 4x4, got {h}x{w}")
        norm = (lambda n, d: nn.BatchNorm2d(n) if d == 2 else nn.BatchNorm1d(n)) if batchnorm else None
        layers: list[nn.Module] = [nn.Conv2d(c, 6, 5, padding=2)]
        layers += [norm(6, 2)] if norm else []
        layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5, padding=pad2)]
        layers += [norm(16, 2)] if norm else []
        layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * fh * fw, 120)]
        layers += [norm(120, 1)] if norm else []
        layers += [nn.ReLU(), nn.Linear(120, 84)]
        layers += [norm(84, 1)] if norm else []
        layers += [nn.ReLU()]
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        layers += [nn.Linear(84, num_outputs)]
        super().__init__(*layers)


class MLP(nn.Sequential):
    """Paper 6.1.3: ``depth`` dense layers of ``width`` ReLU units and a linear output."""

    def __init__(self, in_features: int, num_outputs: int, width: int = 64, depth: int = 5,
                 batchnorm: bool = False, dropout: float = 0.0):
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, width)]
            layers += [nn.BatchNorm1d(width)] if batchnorm else []
            layers += [nn.ReLU()]
            d = width
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        layers += [nn.Linear(d, num_outputs)]
        super().__init__(*layers)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, added to the (projected when the shape changes) input, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(cout)
        self.conv2 = Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(cout)
        self.relu = ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(Conv2d(cin, cout, 1, stride=stride, bias=False), BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """Paper 6.1.2: three levels of ``blocks`` basic residual blocks with 48, 96, 192 filters.

    The ResNet's BatchNorm is part of the architecture (the paper's CIFAR net has it), so the
    ``batchnorm`` switch does not remove it. A 64x64 input (TinyImageNet) gets a stride-2 stem so the
    levels see the same 32x32 -> 8x8 resolutions as on CIFAR. Its convolutions and BatchNorms are
    :mod:`gradreg.layers`' (nn's, with a cheaper double backward for the gradient regularizers).
    """

    def __init__(self, input_shape: tuple[int, int, int], num_outputs: int, widths=(48, 96, 192),
                 blocks: int = 3, dropout: float = 0.0):
        super().__init__()
        c, h, _ = input_shape
        stem_stride = max(1, h // 32)
        self.stem = nn.Sequential(Conv2d(c, widths[0], 3, stride=stem_stride, padding=1, bias=False),
                                  BatchNorm2d(widths[0]), ReLU())
        layers, cin = [], widths[0]
        for level, cout in enumerate(widths):
            for i in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if (level > 0 and i == 0) else 1))
                cin = cout
        self.levels = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  *([nn.Dropout(dropout)] if dropout > 0 else []), nn.Linear(cin, num_outputs))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.levels(self.stem(x)))


# Step costs (gradreg.cost): CPU seconds of one single-thread run per step, evaluation and start-up
# included, subnormals flushed (the default), on this project's 2-core AMD EPYC machine, from the runs'
# stored cpu_seconds (results/flush/mnist.db; results/REPRODUCTION.md, Appendix C): LeNet-5 on MNIST-2000
# 5.4 ms unregularized (median 56 s per 10,000-step run, 5 runs, 47-60 s with the machine's load), x2.1
# with one double-backprop term (SpectReg 0.03 and DataGrad 50, median 117 s, 10 runs, 100-125 s). The
# SIN MLP 0.95 ms, x1.55 with SpectReg (solo runs of the sin recipe, 4.75 s and 7.3 s). The CIFAR
# ResNets' are step timings from benchmarks or scaled runs.
# Grouping on CPU: SIN MLPs train 5.7x faster per run in groups of 50, stacked LeNet-5s were not faster
# (benchmarks/bench_grouped.py); the ResNet has BatchNorm (per-run running statistics), so no group.
@register_model("lenet5", groupable=True, step_seconds=0.0054, gradient_factor=2.1)
def _lenet5(*, input_shape, num_outputs, batchnorm=False, dropout=0.0):
    return LeNet5(_image_shape("lenet5", input_shape), num_outputs, batchnorm=batchnorm, dropout=dropout)


# The paper's ResNet at batch 128, one thread, channels-last: 1.3 s per plain step and 2.5-2.75x with
# SpectReg or DataGrad (benchmarks/bench_resnet.py, wall time with other work on the machine: rough).
@register_model("cifar_resnet", step_seconds=1.3, gradient_factor=2.6)
def _cifar_resnet(*, input_shape, num_outputs, batchnorm=True, dropout=0.0):
    return CifarResNet(_image_shape("cifar_resnet", input_shape), num_outputs, dropout=dropout)


# Measured memory layout on CPU (gradreg.train.use_channels_last's "auto"), one thread, medians of
# interleaved steps (benchmarks/README.md): channels-last made LeNet-5's plain steps 1.24x and SpectReg
# steps 1.20x faster; the CIFAR ResNet's (16/32/64 x1, batch 128, with gradreg.layers) plain steps 1.4x
# and SpectReg/DataGrad steps 1.3x. With nn's own layers the ResNet's double backward was 1.5x slower
# channels-last (the reductions of PyTorch's BatchNorm double backward and its ReLU double backward were
# several times slower in that layout).
CPU_CHANNELS_LAST: dict[str, bool] = {"lenet5": True, "cifar_resnet": True, "cifar_resnet_s": True,
                                      "cifar_resnet_xs": True}


# Scaled variants of the paper's ResNet (same block, stem and head; fewer filters and blocks), for
# reproductions that must fit a CPU (results/cifar10_scaled/README.md): a third and a sixth of the paper's
# 48/96/192 filters, one block per level instead of three.
SCALED_RESNETS: dict[str, tuple[tuple[int, int, int], int]] = {
    "cifar_resnet_s": ((16, 32, 64), 1),     # 78k parameters
    "cifar_resnet_xs": ((8, 16, 32), 1),     # 20k parameters
}


def _scaled_resnet(name: str, widths: tuple[int, int, int], blocks: int) -> ModelBuilder:
    def build(*, input_shape, num_outputs, batchnorm=True, dropout=0.0):
        return CifarResNet(_image_shape(name, input_shape), num_outputs, widths=widths, blocks=blocks,
                           dropout=dropout)
    return build


# Step cost of cifar_resnet_xs as the comment above _lenet5 defines it, from the stored cpu_seconds of
# results/cifar10_scaled/cifar10.db (500-step CIFAR-10 runs, one evaluation): 25.4 s unregularized,
# 61 s with SpectReg or DataGrad (medians). cifar_resnet_s has no runs: unmeasured.
_SCALED_COST = {"cifar_resnet_xs": {"step_seconds": 0.051, "gradient_factor": 2.4}}

for _name, (_widths, _blocks) in SCALED_RESNETS.items():
    register_model(_name, **_SCALED_COST.get(_name, {}))(_scaled_resnet(_name, _widths, _blocks))


@register_model("mlp", groupable=True, group_on_cpu=True, step_seconds=0.00095, gradient_factor=1.55)
def _mlp(*, input_shape, num_outputs, batchnorm=False, dropout=0.0):
    return MLP(math.prod(input_shape), num_outputs, batchnorm=batchnorm, dropout=dropout)
