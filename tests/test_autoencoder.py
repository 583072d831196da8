"""The first stage of latent diffusion: autoencoder presets, the latent space's scaling, the loss against its closed
form, and a training run that leaves a loadable, measured folder and resumes exactly."""

import json
import shutil

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from hfddpm import AutoencoderPipeline, create_autoencoder, evaluate
from hfddpm.evaluation.reconstruction import psnr
from hfddpm.hub import files_to_publish
from hfddpm.models.latent_space import decode, encode, latent_scale
from hfddpm.training import AutoencoderConfig, AutoencoderLoss, train_autoencoder
from hfddpm.training.autoencoder import TrainingAutoencoder


@pytest.mark.parametrize(
    ("preset", "shape", "latent"), [("grey-28", (1, 28, 28), (4, 7, 7)), ("rgb-32", (3, 32, 32), (4, 8, 8))]
)
def test_presets_map_an_image_to_a_latent_four_times_smaller_per_side_and_back(preset, shape, latent):
    vae = create_autoencoder(preset).eval()
    assert vae.config.sample_size == shape[-1] and vae.config.in_channels == vae.config.out_channels == shape[0]
    images = torch.rand(2, *shape) * 2 - 1
    latents = encode(vae, images)
    assert latents.shape == (2, *latent)
    assert decode(vae, latents).shape == images.shape


def test_the_latent_space_scales_and_shifts_as_diffusers_pipelines_do():
    """z = s·(μ − b) and D(z/s + b) = D(μ): the scaling and shift cancel on the way back."""
    torch.manual_seed(0)
    vae = create_autoencoder("tiny", sample_size=8).eval()
    vae.register_to_config(scaling_factor=0.5, shift_factor=0.25)
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    mean = vae.encode(images).latent_dist.mode()
    torch.testing.assert_close(encode(vae, images), (mean - 0.25) * 0.5)
    torch.testing.assert_close(decode(vae, encode(vae, images)), vae.decode(mean).sample, rtol=1e-5, atol=1e-5)
    # A draw from q(z|x) with a generator: μ + σ ε, reproducible.
    one, two = (encode(vae, images, torch.Generator().manual_seed(1)) for _ in range(2))
    assert torch.equal(one, two) and not torch.allclose(one, encode(vae, images))


def test_the_scaling_factor_gives_the_latents_unit_variance():
    torch.manual_seed(0)
    vae = create_autoencoder("tiny", sample_size=8).eval()
    images = torch.rand(64, 3, 8, 8) * 2 - 1
    scale = latent_scale(vae, images, torch.Generator().manual_seed(0))
    vae.register_to_config(scaling_factor=scale)
    latents = encode(vae, images, torch.Generator().manual_seed(0)).detach()
    assert float(latents.std()) == pytest.approx(1.0, rel=1e-5)


def test_the_loss_is_the_reconstruction_error_plus_beta_times_the_kl_per_pixel():
    """L(β) − L(0) = β KL(q(z|x) ‖ N(0, I))/D, with the KL of diagonal Gaussians in closed form; L(0) with l2 is the
    mean squared error of the reconstruction from the same draw of z."""
    torch.manual_seed(0)
    model = TrainingAutoencoder(**create_autoencoder("tiny", sample_size=8).config)
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    losses = {
        beta: AutoencoderLoss("l2", beta, images)(model, images, torch.Generator().manual_seed(0)).loss.item()
        for beta in (0.0, 0.5)
    }
    with torch.no_grad():
        posterior = model.encode(images).latent_dist
        mean, var = posterior.mean, posterior.var
        kl = 0.5 * (mean**2 + var - 1 - var.log()).sum(dim=(1, 2, 3))
        z = posterior.sample(torch.Generator().manual_seed(0))
        mse = float(((model.decode(z).sample - images) ** 2).mean())
    assert losses[0.5] - losses[0.0] == pytest.approx(0.5 * float(kl.mean()) / images[0].numel(), rel=1e-4)
    assert losses[0.0] == pytest.approx(mse, rel=1e-5)


def test_psnr_of_8_bit_images_is_in_decibels_on_the_unit_scale():
    images = torch.zeros(1, 1, 2, 2)
    off = images + 2 * 0.1  # 0.1 off on the [0, 1] scale: MSE 0.01, PSNR 20 dB
    assert float(psnr(images, off)) == pytest.approx(20.0, rel=1e-6)


def run_options(output_dir, **extra) -> dict:
    return {
        "output_dir": str(output_dir),
        "autoencoder_preset": "tiny",
        "max_train_steps": 6,
        "checkpointing_steps": 3,
        "save_images_steps": 100,
        "num_sample_images": 8,
        "train_batch_size": 16,
        "report_to": "none",
        "eval_every": 6,
        "eval_num_samples": 32,
        **extra,
    }


def vae_weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")


@pytest.mark.slow
def test_a_run_leaves_a_loadable_measured_autoencoder_and_resumes_bit_exactly(tmp_path):
    assert train_autoencoder(AutoencoderConfig(**run_options(tmp_path / "run"))) == 0
    run = tmp_path / "run"
    vae = AutoencoderKL.from_pretrained(run, subfolder="vae")
    pipeline = AutoencoderPipeline.from_pretrained(run)
    assert vae.config.latent_channels == 4 and vae.config.scaling_factor != AutoencoderKL().config.scaling_factor
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    latents = pipeline(images, output_type="latent").images
    torch.testing.assert_close(latents, encode(vae, images))
    assert len(pipeline(images).images) == 2  # PIL reconstructions
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert {"psnr", "fd_digits"} <= set(evaluation["metrics"])
    card = (run / "README.md").read_text()
    assert "AutoencoderKL" in card and "PSNR of the reconstructions" in card and "HFDDPMPipeline" not in card
    assert {"model_index.json", "vae/diffusion_pytorch_model.safetensors"} <= set(files_to_publish(run))
    report = evaluate(run, "digits", max_images=16, num_samples=16, progress_bar=False)  # as `hfddpm evaluate` runs
    assert report.details["psnr"] == {"split": "test", "num_images": 16, "reconstructed": "through the encoder's mean"}
    assert {"psnr", "fd_digits"} <= set(report.metrics) and "bits_per_dim" not in report.metrics

    shutil.copytree(run, tmp_path / "uninterrupted")
    for part in run.iterdir():  # what a kill after the step-3 checkpoint leaves
        if part.name not in ("checkpoints", "training_args.json"):
            shutil.rmtree(part) if part.is_dir() else part.unlink()
    resumed = AutoencoderConfig(**run_options(run, resume_from_checkpoint="latest"))
    assert train_autoencoder(resumed) == 0
    one, two = vae_weights(run), vae_weights(tmp_path / "uninterrupted")
    assert one.keys() == two.keys() and all(torch.equal(one[name], two[name]) for name in one)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"resolution": 30}, "sample_size=30 is not divisible by 4"),  # the decoder would give 32×32 back
        ({"eval_every": 10, "eval_metrics": ["bits_per_dim"]}, "measures a diffusion model, not an autoencoder"),
    ],
)
def test_what_an_autoencoder_cannot_do_is_refused_before_training(tmp_path, extra, problem):
    with pytest.raises(ValueError, match=problem):
        AutoencoderConfig(**run_options(tmp_path / "run", **{"autoencoder_preset": "grey-28", **extra}))
