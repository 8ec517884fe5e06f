"""The estimators without double backward (gradreg.estimators) against exact Jacobians (float64,
per sample), under torch.compile, and on a transformer block with fused scaled-dot-product attention."""
from __future__ import annotations

import functools
import math
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jacrev, jvp

import gradreg
from gradreg import FDDataGrad, FDSpectReg, JVPSpectReg, get_regularizer
from gradreg.perturb import _draw_directions
from gradreg.train import RunConfig, term_weights
from gradreg.wrt import _WARNED

M, B = 4, 6


def smooth_mlp(act=nn.Tanh):
    return nn.Sequential(nn.Linear(7, 12), act(), nn.Linear(12, 12), nn.GELU(), nn.Linear(12, M))


def lenet(dropout=0.0):
    return gradreg.create_model("lenet5", input_shape=(1, 12, 12), num_outputs=M, dropout=dropout)


def data(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((B, *shape), generator=g, dtype=dtype), torch.randint(0, M, (B,), generator=g)


def directions(x, seed, k=1, distribution="spherical"):
    """The directions a term draws from ``Generator().manual_seed(seed)``."""
    return _draw_directions(torch.Generator().manual_seed(seed), k, x, distribution)


def exact_jv(net, x, v):
    """Per-sample J_i v_i from the full Jacobian (an oracle independent of forward-mode AD)."""
    J = jacrev(net)(x).reshape(B, M, B, -1)
    idx = torch.arange(B)
    return torch.einsum("imd,id->im", J[idx, :, idx], v.flatten(1))


def exact_datagrad(net, x, y):
    JL = jacrev(lambda X: F.cross_entropy(net(X), y, reduction="none"))(x).flatten(2)
    return JL[torch.arange(B), torch.arange(B)].pow(2).sum(1)


def flat_grad(value, params):
    """The gradient as one vector; parameters the value does not depend on (the output bias, for
    ||J v||^2) count as zero."""
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params)])


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("scheme, order", [("forward", 1), ("central", 2)])
def test_fd_spectreg_converges_to_exact_jv_on_smooth_net(scheme, order):
    """Same direction, decreasing ε: relative error falls like ε (forward) or ε² (central)."""
    torch.manual_seed(0)
    net = smooth_mlp().double()
    x, _ = data((7,))
    want = exact_jv(net, x, directions(x, 3)[0]).pow(2).sum(1)
    errors = []
    for eps in (1e-2, 1e-3):
        got = FDSpectReg(eps=eps, scheme=scheme)(net, x, generator=gen(3))
        errors.append(((got - want).abs() / want).max().item())
    assert errors[0] < 0.05
    assert errors[1] < errors[0] * 10 ** -(order - 0.5)  # at least ~ε^order minus half a decade


def test_fd_spectreg_unbiased_for_frobenius_and_variance_falls_with_k():
    torch.manual_seed(1)
    net = smooth_mlp().double()
    x, _ = data((7,))
    frob = gradreg.FrobReg()(net, x).detach()
    draws = torch.stack([FDSpectReg(eps=1e-5)(net, x, generator=gen(s)) for s in range(400)]).detach()
    se = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - frob).abs() < 4 * se).all()
    k8 = torch.stack([FDSpectReg(eps=1e-5, n_directions=8)(net, x, generator=gen(s)) for s in range(50)]).detach()
    assert (k8.var(0) < draws.var(0) / 3).all()  # k = 8: variance / 8 in expectation


def test_jvp_spectreg_is_exact_jv():
    torch.manual_seed(2)
    net = smooth_mlp(nn.SiLU).double()
    x, _ = data((7,))
    want = exact_jv(net, x, directions(x, 5, k=2)[0]).pow(2).sum(1)
    want2 = exact_jv(net, x, directions(x, 5, k=2)[1]).pow(2).sum(1)
    got = JVPSpectReg(n_directions=2)(net, x, generator=gen(5))
    torch.testing.assert_close(got, (want + want2) / 2, rtol=1e-10, atol=1e-12)


