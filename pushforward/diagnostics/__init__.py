"""Diagnostics: the generic transform test kit, invertibility reports, OOD tests."""

from pushforward.diagnostics.check import TransformCheckError, check_transform
from pushforward.diagnostics.invertibility import (
    InvertibilityReport,
    invertibility_report,
    singular_value_extremes,
)
from pushforward.diagnostics.ood import (
    AnomalyScores,
    TypicalityResult,
    anomaly_scores,
    auroc,
    negative_log_likelihood,
    typicality_test,
    typicality_test_from_nll,
)

__all__ = [
    "check_transform",
    "TransformCheckError",
    "invertibility_report",
    "InvertibilityReport",
    "singular_value_extremes",
    "typicality_test",
    "typicality_test_from_nll",
    "TypicalityResult",
    "anomaly_scores",
    "AnomalyScores",
    "negative_log_likelihood",
    "auroc",
]
