"""Evaluation: the variational bound and its terms, and `evaluate`, the report of a checkpoint."""

from .likelihood import (
    Decoder,
    VariationalBound,
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    normal_kl,
    plot_bound_terms,
    prior_term,
    variational_bound,
    vlb_terms,
)
from .report import METRICS, EvaluationReport, evaluate, evaluate_pipeline

__all__ = [
    "METRICS",
    "EvaluationReport",
    "evaluate",
    "evaluate_pipeline",
    "Decoder",
    "VariationalBound",
    "discretized_gaussian_log_likelihood",
    "gaussian_log_likelihood",
    "normal_kl",
    "plot_bound_terms",
    "prior_term",
    "variational_bound",
    "vlb_terms",
]
