import pytest
import torch

from torch import nn

from gradreg.models import MODELS, StreamDropout, count_parameters, create_model, register_model, use_dropout_stream

SHAPES = {"lenet5": [(1, 28, 28), (1, 8, 8), (3, 32, 32)], "cifar_resnet": [(3, 32, 32), (3, 64, 64)],
          "cifar_resnet_s": [(3, 32, 32)], "cifar_resnet_xs": [(3, 32, 32)], "mlp": [(1,), (1, 8, 8)]}


def test_every_model_has_shapes_under_test():
    assert set(SHAPES) == set(MODELS)


@pytest.mark.parametrize("name,shape", [(n, s) for n, shapes in SHAPES.items() for s in shapes])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_forward_backward_shapes(name, shape, batchnorm):
    torch.manual_seed(0)
    model = create_model(name, input_shape=shape, num_outputs=7, batchnorm=batchnorm, dropout=0.5)
    x = torch.randn(4, *shape, requires_grad=True)
    out = model(x)
    assert out.shape == (4, 7)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert g.shape == x.shape and torch.isfinite(g).all() and g.abs().sum() > 0


def test_scaled_resnets_are_the_papers_block_at_fewer_filters():
    sizes = {name: count_parameters(create_model(name, input_shape=(3, 32, 32), num_outputs=10))
             for name in ("cifar_resnet", "cifar_resnet_s", "cifar_resnet_xs")}
    assert sizes == {"cifar_resnet": 2_436_346, "cifar_resnet_s": 78_042, "cifar_resnet_xs": 19_954}


def test_lenet5_has_exactly_the_papers_parameter_count():
    model = create_model("lenet5", input_shape=(1, 28, 28), num_outputs=10, dropout=0.5)
    assert count_parameters(model) == 61_706
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in model.modules())
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def test_lenet5_dropout_sits_after_the_last_hidden_dense_layer():
    mods = list(create_model("lenet5", input_shape=(1, 28, 28), num_outputs=10, dropout=0.5))
    assert isinstance(mods[-2], torch.nn.Dropout) and isinstance(mods[-1], torch.nn.Linear)
    assert not any(isinstance(m, torch.nn.Dropout) for m in create_model(
        "lenet5", input_shape=(1, 28, 28), num_outputs=10, dropout=0.0).modules())


def test_cifar_resnet_is_about_2_5_million_parameters_with_the_papers_widths():
    model = create_model("cifar_resnet", input_shape=(3, 32, 32), num_outputs=10)
    assert 2.3e6 < count_parameters(model) < 2.6e6
    widths = sorted({m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)})
    assert widths == [48, 96, 192]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 0


def test_mlp_is_five_dense_layers_of_64():
    model = create_model("mlp", input_shape=(1,), num_outputs=1)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [64] * 5 + [1]
    assert count_parameters(model) == 2 * 64 + 4 * (64 * 64 + 64) + 65


def test_batchnorm_switch_adds_batchnorm():
    model = create_model("lenet5", input_shape=(1, 28, 28), num_outputs=10, batchnorm=True)
    assert sum(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in model.modules()) == 4


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="valid: cifar_resnet, cifar_resnet_s, cifar_resnet_xs, lenet5, mlp"):
        create_model("resnet9000", input_shape=(1, 28, 28), num_outputs=10)


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "lenet5", "input_shape": (784,)}, "image inputs"),
    ({"name": "lenet5", "input_shape": (1, 3, 3)}, "at least 4x4"),
    ({"name": "mlp", "input_shape": (1,), "num_outputs": 0}, "num_outputs"),
    ({"name": "mlp", "input_shape": (1,), "dropout": 1.0}, "dropout"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    kwargs = {"num_outputs": 10} | kwargs
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        create_model(name, **kwargs)


def test_register_model_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp")(lambda **kw: None)


def test_stream_dropout_draws_nn_dropouts_masks_from_its_own_generator():
    x = torch.randn(50, 84)
    torch.manual_seed(7)
    gen = torch.Generator().manual_seed(7)
    layer = StreamDropout(0.5, gen)
    expected = nn.Dropout(0.5)(x)  # from the global stream, seeded alike
    assert torch.equal(layer(x), expected)
    assert not torch.equal(layer(x), expected)  # the stream moves on
    layer.noise = torch.full_like(x, 2.0)
    assert torch.equal(layer(x), 2 * x)  # given masks are used as they are
    assert torch.equal(layer.eval()(x), x)


def test_use_dropout_stream_swaps_every_dropout_layer():
    model = create_model("lenet5", input_shape=(1, 28, 28), num_outputs=10, dropout=0.5).eval()
    gen = torch.Generator()
    assert use_dropout_stream(model, gen) == 1
    layers = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(layers) == 1 and isinstance(layers[0], StreamDropout)
    assert layers[0].generator is gen and layers[0].p == 0.5 and not layers[0].training
    assert "noise" not in model.state_dict()  # not part of a checkpoint
