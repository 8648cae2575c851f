"""Continuous normalizing flows: neural-ODE transforms, trace estimators, RNODE, augmentation.

``CNF(field, features, ...)`` is a ``Transform`` whose forward integrates
``dz/dt = field(t, z, context)`` from 0 to ``t1`` together with ``∫ tr(∂f/∂z) dt``;
``exact_trace`` / ``hutchinson_trace`` compute the divergence; ``TimeMLP`` is the default
time-conditioned field; ``AugmentedFlow`` turns a flow on ``[x, a]`` into a model of ``x``
(importance-weighted bound); ``CondOTPath`` / ``VPPath`` are the conditional probability paths
flow matching trains on (``pushforward.fit(..., objective="flow-matching")``). Only
``solvers.py`` talks to torchdiffeq.
"""

from pushforward.continuous.augment import AugmentedFlow
from pushforward.continuous.cnf import CNF, TRACES
from pushforward.continuous.fields import ConcatSquash, TimeMLP
from pushforward.continuous.paths import CondOTPath, ProbabilityPath, VPPath
from pushforward.continuous.solvers import METHODS, default_tolerances, solve
from pushforward.continuous.traces import NOISES, exact_trace, hutchinson_trace, sample_noise

__all__ = [
    "CNF",
    "AugmentedFlow",
    "TimeMLP",
    "ConcatSquash",
    "ProbabilityPath",
    "CondOTPath",
    "VPPath",
    "exact_trace",
    "hutchinson_trace",
    "sample_noise",
    "solve",
    "default_tolerances",
    "METHODS",
    "NOISES",
    "TRACES",
]
