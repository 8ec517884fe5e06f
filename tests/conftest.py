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
