"""Diagnostics: the generic transform test kit, invertibility reports, OOD tests."""

from pushforward.diagnostics.check import TransformCheckError, check_transform

__all__ = ["check_transform", "TransformCheckError"]
