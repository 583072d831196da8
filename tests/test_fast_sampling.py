"""Few-step sampling: the quadratic timestep spacing and predictor–corrector sampling with a Langevin corrector."""

import math

import diffusers
import pytest
import torch

from hfddpm import DDIMScheduler, DDPMScheduler
from hfddpm.evaluation.frechet import FeatureStatistics, frechet_distance
from hfddpm.schedulers.langevin import langevin_corrector_step

from .conftest import gaussian_denoiser, make_pipeline, tiny_unet
from .test_exact_sampling import DATA_STD, data_mean


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler])
def test_quadratic_spacing_is_the_ddim_papers(scheduler_class):
    # Song et al. 2021, App. D.2: τ_i = ⌊(i √(0.8 T)/(S − 1))²⌋, i = 0 … S − 1; the first squares, which round to the
    # same timestep, are moved up by one so that every step is distinct.
    scheduler = scheduler_class(timestep_spacing="quadratic")
    scheduler.set_timesteps(50)
    timesteps = scheduler.timesteps.tolist()
    assert len(timesteps) == 50 and timesteps[0] == 800 and timesteps[-1] == 0
    assert all(a > b for a, b in zip(timesteps, timesteps[1:], strict=False))
    formula = [math.floor((i * math.sqrt(800) / 49) ** 2) for i in range(50)][::-1]
    assert timesteps[:45] == formula[:45]  # from i = 5 on the squares are distinct
    assert scheduler.previous_timestep(timesteps[10]) == timesteps[11]
    scheduler.set_timesteps(1000)  # past 0.8 T the bumps carry the schedule up to T − 1
    assert scheduler.timesteps.tolist() == list(range(999, -1, -1))
    with pytest.raises(ValueError, match=r"num_inference_steps must be in \[1, 1000\], got 1001"):
        scheduler.set_timesteps(1001)


def test_langevin_step_is_algorithm_5_of_song_et_al():
    generator = torch.Generator().manual_seed(0)
    sample, epsilon = torch.randn(2, 1, 3, 3, generator=generator), torch.randn(2, 1, 3, 3, generator=generator)
    alpha_bar, alpha, snr = torch.tensor(0.4), torch.tensor(0.99), 0.16
    result = langevin_corrector_step(sample, epsilon, alpha_bar, alpha, snr, torch.Generator().manual_seed(1))
    z = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    score = -epsilon / math.sqrt(0.6)
    # The norms are batch means, as in the reference code: one step size for the batch.
    step = 2 * 0.99 * (snr * (z[0].norm() + z[1].norm()) / (score[0].norm() + score[1].norm())) ** 2
    torch.testing.assert_close(result, sample + step * score + (2 * step).sqrt() * z)


def test_langevin_with_the_exact_score_keeps_the_marginal_up_to_its_step_size_bias():
    # q_t of N(μ, s² I) data is N(√ᾱ_t μ, V I), V = ᾱ_t s² + 1 − ᾱ_t. Unadjusted Langevin with the exact score and
    # step h keeps the mean and has stationary variance V/(1 − h/(2V)); the SNR rule makes h = 2 α r² V (‖s‖² =
    # d/V on average), so with r = 0.16 the variance settles 2.6 % above V (r = 0.5 would give +33 %).
    scheduler = DDPMScheduler()
    mean, t = data_mean(), 300
    denoiser = gaussian_denoiser(scheduler, mean, DATA_STD)
    alpha_bar = scheduler.alphas_cumprod[t].double()
    variance = alpha_bar * DATA_STD**2 + 1 - alpha_bar
    generator = torch.Generator().manual_seed(0)
    x = alpha_bar.sqrt() * mean + variance.sqrt() * torch.randn(
        2000, *mean.shape, generator=generator, dtype=torch.float64
    )
    alpha = 1 - scheduler.betas[t].double()
    for _ in range(20):
        x = langevin_corrector_step(x, denoiser(x, t).sample, alpha_bar, alpha, 0.16, generator)
    expected = variance / (1 - alpha * 0.16**2)
    assert x.var(0).mean().item() == pytest.approx(expected.item(), rel=0.015)
    assert (x.mean(0) - alpha_bar.sqrt() * mean).abs().max().item() < 4.5 * math.sqrt(variance / 2000)


def _distance_to_data(images: torch.Tensor) -> float:
    """Fréchet distance in pixels between samples and the exact N(μ, s² I) of the data."""
    mean = data_mean().flatten()
    exact = FeatureStatistics(mean, DATA_STD**2 * torch.eye(len(mean), dtype=torch.float64), count=10**9)
    return frechet_distance(FeatureStatistics.of((images.double() * 2 - 1).flatten(1)), exact)


def test_predictor_corrector_beats_ancestral_sampling_at_equal_predictor_steps():
    scheduler = DDPMScheduler(timestep_spacing="linspace")
    pipe = make_pipeline(gaussian_denoiser(scheduler, data_mean(), DATA_STD), scheduler)
    kwargs = {"batch_size": 2000, "num_inference_steps": 10, "output_type": "pt"}
    ancestral = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    corrected = pipe(generator=torch.Generator().manual_seed(0), corrector_steps=2, **kwargs).images
    plain, pc = _distance_to_data(ancestral), _distance_to_data(corrected)
    assert pc < 0.7 * plain, (plain, pc)


def test_corrector_needs_an_hfddpm_scheduler():
    pipe = make_pipeline(tiny_unet(), diffusers.DDPMScheduler())
    with pytest.raises(ValueError, match="needs hfddpm's DDPMScheduler or DDIMScheduler"):
        pipe(num_inference_steps=2, corrector_steps=1)