def test_fd_datagrad_converges_to_datagrad():
    torch.manual_seed(3)
    net = smooth_mlp().double()
    x, y = data((7,))
    want = exact_datagrad(net, x, y)
    err = {eps: ((FDDataGrad(eps=eps)(net, x, y) - want).abs() / want).max().item() for eps in (1e-2, 1e-4)}
    assert err[1e-2] < 0.1 and err[1e-4] < err[1e-2] / 30  # O(ε)
    torch.testing.assert_close(FDDataGrad(eps=1e-4, scheme="central")(net, x, y), want, rtol=1e-6, atol=0)


def test_relu_maxpool_lenet_exact_at_small_eps_secant_at_large():
    """Piecewise linear: a step that crosses no kink is exact; large steps give a smoothed secant."""
    torch.manual_seed(4)
    net = lenet().double().eval()
    x, y = data((1, 12, 12))
    want = exact_jv(net, x, directions(x, 7)[0]).pow(2).sum(1)
    torch.testing.assert_close(FDSpectReg(eps=1e-9)(net, x, generator=gen(7)), want, rtol=1e-5, atol=0)
    torch.testing.assert_close(FDDataGrad(eps=1e-9)(net, x, y), exact_datagrad(net, x, y), rtol=1e-5, atol=0)
    coarse = FDSpectReg(eps=0.3)(net, x, generator=gen(7))
    assert torch.isfinite(coarse).all() and not torch.allclose(coarse, want, rtol=1e-3)


def test_weight_gradient_matches_exact_term_and_gradcheck():
    """The penalty's weight gradient: cosine with the exact ||J v||^2 gradient (same v), and gradcheck."""
    torch.manual_seed(5)
    net = smooth_mlp().double()
    x, y = data((7,))
    v = directions(x, 9)[0]
    params = list(net.parameters())
    exact = flat_grad(exact_jv(net, x, v).pow(2).sum(1).mean(), params)
    for term in (FDSpectReg(eps=1e-4, scheme="central"), JVPSpectReg()):
        got = flat_grad(term(net, x, generator=gen(9)).mean(), params)
        assert F.cosine_similarity(got, exact, dim=0) > 1 - 1e-6
    dg = flat_grad(gradreg.DataGrad()(net, x, y).mean(), params)
    fd = flat_grad(FDDataGrad(eps=1e-4)(net, x, y).mean(), params)
    assert F.cosine_similarity(fd, dg, dim=0) > 0.999  # the direction is held fixed (detached), as in F&O
    small = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    xs = torch.randn(3, 3, dtype=torch.float64)
    names = [n for n, _ in small.named_parameters()]
    ps = tuple(p.detach().clone().requires_grad_(True) for p in small.parameters())
    for term in (FDSpectReg(), JVPSpectReg()):
        f = lambda *p: term(lambda X: torch.func.functional_call(small, dict(zip(names, p)), (X,)), xs,  # noqa: E731
                            generator=gen(0)).sum()
        assert torch.autograd.gradcheck(f, ps, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["fd_spectreg", "jvp_spectreg"])
