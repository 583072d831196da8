"""Training in continuous time (`--continuous_time`): denoising score matching at t ~ U[0, 1] with a score SDE's
schedule (Song et al. 2021) or VDM's fixed or learned one (Kingma et al. 2021), weighted as L_simple or as the
continuous-time bound, saved as a stock DDPM/DDIM pipeline of its T-entry table (`continuous_time.discrete_betas`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DModel
from diffusers.configuration_utils import register_to_config

from ..conditioning import call_network
from ..models import FourierFeaturesUNet
from ..pipelines import HFDDPMPipeline
from ..schedulers import DDIMScheduler, DDPMScheduler
from ..schedulers.bound_terms import mean_over_pixels
from ..schedulers.continuous_time import (
    SCHEDULES,
    LearnedLogSNRSchedule,
    NoiseSchedule,
    alpha_sigma,
    diffusion_loss,
    discrete_decoder_nll,
    network_timestep,
    prior_kl,
)
from ..schedulers.gaussian_diffusion import per_sample
from .objectives import LossOutput, drop_labels

if TYPE_CHECKING:
    from .config import TrainingConfig


NETWORKS = {"UNet2DModel": UNet2DModel, "FourierFeaturesUNet": FourierFeaturesUNet}


class ContinuousTimeModel(ModelMixin, ConfigMixin):
    """A UNet (of `NETWORKS`) and its noise schedule as one module: the one model the engine trains and averages (a
    learned schedule has parameters). Called, it is the UNet, so that data-parallel training and mixed precision
    wrap the network call; the objective evaluates the schedule apart, in float64."""

    @register_to_config
    def __init__(self, *, unet_class: str, unet_config: dict, schedule_name: str) -> None:  # by name: see `of`
        super().__init__()
        self.unet = NETWORKS[unet_class].from_config(unet_config)
        self.noise_schedule = SCHEDULES[schedule_name]()

    @classmethod
    def of(cls, unet: UNet2DModel | FourierFeaturesUNet, schedule_name: str) -> ContinuousTimeModel:
        # register_to_config records positional arguments as defaults, which from_config would then drop.
        model = cls(unet_class=type(unet).__name__, unet_config=dict(unet.config), schedule_name=schedule_name)
        model.unet.load_state_dict(unet.state_dict())
        if unet.is_gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
        return model

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None):
        return self.unet(sample, timestep, class_labels)


def antithetic_uniform(batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """u_i = (u + i/B) mod 1 for one u ~ U[0, 1): each u_i is uniform, and the batch covers [0, 1) evenly (VDM's
    low-discrepancy sampler, Kingma et al. 2021, App. I.1). Float64, on the generator's device."""
    start = torch.rand((), generator=generator, device=generator.device, dtype=torch.float64)
    return torch.remainder(start + torch.arange(batch_size, device=generator.device) / batch_size, 1.0)


