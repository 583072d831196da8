"""LSGM: a latent diffusion model's autoencoder and prior trained together on its bound (Vahdat et al. 2021), from a
two-stage model (an autoencoder trained first, then a UNet on its frozen latents: a `--vae` run).

Per image, the bound on −log p(x) is E_q[−log p(x|E)] − H(q(E|x)) + E_q[−log p_θ(E)], whose last term, the
cross-entropy of q(E|x) under the diffusion prior, is bounded by the diffusion's bound on the latent z, L_T + Σ_t L_t
(less d log s, the change of variables), each L_t a weighted denoising error of the UNet at z_t (the likelihood
weighting, w_ll). The encoder and decoder minimise the whole bound, t importance-sampled as LSGM derives for variance
reduction; the UNet minimises L_simple on the encoder's latents (w_un, LSGM's choice for sample quality) or the same
bound (w_ll, for likelihood): `--prior_objective`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, ConfigMixin, ModelMixin, SchedulerMixin, UNet2DModel
from diffusers.configuration_utils import register_to_config

from ..arguments import option
from ..conditioning import num_classes
from ..evaluation.likelihood import (
    DECODER_SCALES,
    LATENT_BOUND_PARTS,
    bound_scheduler,
    decoder_nll_by_scale,
    latent_bound_terms,
)
from ..models.latent_space import image_size, shift
from ..pipelines import HFDDPMPipeline
from ..records import pipeline_fingerprint
from ..run_folder import run_lock
from ..schedulers import DDPMScheduler
from ..schedulers.bound_terms import Decoder, constant_terms, normal_data_mean_terms, prior_term, vlb_terms
from .config import DATA, ENGINE, RunConfig
from .engine import Trainer
from .objectives import DenoisingLoss, LossOutput
from .output_folder import check_output_dir
from .setup import create_accelerator, load_training_images
from .teacher import recorded_options
from .timestep_sampling import ImportanceTimestepSampler

LSGM = "LSGM"


@dataclass(kw_only=True)
class LSGMConfig(RunConfig):
    """An LSGM fine-tune (`train_lsgm`): the engine's options, the latent model to start from and what trains its
    prior. The resolution and channels are the model's, and so is the data when its folder records it."""

    model: str = option(
        help="latent HFDDPMPipeline folder or Hub repository (trained with --vae) to fine-tune",
        group=LSGM,
        path="input",
        defines_run=True,
    )
    prior_objective: Literal["simple", "bound"] = option(
        "simple",
        "what trains the UNet: L_simple on the encoder's latents (LSGM's w_un, for samples) or the bound, as the "
        "autoencoder (w_ll, for likelihood)",
        group=LSGM,
        defines_run=True,
    )
    resolution: int | None = option(None, "the model's", group=DATA)
    learning_rate: float = option(
        1e-5,
        "a fine-tune's: at 1e-4 the encoder's noise outgrows what the decoder absorbs and the bound rises again",
        interval="(0, inf)",
        group=ENGINE,
    )


class LatentDiffusionModel(ModelMixin, ConfigMixin):
    """An autoencoder and the UNet of its latents as one module, the one model the engine trains and averages."""

    @register_to_config
    def __init__(self, *, vae_config: dict, unet_config: dict) -> None:  # by name: see `of`
        super().__init__()
        self.vae = AutoencoderKL.from_config(vae_config)
        self.unet = UNet2DModel.from_config(unet_config)

    @classmethod
    def of(cls, pipeline: HFDDPMPipeline) -> LatentDiffusionModel:
        """A float32 copy of a latent pipeline's autoencoder and UNet."""
        # register_to_config records positional arguments as defaults, which from_config would then drop.
        model = cls(vae_config=dict(pipeline.vae.config), unet_config=dict(pipeline.unet.config))
        model.vae.load_state_dict(pipeline.vae.state_dict())
        model.unet.load_state_dict(pipeline.unet.state_dict())
        return model.float()


