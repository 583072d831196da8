"""Consistency distillation (Song et al. 2023, Algorithm 2; Luo et al. 2023): one student that maps any point of
the teacher's probability-flow ODE to its end, DDIM being the ODE solver, sampled by diffusers' `LCMScheduler`."""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from accelerate import PartialState

from ..arguments import option
from ..conditioning import call_network
from ..pipelines import HFDDPMPipeline
from ..run_folder import run_lock
from ..schedulers.gaussian_diffusion import per_sample
from .config import ENGINE, OUTPUT
from .objectives import LossOutput
from .output_folder import check_output_dir
from .teacher import (
    DISTILLATION,
    DistillationConfig,
    DistillationObjective,
    Teacher,
    load_teacher,
    predicted_original,
    stated_config,
    student_data,
    train_student,
)


def consistency_function(
    sample: torch.Tensor, original: torch.Tensor, c_skip: torch.Tensor, c_out: torch.Tensor
) -> torch.Tensor:
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x̂_0(x_t, t) (Song et al. 2023, eq. 3; Luo et al. 2023, eq. 9); with
    c_skip(t_min) = 1 and c_out(t_min) = 0 it meets the boundary condition f(x, t_min) = x exactly."""
    return c_skip * sample + c_out * original


class ConsistencyDistillationObjective(DistillationObjective):
    """Consistency distillation of the teacher's probability-flow ODE on LCM's skipping grid τ_n = (n + 1) k − 1,
    k = T/N (Luo et al. 2023, §4.2).

    f_θ(x, t) = c_skip(t) x + c_out(t) x̂_0,θ(x, t) with diffusers' `LCMScheduler` scalings, so c_skip(0) = 1 and
    c_out(0) = 0: f(x, 0) = x exactly. For x_{τ_n} = √ᾱ x_0 + √(1 − ᾱ) ε, one teacher DDIM step gives x̂ at
    τ_{n−1} = τ_n − k (timestep 0 below τ_0), and the loss is ‖f_θ(x_{τ_n}, τ_n) − f_θ⁻(x̂, τ_{n−1})‖², θ⁻ the target
    network, an exponential moving average of θ with decay μ updated after every optimizer step.
    """

    def __init__(
        self,
        teacher: Teacher,
        prediction_type: str,
        student: torch.nn.Module,
        num_ddim_timesteps: int = 50,
        target_ema_decay: float = 0.95,
        num_inference_steps: int = 2,
        class_dropout_prob: float = 0.0,
    ) -> None:
        super().__init__(teacher, prediction_type, class_dropout_prob)
        lcm_options = inspect.signature(diffusers.LCMScheduler.__init__).parameters
        self.lcm_scheduler = diffusers.LCMScheduler.from_config(
            {key: value for key, value in stated_config(self.scheduler.config).items() if key in lcm_options},
            original_inference_steps=num_ddim_timesteps,
        )
        self.skip = self.scheduler.config.num_train_timesteps // num_ddim_timesteps
        self.timesteps = torch.arange(1, num_ddim_timesteps + 1) * self.skip - 1
        self.target = copy.deepcopy(student).eval().requires_grad_(False)
        self.target_ema_decay, self.num_inference_steps = target_ema_decay, num_inference_steps

    def consistency(
        self, model: torch.nn.Module, sample: torch.Tensor, timesteps: torch.Tensor, labels=None
    ) -> torch.Tensor:
        """f(x_t, t[, c]) of `model` (`consistency_function`)."""
        c_skip, c_out = self.lcm_scheduler.get_scalings_for_boundary_condition_discrete(timesteps.float())
        original = predicted_original(
            self.scheduler, call_network(model, sample, timesteps, labels), sample, timesteps
        )
        return consistency_function(sample, original, per_sample(c_skip, sample), per_sample(c_out, sample))

    def __call__(self, model: torch.nn.Module, batch: torch.Tensor, generator: torch.Generator) -> LossOutput:
        original, sample, index, labels = self.noisy_batch(batch, self.timesteps, generator)
        t = self.timesteps[index].to(original.device)
        s = (t - self.skip).clamp(min=0)
        with torch.no_grad():
            self.target.to(original.device)
            target = self.consistency(self.target, self.teacher.ddim_step(sample, t, s, labels), s, labels)
        error = (self.consistency(model, sample, t, labels) - target).pow(2).mean(dim=(1, 2, 3))
        return LossOutput(error.mean(), error.detach(), t)

    @torch.no_grad()
    def after_update(self, model: torch.nn.Module) -> None:
        """θ⁻ ← μ θ⁻ + (1 − μ) θ."""
        for target, weight in zip(self.target.parameters(), model.parameters(), strict=True):
            target.lerp_(weight.detach().to(target.dtype), 1 - self.target_ema_decay)

    def state_dict(self) -> dict[str, Any]:
        return self.target.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.target.load_state_dict(state)

    def pipeline(self, unet: torch.nn.Module) -> HFDDPMPipeline:
        """The consistency model with diffusers' `LCMScheduler` (multistep consistency sampling)."""
        scheduler = diffusers.LCMScheduler.from_config(self.lcm_scheduler.config)
        return self.student_pipeline(unet, scheduler, self.num_inference_steps)


