"""Evaluation: the variational bound and its terms."""

from .likelihood import discretized_gaussian_log_likelihood, normal_kl, vlb_terms

__all__ = ["discretized_gaussian_log_likelihood", "normal_kl", "vlb_terms"]
