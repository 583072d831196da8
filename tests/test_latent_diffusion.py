"""Latent diffusion: latents cached once equal the encoder's, a run with --vae leaves a pipeline that decodes its
samples, reloads and samples bit-identically, and resumes exactly; what the latent space rules out is refused. LSGM's
fine-tune estimates the bound without bias, routes its gradients as LSGM does, and resumes exactly."""

import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import diffusers
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hfddpm import DDPMScheduler, HFDDPMPipeline, create_autoencoder, create_unet
from hfddpm.evaluation import evaluate_pipeline
from hfddpm.evaluation.likelihood import bound_scheduler
from hfddpm.models.latent_space import decode
from hfddpm.pipelines import AutoencoderPipeline
from hfddpm.pipelines.loading import load_autoencoder
from hfddpm.training import (
    ConsistencyDistillationConfig,
    LSGMConfig,
    LSGMLoss,
    ProgressiveDistillationConfig,
    TrainingConfig,
    distill_consistency,
    distill_progressive,
    train_lsgm,
    train_unconditional,
)
from hfddpm.training.latent_data import TrainingLatents
from hfddpm.training.lsgm import LatentDiffusionModel
from hfddpm.training.setup import create_accelerator, load_training_images

from .conftest import gaussian_denoiser, linear_gaussian_case, short_run


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    """A random tiny autoencoder saved as train_autoencoder.py saves one, for the digits at 8×8 (2×2 latents)."""
    torch.manual_seed(0)
    vae = create_autoencoder("tiny", in_channels=1, sample_size=8)
    vae.register_to_config(scaling_factor=2.0, shift_factor=0.1)
    folder = tmp_path_factory.mktemp("autoencoder")
    AutoencoderPipeline(vae=vae).save_pretrained(folder)
    return folder


def options(output_dir, autoencoder, **extra) -> dict:
    return short_run(output_dir, vae=str(autoencoder), model_preset="latent-small", num_inference_steps=4, **extra)


def test_cached_latents_are_the_encoders_draws_with_the_items_seeded_noise(autoencoder, tmp_path):
    config = TrainingConfig(**options(tmp_path / "run", autoencoder))
    images = load_training_images(config, create_accelerator(config, tmp_path))
    vae = load_autoencoder(autoencoder)
    latents = TrainingLatents.encode(images, vae, torch.device("cpu"))
    assert latents.shape == (4, 2, 2) and len(latents) == len(images)
    indices = [0, 7, 1499]
    pixels = torch.stack(images.__getitems__(indices))
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
    latents.set_epoch(3)
    for row, index in enumerate(indices):
        noise = np.random.default_rng([0, 3, index]).standard_normal(4 * 2 * 2, dtype=np.float32).reshape(4, 2, 2)
        expected = (posterior.mean[row] + posterior.std[row] * torch.from_numpy(noise) - 0.1) * 2.0
        torch.testing.assert_close(latents[index], expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(latents[0], (latents.set_epoch(4), latents[0])[1])  # a fresh draw every epoch
    again = TrainingLatents.encode(images, vae, torch.device("cpu"))  # encoded again: the same latents
    again.set_epoch(4)
    assert again.fingerprint() == latents.fingerprint() and torch.equal(again[7], latents[7])
    vae.register_to_config(scaling_factor=3.0)  # the same weights draw other latents: another run's data
    assert TrainingLatents.encode(images, vae, torch.device("cpu")).fingerprint() != latents.fingerprint()


@pytest.fixture(scope="module")
def latent_run(autoencoder, tmp_path_factory):
    run = tmp_path_factory.mktemp("latent") / "run"
    assert train_unconditional(TrainingConfig(**options(run, autoencoder))) == 0
    return run


@pytest.mark.slow
def test_a_latent_run_saves_a_pipeline_that_decodes_and_reloads_bit_identically(latent_run):
    pipeline = HFDDPMPipeline.from_pretrained(latent_run)
    assert pipeline.scheduler.config.clip_sample is False  # latents are not confined to [−1, 1]
    draw = {"batch_size": 2, "num_inference_steps": 3}
    latents = pipeline(**draw, generator=torch.manual_seed(0), output_type="latent").images
    images = pipeline(**draw, generator=torch.manual_seed(0), output_type="pt").images
    assert latents.shape == (2, 4, 2, 2) and images.shape == (2, 1, 8, 8)
    with torch.no_grad():
        decoded = (decode(pipeline.vae, latents) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(images, decoded)
    reloaded = HFDDPMPipeline.from_pretrained(latent_run)
    assert torch.equal(reloaded(**draw, generator=torch.manual_seed(0), output_type="pt").images, images)
    with pytest.raises(AttributeError, match="HFDDPMPipeline"):  # no stock pipeline takes latents for images
        diffusers.DiffusionPipeline.from_pretrained(latent_run)


@pytest.mark.slow
def test_a_latent_run_resumes_exactly(latent_run, autoencoder, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(latent_run / "checkpoints", run / "checkpoints")  # what a kill after the step-3 checkpoint leaves
    shutil.copy(latent_run / "training_args.json", run)
    assert train_unconditional(TrainingConfig(**options(run, autoencoder, resume_from_checkpoint="latest"))) == 0
    weights = "unet/diffusion_pytorch_model.safetensors"
    one, two = load_file(run / weights), load_file(latent_run / weights)
    assert all(torch.equal(one[name], two[name]) for name in one)


@pytest.mark.slow
def test_a_latent_teacher_distils_into_latent_students(latent_run, tmp_path):
    engine = short_run(tmp_path / "student")
    config = ProgressiveDistillationConfig(teacher=str(latent_run), teacher_steps=2, **engine)
    assert distill_progressive(config) == 0
    student = HFDDPMPipeline.from_pretrained(tmp_path / "student" / "steps-1")
    assert student.vae is not None and student.config.default_num_inference_steps == 1
    assert student(batch_size=2, output_type="pt").images.shape == (2, 1, 8, 8)
    engine["output_dir"] = str(tmp_path / "consistency")
    assert distill_consistency(ConsistencyDistillationConfig(teacher=str(latent_run), **engine)) == 0
    student = HFDDPMPipeline.from_pretrained(tmp_path / "consistency")
    assert student.vae is not None and student(batch_size=2, output_type="pt").images.shape == (2, 1, 8, 8)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"reverse_variance": "learned_range"}, "decoder term is for 8-bit pixels"),
        ({"random_flip": True}, "uncropped and unflipped"),
    ],
)
def test_what_the_latent_space_rules_out_is_refused_before_training(autoencoder, tmp_path, extra, problem):
    with pytest.raises(ValueError, match=problem):
        TrainingConfig(**options(tmp_path / "run", autoencoder, **extra))


