"""The paper's models (Section 6.1) in a registry: LeNet-5, the CIFAR ResNet, the SIN MLP.

Every builder takes ``input_shape`` (C, H, W) or (D,), ``num_outputs``, ``batchnorm`` and ``dropout``
and returns a plain ``nn.Module`` that maps a batch of inputs to logits (no softmax): the
regularizers differentiate those logits.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["MODELS", "register_model", "create_model", "count_parameters", "LeNet5", "CifarResNet", "MLP",
           "StreamDropout", "use_dropout_stream"]

ModelBuilder = Callable[..., nn.Module]
MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a builder ``fn(*, input_shape, num_outputs, batchnorm, dropout)`` to MODELS."""
    def decorator(fn: ModelBuilder) -> ModelBuilder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = fn
        return fn
    return decorator


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
    trained as one group (:mod:`gradreg.grouped`) can then each replay their own masks, and solo and
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
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """Paper 6.1.2: three levels of ``blocks`` basic residual blocks with 48, 96, 192 filters.

    The ResNet's BatchNorm is part of the architecture (the paper's CIFAR net has it), so the
    ``batchnorm`` switch does not remove it. A 64x64 input (TinyImageNet) gets a stride-2 stem so the
    levels see the same 32x32 -> 8x8 resolutions as on CIFAR.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_outputs: int, widths=(48, 96, 192),
                 blocks: int = 3, dropout: float = 0.0):
        super().__init__()
        c, h, _ = input_shape
        stem_stride = max(1, h // 32)
        self.stem = nn.Sequential(nn.Conv2d(c, widths[0], 3, stride=stem_stride, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
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


@register_model("lenet5")
def _lenet5(*, input_shape, num_outputs, batchnorm=False, dropout=0.0):
    return LeNet5(_image_shape("lenet5", input_shape), num_outputs, batchnorm=batchnorm, dropout=dropout)


@register_model("cifar_resnet")
def _cifar_resnet(*, input_shape, num_outputs, batchnorm=True, dropout=0.0):
    return CifarResNet(_image_shape("cifar_resnet", input_shape), num_outputs, dropout=dropout)


@register_model("mlp")
def _mlp(*, input_shape, num_outputs, batchnorm=False, dropout=0.0):
    return MLP(math.prod(input_shape), num_outputs, batchnorm=batchnorm, dropout=dropout)
