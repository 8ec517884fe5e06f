"""Shared test setup."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest
import torch

from gradreg.numerics import FLUSH_DENORMAL_ENV

_SPECS = str(Path(__file__).resolve().parents[1] / "results" / "specs")


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


@contextlib.contextmanager
def model_registry_kept():
    """Experiment files with `imports` (results/specs/keras_lenet.py) register models when they are
    loaded: inside this block they may, and after it the model registry is as it was, with the plugin
    modules loaded meanwhile forgotten so that a later import registers them again."""
    from gradreg.models import MODEL_INFO, MODELS

    models, info, modules = dict(MODELS), dict(MODEL_INFO), set(sys.modules)
    try:
        yield
    finally:
        MODELS.clear(), MODELS.update(models)
        MODEL_INFO.clear(), MODEL_INFO.update(info)
        for name in set(sys.modules) - modules:
            if str(getattr(sys.modules[name], "__file__", None) or "").startswith(_SPECS):
                del sys.modules[name]


@pytest.fixture(autouse=True)
def _model_registry_restored():
    """Every test leaves the model registry as it found it, so later tests see the built-in one."""
    with model_registry_kept():
        yield
