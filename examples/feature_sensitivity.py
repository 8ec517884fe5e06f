"""A regression net penalized on two chosen input features.

The target depends on features 0-2 (the signal); features 3 and 4 are nuisance inputs that, in the
training set, happen to be correlated with the target (through feature 0) but carry no information of
their own. ``FrobReg(wrt=[3, 4])`` penalizes :math:`\\|\\partial f / \\partial x_{3,4}\\|^2` only, so the
net is pushed to rely on the signal features. Run: ``python examples/feature_sensitivity.py``.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

import gradreg

NUISANCE = [3, 4]


def make_data(n: int, generator: torch.Generator, correlated: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 5, generator=generator)
    if correlated:  # the nuisance features copy feature 0 (plus noise) in the training data only
        x[:, 3] = x[:, 0] + 0.1 * torch.randn(n, generator=generator)
        x[:, 4] = -x[:, 0] + 0.1 * torch.randn(n, generator=generator)
    y = torch.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2]
    return x, y.unsqueeze(1)


def nuisance_sensitivity(model: nn.Module, x: torch.Tensor) -> float:
    """Mean squared gradient of the output w.r.t. the nuisance features (what the term penalizes)."""
    return gradreg.FrobReg(wrt=NUISANCE)(model, x).mean().item()


def train(weight: float, steps: int, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = make_data(1024, gen, correlated=True)
    x_test, y_test = make_data(1024, gen, correlated=False)
    model = nn.Sequential(nn.Linear(5, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    objective = gradreg.Objective("mse", [(weight, gradreg.FrobReg(wrt=NUISANCE))])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=gen)
        out = objective(model, x[idx], y[idx])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    with torch.no_grad():
        test_mse = (model(x_test) - y_test).pow(2).mean().item()
    return {"test_mse": test_mse, "nuisance_sensitivity": nuisance_sensitivity(model, x_test)}


def main(steps: int = 300, weight: float = 1.0, seed: int = 0) -> dict[str, dict[str, float]]:
    return {"plain": train(0.0, steps, seed), "penalized": train(weight, steps, seed)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--weight", type=float, default=1.0)
    args = ap.parse_args()
    for name, metrics in main(args.steps, args.weight).items():
        print(f"{name:10s} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