def test_batchnorm_coupling_sample_and_batch_modes(name):
    """Train-mode BatchNorm: "sample" is ||J_ii v_i||^2 (one sample perturbed per pass), "batch" is
    ||sum_j J_ij v_j||^2 (the whole batch at once); running statistics are left as they were."""
    torch.manual_seed(6)
    def bn_net(running):
        torch.manual_seed(6)
        return nn.Sequential(nn.Linear(7, 9), nn.BatchNorm1d(9, track_running_stats=running), nn.Tanh(),
                             nn.Linear(9, M)).double()
    net = bn_net(False)
    x, _ = data((7,))
    v = directions(x, 2)[0]
    J = jacrev(net)(x).reshape(B, M, B, -1)
    idx = torch.arange(B)
    want = {"sample": torch.einsum("imd,id->im", J[idx, :, idx], v).pow(2).sum(1),
            "batch": torch.einsum("imjd,jd->im", J, v).pow(2).sum(1)}
    for mode in ("sample", "batch"):
        term = get_regularizer(name, batch_mode=mode, **({"eps": 1e-6, "scheme": "central"} if name == "fd_spectreg" else {}))
        with torch.no_grad():  # jvp_spectreg refuses the weight gradient here (next test), not the value
            got = term(net, x, generator=gen(2))
        torch.testing.assert_close(got, want[mode], rtol=1e-6, atol=0)
    net = bn_net(True)
    xr = x.clone().requires_grad_(True)
    logits = net(xr)  # the shared forward pass moves the running statistics once ...
    after_forward = [b.clone() for b in net[1].buffers()]
    with torch.no_grad():
        get_regularizer(name, batch_mode="sample").evaluate(net, xr, logits, generator=gen(0), differentiable=False)
    assert all(torch.equal(a, b) for a, b in zip(after_forward, net[1].buffers()))  # ... the estimate not


def test_jvp_refuses_weight_gradient_through_train_mode_batchnorm():
    """torch 2.13: the reverse of F.batch_norm's forward-AD formula (batch statistics) is wrong; an
    elementary-op BatchNorm gives the numerical derivative. If this starts failing, lift the refusal."""
    torch.manual_seed(1)
    x, v = torch.randn(3, 2, 6, 6, dtype=torch.float64), torch.randn(3, 2, 6, 6, dtype=torch.float64)

    def slopes(norm):
        torch.manual_seed(1)
        net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), norm, nn.Tanh(), nn.Flatten(), nn.Linear(108, M)).double()
        value = lambda: jvp(net, (x,), (v,))[1].pow(2).sum()  # noqa: E731
        analytic = torch.autograd.grad(value(), net[0].weight)[0].view(-1)[0].item()
        w = net[0].weight.view(-1)
        with torch.no_grad():
            w[0] += 1e-6
            up = value().item()
            w[0] -= 2e-6
            down = value().item()
            w[0] += 1e-6
        return analytic, (up - down) / 2e-6

    class Elementary(nn.Module):
        def forward(self, h):
            return (h - h.mean((0, 2, 3), keepdim=True)) / (h.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()

    a, n = slopes(Elementary())
    assert a == pytest.approx(n, rel=1e-5)
    a, n = slopes(nn.BatchNorm2d(3, affine=False, track_running_stats=False))
    assert a != pytest.approx(n, rel=1e-2)
    net = nn.Sequential(nn.Linear(7, 9), nn.BatchNorm1d(9), nn.Linear(9, M))
    with pytest.raises(ValueError, match="batch statistics"):
        JVPSpectReg(batch_mode="batch")(net, torch.randn(B, 7))
    net.eval()
    JVPSpectReg()(net, torch.randn(B, 7)).sum().backward()  # eval-mode BatchNorm: fine


def test_dropout_masks_are_replayed():
    """With dropout in training, the finite difference sees one mask for g(x + hv) and g(x): it matches
    the forward-mode J v under that mask (the same stream state), not noise over h."""
    torch.manual_seed(7)
    net = lenet(dropout=0.5).double().train()
    stream = torch.Generator().manual_seed(11)
    assert gradreg.use_dropout_stream(net, stream) == 1
    x, _ = data((1, 12, 12))
    stream.manual_seed(11)
    fd = FDSpectReg(eps=1e-7)(net, x, generator=gen(4))
    stream.manual_seed(11)
    exact = JVPSpectReg()(net, x, generator=gen(4))
    torch.testing.assert_close(fd, exact, rtol=1e-4, atol=0)
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Dropout(0.5), nn.Linear(9, M)).double()  # global RNG
    xs, _ = data((7,))
    torch.manual_seed(1)
    fd = FDSpectReg(eps=1e-7)(plain, xs, generator=gen(4))
    torch.manual_seed(1)
    torch.testing.assert_close(fd, JVPSpectReg()(plain, xs, generator=gen(4)), rtol=1e-4, atol=0)
    torch.manual_seed(1)
    unreplayed = FDSpectReg(eps=1e-7)(lambda X: plain(X), xs, generator=gen(4))  # a callable: no replay
    assert not torch.allclose(unreplayed, fd, rtol=0.5)  # what the replay prevents: masks over h