@dataclass(kw_only=True)
class ConsistencyDistillationConfig(DistillationConfig):
    """Consistency distillation on an N-point skipping grid with a target network of decay μ; the saved pipeline
    samples at `num_inference_steps`."""

    output_dir: str = option(
        "outputs/consistency-digits", "where the run writes everything", group=ENGINE, path="owned"
    )
    max_train_steps: int | None = option(2000, "optimizer steps", interval="[1, inf)", group=ENGINE)
    num_inference_steps: int = option(2, "steps the student samples at", interval="[1, inf)", group=OUTPUT)
    num_ddim_timesteps: int = option(
        50, "N of the skipping grid (LCM's)", interval="[1, inf)", group=DISTILLATION, defines_run=True
    )
    target_ema_decay: float = option(
        0.95, "μ of the target network", interval="[0, 1)", group=DISTILLATION, defines_run=True
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.num_inference_steps <= self.num_ddim_timesteps:
            raise ValueError(
                f"--num_inference_steps ({self.num_inference_steps}) must be at most --num_ddim_timesteps "
                f"({self.num_ddim_timesteps}): LCMScheduler samples on that grid"
            )


def distill_consistency(config: ConsistencyDistillationConfig) -> int:
    """Consistency distillation into `config.output_dir`; the exit status (0, or 1 when a push failed)."""
    check_output_dir(config)
    teacher, config = load_teacher(config)
    if config.num_ddim_timesteps > (steps := teacher.scheduler.config.num_train_timesteps):
        raise ValueError(f"--num_ddim_timesteps {config.num_ddim_timesteps} exceeds the teacher's T = {steps}")
    lineage = {
        "method": "consistency distillation (Song et al. 2023; Luo et al. 2023)",
        "loss": "‖f_θ(x_t, t) − f_θ⁻(x̂_s, s)‖² across one teacher DDIM step",
        "teacher": config.teacher,
        "distilled_from": config.teacher,
        "num_ddim_timesteps": config.num_ddim_timesteps,
        "target_ema_decay": config.target_ema_decay,
        "steps": config.num_inference_steps,
    }

    def objective(teacher: Teacher, student: torch.nn.Module) -> DistillationObjective:
        return ConsistencyDistillationObjective(
            teacher,
            config.prediction_type,
            student,
            config.num_ddim_timesteps,
            config.target_ema_decay,
            config.num_inference_steps,
            config.class_dropout_prob or 0.0,
        )

    with run_lock(Path(config.output_dir)):
        status = train_student(config, objective, teacher, lineage, student_data(config, teacher))
    PartialState().destroy_process_group()
    return status
