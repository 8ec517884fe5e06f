"""The examples under examples/ run and do what their docstrings say (shortened runs)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    """Import an example as a top-level module, so spawned processes can import it too."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def test_text_classifier_regularized_at_its_embedding():
    ex = load("text_classifier")
    metrics = ex.main(steps=60)
    assert metrics["test_accuracy"] > 0.5  # 3 balanced-ish classes: chance is about 1/3
    assert metrics["test_spectreg"] > 0 and metrics["test_loss"] > metrics["test_task"]


def test_feature_sensitivity_penalty_cuts_the_chosen_features_only():
    ex = load("feature_sensitivity")
    out = ex.main(steps=150)
    assert out["penalized"]["nuisance_sensitivity"] < out["plain"]["nuisance_sensitivity"] / 3
    assert out["penalized"]["test_mse"] < out["plain"]["test_mse"]


@pytest.mark.skipif(not __import__("torch").distributed.is_available(), reason="torch built without distributed")
def test_ddp_gloo_gradients_equal_single_process_on_the_joined_batch():
    """Two spawned processes (about 15 s on a 2-core CPU, most of it starting Python and torch twice)."""
    ex = load("ddp_gloo")
    assert ex.main() < 1e-12