def test_exact_terms_fail_and_estimators_run_under_aot_autograd():
    """aot_autograd (every torch.compile backend but eager) has no double backward; the estimators need
    none. aot_eager: the same autograd path as inductor without its code generation."""
    torch.manual_seed(8)
    net = smooth_mlp()
    x, y = data((7,), dtype=torch.float32)
    compiled = torch.compile(net, backend="aot_eager")
    with pytest.raises(Exception, match="double backward"):
        gradreg.Objective("cross_entropy", [(0.1, "spectreg")])(compiled, x, y).loss.backward()
    for name in ("fd_spectreg", "fd_datagrad", "jvp_spectreg"):
        grads = []
        for model in (compiled, net):
            net.zero_grad()
            gradreg.Objective("cross_entropy", [(0.1, name)])(model, x, y, generator=gen(1)).loss.backward()
            grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_fd_terms_train_a_model_compiled_with_inductor():
    """One compiled LeNet-5 step per finite-difference term, gradients equal to eager. Inductor compiles
    C++ with the system compiler: about 20-40 s on a 2-core CPU, the one slow test of this file."""
    torch.manual_seed(9)
    net = lenet()
    x, y = data((1, 12, 12), dtype=torch.float32)
    compiled = torch.compile(net)  # inductor
    start = time.perf_counter()
    for name in ("fd_spectreg", "fd_datagrad"):
        grads = []
        for model in (compiled, net):
            net.zero_grad()
            gradreg.Objective("cross_entropy", [(0.1, name)])(model, x, y, generator=gen(1)).loss.backward()
            grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-5)
    assert time.perf_counter() - start < 300


class AttentionBlock(nn.Module):
    """A pre-norm transformer block on F.scaled_dot_product_attention, mean-pooled to M logits."""

    def __init__(self, d=16, heads=2):
        super().__init__()
        self.heads, self.ln1, self.ln2 = heads, nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, M)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d))
        x = x + self.mlp(self.ln2(x))
        return self.head(x.mean(1))


