"""The library on models as people write them: each snippet of issue 25 as a regression test, every
value against an independent computation (torch.func / autograd on the definition)."""
from __future__ import annotations

import functools
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jacrev

import gradreg
from gradreg.wrt import _WARNED
from test_regularizers import M, draws, exact_value

B = 5


def data(seed=0, d=6):
    torch.manual_seed(seed)
    return torch.randn(B, d, dtype=torch.float64), torch.randint(0, M, (B,))


def mlp(d=6, m=M):
    return nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, m)).double()


def bn_mlp():
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.Tanh(),
                         nn.Linear(8, M)).double()


def spectreg_reference(fn, h, seed):
    """Per-sample ||J_i^T r_i||^2 of fn at h with the term's draws, differentiable (jacrev records)."""
    J = jacrev(fn)(h).reshape(B, M, B, -1)
    i = torch.arange(B)
    r = draws(seed, 1, B, M)[0]
    return torch.einsum("im,imd->id", r, J[i, :, i]).pow(2).sum(1)


@pytest.fixture(autouse=True)
def fresh_warnings():
    _WARNED.clear()
    yield


# 1. Regularizing at an embedding: nothing upstream is cut off; the user's input keeps its .grad.

def test_embedding_output_as_input_trains_the_embedding():
    torch.manual_seed(0)
    emb, head = nn.Embedding(20, 6).double(), nn.Sequential(nn.Flatten(), nn.Linear(18, M)).double()
    tokens, y = torch.randint(0, 20, (B, 3)), torch.randint(0, M, (B,))
    obj = gradreg.Objective("cross_entropy", [(0.1, gradreg.SpectReg())])
    obj(head, emb(tokens), y, generator=torch.Generator().manual_seed(4)).loss.backward()
    h = emb(tokens)
    want = F.cross_entropy(head(h), y) + 0.1 * spectreg_reference(head, h, 4).mean()
    (g,) = torch.autograd.grad(want, emb.weight)
    assert emb.weight.grad is not None
    torch.testing.assert_close(emb.weight.grad, g)


def test_input_that_requires_grad_keeps_its_grad():
    model, (x, y) = mlp(), data()
    xl = x.clone().requires_grad_(True)
    obj = gradreg.Objective("cross_entropy", [(0.1, gradreg.SpectReg())])
    obj(model, xl, y, generator=torch.Generator().manual_seed(4)).loss.backward()
    xr = x.clone().requires_grad_(True)
    want = F.cross_entropy(model(xr), y) + 0.1 * spectreg_reference(model, xr, 4).mean()
    (g,) = torch.autograd.grad(want, xr)
    torch.testing.assert_close(xl.grad, g)


# 2. A BatchNorm model behind a lambda or partial; explicit couples_batch; warnings once.

@pytest.mark.parametrize("wrap", [lambda m: (lambda u: m(u)), lambda m: functools.partial(m.forward), lambda m: m])
def test_batchnorm_behind_a_callable_gets_true_per_sample_values(wrap):
    model, (x, _) = bn_mlp(), data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = gradreg.FrobReg()(wrap(model), x)
    torch.testing.assert_close(got, exact_value("frobreg", model, x, None, "sample", seed=0))
    assert not torch.allclose(got, exact_value("frobreg", model, x, None, "batch", seed=0), rtol=0.05)


def functional_bn(w):
    return lambda u: F.batch_norm(u @ w, None, None, training=True)


