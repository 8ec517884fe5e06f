"""A small transformer text classifier, gradient-regularized at its embedding output.

Token ids have no gradient, so the Jacobian is taken w.r.t. the output of the embedding module
(``wrt="embed"``): SpectReg penalizes how fast the logits move as each sample's (T, d) embedding moves.
The embedding itself still trains (the task loss and the penalty both reach it).

The text is synthetic (no download): sequences of 12 tokens from a 50-word vocabulary; the label is
which of 3 "topic" word groups occurs most often. Run: ``python examples/text_classifier.py``.

PyTorch's fused CPU attention kernel has no second derivative, so the step runs under
``sdpa_kernel(SDPBackend.MATH)``, the unfused formula (same values).
"""
from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import gradreg

VOCAB, LENGTH, CLASSES = 50, 12, 3


def synthetic_text(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (n, LENGTH) and labels: the topic (tokens 0-9, 10-19, 20-29) with the most words."""
    tokens = torch.randint(0, VOCAB, (n, LENGTH), generator=generator)
    counts = torch.stack([((tokens >= 10 * c) & (tokens < 10 * (c + 1))).sum(1) for c in range(CLASSES)], 1)
    labels = (counts + 0.1 * torch.arange(CLASSES)).argmax(1)  # ties go to the later topic
    return tokens, labels


class TextClassifier(nn.Module):
    def __init__(self, d: int = 16):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.position = nn.Parameter(torch.zeros(LENGTH, d))
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True),
            num_layers=1, enable_nested_tensor=False)
        self.head = nn.Linear(d, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(tokens) + self.position)
        return self.head(h.mean(1))


def main(steps: int = 150, weight: float = 0.01, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = synthetic_text(512, gen)
    x_test, y_test = synthetic_text(512, gen)
    model = TextClassifier()
    objective = gradreg.Objective("cross_entropy", [(weight, gradreg.SpectReg())], wrt="embed")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    projections = torch.Generator().manual_seed(seed + 1)
    with sdpa_kernel(SDPBackend.MATH):
        for step in range(steps):
            idx = torch.randint(0, len(x_train), (64,), generator=gen)
            out = objective(model, x_train[idx], y_train[idx], generator=projections)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():  # validation logging: every part, no graph
            test = objective(model, x_test, y_test, generator=projections)
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return {"test_accuracy": accuracy, **{f"test_{k}": v for k, v in test.parts().items()}}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--weight", type=float, default=0.01)
    args = ap.parse_args()
    print(main(args.steps, args.weight))
