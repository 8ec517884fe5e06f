"""Terms on a hidden tensor (``wrt`` = a submodule's output) and on a subset of features, against
independent torch.func Jacobians in float64, per sample, in both batch modes; parameter gradients
against an independent functional computation.

The oracle for a hidden tensor h = head(x) is the Jacobian of the model's tail as a function of h
(``tail(H)``, the modules after h), so "sample i" at h is row i of h with the other rows held fixed.
The oracle for a feature subset S is the Jacobian w.r.t. x_S of ``X_S -> model(x with X_S in place)``.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev

import gradreg
from gradreg import get_regularizer
from gradreg.wrt import _WARNED
from test_regularizers import EXACT, M, draws, exact_value, mode_options

B = 5
JACOBIAN_TERMS = [n for n in EXACT if n != "confidence_penalty"]


def embedding_net():
    return nn.Sequential(nn.Embedding(20, 5), nn.Flatten(), nn.Linear(15, 9), nn.Tanh(), nn.Linear(9, M))


def seq_net():  # a (B, T, d) hidden tensor: one sample is a (T, d) slice
    return nn.Sequential(nn.Embedding(20, 5), nn.Linear(5, 5), nn.Tanh(), nn.Flatten(), nn.Linear(15, M))


# name: (factory, input maker, wrt module, index of the first module after it, couples downstream)
HIDDEN = {
    "mlp": (lambda: nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 9), nn.Tanh(), nn.Linear(9, M)),
            lambda: torch.randn(B, 6, dtype=torch.float64), "2", 3, False),
    "mlp_bn": (lambda: nn.Sequential(nn.Linear(6, 9), nn.BatchNorm1d(9, track_running_stats=False), nn.Tanh(), nn.Linear(9, M)),
               lambda: torch.randn(B, 6, dtype=torch.float64), "0", 1, True),
    "cnn_bn_before": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3, track_running_stats=False), nn.ReLU(),
                                            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, M)),
                      lambda: torch.randn(B, 2, 6, 6, dtype=torch.float64), "0", 1, True),
    "cnn_bn_after": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3, track_running_stats=False), nn.ReLU(),
                                           nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, M)),
                     lambda: torch.randn(B, 2, 6, 6, dtype=torch.float64), "3", 4, False),
    "embedding": (embedding_net, lambda: torch.randint(0, 20, (B, 3)), "0", 1, False),
    "embedding_seq": (seq_net, lambda: torch.randint(0, 20, (B, 3)), "0", 1, False),
}


def make_hidden(name, seed=0):
    torch.manual_seed(seed)
    factory, inputs, module, cut, coupled = HIDDEN[name]
    net = factory().double().train()
    x = inputs()
    y = torch.randint(0, M, (B,))
    tail = net[cut:]
    with torch.no_grad():
        h = net[:cut](x)
    return net, x, y, module, tail, h, coupled


def run(name, net, x, y, seed=3, **options):
    term = get_regularizer(name, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the costly-path warning has its own test
        return term(net, x, y if term.needs_labels else None, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch_mode", ["sample", "batch"])
@pytest.mark.parametrize("net_name", sorted(HIDDEN))
@pytest.mark.parametrize("name", JACOBIAN_TERMS)
def test_hidden_tensor_matches_exact_jacobian(name, net_name, batch_mode):
    net, x, y, module, tail, h, coupled = make_hidden(net_name)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    got = run(name, net, x, y, wrt=module, batch_mode=batch_mode)
    net.load_state_dict(state)  # the oracle sees the BatchNorm running statistics the term saw
    want = exact_value(name, tail, h, y, batch_mode, seed=3)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    if batch_mode == "batch" and not coupled:  # same quantity when nothing downstream couples
        torch.testing.assert_close(got, run(name, net, x, y, wrt=module))


def substitute(x, idx):
    """``X_S -> x with features idx (of the flattened sample) replaced by X_S``: the oracle's function."""
    return lambda xs: x.flatten(1).index_copy(1, idx, xs).view_as(x)