def test_undetectable_coupling_warns_once_and_couples_batch_says_it():
    _, (x, _) = None, data()
    w = torch.randn(6, M, dtype=torch.float64)
    fn = functional_bn(w)
    with pytest.warns(UserWarning, match="cannot be detected"):
        gradreg.FrobReg()(fn, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only; couples_batch given: no warning at all
        gradreg.FrobReg()(fn, x)
        exact = gradreg.FrobReg(couples_batch=True)(fn, x)
        summed = gradreg.FrobReg(couples_batch=False)(fn, x)
    torch.testing.assert_close(exact, exact_value("frobreg", fn, x, None, "sample", seed=0))
    torch.testing.assert_close(summed, exact_value("frobreg", fn, x, None, "batch", seed=0))
    obj = gradreg.Objective("cross_entropy", [(1.0, gradreg.FrobReg())], couples_batch=True)
    y = torch.randint(0, M, (B,))
    torch.testing.assert_close(obj(fn, x, y).terms["frobreg"], exact.mean())


def test_costly_exact_path_warns_once_naming_the_alternative():
    model, (x, _) = bn_mlp(), data()
    with pytest.warns(UserWarning, match="about B times the cost.*batch_mode='batch'") as record:
        gradreg.SpectReg()(model, x)
        gradreg.SpectReg()(model, x)
    assert sum("couples the samples" in str(w.message) for w in record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradreg.OneHot(couples_batch=True)(model, x, torch.zeros(B, dtype=torch.long))
        gradreg.OneHot(batch_mode="batch")(model, x, torch.zeros(B, dtype=torch.long))
        gradreg.SpectReg()(mlp(), x)


# 3. DataGrad differentiates the objective's own per-sample task loss.

def datagrad_reference(per_sample_loss, model, x, y):
    JL = jacrev(lambda X: per_sample_loss(model(X), y))(x)
    return JL[torch.arange(B), torch.arange(B)].pow(2).sum(1)


@pytest.mark.parametrize("m", [1, 3])
def test_datagrad_in_mse_objective(m):
    model, (x, _) = mlp(m=m), data()
    target = torch.randn(B, m, dtype=torch.float64)
    out = gradreg.Objective("mse", [(1, gradreg.DataGrad())])(model, x, target)
    want = datagrad_reference(lambda z, t: (z - t).pow(2).mean(1), model, x, target)
    torch.testing.assert_close(out.terms["datagrad"], want.mean())
    torch.testing.assert_close(out.task, F.mse_loss(model(x), target))


@pytest.mark.parametrize("task_loss", [
    functools.partial(F.cross_entropy, label_smoothing=0.1),
    nn.CrossEntropyLoss(label_smoothing=0.1),
    lambda z, t, reduction="mean": F.cross_entropy(z, t, label_smoothing=0.1, reduction=reduction),
    lambda z, t: F.cross_entropy(z, t, label_smoothing=0.1, reduction="none"),  # per-sample values
])
def test_datagrad_takes_label_smoothing_and_user_losses(task_loss):
    model, (x, y) = mlp(), data()
    out = gradreg.Objective(task_loss, [(1, gradreg.DataGrad())])(model, x, y)
    smooth = lambda z, t: F.cross_entropy(z, t, label_smoothing=0.1, reduction="none")  # noqa: E731
    torch.testing.assert_close(out.terms["datagrad"], datagrad_reference(smooth, model, x, y).mean())
    torch.testing.assert_close(out.task, smooth(model(x), y).mean())
    plain = gradreg.Objective("cross_entropy", [(1, gradreg.DataGrad())])(model, x, y).terms["datagrad"]
    assert not torch.allclose(out.terms["datagrad"], plain)


def test_datagrad_needs_per_sample_values():
    model, (x, y) = mlp(), data()
    obj = gradreg.Objective(lambda z, t: F.cross_entropy(z, t), [(1, gradreg.DataGrad())])
    with pytest.raises(ValueError, match="not one value per sample.*reduction='none'"):
        obj(model, x, y)
    own = gradreg.Objective(lambda z, t: F.cross_entropy(z, t), [(1, gradreg.DataGrad(loss="cross_entropy"))])
    torch.testing.assert_close(own(model, x, y).terms["datagrad"], gradreg.DataGrad()(model, x, y).mean())


# 4. Evaluation under no_grad / inference_mode, inputs created under inference mode included.

@pytest.mark.parametrize("wrt", [None, "0"])
def test_objective_under_no_grad_and_inference_mode(wrt):
    model, (x, y) = mlp(), data()
    obj = gradreg.Objective("cross_entropy", [(0.1, "spectreg"), (1, "datagrad"), (0.1, "frobreg")], wrt=wrt)
    ref = obj(model, x, y, generator=torch.Generator().manual_seed(0)).parts()
    with torch.no_grad():
        a = obj(model, x, y, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        b = obj(model, x, y, generator=torch.Generator().manual_seed(0))
        xi, yi = x.clone(), y.clone()
    c = obj(model, xi, yi, generator=torch.Generator().manual_seed(0))
    for out in (a, b):
        assert not out.loss.requires_grad and not any(t.requires_grad for t in out.terms.values())
    for out in (a, b, c):
        assert out.parts() == pytest.approx(ref, rel=1e-12)
    assert all(p.grad is None for p in model.parameters())


# 5. Structured outputs, token ids, several inputs, weights.

@dataclass
class Output:
    logits: torch.Tensor
    hidden: torch.Tensor


class ModelOutput(OrderedDict):  # the Hugging Face shape: a dict whose entries are also attributes
    def __getattr__(self, k):
        return self[k]


RETURNS = {
    "tuple": (lambda z: (z, z.sum()), {"output": 0}),
    "dict": (lambda z: {"aux": z.sum(), "logits": z}, {}),
    "dict_key": (lambda z: {"scores": z}, {"output": "scores"}),
    "dataclass": (lambda z: Output(logits=z, hidden=z), {}),
    "model_output": (lambda z: ModelOutput(loss=z.sum(), logits=z), {}),
    "callable": (lambda z: [z * 1], {"output": lambda out: out[0]}),
}


class Wrapped(nn.Module):
    def __init__(self, net, ret):
        super().__init__()
        self.net, self.ret = net, ret

    def forward(self, x):
        return self.ret(self.net(x))


@pytest.mark.parametrize("kind", sorted(RETURNS))
def test_structured_outputs(kind):
    net, (x, y) = mlp(), data()
    ret, opts = RETURNS[kind]
    model = Wrapped(net, ret)
    got = gradreg.FrobReg(**opts)(model, x)
    torch.testing.assert_close(got, exact_value("frobreg", net, x, None, "sample", seed=0))
    out = gradreg.Objective("cross_entropy", [(0.5, gradreg.OneHot())], **opts)(model, x, y)
    torch.testing.assert_close(out.terms["onehot"], exact_value("onehot", net, x, y, "sample", seed=0).mean())


def test_structured_output_without_a_choice_is_an_error():
    model, (x, y) = Wrapped(mlp(), lambda z: (z, z)), data()
    with pytest.raises(ValueError, match="returned a tuple.*output="):
        gradreg.SpectReg()(model, x)
    with pytest.raises(ValueError, match="inside an Objective, give output= to the Objective"):
        gradreg.Objective("cross_entropy", [(0.1, gradreg.SpectReg(output=0))])


def test_token_ids_need_wrt_naming_a_float_tensor():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 6), nn.Flatten(), nn.Linear(18, M)).double()
    tokens, y = torch.randint(0, 20, (B, 3)), torch.randint(0, M, (B,))
    with pytest.raises(ValueError, match=r"wrt=the model input is a torch.int64 tensor.*embedding modules here: '0'"):
        gradreg.SpectReg()(model, tokens)
    with pytest.raises(ValueError, match="wrt=the model input"):
        gradreg.Objective("cross_entropy", [(0.1, "spectreg")])(model, tokens, y)
    h = model[0](tokens).detach()
    got = gradreg.FrobReg(wrt="0")(model, tokens)
    torch.testing.assert_close(got, exact_value("frobreg", model[1:], h, None, "sample", seed=0))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, M), nn.Linear(3, M)

    def forward(self, u, v):
        return torch.tanh(self.a(u)) * self.b(v)


