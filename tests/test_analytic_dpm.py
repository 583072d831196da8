"""Analytic-DPM (Bao et al. 2022): measuring Γ_t = E‖ε_θ(x_t, t)‖²/d and storing it in a pipeline's scheduler.

The variance formula is tested with the other reverse variances (test_gaussian_diffusion.py), sampling with it in
test_exact_sampling.py, and `hfddpm analytic-variance` with the command line (test_cli.py).
"""

import math

import diffusers
import pytest
import torch

from hfddpm import DDIMScheduler, DDPMScheduler, GaussianMixtureDenoiser, HFDDPMPipeline
from hfddpm.schedulers.analytic_dpm import estimate_analytic_gamma, fit_analytic_variance

from .conftest import gaussian_denoiser, gaussian_gamma, make_pipeline, tiny_unet


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_gamma_estimate_is_unbiased_on_the_exact_denoiser(prediction_type):
    # For N(0, s² I) data and its exact denoiser Γ_t = (1 − ᾱ_t)/(ᾱ_t s² + 1 − ᾱ_t); a v-predicting model's output
    # is converted to ε̂ first.
    scheduler = DDPMScheduler(num_train_timesteps=100, prediction_type=prediction_type)
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


def test_a_class_conditional_models_gamma_is_that_of_its_unconditional_prediction():
    # Sampling without labels uses ε_θ(x_t, t, ∅), so Γ_t is measured on it: the whole mixture's denoiser.
    scheduler = DDPMScheduler(num_train_timesteps=20)
    means = torch.stack([torch.full((1, 2, 2), -0.5), torch.full((1, 2, 2), 0.5)])
    conditional = GaussianMixtureDenoiser.for_scheduler(scheduler, means, [0.1, 0.2], class_conditional=True)
    mixture = GaussianMixtureDenoiser.for_scheduler(scheduler, means, [0.1, 0.2])
    images = [mixture.sample_data(16, torch.Generator().manual_seed(0))]
    gammas = [
        estimate_analytic_gamma(model, scheduler, images, torch.Generator().manual_seed(1), progress_bar=False)
        for model in (conditional, mixture)
    ]
    assert torch.equal(*gammas)


@pytest.mark.parametrize(
    "stock_class, hfddpm_class",
    [(diffusers.DDPMScheduler, DDPMScheduler), (diffusers.DDIMScheduler, DDIMScheduler)],
    ids=["ddpm", "ddim"],
)
def test_fit_analytic_variance_stores_gamma_in_the_saved_config(tmp_path, stock_class, hfddpm_class):
    # T = 20 training timesteps: one network evaluation per timestep, so T = 1000 costs 50 times as much and checks
    # the same thing (one Γ_t per training timestep).
    pipe = HFDDPMPipeline(unet=tiny_unet(channels=1, sample_size=8), scheduler=stock_class(num_train_timesteps=20))
    pipe.set_progress_bar_config(disable=True)
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fit_analytic_variance(pipe, [images], progress_bar=False)
    scheduler = pipe.scheduler
    assert type(scheduler) is hfddpm_class and scheduler.config.reverse_variance == "analytic"
    assert len(scheduler.config.analytic_gamma) == 20 and all(g > 0 for g in scheduler.config.analytic_gamma)
    pipe.save_pretrained(tmp_path)
    loaded = HFDDPMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.scheduler.config.analytic_gamma == scheduler.config.analytic_gamma
    kwargs = {"batch_size": 2, "num_inference_steps": 4, "output_type": "np"}
    same = [p(generator=torch.manual_seed(0), **kwargs).images for p in (pipe, loaded)]
    assert same[0].shape == (2, 8, 8, 1) and (same[0] == same[1]).all()
    # Stock diffusers loads the folder too, a DDPM scheduler sampling with the nearest choice (β̃).
    stock = stock_class.from_pretrained(tmp_path, subfolder="scheduler")
    assert torch.equal(stock.alphas_cumprod, scheduler.alphas_cumprod)
    assert stock_class is diffusers.DDIMScheduler or stock.config.variance_type == "fixed_small"


def test_fit_analytic_variance_needs_a_ddpm_or_ddim_scheduler():
    with pytest.raises(ValueError, match="Analytic-DPM needs a DDPM or DDIM scheduler, not EulerDiscreteScheduler"):
        fit_analytic_variance(make_pipeline(tiny_unet(), diffusers.EulerDiscreteScheduler()), [])
