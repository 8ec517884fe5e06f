"""gradreg.layers: the CIFAR ResNet's convolution and BatchNorm with a cheap double backward must give
the stock layers' values and first and second derivatives (checked against nn.Conv2d/nn.BatchNorm2d
and against finite differences)."""
import pytest
import torch
from torch import nn

import gradreg
from gradreg.layers import BatchNorm2d, Conv2d, ReLU, _BatchNormFn, _Conv2dFn, stock_copy
from gradreg.models import CifarResNet


@pytest.mark.parametrize("stride,padding,k", [(1, 1, 3), (2, 1, 3), (2, 0, 1)])
def test_conv_second_derivatives_match_finite_differences(stride, padding, k):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 7, dtype=torch.double, generator=g, requires_grad=True)
    w = torch.randn(4, 3, k, k, dtype=torch.double, generator=g, requires_grad=True)
    fn = lambda x, w: _Conv2dFn.apply(x, w, (stride, stride), (padding, padding), (1, 1), 1)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


def test_batchnorm_second_derivatives_match_finite_differences():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, dtype=torch.double, generator=g, requires_grad=True)
    w, b = (torch.randn(3, dtype=torch.double, generator=g, requires_grad=True) for _ in range(2))
    fn = lambda x, w, b: _BatchNormFn.apply(x, w, b, None, None, 0.1, 1e-5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def _stock_copy(model: nn.Module) -> nn.Module:
    """The same network built from nn.Conv2d / nn.BatchNorm2d / nn.ReLU, with the same weights and buffers."""
    stock = stock_copy(model)
    assert not any(isinstance(m, (Conv2d, BatchNorm2d, ReLU)) for m in stock.modules())
    return stock


@pytest.mark.parametrize("term", [
    gradreg.SpectReg(batch_mode="batch"), gradreg.DataGrad(batch_mode="batch"), gradreg.SpectReg(batch_mode="sample"),
    gradreg.FrobReg(batch_mode="batch", strategy="batched"), gradreg.FrobReg(batch_mode="batch", strategy="loop"),
], ids=["spectreg", "datagrad", "spectreg-sample", "frobreg-batched", "frobreg-loop"])
def test_resnet_regularized_gradients_equal_stock_layers(term):
    torch.manual_seed(0)
    ours = CifarResNet((3, 8, 8), 3, widths=(4, 6, 8), blocks=1).double()
    stock = _stock_copy(ours)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.double, generator=g), torch.randint(0, 3, (6,), generator=g)
    grads = []
    for model in (ours, stock):
        out = gradreg.Objective("cross_entropy", [(0.5, term)])(model, x, y, generator=torch.Generator().manual_seed(2))
        grads.append(torch.autograd.grad(out.loss, list(model.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    for a, b in zip(ours.buffers(), stock.buffers()):  # running statistics updated alike
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_plain_training_step_is_bit_identical_to_stock_layers():
    torch.manual_seed(0)
    ours = CifarResNet((3, 8, 8), 3, widths=(4, 6, 8), blocks=1)
    stock = _stock_copy(ours)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 3, (6,))
    for model in (ours, stock):
        nn.functional.cross_entropy(model(x), y).backward()
    for a, b in zip(ours.parameters(), stock.parameters()):
        assert torch.equal(a.grad, b.grad)
    ours.eval(), stock.eval()
    with torch.no_grad():
        assert torch.equal(ours(x), stock(x))


def test_auto_layout_follows_the_models_measured_fact(monkeypatch):
    from gradreg import models
    from gradreg.train import use_channels_last
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_channels_last("auto", cpu, 4, "cifar_resnet") and use_channels_last("auto", cpu, 4, "my_own_net")
    monkeypatch.setitem(models.CPU_CHANNELS_LAST, "cifar_resnet", False)
    assert not use_channels_last("auto", cpu, 4, "cifar_resnet")
    assert use_channels_last("channels_last", cpu, 4, "cifar_resnet")
    assert not use_channels_last("auto", cuda, 4, "lenet5")
