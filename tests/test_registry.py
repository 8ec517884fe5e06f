"""The registries carry each name's facts: a dataset its task, default model, recipe and training size;
a model whether it can train grouped and its step cost; a regularizer its paper λ grid and λ scale.
Every lookup reads them, so a new dataset is one registration."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import gradreg
from gradreg.cost import STEP_SECONDS, estimate_run_seconds
from gradreg.data import DATASET_INFO, DATASETS, dataset_info
from gradreg.experiments import GRIDS
from gradreg.planner import GROUPABLE_MODELS, groupable
from gradreg.models import model_info
from gradreg.recipes import DEFAULT_RECIPE, RECIPES
from gradreg.regularizers import DATAGRAD_GRID, SPECTREG_GRID, regularizer_info
from gradreg.store import ResultStore
from gradreg.train import DEFAULT_MODEL, DEFAULT_TRAIN_SIZE, RunConfig, init_model, train, train_group


@pytest.fixture
def registered():
    """Names a test registers as datasets, removed afterwards so other tests see the usual registry."""
    names: list[str] = []
    yield names
    for name in names:
        DATASETS.pop(name, None)
        DATASET_INFO.pop(name, None)


# --- the paper's facts, read from the registries ---------------------------------------------------------

def test_datasets_register_their_task_model_recipe_and_train_size():
    assert dataset_info("sin") == gradreg.DatasetInfo("regression", "mlp", "sin", 100, 1)
    assert dataset_info("mnist").task == "classification" and dataset_info("mnist").model == "lenet5"
    assert (dataset_info("cifar100").recipe, dataset_info("cifar100").num_outputs) == ("cifar", 100)
    assert dataset_info("npz").task is None  # the file's targets decide
    cfg = RunConfig(dataset="sin2")
    assert (cfg.train_size, cfg.model_name, cfg.base_recipe()) == (100, "mlp", RECIPES["sin"])
    # The old tables are read-only views of the registry.
    assert DEFAULT_MODEL["cifar10"] == "cifar_resnet" and DEFAULT_RECIPE["tinyimagenet"] == "cifar"
    assert dict(DEFAULT_TRAIN_SIZE) == {"sin": 100, "sin_lownoise": 100, "sin2": 100}
    with pytest.raises(TypeError):
        DEFAULT_RECIPE["mnist"] = "sin"  # type: ignore[index]
    with pytest.raises(ValueError, match="valid: .*mnist"):
        dataset_info("mnsit")


def test_models_register_groupability_and_step_cost():
    assert set(GROUPABLE_MODELS) == {"mlp", "lenet5"}
    assert model_info("mlp").group_on_cpu and not model_info("lenet5").group_on_cpu
    assert not model_info("cifar_resnet").groupable
    assert STEP_SECONDS["lenet5"] == 0.0054 and model_info("lenet5").gradient_factor == 2.1
    # 10,000 MNIST steps: 54 s plain, x2.1 with DataGrad, 1 + 0.93 * 10 with JacReg.
    base = RunConfig(dataset="mnist", train_size=2000)
    assert estimate_run_seconds(base) == pytest.approx(54.0)
    assert estimate_run_seconds(RunConfig(dataset="mnist", terms=(("datagrad", 50.0),))) == pytest.approx(113.4)
    assert estimate_run_seconds(RunConfig(dataset="mnist", terms=(("jacreg", 0.1),))) == pytest.approx(54 * 10.3)
    assert not groupable(RunConfig(dataset="mnist", batchnorm=True))
    with pytest.raises(ValueError, match="valid: .*lenet5"):
        model_info("lenet")


def test_regularizers_register_their_paper_grid_and_lambda_scale():
    assert regularizer_info("datagrad").grid == DATAGRAD_GRID and GRIDS["spectreg"] == SPECTREG_GRID
    assert "fd_datagrad" not in GRIDS  # the paper tunes no estimator
    scales = {name: regularizer_info(name).lambda_scale for name in gradreg.REGULARIZERS}
    assert {n for n, s in scales.items() if s == "batch_mean"} == {"datagrad", "fd_datagrad"}
    # The finite-difference DataGrad estimates DataGrad's term, so the paper's λ converts alike.
    assert gradreg.paper_weight("fd_datagrad", 100.0, 50) == gradreg.paper_weight("datagrad", 100.0, 50) == 2.0
    assert gradreg.paper_weight("fd_spectreg", 0.03, 50) == 0.03
    with pytest.raises(ValueError, match="lambda_scale"):
        gradreg.register_regularizer("bad_scale", gradreg.SpectReg, lambda_scale="batch")
    with pytest.raises(ValueError, match="increasing"):
        gradreg.register_regularizer("bad_grid", gradreg.SpectReg, grid=(0.1, 0.01))
    assert "bad_scale" not in gradreg.REGULARIZERS and "bad_grid" not in gradreg.REGULARIZERS


# --- DataGrad on a regression .npz takes the task's loss ----------------------------------------------

def _regression_npz(path) -> None:
    """A user's regression file in the npz format the loader reads: float targets, two outputs."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (40, 3)).astype(np.float32)
    y = np.stack([np.sin(3 * x[:, 0]), x[:, 1] * x[:, 2]], axis=1).astype(np.float32)
    np.savez(path, x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=y[30:])