@dataclass(eq=False)
class LSGMLoss:
    """LSGM's objective (Vahdat et al. 2021) in discrete time: the bound of each image (`bound`) for the autoencoder,
    plus, with `prior_objective` "simple", L_simple of the UNet on the encoder's latents with their gradient stopped
    (`DenoisingLoss`: plain L_simple, whatever weighting the starting run used), the UNet then taking no gradient
    from the bound."""

    scheduler: DDPMScheduler  # the model's noise schedule and reverse variance
    prior_objective: str
    inference_scheduler: SchedulerMixin  # what the saved pipeline samples with: the starting model's
    identity: dict[str, Any]  # what a resume must match besides the options and data: the starting weights

    def __post_init__(self) -> None:
        self.timestep_sampler = ImportanceTimestepSampler(normal_data_mean_terms(self.scheduler))
        self.constant_terms = constant_terms(self.scheduler).float() / math.log(2.0)  # bits/dim
        self.prior_loss = DenoisingLoss(self.scheduler)

    def __call__(self, model: torch.nn.Module, batch: Any, generator: torch.Generator) -> LossOutput:
        parts, latents = self.bound(model, batch.float(), generator)
        bound = sum(parts)
        logs = {f"{name}_bits_per_dim": part.detach() for name, part in zip(LATENT_BOUND_PARTS, parts, strict=True)}
        loss = bound.mean()
        if self.prior_objective == "simple":
            prior = self.prior_loss(model.unet, latents.detach(), generator)
            loss, logs["prior_loss"] = loss + prior.loss, prior.per_sample
        return LossOutput(loss, bound.detach(), None, {"bound_bits_per_dim": bound.detach(), **logs})

    def bound(
        self, model: LatentDiffusionModel, images: torch.Tensor, generator: torch.Generator
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The parts of each image's bound in bits per pixel dimension (`latent_bound_terms`) and its z, from one
        E ~ q(E|x) and one t. The decoder's σ is the batch's maximum-likelihood one (as evaluation fits it,
        `decoder_scale`); given σ the estimate is unbiased: the diffusion's bound on z is L_T plus Σ_t L_t split as
        `constant_terms` (summed exactly) and the rest at one t ~ p_t ∝ `normal_data_mean_terms`, weighted by
        1/(T p_t): LSGM's importance sampling, which cuts the estimate's spread 12× on Fashion-MNIST."""
        vae, unet = model.vae, model.unet
        posterior = vae.encode(images).latent_dist
        latents = posterior.sample(generator)
        reconstruction = vae.decode(latents).sample.float()
        decoder_scale = DECODER_SCALES[decoder_nll_by_scale(images, reconstruction.detach()).argmin()]
        z = (latents.float() - shift(vae)) * vae.config.scaling_factor
        timesteps, weights = self.timestep_sampler.sample(len(z), generator)
        timesteps, weights = timesteps.to(z.device), weights.to(z.device)
        noise = torch.randn(z.shape, generator=generator, device=generator.device).to(z.device)
        noisy = self.scheduler.add_noise(z, noise, timesteps)
        if self.prior_objective == "bound":
            output = unet(noisy, timesteps).sample
        else:  # the bound's gradient reaches the encoder through z_t, not the UNet's weights
            frozen = {name: parameter.detach() for name, parameter in unet.named_parameters()}
            output = torch.func.functional_call(unet, frozen, (noisy, timesteps)).sample
        constants = self.constant_terms.to(z.device)
        terms = (
            vlb_terms(self.scheduler, output.float(), z, noisy, timesteps, Decoder.CONTINUOUS) - constants[timesteps]
        )
        prior = len(constants) * weights * terms + constants.sum() + prior_term(self.scheduler, z)
        parts = latent_bound_terms(
            images, reconstruction, posterior.logvar.float(), prior, decoder_scale, vae.config.scaling_factor
        )
        return parts, z

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def pipeline(self, model: LatentDiffusionModel) -> HFDDPMPipeline:
        return HFDDPMPipeline(unet=model.unet, scheduler=self.inference_scheduler, vae=model.vae)


def load_latent_model(config: LSGMConfig) -> tuple[HFDDPMPipeline, LSGMConfig]:
    """The model to fine-tune, an unconditional latent pipeline, and `config` completed from it: its images'
    resolution and channels, and its training data unless flags name some."""
    pipeline = HFDDPMPipeline.from_pretrained(config.model)
    if pipeline.vae is None:
        raise ValueError(
            f"--model {config.model} has no autoencoder (vae/): LSGM fine-tunes a model trained with --vae"
        )
    if num_classes(pipeline.unet) is not None:
        raise ValueError(f"--model {config.model} is class-conditional; LSGM fine-tuning takes an unconditional one")
    channels, size = pipeline.vae.config.in_channels, image_size(pipeline.vae, pipeline.unet.config.sample_size)
    data = recorded_options(config, "model", size, channels)
    return pipeline, replace(config, resolution=size, channels=channels, **data)


def train_lsgm(config: LSGMConfig) -> int:
    """Fine-tune `config.model`'s autoencoder and UNet together (`LSGMLoss`) on its images and save the EMA weights as
    a latent `HFDDPMPipeline` in `config.output_dir`; the exit status (0, or 1 when a push failed). One process:
    the objective calls the autoencoder and the UNet apart, which data-parallel training would not synchronise nor
    mixed precision autocast."""
    start, config = load_latent_model(config)
    output_dir = check_output_dir(config)
    with run_lock(output_dir):
        accelerator = create_accelerator(config, output_dir)
        if accelerator.num_processes > 1 or accelerator.mixed_precision != "no":
            raise ValueError(
                "LSGM fine-tuning runs in one process in float32: launch it without --num_processes or torchrun, "
                "with --mixed_precision no"
            )
        images = load_training_images(config, accelerator)
        scheduler = bound_scheduler(start.scheduler)
        identity = {"model_weights": pipeline_fingerprint(config.model)}
        objective = LSGMLoss(scheduler, config.prior_objective, start.scheduler, identity)
        model = LatentDiffusionModel.of(start).train()
        status = Trainer(config, accelerator, objective, model, images).run()
        accelerator.end_training()
    return status