FEATURES = {  # net name -> features as given to wrt, and the flat indices they mean
    "mlp": ([0, 3], [0, 3]),
    "mlp_bn": (torch.tensor([True, False, False, False, True, True]), [0, 4, 5]),
    "cnn_bn_before": ((torch.arange(72) % 5 == 0).view(2, 6, 6), list(range(0, 72, 5))),
}


@pytest.mark.parametrize("batch_mode", ["sample", "batch"])
@pytest.mark.parametrize("net_name", sorted(FEATURES))
@pytest.mark.parametrize("name", JACOBIAN_TERMS)
def test_input_feature_subset_matches_exact_jacobian(name, net_name, batch_mode):
    net, x, y, *_ = make_hidden(net_name)
    features, flat = FEATURES[net_name]
    idx = torch.tensor(flat)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    got = run(name, net, x, y, wrt=gradreg.Wrt(features=features), batch_mode=batch_mode)
    net.load_state_dict(state)
    sub = substitute(x, idx)
    want = exact_value(name, lambda xs: net(sub(xs)), x.flatten(1)[:, idx], y, batch_mode, seed=3)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    full = run(name, net, x, y, batch_mode=batch_mode)
    assert torch.all(got <= full * (1 + 1e-9))  # a part of the gradient (L2 and positive terms)


@pytest.mark.parametrize("name", ["frobreg", "spectreg", "datagrad"])
def test_hidden_feature_subset_matches_exact_jacobian(name):
    """Embedding dimensions 1 and 3 of every token (a (3, 5) mask of one sample's (T, d) slice)."""
    net, x, y, module, tail, h, _ = make_hidden("embedding_seq")
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[:, [1, 3]] = True
    got = run(name, net, x, y, wrt=gradreg.Wrt(module=module, features=mask))
    idx = mask.flatten().nonzero().flatten()
    sub = substitute(h, idx)
    want = exact_value(name, lambda hs: tail(sub(hs)), h.flatten(1)[:, idx], y, "sample", seed=3)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def functional_objective(net, x, y, cut, lam, term, batch_mode, seed=3):
    """Task loss + λ mean(term at h = net[:cut](x)) as a function of the parameters, by torch.func."""
    names = [n for n, _ in net.named_parameters()]

    def loss(*ps):
        params = dict(zip(names, ps))
        out = functional_call(net, params, (x,), strict=True)
        # Sequential slices keep the parent's module names; strict: every parameter must be the given one.
        head = {k: v for k, v in params.items() if int(k.split(".")[0]) < cut}
        h = functional_call(net[:cut], head, (x,), strict=True)
        tail_params = {k: v for k, v in params.items() if int(k.split(".")[0]) >= cut}
        tail = lambda H: functional_call(net[cut:], tail_params, (H,), strict=True)  # noqa: E731
        J = jacrev(tail)(h).reshape(B, M, B, -1)
        i = torch.arange(B)
        if term == "frobreg":
            blocks = J[i, :, i] if batch_mode == "sample" else J.sum(0).transpose(0, 1)
            value = blocks.pow(2).sum((1, 2))
        else:  # spectreg with the term's own draws
            r = draws(seed, 1, B, M)[0]
            v = (torch.einsum("im,imd->id", r, J[i, :, i]) if batch_mode == "sample"
                 else torch.einsum("jm,jmid->id", r, J))
            value = v.pow(2).sum(1)
        return F.cross_entropy(out, y) + lam * value.mean()
    return loss, [p.detach().clone().requires_grad_(True) for _, p in net.named_parameters()]


@pytest.mark.parametrize("net_name,batch_mode", [("embedding", "sample"), ("mlp_bn", "sample"),
                                                 ("mlp_bn", "batch"), ("cnn_bn_before", "sample")])