def test_fused_attention_block():
    """The fused CPU attention kernel has no double backward and no forward-AD formula; the finite
    differences run on it and match the exact J v of the same block on the math kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    torch.manual_seed(10)
    block = AttentionBlock()
    x, y = data((8, 16), dtype=torch.float32)
    with pytest.raises(RuntimeError, match="not implemented"):
        gradreg.SpectReg()(block, x).sum().backward()
    with pytest.raises(NotImplementedError, match="forward AD"):
        JVPSpectReg()(block, x)
    for term in (FDSpectReg(), FDDataGrad()):
        block.zero_grad()
        term(block, x, y if term.needs_labels else None, generator=gen(3)).mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in block.parameters())
        assert block.qkv.weight.grad.abs().sum() > 0
    block64, x64 = block.double(), x.double()
    got = FDSpectReg(eps=1e-6, scheme="central")(block64, x64, generator=gen(3))
    with sdpa_kernel(SDPBackend.MATH):
        want = JVPSpectReg()(block64, x64, generator=gen(3))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_registered_options_and_harness():
    for name in ("fd_spectreg", "fd_datagrad", "jvp_spectreg"):
        assert name in gradreg.REGULARIZERS and get_regularizer(name).approximate
    assert get_regularizer("fd_spectreg", eps=0.1, n_directions=2, scheme="central").eps == 0.1
    with pytest.raises(ValueError, match="valid: 'forward', 'central'"):
        FDSpectReg(scheme="backward")
    with pytest.raises(ValueError, match="eps must be"):
        FDDataGrad(eps=0.0)
    with pytest.raises(ValueError, match="norm must be 'l2sq'"):
        FDSpectReg(norm="l1")
    with pytest.raises(ValueError, match="n_directions"):
        JVPSpectReg(n_directions=0)
    with pytest.raises(ValueError, match="needs labels"):
        FDDataGrad()(smooth_mlp(), torch.randn(B, 7))
    config = RunConfig(dataset="digits", terms=(("fd_spectreg", 0.03), ("fd_datagrad", 2.0)))
    weights = term_weights(config, batch=50)
    assert [(w, t.name, t.batch_mode) for w, t in weights] == [
        (0.03, "fd_spectreg", "batch"), (gradreg.paper_weight("fd_datagrad", 2.0, 50), "fd_datagrad", "batch")]


def test_generator_chunks_draw_as_solo_runs():
    x = torch.randn(6, 3, 2)
    gens = [gen(1), gen(2)]
    both = _draw_directions(gens, 2, x, "spherical")
    torch.testing.assert_close(both[:, :3], _draw_directions(gen(1), 2, x[:3], "spherical"))
    torch.testing.assert_close(both[:, 3:], _draw_directions(gen(2), 2, x[3:], "spherical"))
    assert both.flatten(2).norm(dim=2).sub(math.sqrt(6)).abs().max() < 1e-5  # on the sphere of radius √d


def test_zero_input_uses_unit_rms_step_and_zero_gradient_gives_zero():
    net = nn.Sequential(nn.Linear(7, M)).double()
    x = torch.zeros(B, 7, dtype=torch.float64)
    torch.testing.assert_close(FDSpectReg()(net, x, generator=gen(0)),
                               JVPSpectReg()(net, x, generator=gen(0)), rtol=1e-8, atol=0)
    const = lambda X: X.sum(1, keepdim=True) * 0 + torch.tensor([[1.0, 0.0]], dtype=X.dtype)  # noqa: E731
    assert torch.equal(FDDataGrad()(const, torch.randn(B, 7, dtype=torch.float64), torch.zeros(B, dtype=torch.long)),
                       torch.zeros(B, dtype=torch.float64))


@pytest.mark.parametrize("name", ["fd_spectreg", "fd_datagrad", "jvp_spectreg"])
def test_works_under_no_grad_and_inference_mode(name):
    net = lenet().double().eval()
    x, y = data((1, 12, 12))
    term = get_regularizer(name)
    yy = y if term.needs_labels else None
    ref = term(net, x, yy, generator=gen(1)).detach()
    with torch.no_grad():
        a = term(net, x, yy, generator=gen(1))
    with torch.inference_mode():
        b = term(net, x.clone(), yy, generator=gen(1))
    assert not a.requires_grad and not b.requires_grad
    torch.testing.assert_close(a, ref)
    torch.testing.assert_close(b, ref)


# --- wrt (hidden tensors, feature subsets), several inputs, structured outputs, couples_batch ---------

class TwoInputs(nn.Module):
    """model(a, b) -> a dict: the logits under "scores" (output= picks them) and an auxiliary entry."""

    def __init__(self):
        super().__init__()
        self.la, self.lb, self.head = nn.Linear(4, 8), nn.Linear(3, 8), nn.Linear(8, M)

    def forward(self, a, b):
        return {"aux": a.sum(1), "scores": self.head(torch.tanh(self.la(a) + self.lb(b)))}


def wrt_case(name):
    """(model, x, y, term options, f, t0, feature indices or None): the term penalizes the Jacobian of
    f (outputs as a function of the differentiated tensor t, every other row and input held) at t0."""
    torch.manual_seed(20)
    y = torch.randint(0, M, (B,))
    mlp = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 9), nn.Tanh(), nn.Linear(9, M)).double()
    x6 = torch.randn(B, 6, dtype=torch.float64)
    if name == "mlp_hidden":
        return mlp, x6, y, {"wrt": "2"}, mlp[3:], mlp[:3](x6), None
    if name == "cnn_hidden":
        net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 2, 3, padding=1), nn.Tanh(),
                            nn.Flatten(), nn.Linear(32, M)).double()
        x = torch.randn(B, 2, 4, 4, dtype=torch.float64)
        return net, x, y, {"wrt": "2"}, net[3:], net[:3](x), None
    emb = nn.Sequential(nn.Embedding(20, 5), nn.Flatten(), nn.Linear(15, 9), nn.Tanh(), nn.Linear(9, M)).double()
    tokens = torch.randint(0, 20, (B, 3))
    if name == "embedding":
        return emb, tokens, y, {"wrt": "0"}, emb[1:], emb[0](tokens), None
    if name == "embedding_features":  # embedding dimensions 1 and 3 of every token
        mask = torch.zeros(3, 5, dtype=torch.bool)
        mask[:, [1, 3]] = True
        return (emb, tokens, y, {"wrt": gradreg.Wrt(module="0", features=mask)}, emb[1:], emb[0](tokens),
                mask.flatten().nonzero().flatten())
    if name == "input_features":
        return mlp, x6, y, {"wrt": [0, 3]}, mlp, x6, torch.tensor([0, 3])
    two = TwoInputs().double()
    a, b = torch.randn(B, 4, dtype=torch.float64), torch.randn(B, 3, dtype=torch.float64)
    if name == "dict_input":
        return (two, {"a": a, "b": b}, y, {"wrt": gradreg.Wrt(input="b"), "output": "scores"},
                lambda t: two(a, t)["scores"], b, None)
    assert name == "tuple_input"
    return (two, (a, b), y, {"wrt": gradreg.Wrt(input=0, features=[1, 2]), "output": lambda out: out["scores"]},
            lambda t: two(t, b)["scores"], a, torch.tensor([1, 2]))


WRT_CASES = ["mlp_hidden", "cnn_hidden", "embedding", "embedding_features", "input_features", "dict_input",
             "tuple_input"]


def per_sample_jacobian(f, t0, features):
    """(B, M, |S|): dz_i/dt_i, the selected columns; differentiable w.r.t. what f and t0 depend on."""
    i = torch.arange(B)
    J = jacrev(f)(t0).reshape(B, M, B, -1)[i, :, i]
    return J if features is None else J[:, :, features]


def oracle_jv(f, t0, features, seed, k):
    """(B,) mean over the term's k directions of ||J_S v_S||^2, v drawn as the term draws it."""
    J = per_sample_jacobian(f, t0, features)
    sel = t0.detach().flatten(1) if features is None else t0.detach().flatten(1)[:, features]
    v = _draw_directions(gen(seed), k, sel, "spherical")
    return torch.einsum("imd,kid->kim", J, v).pow(2).sum(2).mean(0)


