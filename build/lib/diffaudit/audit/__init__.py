"""The audit's statistics and stages: the reproduction count with its hypothesis test."""

from .stats import clopper_pearson, reproduction_test

__all__ = ["clopper_pearson", "reproduction_test"]
