import logging

import pytest
import torch
from diffusers.utils import logging as diffusers_logging

from hfddpm import GaussianMixtureDenoiser, HFDDPMPipeline, create_unet

diffusers_logging.disable_progress_bar()


@pytest.fixture(autouse=True)
def _quiet_diffusers():
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(logging.ERROR)
    yield
    diffusers_logging.set_verbosity(level)


def tiny_unet(channels: int = 1, learned_variance: bool = False, sample_size: int = 8, seed: int = 0):
    """A 0.2M-parameter UNet2DModel, fixed by `seed`."""
    torch.manual_seed(seed)
    return create_unet("tiny", learned_variance=learned_variance, in_channels=channels, sample_size=sample_size)


def make_pipeline(unet, scheduler) -> HFDDPMPipeline:
    pipe = HFDDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gaussian_denoiser(scheduler, mean: torch.Tensor, std: float) -> GaussianMixtureDenoiser:
    """Exact denoiser of N(mean, std² I) for `scheduler` (a one-component mixture)."""
    return GaussianMixtureDenoiser.for_scheduler(scheduler, mean.unsqueeze(0), [std])


def dummy_model(sample: torch.Tensor, t) -> torch.Tensor:
    """diffusers' scheduler-test model: x·t/(t+1)."""
    t = torch.as_tensor(t, dtype=sample.dtype)
    return sample * t / (t + 1)


def dummy_sample_deter() -> torch.Tensor:
    """diffusers' deterministic scheduler-test sample, shape (4, 3, 8, 8) in [0, 1)."""
    n = 4 * 3 * 8 * 8
    return (torch.arange(n) / n).reshape(3, 8, 8, 4).permute(3, 0, 1, 2)


@pytest.fixture(scope="session")
def training_runner():
    """A process that imported examples/train_unconditional.py and forks a child per run (tests/training_runner.py)."""
    from .training_runner import TrainingRunner

    runner = TrainingRunner()
    yield runner
    runner.close()
