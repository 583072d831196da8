import logging
import math
import shutil
from types import SimpleNamespace

import pytest
import torch
from diffusers.configuration_utils import FrozenDict
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils import logging as diffusers_logging

from hfddpm import DDPMScheduler, GaussianMixtureDenoiser, HFDDPMPipeline, create_unet
from hfddpm.model_cards import model_card
from hfddpm.schedulers.bound_terms import discretized_gaussian_log_likelihood

diffusers_logging.disable_progress_bar()
# One thread: the tests' networks are tiny, and two threads contending with another job's slow them down tenfold.
torch.set_num_threads(1)


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


def scheduler_loop(scheduler, num_inference_steps, variance_channels=None, seed=0, **step_kwargs) -> list:
    """Denoise `dummy_sample_deter` with `dummy_model` as diffusers' scheduler tests do (the training chain when
    `num_inference_steps` is None); a constant `variance_channels` value is appended as a learned-variance output.
    Returns each step's (prev_sample, pred_original_sample)."""
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps)
    sample, generator, outputs = dummy_sample_deter(), torch.Generator().manual_seed(seed), []
    for t in scheduler.timesteps:
        output = dummy_model(sample, t)
        if variance_channels is not None:
            output = torch.cat([output, torch.full_like(sample, variance_channels)], dim=1)
        step = scheduler.step(output, t, sample, generator=generator, **step_kwargs)
        outputs.append((step.prev_sample, step.pred_original_sample))
        sample = step.prev_sample
    return outputs


def gaussian_gamma(scheduler, data_std: float) -> torch.Tensor:
    """Analytic-DPM's Γ_t = E‖ε̂(x_t, t)‖²/d for N(μ, s² I) data and its exact denoiser, (1 − ᾱ_t)/(ᾱ_t s² + 1 − ᾱ_t)
    (Bao et al. 2022, eq. 8, in closed form): float64, one per training timestep."""
    alpha_bar = scheduler.alphas_cumprod.double()
    return (1 - alpha_bar) / (alpha_bar * data_std**2 + 1 - alpha_bar)


@pytest.fixture(scope="session")
def training_runner():
    """A process that imported examples/train_unconditional.py and forks a child per run (tests/training_runner.py)."""
    from .training_runner import TrainingRunner

    runner = TrainingRunner()
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A tiny 8×8 grey pipeline folder with T = 120 training timesteps: bits/dim's default of 100 terms is then a
    stratified estimate."""
    folder = tmp_path_factory.mktemp("checkpoint") / "tiny"
    HFDDPMPipeline(unet=tiny_unet(channels=1), scheduler=DDPMScheduler(num_train_timesteps=120)).save_pretrained(
        folder
    )
    return folder


@pytest.fixture
def run_with_card(checkpoint, tmp_path):
    """A copy of the checkpoint with the model card a training run writes beside it."""
    folder = shutil.copytree(checkpoint, tmp_path / "run")
    (folder / "README.md").write_text(str(model_card(folder, "run")))
    return folder


class LinearGaussianAutoencoder(torch.nn.Module):
    """The autoencoder of the linear-Gaussian model p(E) = N(0, λ²), p(x|E) = N(E/a, σ²), pixel by pixel: its encoder
    gives the exact posterior q(E|x) = N(m, τ²), τ⁻² = λ⁻² + (aσ)⁻², m = τ² x/(aσ²), its decoder D(E) = E/a; called
    as diffusers' `AutoencoderKL` is, with scaling factor 1/λ so that the latents the diffusion sees are N(0, 1)."""

    def __init__(self, a: float, lam: float, sigma: float) -> None:
        super().__init__()
        self.a, self.lam, self.sigma = a, lam, sigma
        self.precision = lam**-2 + (a * sigma) ** -2
        self.config = FrozenDict(scaling_factor=1 / lam, shift_factor=None)
        self.dtype, self.device = torch.float64, torch.device("cpu")

    def encode(self, x):
        mean = x / (self.a * self.sigma**2) / self.precision
        logvar = torch.full_like(x, -math.log(self.precision))
        return SimpleNamespace(latent_dist=DiagonalGaussianDistribution(torch.cat([mean, logvar], 1)))

    def decode(self, latents):
        return SimpleNamespace(sample=latents / self.a)


def linear_gaussian_case(count: int = 512):
    """8-bit images of the linear-Gaussian model (a = 8, λ = 2, σ = 0.05: x ~ N(0, v), v = λ²/a² + σ²), its
    autoencoder, and each image's exact −log P(x) in bits/dim: the mass of its bin under N(0, v)."""
    autoencoder = LinearGaussianAutoencoder(8.0, 2.0, 0.05)
    v = (autoencoder.lam / autoencoder.a) ** 2 + autoencoder.sigma**2
    noise = torch.randn(count, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))  # not the
    images = ((noise * math.sqrt(v)).clamp(-1, 1) + 1) * 127.5  # bound's seed 0, whose draws would be these
    images = images.round() / 127.5 - 1
    log_scale = torch.full_like(images, 0.5 * math.log(v))
    exact = -discretized_gaussian_log_likelihood(images, torch.zeros_like(images), log_scale).flatten(1).sum(1)
    return images, autoencoder, exact / (16 * math.log(2))


def short_run(output_dir, **extra) -> dict:
    """The engine's options for a 6-step run with a checkpoint at step 3 (a resume test copies it) and tiny grids."""
    return {
        "output_dir": str(output_dir),
        "max_train_steps": 6,
        "checkpointing_steps": 3,
        "save_images_steps": 100,
        "num_sample_images": 4,
        "train_batch_size": 16,
        "report_to": "none",
        **extra,
    }