def test_an_autoencoder_for_other_channels_is_refused(autoencoder, tmp_path):
    config = TrainingConfig(**options(tmp_path / "run", autoencoder, channels=3))
    with pytest.raises(ValueError, match="--vae .* encodes 1-channel images, and the data have 3"):
        train_unconditional(config)


def test_an_autoencoder_that_is_not_there_is_refused_before_the_data_load(tmp_path):
    config = TrainingConfig(**options(tmp_path / "run", tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="is not a local folder, and no AutoencoderKL could be loaded"):
        train_unconditional(config)


@pytest.mark.slow
def test_a_latent_pipelines_bits_per_dim_is_the_vae_bound_with_the_diffusion_prior(latent_run):
    pipeline = HFDDPMPipeline.from_pretrained(latent_run)
    report = evaluate_pipeline(
        pipeline, "digits", ["bits_per_dim"], max_images=16, num_timesteps=4, progress_bar=False
    )
    bound = report.details["bits_per_dim"]
    parts = bound["decoder_bits_per_dim"] + bound["entropy_bits_per_dim"] + bound["prior_bits_per_dim"]
    assert report.metrics["bits_per_dim"] == pytest.approx(parts, rel=1e-9) and bound["num_images"] == 16
    assert bound["decoder_scale"] > 0 and "latent prior" in report.summary()


def test_an_autoencoder_with_nan_weights_is_refused(autoencoder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(autoencoder, broken)
    weights = broken / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["decoder.conv_out.bias"][0] = float("nan")
    save_file(tensors, weights)
    with pytest.raises(ValueError, match="vae holds 1 non-finite weights"):
        load_autoencoder(broken)


def test_lsgms_training_bound_estimates_the_exact_linear_gaussian_models_likelihood():
    """LSGM's per-image bound (one E, one importance-sampled t, the decoder's σ fitted to the batch) is unbiased: on
    the linear-Gaussian model of test_likelihood its mean over 8 × 512 estimates is −log P(x) plus the last diffusion
    step's excess, as the evaluated bound's is. Tolerance: 3 standard errors, plus 0.005 bits/dim for the 8-bit
    discretisation (see the evaluated bound's test)."""
    images, autoencoder, exact = linear_gaussian_case()
    scheduler = DDPMScheduler(reverse_variance="fixed_large")
    model = SimpleNamespace(vae=autoencoder, unet=gaussian_denoiser(scheduler, torch.zeros(1, 4, 4), 1.0))
    objective = LSGMLoss(scheduler, "bound", scheduler, {})
    generator = torch.Generator().manual_seed(0)
    estimates = torch.cat([sum(objective.bound(model, images, generator)[0]) for _ in range(8)]).double()
    model_variance = float(scheduler.reverse_log_variance(torch.tensor([0]), torch.tensor([-1])).exp())
    beta = 1 - float(scheduler.alphas_cumprod[0])
    excess = 0.5 * (math.log(model_variance / beta) + beta / model_variance - 1) / math.log(2)
    error = estimates.std().item() / math.sqrt(len(estimates))
    assert abs(estimates.mean().item() - (exact.mean().item() + excess)) < 3 * error + 0.005


@pytest.mark.parametrize("prior_objective", ["simple", "bound"])
def test_lsgm_trains_the_autoencoder_on_the_bound_and_the_unet_as_asked(autoencoder, prior_objective):
    """The bound's gradient reaches encoder and decoder (the encoder's the same in both modes: through z_t too), and
    the UNet only when it trains on the bound (LSGM's w_ll); with "simple" the UNet's gradient is L_simple's (w_un)."""
    scheduler = DDPMScheduler(num_train_timesteps=100, reverse_variance="fixed_small")
    start = HFDDPMPipeline(
        unet=create_unet("latent-small", in_channels=4, sample_size=2),
        scheduler=scheduler,
        vae=load_autoencoder(autoencoder),
    )
    model = LatentDiffusionModel.of(start)
    objective = LSGMLoss(bound_scheduler(scheduler), prior_objective, scheduler, {})
    images = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sum(objective.bound(model, images, torch.Generator().manual_seed(0))[0]).mean().backward()
    reference = LatentDiffusionModel.of(start)  # the same bound with every weight trained on it: the encoder's
    sum(
        LSGMLoss(bound_scheduler(scheduler), "bound", scheduler, {}).bound(
            reference, images, torch.Generator().manual_seed(0)
        )[0]
    ).mean().backward()
    torch.testing.assert_close(model.vae.encoder.conv_in.weight.grad, reference.vae.encoder.conv_in.weight.grad)
    assert (
        model.vae.encoder.conv_in.weight.grad.abs().sum() > 0
        and model.vae.decoder.conv_out.weight.grad.abs().sum() > 0
    )
    assert (model.unet.conv_out.weight.grad is not None) == (prior_objective == "bound")
    model.zero_grad()
    objective(model, images, torch.Generator().manual_seed(0)).loss.backward()
    assert model.unet.conv_out.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_lsgm_fine_tunes_both_networks_of_a_latent_run_and_resumes_exactly(latent_run, tmp_path):
    engine = short_run(tmp_path / "lsgm")
    assert train_lsgm(LSGMConfig(model=str(latent_run), **engine)) == 0
    start, tuned = HFDDPMPipeline.from_pretrained(latent_run), HFDDPMPipeline.from_pretrained(tmp_path / "lsgm")
    for name in ("vae", "unet"):
        before, after = getattr(start, name).state_dict(), getattr(tuned, name).state_dict()
        assert any(not torch.equal(before[key], after[key]) for key in before), f"{name} did not train"
    assert tuned(batch_size=2, output_type="pt", num_inference_steps=3).images.shape == (2, 1, 8, 8)
    assert (
        "LSGM: the bound for the autoencoder, L_simple for the UNet" in (tmp_path / "lsgm" / "README.md").read_text()
    )
    run = tmp_path / "resumed"
    shutil.copytree(tmp_path / "lsgm" / "checkpoints", run / "checkpoints")  # a kill after the step-3 checkpoint
    shutil.copy(tmp_path / "lsgm" / "training_args.json", run)
    resumed = {**engine, "output_dir": str(run), "resume_from_checkpoint": "latest"}
    assert train_lsgm(LSGMConfig(model=str(latent_run), **resumed)) == 0
    for name in ("vae", "unet"):
        weights = f"{name}/diffusion_pytorch_model.safetensors"
        one, two = load_file(run / weights), load_file(tmp_path / "lsgm" / weights)
        assert all(torch.equal(one[key], two[key]) for key in one)


@pytest.mark.slow
def test_lsgm_refuses_mixed_precision_before_the_data_load(latent_run, tmp_path):
    # A process of its own: Accelerate's precision is fixed once per process.
    argv = ["--model", str(latent_run), "--output_dir", str(tmp_path / "run"), "--mixed_precision", "bf16"]
    script = Path(__file__).resolve().parents[1] / "examples" / "train_lsgm.py"
    result = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True)
    assert result.returncode == 2 and "runs in one process in float32" in result.stderr
    assert not (tmp_path / "run").exists()


def test_lsgm_refuses_a_pixel_space_model_before_training(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="has no autoencoder"):
        train_lsgm(LSGMConfig(model=str(checkpoint), output_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
