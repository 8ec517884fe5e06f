"""gradreg: gradient regularization for PyTorch (Varga, Csiszárik, Zombori, arXiv:1712.09936)."""
from .objective import TASK_LOSSES, Objective, ObjectiveOutput, paper_weight
from .regularizers import (
    REGULARIZERS, ConfidencePenalty, DataGrad, FrobReg, JacReg, OneHot, RandomOneHot, Regularizer,
    SpectReg, couples_batch, get_regularizer, register_regularizer,
)

__version__ = "0.1.0"

__all__ = [
    "Objective", "ObjectiveOutput", "paper_weight", "TASK_LOSSES",
    "Regularizer", "DataGrad", "SpectReg", "FrobReg", "JacReg", "OneHot", "RandomOneHot",
    "ConfidencePenalty", "REGULARIZERS", "register_regularizer", "get_regularizer", "couples_batch",
]
