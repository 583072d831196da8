"""The Fréchet distance between two sets of features, and a cache of the reference sets' statistics.

FD = ‖μ_1 − μ_2‖² + Tr(Σ_1 + Σ_2 − 2 (Σ_1^½ Σ_2 Σ_1^½)^½) is the squared 2-Wasserstein distance between the
Gaussians fitted to the two sets (Heusel et al. 2017, eq. 6); with Inception features it is FID, with DINOv2
features FD_DINOv2 (Stein et al. 2023). It is biased upwards at small N: two draws of the same distribution of
N samples each in d dimensions score about Tr Σ · 2/N, the variance of the two means, plus a covariance term.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import durable


@dataclass
class FeatureStatistics:
    """Mean, covariance (unbiased, 1/(N − 1)) and count of a set of features, in float64."""

    mean: torch.Tensor
    covariance: torch.Tensor
    count: int

    @classmethod
    def of(cls, features: torch.Tensor) -> FeatureStatistics:
        """Statistics of features of shape (N, d), N ≥ 2."""
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"need features of shape (N ≥ 2, d), got {tuple(features.shape)}")
        features = features.detach().to("cpu", torch.float64)
        if not torch.isfinite(features).all():
            raise ValueError("features hold NaN or infinity: the images they come from are not finite")
        count, dimension = features.shape
        return cls(features.mean(0), torch.cov(features.T).reshape(dimension, dimension), count)

    def save(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        """Write to a safetensors file atomically (a temporary file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"mean": self.mean, "covariance": self.covariance, "count": torch.tensor(self.count)}
        with durable.replacing(path) as temporary:
            save_file(tensors, temporary, metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStatistics:
        tensors = load_file(path)
        return cls(tensors["mean"], tensors["covariance"], int(tensors["count"]))


def frechet_distance(first: FeatureStatistics, second: FeatureStatistics) -> float:
    """FD between the Gaussians of two feature sets (module docstring), computed in float64.

    Tr((Σ_1 Σ_2)^½) is taken as Σ √λ over the eigenvalues λ of the symmetric Σ_1^½ Σ_2 Σ_1^½, which has the same
    spectrum as Σ_1 Σ_2 and, unlike it, no complex round-off.
    """
    if first.mean.shape != second.mean.shape:
        raise ValueError(f"feature dimensions differ: {tuple(first.mean.shape)} and {tuple(second.mean.shape)}")
    eigenvalues, eigenvectors = torch.linalg.eigh(first.covariance.double())
    root = (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T  # Σ_1^½, eigenvalues clipped at 0
    product = root @ second.covariance.double() @ root
    trace_sqrt = torch.linalg.eigvalsh((product + product.T) / 2).clamp(min=0).sqrt().sum()
    difference = first.mean.double() - second.mean.double()
    trace = first.covariance.double().trace() + second.covariance.double().trace()
    return float(difference @ difference + trace - 2 * trace_sqrt)


def statistics_cache_dir() -> Path:
    """Where reference statistics are cached: $HFDDPM_CACHE, else ~/.cache/hfddpm (under $XDG_CACHE_HOME)."""
    if "HFDDPM_CACHE" in os.environ:
        return Path(os.environ["HFDDPM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hfddpm"


def cached_statistics(
    key: dict, compute: Callable[[], FeatureStatistics], cache_dir: str | os.PathLike | None = None
) -> FeatureStatistics:
    """The statistics `compute()` returns, cached in a file named by a hash of `key` (dataset, split, image size,
    feature extractor, …: everything they depend on). The key is stored in the file's metadata."""
    key_json = json.dumps(key, sort_keys=True)
    digest = hashlib.sha256(key_json.encode()).hexdigest()[:16]
    path = Path(cache_dir or statistics_cache_dir()) / "reference_statistics" / f"{digest}.safetensors"
    if path.is_file():
        return FeatureStatistics.load(path)
    statistics = compute()
    statistics.save(path, metadata={"key": key_json})
    return statistics
