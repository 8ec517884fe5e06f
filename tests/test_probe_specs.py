"""The MNIST baseline probe's experiment file and Keras-default LeNets (results/specs/probe_mnist_cp.toml,
results/specs/keras_lenet.py): they load, and the models differ from lenet5 only where they say."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gradreg.experiment import DEV_SEED_OFFSET
from gradreg.models import create_model
from gradreg.plugins import import_plugins
from gradreg.spec import load_experiment

from conftest import model_registry_kept

SPECS = Path(__file__).resolve().parents[1] / "results" / "specs"
SHAPE = dict(input_shape=(1, 28, 28), num_outputs=10)


@pytest.fixture(scope="module", autouse=True)
def keras_lenet():
    """The plugin's models registered for this module's tests, and out of the registries after them."""
    with model_registry_kept():
        import_plugins([SPECS / "keras_lenet.py"])
        yield


def _build(name: str, seed: int = 3, **kw) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = create_model(name, **SHAPE, **kw)
    return model, torch.get_rng_state()


def test_cp_probe_runs_its_weights_on_dev_seeds():
    exp = load_experiment(SPECS / "probe_mnist_cp.toml")
    plan = exp.plan(phase="grid")
    assert {p.seed for p in plan} == set(range(DEV_SEED_OFFSET, DEV_SEED_OFFSET + 5))
    assert sorted({p.config.terms for p in plan}) == [(("confidence_penalty", w),) for w in (0.1, 0.3, 1.0)]
    assert all(p.config.overrides == () and p.config.model_name == "lenet5" for p in plan)


def test_glorot_lenet_has_zero_biases_and_glorot_uniform_weights_and_leaves_the_stream_as_lenet5():
    glorot, state = _build("lenet5_glorot", dropout=0.5)
    plain, plain_state = _build("lenet5", dropout=0.5)
    layers = [m for m in glorot.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 5
    for m in layers:
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert torch.all(m.bias == 0)
        assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.9 * bound
    # same layers, other values; the dropout stream (forked after init) starts where lenet5's does
    assert [type(m) for m in glorot.modules()] == [type(m) for m in plain.modules()]
    assert not torch.equal(layers[0].weight, next(plain.modules())[0].weight)
    assert torch.equal(state, plain_state)


def test_keras_bn_lenet_has_keras_batchnorm_defaults_and_needs_batchnorm():
    keras, _ = _build("lenet5_keras_bn", batchnorm=True)
    plain, _ = _build("lenet5", batchnorm=True)
    bns = [m for m in keras.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 4 and all((m.momentum, m.eps) == (0.01, 1e-3) for m in bns)
    assert all((m.momentum, m.eps) == (0.1, 1e-5) for m in plain.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm))
    assert all(torch.equal(a, b) for a, b in zip(keras.state_dict().values(), plain.state_dict().values()))
    with pytest.raises(ValueError, match="needs batchnorm"):
        create_model("lenet5_keras_bn", **SHAPE, batchnorm=False)


def test_baseline_probe_runs_its_arms_on_dev_seeds():
    exp = load_experiment(SPECS / "probe_mnist_baseline.toml")
    plan = exp.plan(phase="dev")
    assert {p.seed for p in plan} == set(range(DEV_SEED_OFFSET, DEV_SEED_OFFSET + 5))
    arms = {p.cell.key: p.config for p in plan if p.seed == DEV_SEED_OFFSET}
    assert arms[("glorot", "init")].model_name == "lenet5_glorot"
    assert dict(arms[("glorot", "init")].overrides) == {"lr": 0.001}
    assert arms[("lr=0.003", "lr")].overrides == () and arms[("lr=0.003", "lr")].terms == ()
    keras = arms[("batchnorm, keras_bn", "BatchNorm")]
    assert keras.batchnorm and keras.model_name == "lenet5_keras_bn" and dict(keras.overrides) == {"dropout": 0.0}
    # one baseline per probe: the arm its column's others are compared with
    assert sorted(c.key for c in exp.cells if c.baseline) == [("default", "init"), ("dropout=0", "BatchNorm"),
                                                               ("lr=0.003", "lr")]

