"""Continuous time: the schedules and SDEs against their closed forms, the continuous-time bound of Gaussian data,
the probability-flow ODE likelihood of the exact mixture denoiser, and training with a learned schedule."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from hfddpm import DDIMScheduler, DDPMScheduler, GaussianMixtureDenoiser
from hfddpm.evaluation.continuous_likelihood import (
    continuous_bound,
    epsilon_model,
    ode_likelihood,
    ode_log_density,
)
from hfddpm.schedulers.continuous_time import (
    LearnedLogSNRSchedule,
    LinearLogSNRSchedule,
    ScoreSDESchedule,
    TableSchedule,
    diffusion_loss,
)

from .conftest import short_run, tiny_unet

SDES = ("vp", "subvp", "ve")


def times(count=101):
    return torch.linspace(0, 1, count, dtype=torch.float64)


@pytest.mark.parametrize("sde", SDES)
def test_each_sde_has_the_marginal_its_drift_and_diffusion_give(sde):
    # The moments of dx = f x ds + g dw from x_0 obey d log a/ds = f and d b²/ds = 2 f b² + g²: Song et al.'s f and
    # g² against the closed-form a_s, b_s, differentiated by autograd.
    schedule = ScoreSDESchedule(sde=sde)
    s = schedule.sde_time(times()).requires_grad_(True)
    log_scale, log_std = schedule.log_scale_and_std(s)
    (scale_rate,) = torch.autograd.grad(log_scale.sum(), s, retain_graph=True)
    (variance_rate,) = torch.autograd.grad(torch.exp(2 * log_std).sum(), s)
    drift, diffusion = schedule.drift_diffusion(s.detach())
    torch.testing.assert_close(scale_rate, drift)
    torch.testing.assert_close(variance_rate, 2 * drift * torch.exp(2 * log_std.detach()) + diffusion)


@pytest.mark.parametrize("sde", SDES)
def test_the_likelihood_weighting_of_each_sde_is_the_log_snr_rate(sde):
    # Song et al. (2021b)'s λ = g² on the score is g²/b² on ε, which VDM writes γ'(t): the same for every SDE.
    schedule = ScoreSDESchedule(sde=sde)
    _, gamma_derivative = schedule.gamma_and_derivative(times())
    s = schedule.sde_time(times())
    _, diffusion = schedule.drift_diffusion(s)
    _, log_std = schedule.log_scale_and_std(s)
    ds_dt = 1 - schedule.config.s_min
    torch.testing.assert_close(gamma_derivative.detach(), diffusion / torch.exp(2 * log_std) * ds_dt)


@pytest.mark.parametrize("steps", [1000, 4000])
def test_the_vp_sde_is_the_limit_of_ddpm_linear_schedule(steps):
    # DDPM's β_i = β(s_i)/T at s_i = (i + 1)/T: ∏(1 − β_i) → exp(−∫β) with an error O(1/T) in log ᾱ, at the t_i of
    # the table (s_min = 1/T puts t_i = i/(T − 1) on s_i).
    discrete = DDPMScheduler(num_train_timesteps=steps, beta_start=0.1 / steps, beta_end=20 / steps)
    schedule = ScoreSDESchedule(sde="vp", s_min=1 / steps)
    continuous = torch.sigmoid(-schedule(torch.linspace(0, 1, steps, dtype=torch.float64)))
    log_error = (continuous.log() - torch.cumprod(1 - discrete.betas.double(), 0).log()).abs().max()
    # log(1 − β) = −β − β²/2 − …: the products miss ½ Σ β_i² = (1/2T) ∫ β² ds ≈ 66.7/T (67.7/T measured).
    assert log_error < 70 / steps


def test_a_table_schedule_is_exact_at_its_knots_and_on_a_linear_log_snr_table():
    linear = LinearLogSNRSchedule()
    scheduler = DDIMScheduler(trained_betas=linear.discrete_betas(1000))
    table = TableSchedule.of_scheduler(scheduler)
    t = torch.rand(500, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(table(t), linear(t), rtol=0, atol=1e-9)  # the spline of a line is the line
    _, derivative = table.gamma_and_derivative(t)
    torch.testing.assert_close(derivative, torch.full_like(t, 18.3), rtol=0, atol=1e-6)


def test_a_table_schedule_follows_a_curved_schedule_between_its_knots():
    vp = ScoreSDESchedule(sde="vp")
    table = TableSchedule.of_scheduler(DDIMScheduler(trained_betas=vp.discrete_betas(1000)))
    t = torch.rand(500, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # Catmull–Rom's error is O(h³) with h = 1/999: 0.046 in the first interval, where γ ≈ log s and s doubles,
    # 3·10⁻⁵ beyond t = 0.01 (measured).
    torch.testing.assert_close(table(t), vp(t), rtol=0, atol=0.05)
    torch.testing.assert_close(table(t[t > 0.01]), vp(t[t > 0.01]), rtol=0, atol=5e-5)


def test_a_learned_schedule_stays_increasing_between_its_learned_end_points():
    torch.manual_seed(0)
    schedule = LearnedLogSNRSchedule(hidden_size=64)
    torch.testing.assert_close(schedule(times()), LinearLogSNRSchedule()(times()), rtol=0, atol=0.02)  # starts linear
    with torch.no_grad():  # any parameters: the weights enter as |W|
        for parameter in schedule.parameters():
            parameter.normal_(std=3.0)
        schedule.gamma_0.fill_(-9.0), schedule.gamma_1.fill_(7.0)
    gamma, derivative = schedule.gamma_and_derivative(times(10001))
    assert (derivative > 0).all()
    assert gamma[0].item() == pytest.approx(-9.0) and gamma[-1].item() == pytest.approx(7.0)
    assert (gamma >= -9.0 - 1e-5).all() and (gamma <= 7.0 + 1e-5).all()


def test_inverse_finds_the_time_of_a_log_snr():
    schedule = ScoreSDESchedule(sde="subvp")
    t = torch.rand(100, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(schedule.inverse(schedule(t)), t, rtol=0, atol=1e-12)


def mixture(scheduler, std=0.3):
    means = torch.tensor([[[[0.5, -0.5], [0.2, 0.1]]], [[[-0.4, 0.3], [-0.2, 0.6]]]], dtype=torch.float64)
    return GaussianMixtureDenoiser.for_scheduler(scheduler, means, [std, 0.2], [0.6, 0.4])


def mixture_log_density(model, gamma, points):
    """log q_t(z) of the mixture smoothed at log-SNR −γ: Σ w_k N(z; α μ_k, α² s_k² + σ²)."""
    alpha_sq, sigma_sq = torch.sigmoid(-gamma), torch.sigmoid(gamma)
    log_components = []
    for mean, std, log_weight in zip(model.component_means, model.component_stds, model.log_weights, strict=True):
        variance = alpha_sq * std**2 + sigma_sq
        distance = ((points - alpha_sq.sqrt() * mean) ** 2).flatten(1).sum(1)
        dims = points[0].numel()
        log_components.append(log_weight - 0.5 * distance / variance - 0.5 * dims * torch.log(2 * math.pi * variance))
    return torch.logsumexp(torch.stack(log_components), 0)


def test_the_ode_likelihood_of_the_exact_mixture_denoiser_is_the_mixture_density():
    # The cosine schedule ends at ᾱ ≈ 1e-9, so N(0, I) is q_1 to 1e-8 nats; what remains is RK45's tolerance.
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    model = mixture(scheduler)
    schedule = TableSchedule.of_scheduler(scheduler)
    points = model.sample_data(6, torch.Generator().manual_seed(0))
    log_density, _ = ode_log_density(epsilon_model(model, 1000, 1), schedule, points, rtol=1e-7, atol=1e-7)
    expected = mixture_log_density(model, schedule(torch.zeros((), dtype=torch.float64)), points)
    torch.testing.assert_close(log_density, expected, rtol=0, atol=2e-4)


def test_hutchinson_probes_estimate_the_exact_divergence_without_bias():
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    model = mixture(scheduler)
    schedule = TableSchedule.of_scheduler(scheduler)
    point = model.sample_data(1, torch.Generator().manual_seed(1)).expand(64, -1, -1, -1)
    probes = torch.randn(point.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    epsilon = epsilon_model(model, 1000, 1)
    estimates, _ = ode_log_density(epsilon, schedule, point, probes)
    exact, _ = ode_log_density(epsilon, schedule, point[:1])
    assert abs(estimates.mean() - exact) < 4 * estimates.std() / 8  # 4 standard errors of 64 probes
    assert estimates.std() > 0


def test_the_continuous_bound_of_gaussian_data_is_its_closed_form():
    # One component N(μ, s² I) with its exact denoiser: E‖ε − ε̂‖² = D α² s²/(α² s² + σ²), so the diffusion term is
    # ½ D ∫ s²/(s² + e^γ) dγ = ½ D [γ − log(s² + e^γ)] from γ_0 to γ_1.
    std = 0.2
    linear = LinearLogSNRSchedule()
    scheduler = DDIMScheduler(trained_betas=linear.discrete_betas(1000))
    means = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    model = GaussianMixtureDenoiser.for_scheduler(scheduler, means, [std], [1.0])
    images = model.sample_data(400, torch.Generator().manual_seed(0))  # within [−1, 1]: 5 standard deviations
    bound = continuous_bound(model, scheduler, [images], num_times=20, progress_bar=False)
    ends = torch.tensor([-13.3, 5.0], dtype=torch.float64)
    antiderivative = ends - torch.log(std**2 + ends.exp())
    expected = 0.5 * 4 * (antiderivative[1] - antiderivative[0]) / (4 * math.log(2))
    assert bound.diffusion_bits_per_dim == pytest.approx(expected.item(), abs=4 * bound.standard_error)


def tiny_model(schedule_name):
    from hfddpm.training.continuous import ContinuousTimeModel

    torch.manual_seed(0)
    return ContinuousTimeModel.of(tiny_unet(), schedule_name)


def digits_batch(count=8):
    levels = torch.randint(0, 256, (count, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    return levels / 127.5 - 1


def test_a_learned_schedule_takes_the_bounds_gradient_at_its_ends_and_the_variances_in_its_shape(monkeypatch):
    # VDM, §5.2: the shape's parameters η follow ∂E[L_diff²]/∂η (L_diff in bits/dim), the end points and the
    # network ∂E[L]/∂θ.
    from hfddpm.training import continuous

    model, images = tiny_model("learned"), digits_batch()
    with torch.no_grad():
        model.noise_schedule.l3.weight.normal_(std=3.0)  # a curved shape, so that η matters
    output = continuous.ContinuousTimeLoss(1000, "vlb")(model, images, torch.Generator().manual_seed(1))
    output.loss.backward()
    routed = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    model.zero_grad()
    terms = []
    monkeypatch.setattr(continuous, "diffusion_loss", lambda *args: terms.append(diffusion_loss(*args)) or terms[-1])
    reference = continuous.ContinuousTimeLoss(1000, "vlb")
    reference.learned_gamma = lambda schedule, t: schedule.gamma_and_derivative(t)  # no routing: plain autograd
    plain = reference(model, images, torch.Generator().manual_seed(1))
    torch.testing.assert_close(plain.loss, output.loss)
    parameters = dict(model.named_parameters())
    shape = [name for name in parameters if name.startswith("noise_schedule.l")]
    diffusion_bits = terms[0] / (64 * math.log(2))
    second_moment = torch.autograd.grad(
        (diffusion_bits**2).mean(), [parameters[name] for name in shape], retain_graph=True
    )
    plain.loss.backward()
    # The schedule's network runs in float32 and its normalisation cancels most of γ̃: agreement to 0.5 % of the
    # largest entry (the end points' and the network's gradients, away from it, agree to float32's rounding).
    scale = max(gradient.abs().max().item() for gradient in second_moment)
    for name, gradient in zip(shape, second_moment, strict=True):
        torch.testing.assert_close(routed[name], gradient.float(), rtol=0, atol=5e-3 * scale, msg=name)
    for name, parameter in parameters.items():
        if name not in shape:
            torch.testing.assert_close(routed[name], parameter.grad, msg=name)


@pytest.fixture(scope="module")
def continuous_run(tmp_path_factory):
    from hfddpm.training import TrainingConfig, train_unconditional

    run = tmp_path_factory.mktemp("continuous") / "run"
    assert train_unconditional(TrainingConfig(**continuous_options(run))) == 0
    return run


def continuous_options(run, **extra):
    options = {"continuous_time": "learned", "loss_type": "vlb", "fourier_features": True, "model_preset": "tiny"}
    return short_run(run, num_inference_steps=4, **options, **extra)


@pytest.mark.slow
def test_a_continuous_time_run_is_a_stock_pipeline_of_its_learned_table_and_resumes_exactly(continuous_run, tmp_path):
    import diffusers
    from safetensors.torch import load_file

    from hfddpm import HFDDPMPipeline
    from hfddpm.training import TrainingConfig, train_unconditional

    pipeline = HFDDPMPipeline.from_pretrained(continuous_run)
    stock = diffusers.DDIMPipeline.from_pretrained(continuous_run)  # names hfddpm's FourierFeaturesUNet, installed
    for steps in (1, 7, 1000):  # any N up to the table's T
        assert pipeline(batch_size=2, num_inference_steps=steps, output_type="pt").images.shape == (2, 1, 8, 8)
    draw = {"batch_size": 2, "num_inference_steps": 5, "output_type": "np", "use_clipped_model_output": False}
    ours = pipeline(**draw, generator=torch.manual_seed(0)).images  # stock's step, which re-derives no ε̂
    theirs = stock(**draw, generator=torch.manual_seed(0)).images
    assert abs(ours - theirs).max() < 1e-5
    state = load_file(continuous_run / "checkpoints" / "checkpoint-3" / "model.safetensors")
    learned = LearnedLogSNRSchedule()
    learned.load_state_dict({k.removeprefix("noise_schedule."): v for k, v in state.items() if "noise_schedule" in k})
    table = TableSchedule.of_scheduler(pipeline.scheduler)  # the saved table is the trained (EMA) schedule's
    assert learned.gamma_0.item() != -13.3 and table(torch.zeros((), dtype=torch.float64)).item() != -13.3
    assert (table.knots.diff() > 0).all()
    run = tmp_path / "resumed"
    shutil.copytree(continuous_run / "checkpoints", run / "checkpoints")  # what a kill after the step-3 checkpoint
    shutil.copy(continuous_run / "training_args.json", run)
    assert train_unconditional(TrainingConfig(**continuous_options(run, resume_from_checkpoint="latest"))) == 0
    weights = "unet/diffusion_pytorch_model.safetensors"
    one, two = load_file(run / weights), load_file(continuous_run / weights)
    assert all(torch.equal(one[name], two[name]) for name in one)
    assert (
        json.loads((run / "scheduler/scheduler_config.json").read_text())["trained_betas"]
        == json.loads((continuous_run / "scheduler/scheduler_config.json").read_text())["trained_betas"]
    )


@pytest.mark.slow
def test_evaluate_measures_the_ode_likelihood_and_the_continuous_bound_of_a_checkpoint(continuous_run):
    from hfddpm import evaluate

    report = evaluate(
        continuous_run,
        metrics=["nll_ode", "bits_per_dim_continuous"],
        max_images=8,
        num_timesteps=4,
        progress_bar=False,
    )
    for metric in ("nll_ode", "bits_per_dim_continuous"):
        assert math.isfinite(report.metrics[metric]) and report.details[metric]["num_images"] == 8
    assert report.details["nll_ode"]["function_evaluations"] > 10


def test_dequantization_keeps_the_ode_likelihood_an_average_over_the_bins():
    # With a denoiser of N(0, I) data the model density is N(0, I) at every t, so the ODE's −log p(v) is
    # ½ ‖v‖² + (D/2) log 2π for the dequantized v of each image: its mean over u is the closed form in bits/dim.
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    model = GaussianMixtureDenoiser.for_scheduler(scheduler, torch.zeros(1, 1, 2, 2), [1.0])
    images = torch.full((50, 1, 2, 2), 2 * 200 / 255 - 1)  # level 200 of 255
    result = ode_likelihood(model, scheduler, [images], num_probes=2, progress_bar=False)
    bin_low, bin_high = (199.5 / 127.5) - 1, (200.5 / 127.5) - 1  # the level's bin, 2/255 wide
    mean_square = (bin_high**3 - bin_low**3) / (3 * (bin_high - bin_low))  # E v² for v ~ U[bin]
    expected = (0.5 * mean_square + 0.5 * math.log(2 * math.pi)) / math.log(2) + math.log2(127.5)
    assert result.bits_per_dim == pytest.approx(expected, abs=4 * result.standard_error + 1e-3)


@pytest.mark.parametrize("gamma_0", [-13.3, -6.0, 0.0])
def test_the_discrete_decoder_sums_the_levels_near_z_as_all_256_would(gamma_0):
    from hfddpm.schedulers.continuous_time import discrete_decoder_nll

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 1, 8, 8), generator=generator).double() / 127.5 - 1
    noise = torch.randn(images.shape, generator=generator, dtype=torch.float64)
    gamma = torch.tensor(gamma_0, dtype=torch.float64)
    alpha, sigma = torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()
    z = (alpha * images + sigma * noise).flatten(1)
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    log_probabilities = torch.log_softmax(-((z.unsqueeze(-1) - alpha * levels) ** 2) / (2 * sigma**2), -1)
    index = ((images.flatten(1) + 1) * 127.5).round().long().unsqueeze(-1)
    expected = -log_probabilities.gather(-1, index).squeeze(-1).sum(1)
    torch.testing.assert_close(discrete_decoder_nll(images, noise, gamma), expected, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("sampler", ["euler_maruyama", "probability_flow"])
def test_the_score_sde_samplers_draw_gaussian_data_with_its_exact_denoiser(sampler):
    # Data N(0.3, 0.5²) per pixel and its exact ε̂: the reverse SDE and the ODE both end at the data's law, up to the
    # steps' O(Δt) error and 4000 draws' sampling error (standard error 0.008 on the mean, 0.006 on the std).
    from hfddpm import HFDDPMPipeline, ScoreSDEScheduler

    scheduler = ScoreSDEScheduler(sampler=sampler)
    table = DDPMScheduler()
    model = GaussianMixtureDenoiser.for_scheduler(table, torch.full((1, 1, 2, 2), 0.3), [0.5])
    pipeline = HFDDPMPipeline(unet=model, scheduler=scheduler)
    samples = pipeline(batch_size=1000, num_inference_steps=200, generator=torch.manual_seed(0), output_type="latent")
    values = samples.images.flatten().double()
    assert values.mean().item() == pytest.approx(0.3, abs=0.03)
    assert values.std().item() == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError, match=r"num_inference_steps .*got 0"):  # no steps: noise
        pipeline(num_inference_steps=0)


def test_the_adaptive_ode_sampler_draws_gaussian_data_with_its_exact_denoiser():
    from hfddpm import HFDDPMPipeline
    from hfddpm.evaluation.continuous_likelihood import sample_probability_flow

    model = GaussianMixtureDenoiser.for_scheduler(DDPMScheduler(), torch.full((1, 1, 2, 2), 0.3), [0.5])
    pipeline = HFDDPMPipeline(unet=model, scheduler=DDPMScheduler())
    samples, evaluations = sample_probability_flow(pipeline, 1000, torch.Generator().manual_seed(0))
    assert samples.mean().item() == pytest.approx(0.3, abs=0.03)  # as the fixed-step samplers above
    assert samples.std().item() == pytest.approx(0.5, abs=0.03)
    assert 10 < evaluations < 500


@pytest.mark.slow
def test_a_continuous_time_teacher_distils_into_a_student(continuous_run, tmp_path):
    from hfddpm import HFDDPMPipeline
    from hfddpm.training import ProgressiveDistillationConfig, distill_progressive

    engine = short_run(tmp_path / "student")
    assert (
        distill_progressive(ProgressiveDistillationConfig(teacher=str(continuous_run), teacher_steps=2, **engine)) == 0
    )
    student = HFDDPMPipeline.from_pretrained(tmp_path / "student" / "steps-1")
    assert student.config.default_num_inference_steps == 1
    assert student(batch_size=2, output_type="pt").images.shape == (2, 1, 8, 8)


@pytest.mark.slow
def test_two_processes_in_bfloat16_train_a_learned_schedule_with_identical_replicas(tmp_path):
    # The objective calls the wrapped model (data parallelism's gradient sync, autocast) and evaluates the schedule
    # apart in float64; the engine refuses replicas whose parameters differ at the end, the schedule's included.
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    options = ["--continuous_time", "learned", "--loss_type", "vlb", "--fourier_features", "--model_preset", "tiny"]
    options += ["--output_dir", str(tmp_path / "ddp"), "--max_train_steps", "3", "--train_batch_size", "8"]
    options += ["--num_sample_images", "4", "--report_to", "none", "--mixed_precision", "bf16"]
    result = subprocess.run(
        [*launcher, "examples/train_unconditional.py", *options],
        capture_output=True,
        text=True,
        env={**os.environ, "ACCELERATE_USE_CPU": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    log = [json.loads(line) for line in (tmp_path / "ddp" / "logs" / "train.jsonl").open()]
    assert any(entry.get("num_processes") == 2 and "replica_checksum" in entry for entry in log)
    bounds = [entry["vlb_bits_per_dim"] for entry in log if "vlb_bits_per_dim" in entry]
    assert bounds and all(math.isfinite(bound) for bound in bounds)