@pytest.mark.parametrize("term", ["frobreg", "spectreg"])
def test_parameter_gradients_match_functional_computation(net_name, batch_mode, term):
    """Every parameter, upstream of h (the embedding, the first layer) and downstream, gets the
    gradient of task + λ·penalty that torch.func computes independently."""
    net, x, y, module, *_ = make_hidden(net_name)
    net = net.eval() if net_name == "embedding" else net
    cut = HIDDEN[net_name][3]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    objective = gradreg.Objective("cross_entropy", [(0.7, get_regularizer(term, batch_mode=batch_mode))],
                                  wrt=module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        objective(net, x, y, generator=torch.Generator().manual_seed(3)).loss.backward()
    net.load_state_dict(state)
    f, params = functional_objective(net, x, y, cut, 0.7, term, batch_mode)
    want = torch.autograd.grad(f(*params), params)
    for (n, p), w in zip(net.named_parameters(), want):
        assert p.grad is not None, n
        torch.testing.assert_close(p.grad, w, rtol=1e-8, atol=1e-10, msg=n)


def test_in_place_op_after_the_hidden_tensor():
    """ReLU(inplace=True) right after the captured module: the Jacobian is still taken at its output."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 9), nn.ReLU(inplace=True), nn.Linear(9, M)).double()
    x = torch.randn(B, 6, dtype=torch.float64)
    h = net[0](x).detach()
    got = gradreg.FrobReg(wrt="0")(net, x)
    ref = nn.Sequential(nn.ReLU(), net[2])
    torch.testing.assert_close(got, exact_value("frobreg", ref, h, None, "sample", seed=0))


def test_coupling_is_judged_downstream_of_the_hidden_tensor():
    """BatchNorm before h does not couple dz_i/dh_i: no costly path, no warning. After h it does."""
    net, x, y, *_ = make_hidden("cnn_bn_after")
    _WARNED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradreg.FrobReg(wrt="3")(net, x)
    with pytest.warns(UserWarning, match="couples the samples"):
        gradreg.FrobReg(wrt="0")(net, x)


@pytest.mark.parametrize("call_, match", [
    (lambda n, x: gradreg.SpectReg(wrt="nope")(n, x), "no module named 'nope'.*valid names include"),
    (lambda n, x: gradreg.SpectReg(wrt="")(n, x), "module must be a submodule name"),
    (lambda n, x: gradreg.SpectReg(wrt=3), "ambiguous"),
    (lambda n, x: gradreg.SpectReg(wrt=[0, 0]), "repeat"),
    (lambda n, x: gradreg.SpectReg(wrt=[0, 99])(n, x), "out of range"),
    (lambda n, x: gradreg.SpectReg(wrt=gradreg.Wrt(features=torch.ones(3, dtype=torch.bool)))(n, x),
     "mask has shape"),
    (lambda n, x: gradreg.SpectReg(wrt="0")(n, x, logits=n(x)), "pass logits=None"),
    (lambda n, x: gradreg.SpectReg(wrt="0")(lambda u: n(u), x), "not an nn.Module"),
    (lambda n, x: gradreg.Wrt(module="a", input=0), "not both"),
])
def test_clear_errors(call_, match):
    net, x, *_ = make_hidden("mlp")
    with pytest.raises(ValueError, match=match):
        call_(net, x)


def test_module_that_runs_twice_or_returns_a_tuple_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.gru = nn.Linear(4, 4), nn.GRU(4, 4, batch_first=True)

        def forward(self, x):
            return self.lin(self.lin(x)) + self.gru(x.unsqueeze(1))[0][:, 0]
    net, x = Twice().double(), torch.randn(B, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="runs more than once"):
        gradreg.SpectReg(wrt="lin")(net, x)
    with pytest.raises(ValueError, match="returns a tuple, not a tensor"):
        gradreg.SpectReg(wrt="gru")(net, x)


@pytest.mark.parametrize("name", ["frobreg", "datagrad", "jacreg"])
def test_objective_level_wrt_equals_the_term_level_wrt(name):
    """An Objective's wrt= (here a feature subset and a hidden module) reaches its exact terms: the
    same values as the terms given that wrt themselves, and not the whole input's."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    for wrt in ([0, 3], "1"):
        by_objective = gradreg.Objective("cross_entropy", [(1.0, get_regularizer(name))], wrt=wrt)(net, x, y)
        by_term = gradreg.Objective("cross_entropy", [(1.0, get_regularizer(name, wrt=wrt))])(net, x, y)
        whole = gradreg.Objective("cross_entropy", [(1.0, get_regularizer(name))])(net, x, y)
        torch.testing.assert_close(by_objective.terms[name], by_term.terms[name])
        assert not torch.allclose(by_objective.terms[name], whole.terms[name])
