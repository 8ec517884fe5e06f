"""The estimators without double backward (gradreg.estimators) beside the exact terms: error and cost.

Part 1, error (float64, per sample, against exact Jacobians by jacrev): for a tanh/GELU MLP and a
ReLU/max-pool LeNet-5 (eval mode, 1x28x28 inputs scaled like MNIST pixels) across the relative step ε,
the finite difference's relative error in ||J v||^2 with the same v (the step's bias alone), the
Hutchinson estimate's spread over directions (k = 1), FD-DataGrad's relative error, and the cosine of
each penalty's weight gradient with the exact term's (FrobReg for the ||J||_F^2 estimators with k = 8,
DataGrad for FD-DataGrad).

Part 2, cost of one training step (forward, penalty, backward, SGD step) divided by a plain step,
measured in one process, alternating the variants: LeNet-5 (batch 50, 1x28x28), the CIFAR ResNet at small
width (16/32/64, 1 block per level, batch 32), a transformer block on F.scaled_dot_product_attention
(batch 32, 16 tokens, width 64), eager, and LeNet-5 compiled (inductor), where the exact terms cannot run.

    OMP_NUM_THREADS=1 python benchmarks/bench_estimators.py [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jacrev

import gradreg
from gradreg.estimators import _draw_directions
from gradreg.models import CifarResNet

torch.set_num_threads(1)


def smooth_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.Tanh(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10))


def lenet():
    return gradreg.create_model("lenet5", input_shape=(1, 28, 28), num_outputs=10).eval()


def mnist_like(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(b, 1, 28, 28, generator=g) - 0.6).clamp_min(0) * 2.5  # ~40% zero pixels, max 1
    return x, torch.randint(0, 10, (b,), generator=g)


def flat_grad(value, params):
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params)])


def error_table(name, net, b=8, epss=(1e-1, 1e-2, 1e-3, 1e-4, 1e-6)):
    net = net.double()
    x, y = mnist_like(b)
    x = x.double()
    params = list(net.parameters())
    J = jacrev(net)(x).reshape(b, 10, b, -1)
    idx = torch.arange(b)
    Jii = J[idx, :, idx]
    frob = Jii.pow(2).sum((1, 2))
    v = _draw_directions(torch.Generator().manual_seed(1), 1, x, "spherical")[0].flatten(1)
    jv2 = torch.einsum("imd,id->im", Jii, v).pow(2).sum(1)
    spread = torch.stack([torch.einsum("imd,id->im", Jii, w.flatten(1)).pow(2).sum(1) / frob for w in
                          _draw_directions(torch.Generator().manual_seed(2), 200, x, "spherical")]).std(0).mean()
    exact_g = flat_grad(gradreg.FrobReg()(net, x).mean(), params)
    dg = gradreg.DataGrad()(net, x, y)
    dg_g = flat_grad(dg.mean(), params)
    print(f"\n{name}: Hutchinson spread of ||J v||^2 / ||J||_F^2 over directions (k=1): std {spread:.2f}")
    print("eps     fd_spectreg rel.err (same v)   central      fd_datagrad rel.err   cos(grad) fd_spectreg k=8   fd_datagrad")
    for eps in epss:
        gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
        fwd = gradreg.FDSpectReg(eps=eps)(net, x, generator=gen()).detach()
        cen = gradreg.FDSpectReg(eps=eps, scheme="central")(net, x, generator=gen()).detach()
        fdd = gradreg.FDDataGrad(eps=eps)(net, x, y)
        cos_s = F.cosine_similarity(flat_grad(gradreg.FDSpectReg(eps=eps, n_directions=8)(
            net, x, generator=torch.Generator().manual_seed(3)).mean(), params), exact_g, dim=0)
        cos_d = F.cosine_similarity(flat_grad(fdd.mean(), params), dg_g, dim=0)
        rel = lambda a, w: ((a - w).abs() / w).median().item()  # noqa: E731
        print(f"{eps:<7g} {rel(fwd, jv2):>12.2e} {rel(cen, jv2):>22.2e} {rel(fdd.detach(), dg.detach()):>20.2e}"
              f" {cos_s.item():>20.4f} {cos_d.item():>13.4f}")
    exact_k8 = flat_grad(gradreg.SpectReg(n_projections=8)(net, x, generator=torch.Generator().manual_seed(3)).mean(), params)
    jvp_k8 = flat_grad(gradreg.JVPSpectReg(n_directions=8)(net, x, generator=torch.Generator().manual_seed(3)).mean(), params)
    print(f"reference: cos(grad) of SpectReg k=8 {F.cosine_similarity(exact_k8, exact_g, dim=0).item():.4f}, "
          f"of jvp_spectreg k=8 {F.cosine_similarity(jvp_k8, exact_g, dim=0).item():.4f} (sampling alone)")


class AttentionBlock(nn.Module):
    def __init__(self, d=64, heads=4, m=10):
        super().__init__()
        self.heads, self.ln1, self.ln2 = heads, nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.head = nn.Linear(d, m)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d))
        return self.head((x + self.mlp(self.ln2(x))).mean(1))


def step_time(model, x, y, term, reps):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    objective = gradreg.Objective("cross_entropy", [] if term is None else [(0.01, term)])
    gen = torch.Generator().manual_seed(0)

    def step():
        opt.zero_grad(set_to_none=True)
        objective(model, x, y, generator=gen).loss.backward()
        opt.step()
    for _ in range(2):
        step()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def cost_table(name, model, x, y, terms, reps, rounds=3):
    # batch_mode="batch" as the harness runs them: on the train-mode BatchNorm ResNet, "sample" costs B passes.
    print(f"\n{name}: step time / plain step (median of {rounds} alternating rounds of {reps} steps)")
    results = {t: [] for t in terms}
    for _ in range(rounds):
        plain = step_time(model, x, y, None, reps)
        for t in terms:
            if isinstance(results[t], str):  # failed in an earlier round
                continue
            try:
                results[t].append(step_time(model, x, y, gradreg.get_regularizer(t, batch_mode="batch"), reps) / plain)
            except Exception as e:  # an exact term on a fused kernel or a compiled model: say why
                results[t] = str(e).split("\n")[0][:70]
    print(f"  plain step {plain * 1e3:.1f} ms")
    for t, r in results.items():
        print(f"  {t:<14} {r if isinstance(r, str) else f'{statistics.median(r):.2f}x'}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer steps per measurement")
    parser.add_argument("--part", choices=["error", "cost", "all"], default="all")
    args = parser.parse_args()
    reps = 3 if args.quick else 8
    print(f"torch {torch.__version__}, 1 thread")
    if args.part in ("error", "all"):
        torch.manual_seed(0)
        error_table("tanh/GELU MLP 784-64-64-10", smooth_mlp())
        torch.manual_seed(0)
        error_table("LeNet-5 (ReLU, max-pool)", lenet())
    if args.part in ("cost", "all"):
        terms = ["spectreg", "datagrad", "fd_spectreg", "fd_datagrad", "jvp_spectreg"]
        torch.manual_seed(0)
        x, y = mnist_like(50)
        net = gradreg.create_model("lenet5", input_shape=(1, 28, 28), num_outputs=10, dropout=0.5)
        cost_table("LeNet-5, batch 50, eager (dropout 0.5 in training)", net, x, y, terms, reps)
        resnet = CifarResNet((3, 32, 32), 10, widths=(16, 32, 64), blocks=1)
        xc = torch.randn(32, 3, 32, 32)
        cost_table("CIFAR ResNet 16/32/64, 1 block per level, batch 32, eager, train-mode BatchNorm", resnet, xc,
                   torch.randint(0, 10, (32,)), [t for t in terms if t != "jvp_spectreg"], reps)
        block = AttentionBlock()
        cost_table("transformer block (SDPA, fused CPU kernel), batch 32 x 16 tokens x 64, eager", block,
                   torch.randn(32, 16, 64), torch.randint(0, 10, (32,)), terms, reps)
        compiled = torch.compile(net)
        cost_table("LeNet-5, batch 50, torch.compile (inductor)", compiled, x, y, terms, reps, rounds=2)


if __name__ == "__main__":
    main()
