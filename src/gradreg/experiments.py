"""Every table and figure of the paper (and its poster) as a named experiment: data, not code.

Varga, Csiszárik, Zombori, "Gradient Regularization Improves Accuracy of Discriminative Models"
(arXiv:1712.09936), Section 6; the poster adds CIFAR-100 and TinyImageNet-200. Each experiment is an
experiment file in the format users write (:mod:`gradreg.spec`), shipped as package data:
``gradreg/paper/<name>.toml``, with its cells, the paper's numbers and λ, the notes on how the paper was
read, and the reports (``[[reports]]``) that ``gradreg reproduce NAME`` regenerates. The format (cells,
their conventions, planning) is :mod:`gradreg.experiment`, whose names are re-exported here.
"""
from __future__ import annotations

from .cost import STEP_SECONDS, estimate_run_seconds  # noqa: F401  (re-exported)
from .experiment import (  # noqa: F401  (the format's names stay importable from here)
    DEV_SEED_OFFSET, GRIDS, METRICS, Cell, Experiment, PlannedRun, grid_window,
)
from .regularizers import (  # noqa: F401  (the grids stay importable from here)
    CP_GRID, DATAGRAD_GRID, FROBREG_GRID, JACREG_GRID, SPECTREG_GRID,
)
from .spec import paper_experiments

__all__ = [
    "Cell", "Experiment", "PlannedRun", "EXPERIMENTS", "get_experiment", "estimate_run_seconds",
    "grid_window", "DEV_SEED_OFFSET", "GRIDS", "METRICS", "STEP_SECONDS",
]

# The paper's experiments, one TOML file each in the package's paper/ folder (gradreg.spec reads them).
EXPERIMENTS: dict[str, Experiment] = paper_experiments()


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid: {', '.join(EXPERIMENTS)}; "
                         "or your own experiment file (*.toml), read by gradreg.load_experiment")
    return EXPERIMENTS[name]
