"""Every registered regularizer against an independent exact computation (torch.func.jacrev)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev

import gradreg
from gradreg import REGULARIZERS, get_regularizer

# Exact terms only: the estimators of gradreg.estimators (class attribute ``approximate``) are checked
# against exact Jacobians, for bias and variance, in tests/test_estimators.py.
EXACT = sorted(n for n, f in REGULARIZERS.items() if not getattr(getattr(f, "func", f), "approximate", False))

M = 4  # outputs of the test models


def mlp(act=nn.ReLU, bn=False):
    layers = [nn.Linear(6, 9)] + ([nn.BatchNorm1d(9, track_running_stats=False)] if bn else [])
    return nn.Sequential(*layers, act(), nn.Linear(9, 9), act(), nn.Linear(9, M))


def convnet(act=nn.ReLU, bn=True):
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3, track_running_stats=False) if bn else nn.Identity(),
        act(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, M))


NETS = {
    "mlp": (lambda: mlp(), (6,)),
    "mlp_bn": (lambda: mlp(bn=True), (6,)),
    "convnet_bn": (lambda: convnet(), (2, 6, 6)),
}
# Models whose BatchNorm uses batch statistics couple the samples: "sample" and "batch" modes differ.
COUPLED = {"mlp_bn", "convnet_bn"}
B = 5


def make(net_name, dtype=torch.float64, train=True, seed=0):
    torch.manual_seed(seed)
    factory, shape = NETS[net_name]
    net = factory().to(dtype).train(train)
    x = torch.randn(B, *shape, dtype=dtype)
    y = torch.randint(0, M, (B,))
    return net, x, y


def full_jacobian(fn, x):
    """(B, m, B, D): d fn(X)[j, c] / d X[i, :] for the whole batch, by jacrev."""
    J = jacrev(fn)(x)
    return J.reshape(x.shape[0], -1, x.shape[0], x[0].numel())


def exact_projected(J, W, batch_mode, norm="l2sq"):
    """||(J^T w)_i||^2 (or its L1 norm) per sample, J from full_jacobian, W (B, m): the exact
    definitions of both modes."""
    idx = torch.arange(J.shape[0])
    if batch_mode == "sample":
        v = torch.einsum("im,imd->id", W, J[idx, :, idx])
    else:  # gradient w.r.t. x_i of sum_j <z_j, w_j>
        v = torch.einsum("jm,jmid->id", W, J)
    return v.pow(2).sum(1) if norm == "l2sq" else v.abs().sum(1)


def exact_frobenius(J, batch_mode):
    idx = torch.arange(J.shape[0])
    blocks = J[idx, :, idx] if batch_mode == "sample" else J.sum(0).transpose(0, 1)
    return blocks.pow(2).sum((1, 2))


def draws(seed, *shape, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def exact_value(name, net, x, y, batch_mode, seed, norm="l2sq"):
    """Each term computed from its definition with full Jacobians, independently of gradreg
    (``norm="l1"``: the projection terms' L1 norm of the projected gradient)."""
    J = full_jacobian(net, x)
    n = x.shape[0]
    if name == "frobreg":
        return exact_frobenius(J, batch_mode)
    if name == "jacreg":
        return exact_frobenius(full_jacobian(lambda X: net(X).softmax(1), x), batch_mode)
    if name == "onehot":
        return exact_projected(J, F.one_hot(y, M).to(x.dtype), batch_mode, norm)
    if name == "spectreg":
        return exact_projected(J, draws(seed, 1, n, M)[0], batch_mode, norm)
    if name == "spectreg_spherical":
        r = draws(seed, 1, n, M)[0]
        return exact_projected(J, r / r.norm(dim=1, keepdim=True) * math.sqrt(M), batch_mode, norm)
    if name == "randomonehot":
        k = torch.randint(M, (1, n), generator=torch.Generator().manual_seed(seed))[0]
        return exact_projected(J, F.one_hot(k, M).to(x.dtype) * math.sqrt(M), batch_mode, norm)
    if name == "datagrad":
        JL = jacrev(lambda X: F.cross_entropy(net(X), y, reduction="none"))(x).flatten(2)  # (B, B, D)
        g = JL[torch.arange(n), torch.arange(n)] if batch_mode == "sample" else JL.sum(0)
        return g.pow(2).sum(1) if norm == "l2sq" else g.abs().sum(1)
    if name == "confidence_penalty":
        p = net(x).softmax(1)
        return (p * p.log()).sum(1)
    raise AssertionError(f"no exact oracle for {name}: add one when registering a term")


def mode_options(name, batch_mode):
    """``batch_mode`` as an option of every term that takes one (the confidence penalty does not)."""
    return {} if name == "confidence_penalty" else {"batch_mode": batch_mode}


def call(name, net, x, y, seed=0, **options):
    term = get_regularizer(name, **options)
    return term(net, x, y if term.needs_labels else None, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("net_name", sorted(NETS))
@pytest.mark.parametrize("batch_mode", ["sample", "batch"])
@pytest.mark.parametrize("train", [True, False])
def test_matches_exact_jacobian(name, net_name, batch_mode, train):
    net, x, y = make(net_name, train=train)
    got = call(name, net, x, y, seed=3, **mode_options(name, batch_mode))
    want = exact_value(name, net, x, y, batch_mode, seed=3)
    assert got.shape == (B,)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_batch_modes_differ_under_batchnorm_coupling():
    """Guards the definitions: with train-mode BatchNorm the two modes are different quantities."""
    net, x, y = make("mlp_bn")
    a = call("frobreg", net, x, y, batch_mode="sample").mean()
    b = call("frobreg", net, x, y, batch_mode="batch").mean()
    assert not torch.allclose(a, b, rtol=0.05)
    assert gradreg.couples_batch(net)
    assert not gradreg.couples_batch(make("mlp")[0])


def test_running_stats_batchnorm_train_mode_exact():
    """Train-mode BatchNorm with running statistics (the usual nn.BatchNorm1d), oracle by autograd."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, M)).double()
    x = torch.randn(B, 6, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(net, x).reshape(B, M, B, 6)
    got = gradreg.FrobReg()(net, x)
    torch.testing.assert_close(got, exact_frobenius(J, "sample"))


@pytest.mark.parametrize("name", ["spectreg", "spectreg_spherical", "randomonehot"])
def test_claim1_unbiased_frobenius_estimator(name):
    """Claim 1: E||J^T r||^2 = ||J||_F^2 for identity-covariance r; tolerance from the exact variance."""
    net, x, _ = make("mlp", train=False)
    n_draws = 4000
    est = call(name, net, x, None, n_projections=n_draws)
    J = full_jacobian(net, x)
    blocks = J[torch.arange(B), :, torch.arange(B)]          # (B, m, D)
    A = blocks @ blocks.transpose(1, 2)                       # J J^T, (B, m, m)
    tr, tr2 = A.diagonal(dim1=1, dim2=2).sum(1), (A @ A).diagonal(dim1=1, dim2=2).sum(1)
    if name == "spectreg":  # Var r^T A r = 2 tr(A^2) for Gaussian r
        var = 2 * tr2
    elif name == "spectreg_spherical":  # r = sqrt(m) u, u uniform on the sphere
        var = M / (M + 2) * (tr ** 2 + 2 * tr2) - tr ** 2
    else:  # m * A_kk for k uniform
        var = M * A.diagonal(dim1=1, dim2=2).pow(2).sum(1) - tr ** 2
    sigma = (var / n_draws).sqrt()
    assert torch.all((est - tr).abs() < 5 * sigma), (est, tr, sigma)
    assert torch.all(sigma < 0.1 * tr)  # the check has power: the tolerance is a small fraction


def test_claim2_datagrad_is_projection_on_p_minus_y():
    net, x, y = make("convnet_bn", train=False)
    J = full_jacobian(net, x)
    w = net(x).softmax(1) - F.one_hot(y, M).to(x.dtype)
    torch.testing.assert_close(gradreg.DataGrad()(net, x, y), exact_projected(J, w, "sample"))


def test_single_linear_layer_frobreg_is_weight_norm():
    """Section 5.2: for z = Wx + b the Jacobian is W, so FrobReg = ||W||_F^2 for every sample."""
    lin = nn.Linear(7, 3).double()
    x = torch.randn(11, 7, dtype=torch.float64)
    want = lin.weight.pow(2).sum().expand(11)
    torch.testing.assert_close(gradreg.FrobReg()(lin, x), want)
    torch.testing.assert_close(gradreg.SpectReg(n_projections=20000)(lin, x).mean(), want[0], rtol=0.03, atol=0)


@pytest.mark.parametrize("name", [n for n in EXACT if n != "confidence_penalty"])
def test_l1_norm(name):
    net, x, y = make("mlp")
    got = call(name, net, x, y, seed=3, norm="l1")
    assert got.shape == (B,) and torch.all(got > 0)
    if name in ("frobreg", "jacreg"):  # entrywise L1 of the Jacobian
        fn = net if name == "frobreg" else (lambda X: net(X).softmax(1))
        J = full_jacobian(fn, x)
        want = J[torch.arange(B), :, torch.arange(B)].abs().sum((1, 2))
    else:  # ||J^T r||_1 with the same draws as the squared L2 oracle
        want = exact_value(name, net, x, y, "sample", seed=3, norm="l1")
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(got, call(name, net, x, y, seed=3))  # not the default squared L2 norm


class BatchStatNorm(nn.Module):
    """Train-mode BatchNorm2d written with elementary ops.

    PyTorch's fused batch_norm has a correct second derivative (what training through a gradient
    penalty needs, checked by gradcheck below) but its third derivative fails gradgradcheck in
    torch 2.13; with this equivalent the Hessian of each term can be checked through a BatchNorm net.
    """

    def forward(self, x):
        mu = x.mean((0, 2, 3), keepdim=True)
        return (x - mu) / (x.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()


class WithParams(nn.Module):
    """``net`` run with the given parameter tensors. A module, not a lambda, so that its BatchNorm
    stays visible to ``couples_batch`` and the terms take their coupled-batch code paths."""

    def __init__(self, net, params):
        super().__init__()
        self.net, self.params = net, params

    def forward(self, X):
        return functional_call(self.net, self.params, (X,))


def term_of_weights(name, net, batch_mode="batch"):
    """(f, params): the summed term as a function of the weights, with fixed data and draws."""
    torch.manual_seed(0)
    net = net.double()
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    y = torch.randint(0, M, (3,))
    term = get_regularizer(name, **mode_options(name, batch_mode))
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in net.named_parameters())

    def f(*ps):
        model = WithParams(net, dict(zip(names, ps)))
        return term(model, x, y if term.needs_labels else None,
                    generator=torch.Generator().manual_seed(0)).sum()
    return f, params


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("batch_mode", ["sample", "batch"])
def test_gradcheck_wrt_weights(name, batch_mode):
    """float64 gradcheck of each term's gradient w.r.t. the weights, through train-mode BatchNorm, in
    both batch modes ("sample": the per-sample Jacobian of a coupled batch, one backward pass each)."""
    net = convnet(act=nn.Tanh)
    assert gradreg.couples_batch(WithParams(net, {}))
    f, params = term_of_weights(name, net, batch_mode)
    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", EXACT)
def test_gradgradcheck_wrt_weights(name):
    net = convnet(act=nn.Tanh)
    net[1] = BatchStatNorm()
    f, params = term_of_weights(name, net)
    assert torch.autograd.gradgradcheck(f, params, eps=1e-6, atol=1e-4)


@pytest.mark.parametrize("name", EXACT)
def test_gradient_reaches_weights(name):
    net, x, y = make("convnet_bn", dtype=torch.float32)
    call(name, net, x, y).sum().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_on_saturated_logits(name, dtype):
    torch.manual_seed(0)
    net = mlp().to(dtype)
    with torch.no_grad():
        net[-1].weight.mul_(1e4)
    x = torch.randn(B, 6, dtype=dtype) * 100
    y = torch.randint(0, M, (B,))
    value = call(name, net, x, y)
    assert value.dtype == dtype and torch.isfinite(value).all()
    value.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", EXACT)
def test_works_under_no_grad_and_inference_mode(name):
    net, x, y = make("convnet_bn", train=False)
    ref = call(name, net, x, y).detach()
    with torch.no_grad():
        a = call(name, net, x, y)
    with torch.inference_mode():
        b = call(name, net, x.clone(), y)
    assert not a.requires_grad and not b.requires_grad
    torch.testing.assert_close(a, ref)
    torch.testing.assert_close(b, ref)


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_shared_forward_equals_own_forward(name):
    net, x, y = make("mlp", train=False)
    xr = x.clone().requires_grad_(True)
    term = get_regularizer(name)
    yy = y if term.needs_labels else None
    shared = term(net, xr, yy, logits=net(xr), generator=torch.Generator().manual_seed(1))
    own = term(net, x, yy, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(shared, own)


def test_projection_batch_is_papers_shared_r():
    """projection="batch", batch_mode="batch": the paper's Figure 1, grad_x <sum_j z_j, r> with one r."""
    net, x, _ = make("mlp_bn")
    got = gradreg.SpectReg(projection="batch", batch_mode="batch")(net, x, generator=torch.Generator().manual_seed(5))
    r = draws(5, 1, 1, M)[0, 0]
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((net(xr) * r).sum(), xr)
    torch.testing.assert_close(got, g.pow(2).sum(1))


def test_k_projections_average_independent_draws():
    net, x, _ = make("mlp", train=False)
    k4 = gradreg.SpectReg(n_projections=4)(net, x, generator=torch.Generator().manual_seed(2))
    J = full_jacobian(net, x)
    r = draws(2, 4, B, M)
    want = torch.stack([exact_projected(J, r[i], "sample") for i in range(4)]).mean(0)
    torch.testing.assert_close(k4, want)


def test_scale_by_m():
    net, x, _ = make("mlp", train=False)
    a = gradreg.SpectReg()(net, x, generator=torch.Generator().manual_seed(0))
    b = gradreg.SpectReg(scale_by_m=True)(net, x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(b, a / M)


@pytest.mark.parametrize("strategy", ["loop", "batched"])
@pytest.mark.parametrize("name", ["frobreg", "jacreg"])
def test_exact_strategies_agree(strategy, name):
    net, x, y = make("convnet_bn")
    ref = call(name, net, x, y, strategy="loop")
    torch.testing.assert_close(call(name, net, x, y, strategy=strategy), ref)


def test_datagrad_mse_and_custom_loss():
    net, x, _ = make("mlp", train=False)
    target = torch.randn(B, M, dtype=torch.float64)
    J = jacrev(lambda X: (net(X) - target).pow(2).sum(1))(x)
    want = J[torch.arange(B), torch.arange(B)].pow(2).sum(1)
    torch.testing.assert_close(gradreg.DataGrad(loss="mse")(net, x, target), want)
    custom = gradreg.DataGrad(loss=lambda z, t: (z - t).pow(2).sum(1))(net, x, target)
    torch.testing.assert_close(custom, want)


@pytest.mark.parametrize("call_, match", [
    (lambda: get_regularizer("spectreg_typo"), "valid: confidence_penalty, datagrad"),
    (lambda: get_regularizer("spectreg", n_projection=2), "unknown option"),
    (lambda: gradreg.SpectReg(n_projections=0), "positive integer"),
    (lambda: gradreg.SpectReg(norm="l3"), "unknown norm"),
    (lambda: gradreg.SpectReg(batch_mode="per_sample"), "unknown batch_mode"),
    (lambda: gradreg.DataGrad(loss="hinge"), "unknown loss"),
    (lambda: gradreg.Objective("cross_entropy", [(-0.1, "spectreg")]), "finite number >= 0"),
    (lambda: gradreg.Objective("cross_entropy", [(float("nan"), "spectreg")]), "finite number >= 0"),
    (lambda: gradreg.Objective("hinge", []), "unknown task loss"),
    (lambda: gradreg.Objective("cross_entropy", [gradreg.SpectReg()]), r"\(weight, regularizer\) pair"),
])
def test_clear_errors_for_bad_configuration(call_, match):
    with pytest.raises(ValueError, match=match):
        call_()


def test_registry_takes_regularizer_dataclasses_only():
    with pytest.raises(TypeError, match="Regularizer dataclass or a functools.partial"):
        gradreg.register_regularizer("my_spectreg", lambda **kw: gradreg.SpectReg(**kw))
    with pytest.raises(ValueError, match="already registered"):
        gradreg.register_regularizer("spectreg", gradreg.SpectReg)
    assert "my_spectreg" not in REGULARIZERS


def test_paper_weight_refuses_unknown_terms():
    assert gradreg.paper_weight("datagrad", 50, batch_size=50) == 1.0
    assert gradreg.paper_weight("spectreg", 0.03, batch_size=50) == 0.03
    with pytest.raises(ValueError, match="unknown regularizer 'DataGrad'; valid: confidence_penalty, datagrad"):
        gradreg.paper_weight("DataGrad", 50, batch_size=50)  # would otherwise stay 50x too strong


@pytest.mark.parametrize("name", sorted(n for n, f in REGULARIZERS.items() if get_regularizer(n).needs_labels))
def test_label_needing_terms_refuse_missing_labels(name):
    net, x, _ = make("mlp")
    with pytest.raises(ValueError, match="needs labels"):
        get_regularizer(name)(net, x)


def test_bad_shapes_and_labels():
    net, x, y = make("mlp")
    with pytest.raises(ValueError, match="batched tensor"):
        gradreg.SpectReg()(net, x[0])
    with pytest.raises(ValueError, match="rows but the batch has"):
        gradreg.OneHot()(net, x, y[:-1])
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        gradreg.DataGrad()(net, x, y + M)
    with pytest.raises(ValueError, match="not connected to x"):
        gradreg.SpectReg()(net, x, logits=net(x))
    with pytest.raises(ValueError, match="rows for a batch"):
        gradreg.SpectReg()(lambda X: net(X)[:2], x)


@pytest.mark.parametrize("name", sorted(n for n, f in REGULARIZERS.items() if not get_regularizer(n).needs_labels))
def test_label_free_terms_take_unlabeled_inputs(name):
    net, x, _ = make("mlp")
    assert call(name, net, x, None).shape == (B,)


# CUDA joins where present (the GPU machine runs this file too); CPU always runs.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("strategy", ["loop", "batched"])
def test_on_device_matches_exact(device, name, strategy):
    """Same values on every device; random draws come from a CPU generator so they are comparable."""
    net, x, y = make("convnet_bn")
    want = exact_value(name, net, x, y, "sample", seed=3)
    opts = {"strategy": strategy} if name in ("frobreg", "jacreg") else {}
    got = call(name, net.to(device), x.to(device), y.to(device), seed=3, **opts)
    assert got.device.type == device
    torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-12)


def test_objective_parts_keep_the_terms_order_when_a_weight_is_zero():
    """A zero-weight term is skipped but still reported (as 0) under its own name, in the terms' order."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5))
    x, y = torch.randn(6, 3), torch.randint(0, 5, (6,))
    out = gradreg.Objective("cross_entropy", [(0.0, "spectreg"), (0.5, "onehot")])(model, x, y)
    assert list(out.terms) == ["spectreg", "onehot"]
    assert out.terms["spectreg"].item() == 0.0
    onehot = gradreg.OneHot()(model, x, y).mean()
    torch.testing.assert_close(out.terms["onehot"], onehot)
    torch.testing.assert_close(out.loss, out.task + 0.5 * onehot)
