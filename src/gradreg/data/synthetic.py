"""Data that needs no files: the SIN family (section 6.1.3), generated from a fixed seed, and
scikit-learn's bundled 8x8 digits."""
from __future__ import annotations

from pathlib import Path

import torch

from . import Dataset, register_dataset
from ._common import _split_dev

SIN_POOL_SIZE, SIN_DEV_SIZE, SIN_TEST_SIZE, SIN_NOISE, SIN2_OFFSET = 20_000, 1_000, 900, 0.1, 0.001
SIN_LOW_NOISE = 0.01
_SIN_SEED = 0


def _sin_data(dev_size: int | None, noise: float = SIN_NOISE):
    """SIN (section 6.1.3): x ~ U[-1, 1], y = sin(5x) + N(0, noise^2); test: 900-point grid, no noise.

    The same x and the same standard-normal draws for every noise level, so levels differ only in scale.
    """
    gen = torch.Generator().manual_seed(_SIN_SEED)

    def noisy(n: int):
        x = torch.rand(n, 1, generator=gen) * 2 - 1
        return x, torch.sin(5 * x) + noise * torch.randn(n, 1, generator=gen)

    x_pool, y_pool = noisy(SIN_POOL_SIZE)
    x_dev, y_dev = noisy(SIN_DEV_SIZE if dev_size is None else dev_size)
    x_test = torch.linspace(-1, 1, SIN_TEST_SIZE).unsqueeze(1)
    return x_pool, y_pool, x_dev, y_dev, x_test, torch.sin(5 * x_test)


# The paper's SIN setup fixes the training set at 100 points (6.1.3).
@register_dataset("sin", task="regression", model="mlp", recipe="sin", train_size=100, num_outputs=1)
def _load_sin(data_dir: Path, *, dev_size: int | None = None, **_) -> Dataset:
    return Dataset("sin", "regression", *_sin_data(dev_size), num_outputs=1, input_shape=(1,))


@register_dataset("sin_lownoise", task="regression", model="mlp", recipe="sin", train_size=100, num_outputs=1)
def _load_sin_lownoise(data_dir: Path, *, dev_size: int | None = None, **_) -> Dataset:
    """SIN with noise σ = 0.01 instead of the paper's 0.1: the level at which Table 7's MSEs are attainable.

    With σ = 0.1 and 100 points even the one-parameter oracle fit a·sin(5x) has an expected test MSE of
    about 1e-4, above most of Table 7's values (down to 1.6e-5); see results/REPRODUCTION.md.
    """
    return Dataset("sin_lownoise", "regression", *_sin_data(dev_size, SIN_LOW_NOISE), num_outputs=1,
                   input_shape=(1,))


@register_dataset("sin2", task="regression", model="mlp", recipe="sin", train_size=100, num_outputs=1)
def _load_sin2(data_dir: Path, *, dev_size: int | None = None, **_) -> Dataset:
    """SIN2 (section 6.2.8): each SIN training point (x, y) also appears as (x + 0.001, y)."""
    x_pool, y_pool, *rest = _sin_data(dev_size)
    x_pairs = torch.stack([x_pool, x_pool + SIN2_OFFSET], dim=1).reshape(-1, 1)
    return Dataset("sin2", "regression", x_pairs, y_pool.repeat_interleave(2, dim=0), *rest,
                   num_outputs=1, input_shape=(1,), pair_offset=SIN2_OFFSET)


@register_dataset("digits", task="classification", model="lenet5", recipe="digits", num_outputs=10)
def _load_digits(data_dir: Path, *, dev_size: int | None = None, **_) -> Dataset:
    """scikit-learn's bundled 8x8 digits scaled to [0, 1]; fixed split: 500 test, 300 dev, 997 pool."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 (slow import, only needed here)

    bunch = load_digits()
    x = torch.from_numpy(bunch.data / 16.0).float().view(-1, 1, 8, 8)
    y = torch.from_numpy(bunch.target).long()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test, rest = perm[:500], perm[500:]
    pool, _, dev, _ = _split_dev(rest, rest, dev_size, 300)
    return Dataset("digits", "classification", x[pool], y[pool], x[dev], y[dev], x[test], y[test],
                   10, (1, 8, 8))
