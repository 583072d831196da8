"""Training objectives: what the engine minimises, as an object from a batch to a loss.

The engine (`hfddpm.training.engine.Trainer`) owns everything around the loss: Accelerate, the optimizer and its
fault checks, EMA, checkpoints, logging, sample grids, evaluation and saving. An objective supplies the loss of a
batch and the few things only it knows: its own state to checkpoint, what it learns from each batch's losses, what
it logs, and the pipeline that samples from the trained network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch

from ..pipelines import HFDDPMPipeline
from ..schedulers import DDIMScheduler, DDPMScheduler
from .loop import TrainingRandomness, training_step
from .losses import DiffusionLoss, LossOutput
from .timestep_sampling import UniformTimestepSampler, create_timestep_sampler

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .config import TrainingConfig


class Objective(Protocol):
    """What the engine asks of an objective."""

    def __call__(self, model: torch.nn.Module, batch: Any, randomness: TrainingRandomness) -> LossOutput:
        """The loss of one batch (no backward pass); all its randomness drawn from `randomness.generator`."""

    def checkpoint_objects(self) -> dict[str, Any]:
        """Objects with `state_dict`/`load_state_dict` that checkpoints save and resume restores."""

    def observe(self, accelerator: Accelerator, output: LossOutput) -> None:
        """Learn from a batch's losses (called after every batch, on every process)."""

    def after_update(self, model: torch.nn.Module) -> None:
        """Optional: follow an applied optimizer update of `model` (unwrapped; not called for a skipped update)."""

    def logs(self, accelerator: Accelerator, output: LossOutput) -> dict[str, float]:
        """Values to log at a logging step, from the last batch's output."""

    def pipeline(self, unet: torch.nn.Module) -> HFDDPMPipeline:
        """The pipeline that samples from `unet` (sample grids, evaluation, the saved model)."""


class DenoisingObjective:
    """DDPM's objective (Ho et al. 2020, Algorithm 1): x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε at a random t, and the loss
    of the network's prediction of ε, x_0 or v (`DiffusionLoss`: L_simple, min-SNR weighting, the hybrid loss of a
    learned variance, or the bound), with t drawn uniformly or by Improved DDPM's importance sampling.

    Class-conditional when `label_names` are set (batches are then pairs of images and class ids): each label is
    replaced by "no label" with probability `class_dropout_prob` (Ho & Salimans 2022, Algorithm 1), so the network
    learns ε_θ(x_t, t, c) and ε_θ(x_t, t, ∅) at once, as classifier-free guidance needs.
    """

    def __init__(
        self,
        noise_scheduler: DDPMScheduler,
        loss_fn: DiffusionLoss,
        timestep_sampler: UniformTimestepSampler,
        inference_scheduler: str = "ddim",
        label_names: list[str] | None = None,
        class_dropout_prob: float = 0.0,
    ) -> None:
        if inference_scheduler not in ("ddim", "ddpm"):
            raise ValueError(f"inference_scheduler must be 'ddim' or 'ddpm', got {inference_scheduler!r}")
        if not 0 <= class_dropout_prob < 1:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {class_dropout_prob}")
        self.noise_scheduler = noise_scheduler
        self.loss_fn = loss_fn
        self.timestep_sampler = timestep_sampler
        self.inference_scheduler = inference_scheduler
        self.learns_timesteps = type(timestep_sampler) is not UniformTimestepSampler
        self.label_names = label_names
        self.class_dropout_prob = class_dropout_prob

    @classmethod
    def from_config(cls, config: TrainingConfig, label_names: list[str] | None = None) -> DenoisingObjective:
        """The objective `config` describes, class-conditional on `label_names` (the data's, once it is loaded) when
        the config says so; its options are checked here, before any data or model is loaded."""
        noise_scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            prediction_type=config.prediction_type,
            reverse_variance=config.reverse_variance,
        )
        try:
            loss_fn = DiffusionLoss(
                noise_scheduler, config.loss_type, snr_gamma=config.snr_gamma, vlb_weight=config.vlb_weight
            )
        except ValueError as error:  # name the flag, as the command line knows it
            raise ValueError(str(error).replace("reverse_variance", "--reverse_variance")) from None
        timestep_sampler = create_timestep_sampler(config.timestep_sampling, config.num_train_timesteps)
        if config.class_conditional:
            return cls(
                noise_scheduler,
                loss_fn,
                timestep_sampler,
                config.inference_scheduler,
                label_names=label_names,
                class_dropout_prob=config.class_dropout_prob,
            )
        return cls(noise_scheduler, loss_fn, timestep_sampler, config.inference_scheduler)

    def __call__(self, model: torch.nn.Module, batch: Any, randomness: TrainingRandomness) -> LossOutput:
        if self.label_names is None:
            return training_step(model, self.noise_scheduler, self.loss_fn, batch, randomness, self.timestep_sampler)
        images, labels = batch
        labels = drop_labels(labels, len(self.label_names), self.class_dropout_prob, randomness.generator)
        return training_step(
            model, self.noise_scheduler, self.loss_fn, images, randomness, self.timestep_sampler, labels
        )

    def checkpoint_objects(self) -> dict[str, Any]:
        return {"timestep_sampler": self.timestep_sampler} if self.learns_timesteps else {}

    def observe(self, accelerator: Accelerator, output: LossOutput) -> None:
        if self.learns_timesteps:  # every replica learns from every process's losses, so all draw alike
            self.timestep_sampler.update(accelerator.gather(output.timesteps), accelerator.gather(output.per_sample))

    def logs(self, accelerator: Accelerator, output: LossOutput) -> dict[str, float]:
        logs = {}
        if output.vlb is not None:
            logs["vlb_bits_per_dim"] = accelerator.gather(output.vlb).mean().item()
        if self.learns_timesteps:
            logs["timestep_sampler_warm"] = int(self.timestep_sampler.warmed_up())
        return logs

    def pipeline(self, unet: torch.nn.Module) -> HFDDPMPipeline:
        """`unet` with the training noise schedule, sampled by DDIM or DDPM on the "trailing" grid."""
        scheduler_class = DDIMScheduler if self.inference_scheduler == "ddim" else DDPMScheduler
        scheduler = scheduler_class.from_config(self.noise_scheduler.config, timestep_spacing="trailing")
        id2label = None if self.label_names is None else dict(enumerate(self.label_names))
        return HFDDPMPipeline(unet=unet, scheduler=scheduler, id2label=id2label)


def drop_labels(
    labels: torch.Tensor, num_classes: int, dropout_prob: float, generator: torch.Generator
) -> torch.Tensor:
    """Each class id replaced by the "no label" id `num_classes` with probability `dropout_prob`, drawn from
    `generator` (the run's, so a resumed run drops the same labels)."""
    if dropout_prob == 0:
        return labels
    dropped = torch.rand(len(labels), generator=generator, device=generator.device) < dropout_prob
    return torch.where(dropped.to(labels.device), num_classes, labels)
