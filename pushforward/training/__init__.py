"""Training: maximum likelihood, flow matching, reverse KL; checkpoints without pickle; DDP.

The rooms: ``fit`` (the data loop) and ``reverse_kl`` (the sampling loop) share one ``stepper``
(finite check, clipping, stepping, divergence); ``objectives`` / ``losses`` hold one small class
per loss; ``schedule`` the learning rate; ``state`` the ``TrainState`` and its checkpoint;
``sources`` the batches; ``history`` what was measured.
"""

from pushforward.training import distributed
from pushforward.training.checkpoint import load, load_checkpoint, save
from pushforward.training.compiled import (
    compile_log_prob,
    compile_train_step,
    compiler_available,
)
from pushforward.training.dequantization import VariationalDequantization, dequantized_log_prob
from pushforward.training.fit import evaluate_nll, fit
from pushforward.training.history import History, TrainingDiverged, function_evaluations
from pushforward.training.losses import DequantizedLikelihood, ReverseKL
from pushforward.training.objectives import (
    FlowMatching,
    MaximumLikelihood,
    Objective,
    regularization,
)
from pushforward.training.reverse_kl import fit_reverse_kl
from pushforward.training.schedule import Schedule
from pushforward.training.sources import DataSource
from pushforward.training.state import TrainState
from pushforward.training.stepper import Stepper

__all__ = [
    "fit",
    "fit_reverse_kl",
    "History",
    "TrainingDiverged",
    "regularization",
    "function_evaluations",
    "evaluate_nll",
    "Objective",
    "MaximumLikelihood",
    "FlowMatching",
    "DequantizedLikelihood",
    "ReverseKL",
    "VariationalDequantization",
    "dequantized_log_prob",
    "Schedule",
    "Stepper",
    "TrainState",
    "DataSource",
    "save",
    "load",
    "load_checkpoint",
    "distributed",
    "compile_log_prob",
    "compile_train_step",
    "compiler_available",
]