@dataclass(eq=False)
class ContinuousTimeLoss:
    """Denoising in continuous time. Per sample: t from `antithetic_uniform`, ε ~ N(0, I), z_t = α_t x + σ_t ε with
    γ(t) of the model's schedule, and ε̂ = ε_θ(z_t, (T − 1) t); then, as `loss_type` says,

    - ``simple``: ‖ε − ε̂‖² over pixels, score matching with Song et al.'s λ(t) = σ_t² (Ho et al.'s L_simple);
    - ``vlb``: the continuous-time bound in bits/dim (VDM, eqs. 10, 17): ½ γ'(t) ‖ε − ε̂‖², which is the likelihood
      weighting λ(t) = g(t)² (`continuous_time.diffusion_loss`), plus KL(q(z_1|x) ‖ N(0, I)) and VDM's discrete
      decoder on the 8-bit data. With `importance` t has density γ'(t)/(γ_1 − γ_0) (log-SNR uniform; Song et al.
      2021b, §4.2), so the diffusion term is ½ (γ_1 − γ_0) ‖ε − ε̂‖².

    A learned schedule (`LearnedLogSNRSchedule`, ``vlb`` only) takes the bound's gradient at its end points and,
    for its shape, the gradient of E[L_diff²], the second moment of the diffusion term: the bound does not depend
    on the shape, so this lowers the variance of its estimate (VDM, §5.2). The bound is logged either way.
    """

    num_train_timesteps: int
    loss_type: str = "simple"
    importance: bool = False
    label_names: list[str] | None = None
    class_dropout_prob: float = 0.0
    inference_scheduler: str = "ddim"

    def __post_init__(self) -> None:
        self.shape_gradient_scale = [None]  # 2 L_diff of the latest batch, for a learned schedule's backward pass

    @classmethod
    def from_config(cls, config: TrainingConfig, label_names: list[str] | None = None) -> ContinuousTimeLoss:
        return cls(
            config.num_train_timesteps,
            config.loss_type,
            config.timestep_sampling == "importance",
            label_names if config.class_conditional else None,
            config.class_dropout_prob or 0.0,
            config.inference_scheduler,
        )

    def __call__(self, model: ContinuousTimeModel, batch: Any, generator: torch.Generator) -> LossOutput:
        images, labels = batch if self.label_names is not None else (batch, None)
        if labels is not None:
            labels = drop_labels(labels, len(self.label_names), self.class_dropout_prob, generator)
        original = images.float()
        schedule = getattr(model, "module", model).noise_schedule  # under data parallelism, the wrapped model's
        ends = schedule.end_points(original.device)
        times, gamma, gamma_derivative, weights = self.draw_times(schedule, ends, len(original), generator)
        alpha, sigma = alpha_sigma(gamma)
        noise = torch.randn(original.shape, generator=generator, device=generator.device).to(original.device)
        noisy = per_sample(alpha, original) * original + per_sample(sigma, original) * noise
        label = network_timestep(times, self.num_train_timesteps).float()
        predicted = call_network(model, noisy.float(), label, labels).float()
        diffusion = diffusion_loss(noise, predicted, gamma_derivative) * weights
        decoder_noise = torch.randn(original.shape, generator=generator, device=generator.device).to(original.device)
        nats_per_bit = original[0].numel() * math.log(2.0)
        parts = (diffusion, prior_kl(original, ends[1]), discrete_decoder_nll(original, decoder_noise, ends[0]))
        bound = sum(parts) / nats_per_bit
        logs = {"vlb_bits_per_dim": bound.detach(), "diffusion_bits_per_dim": (diffusion / nats_per_bit).detach()}
        if isinstance(schedule, LearnedLogSNRSchedule):
            self.shape_gradient_scale[0] = 2 * (diffusion / nats_per_bit).detach()
        per_sample_loss = bound if self.loss_type == "vlb" else mean_over_pixels((noise - predicted) ** 2)
        return LossOutput(per_sample_loss.float().mean(), per_sample_loss.detach().float(), None, logs)

    def draw_times(
        self, schedule: NoiseSchedule, ends: torch.Tensor, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """t, γ(t), γ'(t) and the importance weight 1/p(t) of each sample, on the device of `ends` (the schedule's
        `end_points`; see the class docstring)."""
        uniform = antithetic_uniform(batch_size, generator).to(ends.device)
        if self.importance:
            times = schedule.inverse(ends[0] + uniform * (ends[1] - ends[0]))
            gamma, gamma_derivative = schedule.gamma_and_derivative(times)
            return times, gamma, gamma_derivative, (ends[1] - ends[0]) / gamma_derivative.detach()
        if isinstance(schedule, LearnedLogSNRSchedule):
            gamma, gamma_derivative = self.learned_gamma(schedule, uniform)
        else:
            gamma, gamma_derivative = schedule.gamma_and_derivative(uniform)
        return uniform, gamma, gamma_derivative, torch.ones_like(uniform)

    def learned_gamma(self, schedule: LearnedLogSNRSchedule, times: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """γ(t) and γ'(t) of a learned schedule, the gradient reaching its shape multiplied per sample by 2 L_diff
        (set in `__call__`, read in the backward pass): d(L²)/dη = 2 L dL/dη."""
        scale = self.shape_gradient_scale = [None]
        with torch.enable_grad():
            times = times.detach().requires_grad_(True)
            shape = schedule.shape(times)
            (shape_derivative,) = torch.autograd.grad(shape.sum(), times, create_graph=True)
        if shape.requires_grad:
            for tensor in (shape, shape_derivative):
                tensor.register_hook(lambda grad: grad * scale[0].to(grad))
        span = (schedule.gamma_1 - schedule.gamma_0).double()
        return schedule.gamma_0.double() + span * shape, span * shape_derivative

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def pipeline(self, model: ContinuousTimeModel) -> HFDDPMPipeline:
        """The UNet with the DDIM (or DDPM) scheduler of its schedule's T-entry table, on the "trailing" grid."""
        scheduler_class = DDIMScheduler if self.inference_scheduler == "ddim" else DDPMScheduler
        betas = model.noise_schedule.discrete_betas(self.num_train_timesteps)
        scheduler = scheduler_class(
            num_train_timesteps=self.num_train_timesteps, trained_betas=betas, timestep_spacing="trailing"
        )
        id2label = None if self.label_names is None else dict(enumerate(self.label_names))
        return HFDDPMPipeline(unet=model.unet, scheduler=scheduler, id2label=id2label)