def oracle_datagrad(f, t0, features, y):
    i = torch.arange(B)
    JL = jacrev(lambda t: F.cross_entropy(f(t), y, reduction="none"))(t0).reshape(B, B, -1)[i, i]
    return (JL if features is None else JL[:, features]).pow(2).sum(1)


ESTIMATES = {  # name -> (term at a small step, tolerance)
    "fd_spectreg": (lambda **o: FDSpectReg(eps=1e-5, scheme="central", n_directions=2, **o), 1e-6),
    "fd_datagrad": (lambda **o: FDDataGrad(eps=1e-5, scheme="central", **o), 1e-6),
    "jvp_spectreg": (lambda **o: JVPSpectReg(n_directions=2, **o), 1e-10),
}


@pytest.mark.parametrize("case", WRT_CASES)
@pytest.mark.parametrize("name", sorted(ESTIMATES))
def test_wrt_estimate_matches_exact_jacobian(name, case):
    """Per sample, float64: the estimate at the same wrt is the exact ||J_S v||^2 (the Hutchinson
    estimate of the exact frobreg with that wrt) or the exact datagrad with that wrt, alone and inside
    an Objective given wrt/output at the objective level."""
    model, x, y, options, f, t0, features = wrt_case(name=case)
    make, tol = ESTIMATES[name]
    term = make(**options)
    labels = y if term.needs_labels else None
    got = term(model, x, labels, generator=gen(3))
    if name == "fd_datagrad":
        want = oracle_datagrad(f, t0, features, y)
        torch.testing.assert_close(gradreg.DataGrad(**options)(model, x, y), want, rtol=1e-9, atol=1e-12)
    else:
        want = oracle_jv(f, t0, features, seed=3, k=2)
        frob = per_sample_jacobian(f, t0, features).pow(2).sum((1, 2))
        torch.testing.assert_close(gradreg.FrobReg(**options)(model, x), frob, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got, want, rtol=tol, atol=1e-12)
    objective = gradreg.Objective("cross_entropy", [(1.0, make())], **options)
    out = objective(model, x, y, generator=gen(3))
    torch.testing.assert_close(out.terms[name], got.mean(), rtol=1e-12, atol=0)


