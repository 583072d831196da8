"""Evaluation: the variational bound over a dataset, sample quality, and `evaluate`, the report of a checkpoint."""

from .likelihood import VariationalBound, plot_bound_terms, variational_bound
from .report import METRICS, EvaluationReport, evaluate, evaluate_pipeline

__all__ = [
    "METRICS",
    "EvaluationReport",
    "VariationalBound",
    "evaluate",
    "evaluate_pipeline",
    "plot_bound_terms",
    "variational_bound",
]
