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


# The README's trainer snippets ("Your model"), written out as there.

def test_lightning_training_step_snippet():
    """Optional: lightning is a test extra; skipped (and reported as skipped) where it is not installed."""
    lightning = pytest.importorskip("lightning")
    import torch
    from torch import nn

    import gradreg

    class LitClassifier(lightning.LightningModule):
        def __init__(self, model):
            super().__init__()
            self.model = model
            self.objective = gradreg.Objective("cross_entropy", [(0.03, gradreg.SpectReg())])

        def training_step(self, batch, batch_idx):
            x, y = batch
            out = self.objective(self.model, x, y)
            self.log_dict(out.parts())
            return out.loss

        def validation_step(self, batch, batch_idx):  # runs under inference mode: values, no graph
            self.log_dict({f"val_{k}": v for k, v in self.objective(self.model, *batch).parts().items()})

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 6), torch.randint(0, 3, (32,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    before = [p.detach().clone() for p in model.parameters()]
    lit = LitClassifier(model)
    trainer = lightning.Trainer(max_epochs=1, limit_train_batches=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, limit_val_batches=2)
    from gradreg.wrt import _WARNED
    _WARNED.clear()  # train-mode BatchNorm: the costly exact path warns (once per process)
    with pytest.warns(UserWarning, match="couples the samples"):
        trainer.fit(lit, loader, loader)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    metrics = trainer.callback_metrics
    assert {"spectreg", "val_spectreg", "val_task"} <= set(metrics) and metrics["val_spectreg"] > 0


def test_hugging_face_compute_loss_snippet():
    """The Trainer.compute_loss override on a model shaped like a Hugging Face one (dict inputs,
    ModelOutput return, an embeddings submodule); transformers itself is not a dependency."""
    from collections import OrderedDict

    import torch
    import torch.nn.functional as F
    from torch import nn

    import gradreg

    class ModelOutput(OrderedDict):
        def __getattr__(self, k):
            return self[k]

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings, self.encoder = nn.Embedding(30, 8), nn.Linear(8, 8)

    class TinyForSequenceClassification(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert, self.classifier = Bert(), nn.Linear(8, 3)

        def forward(self, input_ids, attention_mask):
            h = torch.tanh(self.bert.encoder(self.bert.embeddings(input_ids)))
            pooled = (h * attention_mask.unsqueeze(-1)).sum(1) / attention_mask.sum(1, keepdim=True)
            return ModelOutput(logits=self.classifier(pooled))

    class Trainer:  # stands in for transformers.Trainer: only compute_loss is overridden
        pass

    class GradRegTrainer(Trainer):
        objective = gradreg.Objective("cross_entropy", [(0.01, gradreg.SpectReg())], wrt="bert.embeddings")

        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            labels = inputs.pop("labels")
            out = self.objective(model, inputs, labels)
            return (out.loss, out.logits) if return_outputs else out.loss

    torch.manual_seed(0)
    model = TinyForSequenceClassification()
    inputs = {"input_ids": torch.randint(0, 30, (4, 5)), "attention_mask": torch.ones(4, 5),
              "labels": torch.randint(0, 3, (4,))}
    labels = inputs["labels"]
    loss, logits = GradRegTrainer().compute_loss(model, dict(inputs), return_outputs=True)
    loss.backward()
    assert model.bert.embeddings.weight.grad is not None
    task = F.cross_entropy(logits, labels)
    assert loss.item() > task.item()  # the penalty is in the loss
