"""Training objectives: what the engine (`hfddpm.training.engine.Trainer`) minimises, each one class from a batch to
a loss that owns everything of it — noise schedule, weighting, timestep sampler. `DenoisingLoss` is DDPM's; the
distillation objectives are in `hfddpm.training.progressive` and `hfddpm.training.consistency`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from diffusers import AutoencoderKL

from ..conditioning import call_network
from ..pipelines import HFDDPMPipeline
from ..schedulers import DDIMScheduler, DDPMScheduler
from ..schedulers.bound_terms import Decoder, mean_over_pixels, vlb_terms
from .timestep_sampling import LossSecondMomentSampler, UniformTimestepSampler

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .config import TrainingConfig


@dataclass
class LossOutput:
    loss: torch.Tensor  # the scalar to minimise
    per_sample: torch.Tensor  # each sample's unweighted loss, detached (what a loss-aware timestep sampler learns)
    timesteps: torch.Tensor | None  # each sample's t (None: the objective has none)
    logs: dict[str, torch.Tensor] = field(default_factory=dict)  # per-sample values, averaged over processes in logs


class Objective(Protocol):
    """What the engine asks of an objective. Optional: `observe(accelerator, output)`, called after every batch on
    every process; `after_update(model)`, after every applied optimizer update; `save_grid(pipeline, path, config)`,
    in place of `artefacts.save_sample_grid`, for a pipeline that does not sample."""

    def __call__(self, model: torch.nn.Module, batch: Any, generator: torch.Generator) -> LossOutput:
        """The loss of one batch (no backward pass), all its randomness drawn from `generator`."""

    def state_dict(self) -> dict[str, Any]:
        """The objective's own state, which checkpoints save (`load_state_dict` restores it)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def pipeline(self, unet: torch.nn.Module) -> HFDDPMPipeline:
        """The pipeline that samples from `unet` (sample grids, evaluation, the saved model)."""


