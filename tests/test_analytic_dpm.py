"""Analytic-DPM (Bao et al. 2022): Γ_t, the optimal reverse variance, and sampling with it, against closed forms.

For x_0 ~ N(μ, s² I) and the exact noise predictor, Γ_t = E‖ε̂‖²/d = β̄_t/(ᾱ_t s² + β̄_t) with β̄ = 1 − ᾱ, and the
true reverse conditional q(x_s|x_t) is the Gaussian whose mean and variance Analytic-DPM computes: sampling with
it is exact at any number of steps.
"""

import math
import subprocess
import sys

import diffusers
import pytest
import torch

from hfddpm import DDIMScheduler, DDPMScheduler, HFDDPMPipeline
from hfddpm.schedulers.analytic_dpm import estimate_analytic_gamma, fit_analytic_variance

from .conftest import gaussian_denoiser, make_pipeline, tiny_unet
from .test_exact_sampling import DATA_STD, data_mean, sample_pipeline


def gaussian_gamma(scheduler, data_std: float) -> torch.Tensor:
    alpha_bar = scheduler.alphas_cumprod.double()
    return (1 - alpha_bar) / (alpha_bar * data_std**2 + 1 - alpha_bar)


def analytic(scheduler_class, data_std: float, **config):
    gamma = gaussian_gamma(scheduler_class(), data_std).tolist()
    return scheduler_class(reverse_variance="analytic", analytic_gamma=gamma, **config)


@pytest.mark.parametrize("data_std", [0.0, 0.15, 0.5, 1.0])
def test_analytic_variance_lies_between_the_fixed_variances_and_meets_them_at_the_derivation_cases(data_std):
    # Bao et al. 2022, Thm. 2: β̃_t ≤ σ*²_t, and for data with covariance ≤ I also σ*²_t ≤ β_t; σ*² is β̃_t for
    # one-point data (s = 0) and β_t for N(0, I) data (s = 1), the two cases of Ho et al.'s derivation.
    scheduler = analytic(DDPMScheduler, data_std)
    t = torch.arange(1, 1000)
    optimal = scheduler.reverse_log_variance(t, t - 1).double().exp()
    small = scheduler.reverse_log_variance(t, t - 1, reverse_variance="fixed_small").double().exp()
    large = scheduler.reverse_log_variance(t, t - 1, reverse_variance="fixed_large").double().exp()
    # log σ² is rounded to float32, and ᾱ is stored in float32: 1e-5 relative slack.
    assert (optimal >= small * (1 - 1e-5)).all() and (optimal <= large * (1 + 1e-5)).all()
    if data_std == 0.0:
        torch.testing.assert_close(optimal, small, rtol=1e-5, atol=0)
    if data_std == 1.0:
        torch.testing.assert_close(optimal, large, rtol=1e-4, atol=0)
    if 0 < data_std < 1:
        assert (optimal > small * 1.001).any() and (optimal < large * 0.999).any()


def test_gamma_estimate_is_unbiased_on_the_exact_denoiser():
    scheduler = DDPMScheduler(num_train_timesteps=100)
    denoiser = gaussian_denoiser(scheduler, torch.zeros(1, 4, 4), 0.5)
    images = denoiser.sample_data(400, torch.Generator().manual_seed(0))
    estimates = torch.stack(
        [
            estimate_analytic_gamma(
                denoiser, scheduler, [images], generator=torch.Generator().manual_seed(seed), progress_bar=False
            )
            for seed in range(3)
        ]
    )
    expected = gaussian_gamma(scheduler, 0.5)
    # ‖ε̂‖²/d of one image is a scaled χ²_16 / 16 around Γ_t: relative s.d. √(2/16), over 1200 draws √(2/16/1200).
    relative_error = (estimates.mean(0) / expected - 1).abs()
    assert relative_error.max().item() < 4.5 * math.sqrt(2 / 16 / 1200)
    assert relative_error.mean().item() < 1.5 * math.sqrt(2 / 16 / 1200)


