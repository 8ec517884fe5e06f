"""gradreg: gradient regularization for PyTorch (Varga, Csiszárik, Zombori, arXiv:1712.09936)."""
from .objective import TASK_LOSSES, Objective, ObjectiveOutput, paper_weight
from .regularizers import (
    REGULARIZERS, ConfidencePenalty, DataGrad, FrobReg, JacReg, OneHot, RandomOneHot, Regularizer,
    RegularizerInfo, SpectReg, couples_batch, get_regularizer, register_regularizer, regularizer_info,
)
from .wrt import Wrt
from .estimators import FDDataGrad, FDSpectReg, JVPSpectReg
from .data import DATASETS, DataError, Dataset, DatasetInfo, dataset_info, load_dataset, register_dataset
from .models import (MODELS, ModelInfo, StreamDropout, count_parameters, create_model, model_info, register_model,
                     use_dropout_stream)
from .recipes import RECIPES, Recipe, get_recipe
from .stacking import GroupedModel
from .train import RunConfig, RunResult, train_group
from .experiments import EXPERIMENTS, Cell, Experiment, get_experiment
from .spec import load_experiment
from .plugins import import_plugins
from .store import ResultStore
from .sweep import run_sweep

__version__ = "0.1.0"

__all__ = [
    "Objective", "ObjectiveOutput", "paper_weight", "TASK_LOSSES",
    "Regularizer", "DataGrad", "SpectReg", "FrobReg", "JacReg", "OneHot", "RandomOneHot",
    "ConfidencePenalty", "REGULARIZERS", "register_regularizer", "get_regularizer", "couples_batch", "Wrt",
    "RegularizerInfo", "regularizer_info",
    "FDSpectReg", "FDDataGrad", "JVPSpectReg",
    "DATASETS", "DataError", "Dataset", "load_dataset", "register_dataset", "DatasetInfo", "dataset_info",
    "MODELS", "count_parameters", "create_model", "register_model", "StreamDropout", "use_dropout_stream",
    "ModelInfo", "model_info",
    "RECIPES", "Recipe", "get_recipe", "RunConfig", "RunResult", "GroupedModel", "train_group",
    "EXPERIMENTS", "Experiment", "Cell", "get_experiment", "load_experiment", "import_plugins", "ResultStore",
    "run_sweep",
]