@dataclass(eq=False)
class DenoisingLoss:
    """DDPM's objective (Ho et al. 2020, Algorithm 1), with the losses of Improved DDPM and min-SNR weighting.

    Per sample: t from the timestep sampler (uniform, or p_t ∝ √E[L_t²] with weight 1/(T p_t): Nichol & Dhariwal
    2021, eq. 18), ε ~ N(0, I), x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (eq. 4) in float32 whatever the mixed precision, and
    the network's output compared with what it learns to predict — ε, x_0 or v (`training_target`):

    - ``simple``: L_simple = ‖target − prediction‖² over pixels (eq. 14), with `snr_gamma` weighted by min-SNR-γ
      (Hang et al. 2023, eq. 9): min(SNR_t, γ)/SNR_t for ε, min(SNR_t, γ)/(SNR_t + 1) for v, min(SNR_t, γ) for x_0;
    - ``hybrid``: L_simple + λ T·L_t with the mean's gradient stopped in the bound term, which so trains the learned
      variance only (Nichol & Dhariwal 2021, §3.1); T·L_t estimates the whole bound Σ_t L_t;
    - ``vlb``: T·L_t alone, training mean and variance (best with importance-sampled t).

    Class-conditional when `label_names` are given (batches are then pairs of images and class ids): each label
    becomes "no label" with probability `class_dropout_prob` (Ho & Salimans 2022, Algorithm 1), so the network learns
    ε_θ(x_t, t, c) and ε_θ(x_t, t, ∅) at once, as classifier-free guidance needs.
    """

    scheduler: DDPMScheduler
    loss_type: str = "simple"
    snr_gamma: float | None = None
    vlb_weight: float = 1e-3
    timestep_sampler: UniformTimestepSampler | None = None
    label_names: list[str] | None = None
    class_dropout_prob: float = 0.0
    inference_scheduler: str = "ddim"
    decoder: str = Decoder.DISCRETIZED
    vae: AutoencoderKL | None = None  # of a latent diffusion model: the pipeline decodes with it

    def __post_init__(self) -> None:
        if self.timestep_sampler is None:
            self.timestep_sampler = UniformTimestepSampler(self.scheduler.config.num_train_timesteps)

    @classmethod
    def from_config(
        cls, config: TrainingConfig, label_names: list[str] | None = None, vae: AutoencoderKL | None = None
    ) -> DenoisingLoss:
        """The objective a training configuration describes, class-conditional on `label_names` (the data's), in
        the latent space of `vae` when given (x̂_0 is then not clipped: latents are not confined to [−1, 1])."""
        schedule = ("num_train_timesteps", "beta_schedule", "prediction_type", "reverse_variance")
        scheduler = DDPMScheduler(**{name: getattr(config, name) for name in schedule}, clip_sample=vae is None)
        sampler_class = LossSecondMomentSampler if config.timestep_sampling == "loss_second_moment" else None
        return cls(
            scheduler,
            config.loss_type,
            config.snr_gamma,
            config.vlb_weight,
            sampler_class and sampler_class(config.num_train_timesteps),
            label_names if config.class_conditional else None,
            config.class_dropout_prob or 0.0,
            config.inference_scheduler,
            vae=vae,
        )

    def __call__(self, model: torch.nn.Module, batch: Any, generator: torch.Generator) -> LossOutput:
        images, labels = batch if self.label_names is not None else (batch, None)
        if labels is not None:
            labels = drop_labels(labels, len(self.label_names), self.class_dropout_prob, generator)
        original = images.float()
        timesteps, weights = self.timestep_sampler.sample(len(original), generator)
        timesteps, weights = timesteps.to(original.device), weights.to(original.device)
        noise = torch.randn(original.shape, generator=generator, device=generator.device).to(original.device)
        noisy = self.scheduler.add_noise(original, noise, timesteps)
        output = call_network(model, noisy, timesteps, labels).float()
        prediction, variance = self.scheduler.split_model_output(output, noisy)
        mse = mean_over_pixels((prediction - self.scheduler.training_target(original, noise, timesteps)) ** 2)
        bound_weight = self.scheduler.config.num_train_timesteps
        logs = {}
        if self.loss_type == "vlb":
            logs["vlb_bits_per_dim"] = vlb_terms(self.scheduler, output, original, noisy, timesteps, self.decoder)
            per_sample = bound_weight * logs["vlb_bits_per_dim"]
        else:
            per_sample = mse * self.snr_weight(timesteps).to(mse) if self.snr_gamma is not None else mse
            if self.loss_type == "hybrid":
                frozen_mean = torch.cat([prediction.detach(), variance], dim=1)
                logs["vlb_bits_per_dim"] = vlb_terms(
                    self.scheduler, frozen_mean, original, noisy, timesteps, self.decoder
                )
                per_sample = per_sample + self.vlb_weight * bound_weight * logs["vlb_bits_per_dim"]
        loss = (per_sample * weights.to(per_sample)).mean()
        return LossOutput(loss, per_sample.detach(), timesteps, {key: value.detach() for key, value in logs.items()})

    def snr_weight(self, timesteps: torch.Tensor) -> torch.Tensor:
        """min-SNR-γ's weight of each sample's squared error (see the class docstring)."""
        snr = self.scheduler.snr(timesteps)
        clipped = snr.clamp(max=self.snr_gamma)
        if self.scheduler.config.prediction_type == "epsilon":
            return clipped / snr
        if self.scheduler.config.prediction_type == "v_prediction":
            return clipped / (snr + 1)
        return clipped

    def observe(self, accelerator: Accelerator, output: LossOutput) -> None:
        """Every replica's importance sampler learns from every process's losses, so all draw alike."""
        if isinstance(self.timestep_sampler, LossSecondMomentSampler):
            self.timestep_sampler.update(accelerator.gather(output.timesteps), accelerator.gather(output.per_sample))

    def state_dict(self) -> dict[str, Any]:
        return self.timestep_sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.timestep_sampler.load_state_dict(state)

    def pipeline(self, unet: torch.nn.Module) -> HFDDPMPipeline:
        """`unet` with the training noise schedule, sampled by DDIM or DDPM on the "trailing" grid."""
        scheduler_class = DDIMScheduler if self.inference_scheduler == "ddim" else DDPMScheduler
        scheduler = scheduler_class.from_config(self.scheduler.config, timestep_spacing="trailing")
        id2label = None if self.label_names is None else dict(enumerate(self.label_names))
        return HFDDPMPipeline(unet=unet, scheduler=scheduler, id2label=id2label, vae=self.vae)


def drop_labels(
    labels: torch.Tensor, num_classes: int, dropout_prob: float, generator: torch.Generator
) -> torch.Tensor:
    """Each class id replaced by the "no label" id `num_classes` with probability `dropout_prob`, drawn from
    `generator` (the run's, so a resumed run drops the same labels)."""
    if dropout_prob == 0:
        return labels
    dropped = torch.rand(len(labels), generator=generator, device=generator.device) < dropout_prob
    return torch.where(dropped.to(labels.device), num_classes, labels)
