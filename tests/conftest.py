"""Shared test setup."""
from __future__ import annotations

import os

import pytest
import torch

from gradreg.numerics import FLUSH_DENORMAL_ENV


@pytest.fixture(autouse=True)
def _process_flush_mode_restored():
    # The gradreg command sets the process's subnormal mode and its environment variable (a real
    # command is its own process); a test that invokes the CLI in-process must not leave them set.
    before = os.environ.get(FLUSH_DENORMAL_ENV)
    yield
    if before is None:
        os.environ.pop(FLUSH_DENORMAL_ENV, None)
    else:
        os.environ[FLUSH_DENORMAL_ENV] = before
    torch.set_flush_denormal(False)


@pytest.fixture(autouse=True)
def _model_registry_restored():
    """Experiment files with `imports` (results/specs/keras_lenet.py) register models when a test loads
    them; every test leaves the model registry as it found it, so later tests see the built-in one."""
    from gradreg.models import MODEL_INFO, MODELS

    models, info = dict(MODELS), dict(MODEL_INFO)
    yield
    MODELS.clear(), MODELS.update(models)
    MODEL_INFO.clear(), MODEL_INFO.update(info)