@pytest.mark.parametrize("as_dict", [False, True])
def test_several_inputs(as_dict):
    torch.manual_seed(0)
    model = TwoInputs().double()
    u, v, y = torch.randn(B, 6, dtype=torch.float64), torch.randn(B, 3, dtype=torch.float64), torch.randint(0, M, (B,))
    x, which = ({"u": u, "v": v}, "v") if as_dict else ((u, v), 1)
    with pytest.raises(ValueError, match="2 tensor inputs.*say which one is differentiated"):
        gradreg.Objective("cross_entropy", [(0.1, "spectreg")])(model, x, y)
    obj = gradreg.Objective("cross_entropy", [(1.0, "frobreg")], wrt=gradreg.Wrt(input=which))
    out = obj(model, x, y)
    want = exact_value("frobreg", lambda V: model(u, V), v, None, "sample", seed=0)
    torch.testing.assert_close(out.terms["frobreg"], want.mean())
    torch.testing.assert_close(out.task, F.cross_entropy(model(u, v), y))
    extra = {"u": u[:2], "v": v[:2]} if as_dict else (u[:2], v[:2])  # unlabeled rows, same structure
    assert obj(model, x, y, unlabeled=extra).terms["frobreg"].shape == ()


def test_term_wrt_overrides_objective_wrt():
    model, (x, y) = mlp(), data()
    out = gradreg.Objective("cross_entropy", [(1.0, gradreg.FrobReg(wrt=[0, 3])), (1.0, "frobreg")], wrt="0")(model, x, y)
    h = model[0](x).detach()
    torch.testing.assert_close(out.terms["frobreg"], exact_value(
        "frobreg", lambda xs: model(x.index_copy(1, torch.tensor([0, 3]), xs)), x[:, [0, 3]], None, "sample", 0).mean())
    torch.testing.assert_close(out.terms["frobreg_2"], exact_value("frobreg", model[1:], h, None, "sample", 0).mean())


@pytest.mark.parametrize("weight", [np.float32(0.25), np.float64(0.25), torch.tensor(0.25), 0.25,
                                    torch.tensor(0.25, dtype=torch.float64)])
def test_weights_any_real_scalar(weight):
    model, (x, y) = mlp(), data()
    out = gradreg.Objective("cross_entropy", [(weight, "frobreg")])(model, x, y)
    torch.testing.assert_close(out.loss, out.task + 0.25 * out.terms["frobreg"])
    assert gradreg.Objective("cross_entropy", [(np.int64(2), "frobreg")]).terms[0][0] == 2.0


@pytest.mark.parametrize("weight", [True, False, np.bool_(True), torch.tensor(True), float("inf"),
                                    np.float32("nan"), torch.tensor(float("inf")), torch.tensor([0.1]), "0.1",
                                    -1, 1 + 0j])
def test_weights_refused(weight):
    with pytest.raises(ValueError, match="finite number >= 0"):
        gradreg.Objective("cross_entropy", [(weight, "frobreg")])
