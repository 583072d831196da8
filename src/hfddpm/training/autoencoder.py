"""Autoencoder training, the first stage of latent diffusion (Rombach et al. 2022, §3.1): an `AutoencoderKL` learns
to reconstruct the training images through its latent space, on the engine every diffusion run uses (resume,
signals, non-finite checks, logs, grids, evaluation, push). The run saves an `AutoencoderPipeline` folder whose
`vae/` a latent diffusion run takes with `--vae`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import PIL.Image
import torch
from diffusers import AutoencoderKL

from ..arguments import option
from ..eval_mode import eval_mode
from ..models.autoencoder_presets import AUTOENCODER_PRESETS, autoencoder_config
from ..models.latent_space import latent_scale
from ..models.unet_presets import check_sample_size
from ..pipelines.pipeline_autoencoder import AutoencoderPipeline
from ..run_folder import run_lock
from ..schedulers.bound_terms import mean_over_pixels
from ..visualize import sample_grid, save_image, to_pil
from .config import ENGINE, MODEL, RunConfig
from .engine import Trainer
from .objectives import LossOutput
from .output_folder import check_output_dir
from .setup import create_accelerator, load_training_images

# Images whose latents set the scaling factor s = 1/std (Rombach et al. use one batch; more makes s steadier).
SCALE_IMAGES = 1024


@dataclass(kw_only=True)
class AutoencoderConfig(RunConfig):
    """An autoencoder training run (`train_autoencoder`): the run's options, the autoencoder and its loss."""

    output_dir: str = option("outputs/autoencoder", "where the run writes everything", group=ENGINE, path="owned")
    autoencoder_preset: Literal[tuple(AUTOENCODER_PRESETS)] = option(
        "grey-28", "AutoencoderKL preset (hfddpm.models.AUTOENCODER_PRESETS)", group=MODEL, defines_run=True
    )
    reconstruction_loss: Literal["l1", "l2"] = option(
        "l1", "|x − x̂| (sharper, Rombach et al.'s) or (x − x̂)²", group=MODEL, defines_run=True
    )
    kl_weight: float = option(
        1e-6,
        "β of KL(q(z|x) ‖ N(0, I)), both terms per pixel: a small β keeps the latent close to deterministic "
        "(Rombach et al. 2022 use 1e-6)",
        interval="[0, inf)",
        group=MODEL,
        defines_run=True,
    )
    learning_rate: float = option(1e-3, interval="(0, inf)", group=ENGINE)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sample_size(
            {**AUTOENCODER_PRESETS[self.autoencoder_preset], "sample_size": self.resolution},
            f"autoencoder preset {self.autoencoder_preset!r} (--resolution)",
        )
        if self.eval_metrics and "bits_per_dim" in self.eval_metrics:
            raise ValueError("--eval_metrics bits_per_dim measures a diffusion model, not an autoencoder: drop it")


class TrainingAutoencoder(AutoencoderKL):
    """`AutoencoderKL` whose forward pass returns the reconstruction from a draw z ~ q(z|x) and q(z|x) itself, so
    that training calls it once, through `forward` (as data-parallel training and autocast need)."""

    def forward(self, sample: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, Any]:
        posterior = self.encode(sample).latent_dist
        return self.decode(posterior.sample(generator)).sample, posterior


@dataclass(eq=False)
class AutoencoderLoss:
    """The first stage's loss (Rombach et al. 2022, appendix G, without the perceptual and adversarial terms): per
    image, z ~ q(z|x) = N(μ(x), diag σ²(x)) by reparameterisation, x̂ = D(z), and

        L = mean over pixels of |x − x̂| (or (x − x̂)²) + β KL(q(z|x) ‖ N(0, I)) / D,

    D the pixels of x, so that β weighs the KL per pixel as the reconstruction is. Class labels, if the batches
    carry them, are ignored. `reference` (a few training images) gives the sample grids and the scaling factor."""

    reconstruction_loss: str
    kl_weight: float
    reference: torch.Tensor
    seed: int = 0

    def __call__(self, model: torch.nn.Module, batch: Any, generator: torch.Generator) -> LossOutput:
        images = (batch[0] if isinstance(batch, (list, tuple)) else batch).float()
        reconstruction, posterior = model(images, generator)
        error = reconstruction.float() - images
        reconstruction_error = mean_over_pixels(error.abs() if self.reconstruction_loss == "l1" else error**2)
        kl = posterior.kl().float() / images[0].numel()
        per_sample = reconstruction_error + self.kl_weight * kl
        logs = {"kl_per_pixel": kl.detach(), "psnr": 10 * torch.log10(4 / mean_over_pixels(error.detach() ** 2))}
        return LossOutput(per_sample.mean(), per_sample.detach(), None, logs)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def pipeline(self, model: torch.nn.Module) -> AutoencoderPipeline:
        """A plain `AutoencoderKL` with `model`'s weights and s = 1/std of the reference images' latents."""
        vae = AutoencoderKL.from_config(model.config).to(model.device)
        vae.load_state_dict(model.state_dict())
        generator = torch.Generator(model.device).manual_seed(self.seed)
        with eval_mode(vae):
            vae.register_to_config(scaling_factor=latent_scale(vae, self.reference.to(vae.device), generator))
        return AutoencoderPipeline(vae=vae)

    def save_grid(self, pipeline: AutoencoderPipeline, path, config: RunConfig) -> PIL.Image.Image:
        """Pairs of rows: reference images above their reconstructions through the encoder's mean."""
        count = max(1, config.num_sample_images // 2)
        originals = self.reference[:count].to(pipeline.vae.device)
        reconstructions = pipeline.reconstruct(originals)
        columns, rows = min(8, count), []
        for start in range(0, count, columns):
            rows += [originals[start : start + columns], reconstructions[start : start + columns]]
        grid = sample_grid(to_pil(torch.cat(rows).cpu()), cols=columns)
        save_image(grid, path)
        return grid


def train_autoencoder(config: AutoencoderConfig) -> int:
    """Train an `AutoencoderKL` preset on `config`'s images and save it as an `AutoencoderPipeline` in
    `config.output_dir`; the exit status (0, or 1 when a push failed)."""
    output_dir = check_output_dir(config)
    with run_lock(output_dir):
        accelerator = create_accelerator(config, output_dir)
        images = load_training_images(config, accelerator)
        shape = {"in_channels": images.preprocessing.channels, "sample_size": config.resolution}
        model = TrainingAutoencoder(**autoencoder_config(config.autoencoder_preset, **shape))
        items = images.__getitems__(list(range(min(len(images), SCALE_IMAGES))))
        reference = torch.stack([item[0] if isinstance(item, tuple) else item for item in items])
        objective = AutoencoderLoss(config.reconstruction_loss, config.kl_weight, reference, config.seed)
        status = Trainer(config, accelerator, objective, model, images).run()
        accelerator.end_training()
    return status