def test_wrt_estimate_is_unbiased_for_the_exact_frobenius_term():
    """Averaged over many directions, fd_spectreg at a hidden tensor approaches frobreg at it."""
    model, x, _, options, f, t0, _ = wrt_case("mlp_hidden")
    frob = gradreg.FrobReg(**options)(model, x).detach()
    k = 400
    got = FDSpectReg(eps=1e-5, n_directions=k, **options)(model, x, generator=gen(1)).detach()
    torch.testing.assert_close(got, oracle_jv(f, t0, None, seed=1, k=k), rtol=1e-4, atol=0)  # same draws
    J = per_sample_jacobian(f, t0, None).detach()
    v = _draw_directions(gen(1), k, t0.detach(), "spherical")
    spread = torch.einsum("imd,kid->kim", J, v).pow(2).sum(2).std(0) / math.sqrt(k)
    assert ((got - frob).abs() < 4 * spread).all()


@pytest.mark.parametrize("case", ["mlp_hidden", "cnn_hidden", "embedding"])
@pytest.mark.parametrize("name", sorted(ESTIMATES))
def test_wrt_parameter_gradients_reach_upstream_modules(name, case):
    """The penalty's weight gradient, upstream of the hidden tensor included, equals the gradient of the
    exact ||J v||^2 (jacrev at t0 = head(x), differentiable), or of the exact datagrad at that wrt."""
    model, x, y, options, f, t0, features = wrt_case(case)
    make, _ = ESTIMATES[name]
    params = list(model.parameters())
    got = flat_grad(make(**options)(model, x, y if name == "fd_datagrad" else None, generator=gen(3)).mean(),
                    params)
    if name == "fd_datagrad":
        want = flat_grad(gradreg.DataGrad(**options)(model, x, y).mean(), params)
    else:
        want = flat_grad(oracle_jv(f, t0, features, seed=3, k=2).mean(), params)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)
    upstream = flat_grad(make(**options)(model, x, y if name == "fd_datagrad" else None, generator=gen(3)).mean(),
                         list(model[0].parameters()))
    assert upstream.abs().max() > 1e-3  # the first module, before the hidden tensor, gets a gradient


def test_fd_datagrad_differentiates_the_objectives_task_loss():
    model, x, y, *_ = wrt_case("input_features")
    targets = torch.randn(B, M, dtype=torch.float64)
    for loss in ("mse", functools.partial(F.cross_entropy, label_smoothing=0.2)):
        yy = targets if loss == "mse" else y
        exact = gradreg.Objective(loss, [(1.0, gradreg.DataGrad())])(model, x, yy).terms["datagrad"]
        fd = gradreg.Objective(loss, [(1.0, FDDataGrad(eps=1e-5, scheme="central"))])(model, x, yy)
        torch.testing.assert_close(fd.terms["fd_datagrad"], exact, rtol=1e-6, atol=0)


