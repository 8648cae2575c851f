"""Training: maximum likelihood, flow matching, reverse KL; checkpoints without pickle; DDP."""

from pushforward.training import distributed
from pushforward.training.checkpoint import load, load_checkpoint, save
from pushforward.training.compiled import (
    compile_log_prob,
    compile_train_step,
    compiler_available,
)
from pushforward.training.fit import History, TrainingDiverged, fit, fit_reverse_kl, regularization
from pushforward.training.objectives import FlowMatching, MaximumLikelihood, Objective

__all__ = [
    "fit",
    "fit_reverse_kl",
    "History",
    "TrainingDiverged",
    "regularization",
    "Objective",
    "MaximumLikelihood",
    "FlowMatching",
    "save",
    "load",
    "load_checkpoint",
    "distributed",
    "compile_log_prob",
    "compile_train_step",
    "compiler_available",
]
