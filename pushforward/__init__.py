"""pushforward: normalizing flows in PyTorch, exact to the last digit.

Forward is the generative direction ``z -> x``; every transform returns its per-sample
``log|det|``; a ``Flow`` pushes a base distribution through a transform.
"""

from pushforward import (
    compression,
    continuous,
    diagnostics,
    distributions,
    flows,
    integrations,
    manifolds,
    molecules,
    nn,
    specs,
    transforms,
    video,
)
from pushforward._validation import (
    InputOutsideDomain,
    is_validating,
    set_validation,
    validation,
)
from pushforward.context import ContextStandardization
from pushforward.core import BaseDistribution, Chain, Flow, FlowDistribution, Inverse, Transform
from pushforward.data import load_dataset
from pushforward.distributions import ConditionalDiagonalNormal, DiagonalNormal, StandardNormal
from pushforward.training import History, TrainingDiverged, fit, fit_reverse_kl, load, save

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Transform",
    "Chain",
    "Inverse",
    "Flow",
    "FlowDistribution",
    "BaseDistribution",
    "StandardNormal",
    "DiagonalNormal",
    "ConditionalDiagonalNormal",
    "InputOutsideDomain",
    "set_validation",
    "validation",
    "is_validating",
    "transforms",
    "distributions",
    "diagnostics",
    "flows",
    "nn",
    "specs",
    "data",
    "training",
    "fit",
    "fit_reverse_kl",
    "History",
    "TrainingDiverged",
    "save",
    "load",
    "load_dataset",
    "manifolds",
    "continuous",
    "compression",
    "integrations",
    "ContextStandardization",
    "video",
    "molecules",
]
