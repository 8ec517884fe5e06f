"""Convolution, BatchNorm and ReLU layers whose double backward is cheap (used by the CIFAR ResNet).

Same parameters, buffers, forward and first-order backward as ``nn.Conv2d`` / ``nn.BatchNorm2d`` /
``nn.ReLU`` (state dicts load both ways, plain training steps give the same numbers); they differ only in the graph
they record when a gradient is taken with ``create_graph=True``, as every gradient regularizer does.
Measured on the CIFAR ResNet, one CPU thread (``benchmarks/bench_resnet.py``, ``benchmarks/README.md``):

* PyTorch's double backward of a convolution (``_convolution_double_backward``) forms the weight
  gradient of the penalty as a convolution of the input with the output gradient as its kernel, a
  batch-as-channels convolution with a 32x32 kernel on the first level that took twice as long as the
  layer's whole first-order backward. :class:`Conv2d` records the input gradient as a transposed
  convolution, whose own backward is one ordinary convolution and one ordinary weight gradient.
* PyTorch's double backward of BatchNorm (``batchnorm_double_backward``) is written out of some thirty
  full-size elementwise operations and reductions; it took over a third of a SpectReg step.
  :class:`BatchNorm2d` records the input gradient as four full-size operations and two reductions, the
  forward's batch mean and 1/std made differentiable in x by a small function of their own.
* ``torch.relu``'s double backward fills and adds a full-size zero tensor (the derivative of the ReLU
  mask); :class:`ReLU` does not form it.

Under autocast Conv2d and BatchNorm2d fall back to the stock layers (no mixed-dtype backward is written here).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Conv2d", "BatchNorm2d", "ReLU", "stock_copy"]


def _engine_needs(t: Tensor) -> bool:
    """Whether the running backward pass will use a gradient for ``t``. A custom Function's
    ``needs_input_grad`` says only whether ``t`` requires grad: ``autograd.grad(z, x)`` (the first pass of
    every gradient regularizer) does not want the weights' gradients, and computing them would cost a
    whole extra weight-gradient convolution per layer. Private API, hence the fallback."""
    try:
        return bool(torch._C._will_engine_execute_node(torch.autograd.graph.get_gradient_edge(t).node))
    except (AttributeError, RuntimeError):
        return True


class _Conv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups)
        return F.conv2d(x, weight, None, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        need_x, need_w = ctx.needs_input_grad[:2]
        if not torch.is_grad_enabled():  # first order: the stock kernel, same numbers as nn.Conv2d
            gx, gw, _ = torch.ops.aten.convolution_backward(gy, x, w, None, stride, padding, dilation, False,
                                                            [0, 0], groups, [need_x, need_w, False])
            return gx, gw, None, None, None, None
        gx = gw = None
        if need_x and _engine_needs(x):
            # The transposed convolution's output_padding recovers sizes a strided convolution rounded down.
            out_pad = [x.shape[2 + i] - ((gy.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                                         + dilation[i] * (w.shape[2 + i] - 1) + 1) for i in range(2)]
            gx = torch.ops.aten.convolution(gy, w, None, stride, padding, dilation, True, out_pad, groups)
        if need_w and _engine_needs(w):
            gw = torch.ops.aten.convolution_backward(gy, x, w, None, stride, padding, dilation, False, [0, 0],
                                                     groups, [False, True, False])[1]
        return gx, gw, None, None, None, None


class _ReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.relu(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, gy):
        (y,) = ctx.saved_tensors
        # y detached: ReLU's derivative is piecewise constant, so the gradient's derivative in y is zero,
        # and torch.relu's double backward would still fill and add a full-size zero tensor for it.
        return torch.ops.aten.threshold_backward(gy, y.detach(), 0)


class ReLU(nn.ReLU):
    """``nn.ReLU`` without the zero-filled second derivative in its double backward."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace or not torch.is_grad_enabled():
            return super().forward(x)
        return _ReLUFn.apply(x)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with a cheap double backward (module docstring). Bias-free, zero-padded,
    numerically padded convolutions only (the ResNet's); others take ``nn.Conv2d``'s path."""

    def forward(self, x: Tensor) -> Tensor:
        if (self.bias is not None or self.padding_mode != "zeros" or isinstance(self.padding, str)
                or not torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type)):
            return super().forward(x)
        return _Conv2dFn.apply(x, self.weight, self.stride, self.padding, self.dilation, self.groups)


class _BatchNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        # Updates the running statistics in place, as F.batch_norm does in training.
        y, mean, invstd = torch.ops.aten.native_batch_norm(x, weight, bias, running_mean, running_var, True,
                                                           momentum, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w, mean, invstd = ctx.saved_tensors
        if not torch.is_grad_enabled():  # first order: the stock kernel
            gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
                gy, x, w, None, None, mean, invstd, True, ctx.eps, list(ctx.needs_input_grad[:3]))
            return gx, gw, gb, None, None, None, None
        # Differentiable form of the same gradient, with per-channel (C-sized) algebra wherever possible:
        # every full-size operation here costs about two more in the double backward. With xc = x - mean,
        # s = w / std:  gx = s gy - xc s / var mean(gy xc) - s mean(gy),  gw = sum(gy xc) / std,
        # gb = sum(gy). mean and 1/std come from the forward, made differentiable by _BatchStats.
        dims = [0, *range(2, x.dim())]
        n = x.numel() // x.shape[1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        mu, inv = _BatchStats.apply(x, mean.view(shape), invstd.view(shape))
        xc = x + (-mu)  # not x - mu: a subtraction's backward negates a full-size tensor
        scale = w.view(shape) * inv
        gb = gy.sum(dims, keepdim=True)
        gxc = (gy * xc).sum(dims, keepdim=True)
        gx = torch.addcmul(torch.addcmul(-scale * gb / n, xc, -scale * inv * inv * gxc / n), gy, scale)
        return gx, (gxc * inv).view(w.shape), gb.view(w.shape), None, None, None, None


class _BatchStats(torch.autograd.Function):
    """The batch mean and 1/std of x, given (the forward's), with their derivatives in x:
    d mean = sum(g) / n and d(1/std) = -xc / (n std^3). Differentiable once: enough for the gradient of
    a penalty on an input gradient."""

    @staticmethod
    def forward(ctx, x, mean, invstd):
        ctx.save_for_backward(x, mean, invstd)
        return mean.clone(), invstd.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_mean, g_inv):
        x, mean, invstd = ctx.saved_tensors
        n = x.numel() // x.shape[1]
        if g_inv is None:
            return (g_mean / n).expand_as(x), None, None
        g_mean = torch.zeros_like(mean) if g_mean is None else g_mean
        return torch.addcmul(g_mean / n, x - mean, -g_inv * invstd.pow(3) / n), None, None


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with a cheap double backward in training mode (module docstring); evaluation,
    non-affine or untracked BatchNorm and autocast take ``nn.BatchNorm2d``'s path."""

    def forward(self, x: Tensor) -> Tensor:
        if (not (self.training and self.affine and self.track_running_stats) or not torch.is_grad_enabled()
                or torch.is_autocast_enabled(x.device.type)):
            return super().forward(x)
        self._check_input_dim(x)
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return _BatchNormFn.apply(x, self.weight, self.bias, self.running_mean, self.running_var, momentum, self.eps)


def stock_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with this module's layers replaced by PyTorch's own (same weights, buffers,
    device and dtype): the reference these layers are checked and benchmarked against."""
    import copy

    stock = copy.deepcopy(model)
    for parent in list(stock.modules()):
        for name, c in parent.named_children():
            if isinstance(c, ReLU):
                setattr(parent, name, nn.ReLU())
                continue
            if isinstance(c, Conv2d):
                new = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding,
                                dilation=c.dilation, groups=c.groups, bias=c.bias is not None)
            elif isinstance(c, BatchNorm2d):
                new = nn.BatchNorm2d(c.num_features, eps=c.eps, momentum=c.momentum, affine=c.affine,
                                     track_running_stats=c.track_running_stats)
            else:
                continue
            new.load_state_dict(c.state_dict())
            setattr(parent, name, new.to(device=c.weight.device, dtype=c.weight.dtype))
    return stock