@pytest.mark.parametrize(
    "scheduler_class, eta", [(DDPMScheduler, 0.0), (DDIMScheduler, 0.0), (DDIMScheduler, 0.5)], ids=str
)
def test_analytic_sampling_is_exact_for_gaussian_data_at_five_steps(scheduler_class, eta):
    # With the true Γ_t the reverse kernel is q(x_s|x_t) itself: 5 steps give N(μ, s² I), where β̃ falls short.
    # "linspace" ends at t = 0, so the last step (which returns the mean x̂_0, as every sampler does) loses only
    # Var(x_0|x_{t=0}) ≈ β_0 = 1e-4 of the 0.0225; "trailing" would end at t = 199 and return a blurred mean.
    mean = data_mean()
    samples = sample_pipeline(analytic(scheduler_class, DATA_STD, timestep_spacing="linspace"), 5, eta=eta)
    variance = samples.var(0).mean().item()
    assert variance == pytest.approx(DATA_STD**2, rel=0.03)  # pooled over 64 pixels: 0.6 % standard error
    assert (samples.mean(0) - mean).abs().max().item() < 4.5 * DATA_STD / math.sqrt(len(samples))
    fixed = sample_pipeline(scheduler_class(timestep_spacing="linspace"), 5, eta=eta).var(0).mean().item()
    assert fixed < 0.8 * DATA_STD**2


def test_analytic_ddim_with_eta_one_is_analytic_ddpm():
    gamma = gaussian_gamma(DDPMScheduler(), 0.3).tolist()
    sample = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    output = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    steps = {}
    for cls in (DDPMScheduler, DDIMScheduler):
        scheduler = cls(
            reverse_variance="analytic", analytic_gamma=gamma, timestep_spacing="trailing", clip_sample=False
        )
        scheduler.set_timesteps(10)
        kwargs = {"eta": 1.0} if cls is DDIMScheduler else {}
        generator = torch.Generator().manual_seed(2)
        steps[cls] = scheduler.step(output, scheduler.timesteps[3], sample, generator=generator, **kwargs).prev_sample
    torch.testing.assert_close(steps[DDIMScheduler], steps[DDPMScheduler], rtol=1e-5, atol=1e-6)


def test_fit_analytic_variance_stores_gamma_in_the_saved_config(tmp_path):
    # T = 20 training timesteps: one network evaluation per timestep, so T = 1000 costs 50 times as much and checks
    # the same thing (one Γ_t per training timestep).
    pipe = HFDDPMPipeline(
        unet=tiny_unet(channels=1, sample_size=8), scheduler=diffusers.DDPMScheduler(num_train_timesteps=20)
    )
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fit_analytic_variance(pipe, [images], progress_bar=False)
    scheduler = pipe.scheduler
    assert type(scheduler) is DDPMScheduler and scheduler.config.reverse_variance == "analytic"
    assert len(scheduler.config.analytic_gamma) == 20 and all(g > 0 for g in scheduler.config.analytic_gamma)
    pipe.save_pretrained(tmp_path)
    loaded = HFDDPMPipeline.from_pretrained(tmp_path)
    assert loaded.scheduler.config.analytic_gamma == scheduler.config.analytic_gamma
    images = loaded(batch_size=2, num_inference_steps=4, generator=torch.manual_seed(0), output_type="np").images
    assert images.shape == (2, 8, 8, 1)
    # Stock diffusers loads the folder too, sampling with its nearest choice (β̃).
    stock = diffusers.DDPMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert stock.config.variance_type == "fixed_small"


def test_analytic_needs_gamma_of_the_right_length():
    with pytest.raises(ValueError, match="reverse_variance='analytic' needs analytic_gamma"):
        DDPMScheduler(reverse_variance="analytic")
    with pytest.raises(ValueError, match=r"one Γ_t per training timestep \(1000\), got 3"):
        DDIMScheduler(reverse_variance="analytic", analytic_gamma=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="Analytic-DPM needs a DDPM or DDIM scheduler"):
        fit_analytic_variance(make_pipeline(tiny_unet(), diffusers.EulerDiscreteScheduler()), [])


@pytest.mark.slow  # a fresh interpreter imports torch and diffusers: seconds before the command starts
def test_command_line_stores_gamma_in_the_checkpoint(tmp_path):
    scheduler = DDIMScheduler(num_train_timesteps=20)
    HFDDPMPipeline(unet=tiny_unet(channels=1, sample_size=8), scheduler=scheduler).save_pretrained(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "hfddpm", "analytic-variance", str(tmp_path), "--num_images", "8", "--in_place"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "now samples with reverse_variance='analytic'" in result.stdout
    loaded = HFDDPMPipeline.from_pretrained(tmp_path).scheduler
    assert type(loaded) is DDIMScheduler and loaded.config.reverse_variance == "analytic"
    assert len(loaded.config.analytic_gamma) == 20 and not (tmp_path / ".scheduler.partial").exists()