def _mse_datagrad(config: RunConfig, ds) -> float:
    """DataGrad's batch mean at the run's initial weights, computed one sample at a time: the squared
    norm of the input gradient of that sample's mean squared error over its outputs."""
    model = init_model(config, ds, torch.device("cpu"))
    idx = ds.subset_indices(config.train_size, config.seed_for("subset"))
    values = []
    for i in idx.tolist():
        x = ds.x_pool[i:i + 1].clone().requires_grad_(True)
        loss = (model(x) - ds.y_pool[i:i + 1]).pow(2).mean()
        (g,) = torch.autograd.grad(loss, x)
        values.append(g.pow(2).sum().item())
    return sum(values) / len(values)


def test_datagrad_on_a_regression_npz_differentiates_the_mse_solo_and_grouped(tmp_path):
    _regression_npz(tmp_path / "mine.npz")
    ds = gradreg.load_dataset("npz", tmp_path)
    assert ds.task == "regression" and ds.num_outputs == 2
    # One step with the whole pool as the batch: the logged term is the term at the initial weights.
    configs = [RunConfig(dataset="npz", seed=s, terms=(("datagrad", 1.0),), weight_convention="gradreg",
                         overrides=(("steps", 1), ("eval_points", 1), ("dropout", 0.0)))
               for s in range(2)]
    expected = [_mse_datagrad(c, ds) for c in configs]
    assert all(v > 1e-6 for v in expected)  # cross-entropy on float targets gave exactly 0
    solo = train(configs[0], dataset=ds, device="cpu", progress=False)
    grouped = train_group(configs, dataset=ds, device="cpu", progress=False)
    assert solo.curve[0]["train_datagrad"] == pytest.approx(expected[0], rel=1e-5)
    for result, value in zip(grouped, expected):
        assert result.curve[0]["train_datagrad"] == pytest.approx(value, rel=1e-5)


# --- a new dataset is one registration ------------------------------------------------------------------

def test_a_new_dataset_is_one_registration_and_sweeps_end_to_end(tmp_path, registered):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(70, 1, 8, 8, generator=gen)
    y = (x.mean((1, 2, 3)) > 0.5).long() + 2 * (x[:, 0, 0, 0] > 0.5).long()

    registered.append("blobs")

    @gradreg.register_dataset("blobs", task="classification", model="lenet5", recipe="digits", train_size=24,
                              num_outputs=4)
    def _load_blobs(data_dir, *, dev_size=None, **_):
        return gradreg.Dataset("blobs", "classification", x[:50], y[:50], x[50:60], y[50:60], x[60:], y[60:],
                               4, (1, 8, 8))

    configs = [RunConfig(dataset="blobs", seed=s, terms=(("spectreg", 0.01),),
                         overrides=(("steps", 3), ("eval_points", 1))) for s in range(2)]
    assert all(c.model_name == "lenet5" and c.train_size == 24 for c in configs)
    assert configs[0].resolved_recipe() == RECIPES["digits"].replace(steps=3, eval_points=1)
    summary = gradreg.run_sweep(configs, tmp_path / "runs.db", device="cpu", progress=False)
    assert (summary.total, summary.done, summary.failed) == (2, 2, 0)
    with ResultStore(tmp_path / "runs.db") as store:
        rows = store.rows(status="done")
    assert sorted(r["key"] for r in rows) == sorted(c.key() for c in configs)
    assert all(0 <= r["metrics"]["test_acc"] <= 100 and "train_spectreg" in r["curve"][0] for r in rows)


def test_a_loader_must_give_the_task_it_registered(tmp_path, registered):
    registered.append("mislabelled")
    x, y = torch.zeros(6, 2), torch.zeros(6, 1)

    @gradreg.register_dataset("mislabelled", task="classification")
    def _load(data_dir, **_):
        return gradreg.Dataset("mislabelled", "regression", x, y, x, y, x, y, 1, (2,))

    with pytest.raises(gradreg.DataError, match="registered as classification"):
        gradreg.load_dataset("mislabelled", tmp_path)


def test_defaults_from_the_registry_keep_the_run_keys():
    """The registry resolves a config's model, recipe and train size to what the tables said before it
    held them, so these configs keep their keys (the committed databases hold runs under them)."""
    keys = {RunConfig(dataset="sin", terms=(("datagrad", 10.0),)): "3ab5a94c25d02e84",
            RunConfig(dataset="sin2", seed=3): "14dbd4cd893c9092",
            RunConfig(dataset="mnist", train_size=2000, terms=(("spectreg", 0.03),)): "8f956398f7128b11",
            RunConfig(dataset="cifar10"): "97793fc802ef0222",
            RunConfig(dataset="tinyimagenet", train_size=5000): "a807b783bbc45bdb",
            RunConfig(dataset="npz", terms=(("datagrad", 1.0),)): "6be28466fdfeb2ab",
            RunConfig(dataset="digits"): "d0e6747a848c9216"}
    assert [c.key() for c in keys] == list(keys.values())