def bn_net():
    torch.manual_seed(21)
    return nn.Sequential(nn.Linear(6, 9), nn.BatchNorm1d(9, track_running_stats=False), nn.Tanh(),
                         nn.Linear(9, M)).double()


@pytest.mark.parametrize("name", ["fd_spectreg", "jvp_spectreg"])
def test_couples_batch_on_a_callable_and_hidden_wrt_before_batchnorm(name):
    """couples_batch=True on a callable (coupling undetectable): "sample" is J_ii v_i, "batch" is
    sum_j J_ij v_j; a hidden wrt before the BatchNorm is detected as coupled downstream."""
    net = bn_net()
    x = torch.randn(B, 6, dtype=torch.float64)
    fn = lambda u: net(u)  # noqa: E731
    J = jacrev(net)(x).reshape(B, M, B, -1)
    i = torch.arange(B)
    v = directions(x, 2)[0]
    want = {"sample": torch.einsum("imd,id->im", J[i, :, i], v).pow(2).sum(1),
            "batch": torch.einsum("imjd,jd->im", J, v).pow(2).sum(1)}
    make = ESTIMATES[name][0]
    with torch.no_grad():  # jvp_spectreg refuses the weight gradient through train-mode BatchNorm
        for mode in ("sample", "batch"):
            got = (FDSpectReg(eps=1e-6, scheme="central", couples_batch=True, batch_mode=mode) if name == "fd_spectreg"
                   else JVPSpectReg(couples_batch=True, batch_mode=mode))(fn, x, generator=gen(2))
            torch.testing.assert_close(got, want[mode], rtol=1e-6, atol=1e-12)
        h = net[0](x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = make(wrt="0")(net, x, generator=gen(2))
        torch.testing.assert_close(got, oracle_jv(net[1:], h, None, seed=2, k=2), rtol=1e-6, atol=1e-12)


def test_costly_path_warning_names_forward_passes_for_estimators():
    _WARNED.clear()
    with pytest.warns(UserWarning, match="one forward pass per sample and direction.*about B times") as record:
        FDSpectReg()(bn_net(), torch.randn(B, 6, dtype=torch.float64))
    assert not any("backward pass" in str(w.message) for w in record)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said explicitly: no warning
        FDDataGrad(couples_batch=True)(bn_net(), torch.randn(B, 6, dtype=torch.float64), torch.zeros(B, dtype=torch.long))


def test_wrt_errors_are_clear():
    model, x, y, *_ = wrt_case("mlp_hidden")
    with pytest.raises(ValueError, match="pass logits=None"):
        FDSpectReg(wrt="2")(model, x, logits=model(x))
    with pytest.raises(ValueError, match="no module named 'nope'"):
        JVPSpectReg(wrt="nope")(model, x)
    two, xs, *_ = wrt_case("dict_input")
    with pytest.raises(ValueError, match="say which one is differentiated"):
        FDSpectReg(output="scores")(two, xs)
    emb, tokens, *_ = wrt_case("embedding")
    with pytest.raises(ValueError, match="token ids"):
        FDDataGrad()(emb, tokens, y)


def test_dropout_replay_and_in_place_op_after_a_hidden_wrt():
    """Dropout after the hidden tensor and ReLU(inplace=True) right after it: the forward difference
    (its g(t) re-run under the replayed masks, on a copy of t) equals the exact J v under those masks."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 9), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(9, M)).double()
    x = torch.randn(B, 6, dtype=torch.float64)
    torch.manual_seed(3)
    fd = FDSpectReg(wrt="0", eps=1e-7)(net, x, generator=gen(1))
    torch.manual_seed(3)
    torch.testing.assert_close(fd, JVPSpectReg(wrt="0")(net, x, generator=gen(1)), rtol=1e-5, atol=0)
