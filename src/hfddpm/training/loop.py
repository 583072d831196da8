"""Pieces of the training loop: the step's randomness, the step itself, and the EMA network."""

from __future__ import annotations

import torch
from diffusers import ModelMixin
from diffusers.training_utils import EMAModel

from ..conditioning import call_network
from ..schedulers import DDPMScheduler
from .losses import DiffusionLoss, LossOutput
from .timestep_sampling import UniformTimestepSampler


class TrainingRandomness:
    """The generator that draws the noise ε and the timesteps t of each training step.

    Seeded per process (seed + process index) so data-parallel replicas draw different noise, and saved in
    checkpoints (`state_dict`), so a resumed run draws what the uninterrupted run would have drawn.
    """

    def __init__(self, seed: int, process_index: int = 0, device: torch.device | str = "cpu") -> None:
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed + process_index)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(
            state["generator"].cpu() if self.generator.device.type == "cpu" else state["generator"]
        )


def training_step(
    model: torch.nn.Module,
    scheduler: DDPMScheduler,
    loss_fn: DiffusionLoss,
    clean_images: torch.Tensor,
    randomness: TrainingRandomness,
    timestep_sampler: UniformTimestepSampler | None = None,
    class_labels: torch.Tensor | None = None,
) -> LossOutput:
    """The loss of one batch: draw t (uniformly unless `timestep_sampler` says otherwise) and ε ~ N(0, I), form
    x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, predict (given `class_labels` for a class-conditional model), and weight each
    sample's loss by the sampler's importance weight.

    x_t and the loss target are computed in float32 whatever the mixed precision (in float16 √(1 − ᾱ_t) rounds to
    0 at the first timesteps); only the network runs under autocast. No backward pass here.
    """
    clean_images = clean_images.float()
    generator = randomness.generator
    sampler = timestep_sampler or UniformTimestepSampler(scheduler.config.num_train_timesteps)
    timesteps, importance_weights = sampler.sample(clean_images.shape[0], generator)
    timesteps, importance_weights = timesteps.to(clean_images.device), importance_weights.to(clean_images.device)
    noise = torch.randn(clean_images.shape, generator=generator, device=generator.device).to(clean_images.device)
    noisy_images = scheduler.add_noise(clean_images, noise, timesteps)
    model_output = call_network(model, noisy_images, timesteps, class_labels)
    return loss_fn(model_output, clean_images, noise, timesteps, noisy_images, importance_weights)


def averaged_copy(model: ModelMixin, ema: EMAModel) -> ModelMixin:
    """A new model of `model`'s class and config holding the EMA weights, in float32, on `model`'s device."""
    averaged = type(model).from_config(model.config).to(model.device).eval()
    ema.copy_to(averaged.parameters())
    return averaged


def replica_checksum(model: torch.nn.Module) -> torch.Tensor:
    """Σ of every parameter in float64: equal on data-parallel replicas that hold the same weights."""
    with torch.no_grad():
        return sum(p.detach().double().sum() for p in model.parameters())
