"""Few-step distillation objectives: a student learns from a frozen teacher to sample in 1–4 network evaluations.

- `ProgressiveDistillationObjective` (Salimans & Ho 2022, Algorithm 2): one deterministic DDIM step of the student
  lands where two of the teacher's land; repeated rounds halve the step count.
- `ConsistencyDistillationObjective` (Song et al. 2023, Algorithm 2; Luo et al. 2023 for ε-prediction teachers):
  a consistency model of the teacher's probability-flow ODE, DDIM being the ODE solver over a skipping grid, sampled
  by diffusers' `LCMScheduler`.

Both are objectives of the training engine (`hfddpm.training.engine.Trainer`): a batch of data images → a loss.
The closed forms they use are in `hfddpm.schedulers.distillation`.
"""

from __future__ import annotations

import copy
import inspect
from typing import TYPE_CHECKING, Any

import diffusers
import torch

from ..conditioning import call_network, num_classes, predict
from ..pipelines import HFDDPMPipeline
from ..schedulers import DDIMScheduler
from ..schedulers.distillation import (
    consistency_function,
    ddim_step,
    progressive_distillation_target,
    truncated_snr_weight,
)
from ..schedulers.gaussian_diffusion import per_sample
from .loop import TrainingRandomness
from .losses import LossOutput
from .objectives import drop_labels

if TYPE_CHECKING:
    from accelerate import Accelerator

STUDENT_PREDICTION_TYPES = ("v_prediction", "sample")  # ε-prediction's x̂_0 = (x_t − σ ε̂)/α explodes as α → 0


class Teacher:
    """A frozen network with its noise schedule, used as the deterministic DDIM sampler it defines.

    Any ε-, x_0- or v-prediction network (a learned variance's extra channels are ignored); x̂_0 is clipped as its
    scheduler clips (`clip_sample`), with ε̂ re-derived from the clipped x̂_0, as `HFDDPMPipeline` samples it. A
    class-conditional teacher is called with each sample's label ("no label" included), and its class names
    (`id2label`) pass to the student.
    """

    def __init__(
        self, unet: torch.nn.Module, scheduler: DDIMScheduler, id2label: dict[int, str] | None = None
    ) -> None:
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.num_classes = num_classes(unet)
        self.id2label = id2label

    @classmethod
    def from_pipeline(cls, pipeline: HFDDPMPipeline) -> Teacher:
        """The teacher a pipeline's network and noise schedule define, whatever its scheduler class; its last step
        lands on x_0 itself (ᾱ = 1), as the students' do."""
        config = stated_config(pipeline.scheduler.config)
        id2label = pipeline.id2label if num_classes(pipeline.unet) is not None else None
        return cls(pipeline.unet, DDIMScheduler.from_config(config, set_alpha_to_one=True), id2label)

    @torch.no_grad()
    def predict_original(
        self, sample: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x̂_0(x_t, t[, c]), clipped as the teacher's scheduler says."""
        self.unet.to(sample.device)
        output = predict(self.unet, sample.to(self.unet.dtype), timesteps, class_labels)
        return self.scheduler.clip_original_sample(predicted_original(self.scheduler, output, sample, timesteps))

    def ddim_step(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        prev_timesteps: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One deterministic DDIM step of the teacher, x_t → x_s, per sample (`schedulers.distillation.ddim_step`)."""
        alpha_bar_t = per_sample(self.scheduler.alpha_bar(timesteps), sample)
        alpha_bar_s = per_sample(self.scheduler.alpha_bar(prev_timesteps), sample)
        original = self.predict_original(sample, timesteps, class_labels)
        return ddim_step(sample, original, alpha_bar_t, alpha_bar_s)


def stated_config(config: dict) -> dict:
    """A scheduler config without diffusers' private keys: its `_use_default_values` would make `from_config` put
    the new class's defaults back in place of the values given."""
    return {key: value for key, value in config.items() if not key.startswith("_")}


def check_student_prediction_type(prediction_type: str, name: str = "prediction_type") -> None:
    """Refuse an ε-prediction (or unknown) student: its x̂_0 = (x_t − σ ε̂)/α explodes as α → 0, at the first of few
    steps."""
    if prediction_type not in STUDENT_PREDICTION_TYPES:
        raise ValueError(
            f"{name} of a student must be one of {list(STUDENT_PREDICTION_TYPES)} (an ε-prediction student's x̂_0 "
            f"explodes at the first of few steps), got {prediction_type!r}"
        )


def student_scheduler(teacher: Teacher, prediction_type: str) -> DDIMScheduler:
    """The student's DDIM scheduler: the teacher's noise schedule and clipping, the student's prediction type, and
    the "trailing" grid, whose N-step timesteps are every other of its 2N-step ones (both are round(T − iT/N) − 1),
    so each round's grid nests in its teacher's."""
    check_student_prediction_type(prediction_type)
    return DDIMScheduler.from_config(
        stated_config(teacher.scheduler.config),
        prediction_type=prediction_type,
        timestep_spacing="trailing",
        reverse_variance="fixed_small",
        analytic_gamma=None,
        set_alpha_to_one=True,
    )


def predicted_original(
    scheduler: DDIMScheduler, output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """x̂_0(x_t, t) from a network's `output` read as the scheduler's prediction type (a learned variance's extra
    channels dropped), in float32 and unclipped."""
    prediction = output.float()[:, : sample.shape[1]]
    return scheduler.convert_prediction(prediction, sample, timesteps, "sample")


class DistillationObjective:
    """What both distillation objectives share: a frozen teacher, the student's DDIM scheduler (its noise schedule,
    prediction type and grid), and x_t drawn at timesteps of a grid.

    A class-conditional teacher's student learns the teacher's conditional and unconditional steps alike: batches are
    (images, labels), and each label becomes "no label" with probability `class_dropout_prob`, as in training. At
    sampling time guidance combines the student's own two predictions; that is not the distillation of the guided
    teacher (Meng et al. 2023), whose student learns ε̂_∅ + w (ε̂_c − ε̂_∅) at each w.
    """

    def __init__(self, teacher: Teacher, prediction_type: str, class_dropout_prob: float = 0.0) -> None:
        self.teacher = teacher
        self.scheduler = student_scheduler(teacher, prediction_type)
        self.class_dropout_prob = class_dropout_prob

    def noisy_batch(
        self, batch: Any, grid: torch.Tensor, randomness: TrainingRandomness
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(x_0, x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, the index into `grid` of each sample's t, the labels after dropout
        or None), all drawn from the run's generator."""
        images, labels = batch if self.teacher.num_classes is not None else (batch, None)
        original = images.float()
        generator = randomness.generator
        index = torch.randint(0, len(grid), (len(original),), generator=generator, device=generator.device).cpu()
        noise = torch.randn(original.shape, generator=generator, device=generator.device).to(original.device)
        if labels is not None:
            labels = drop_labels(labels, self.teacher.num_classes, self.class_dropout_prob, generator)
        return original, self.scheduler.add_noise(original, noise, grid[index].to(original.device)), index, labels

    def student_pipeline(self, unet: torch.nn.Module, scheduler: Any, steps: int) -> HFDDPMPipeline:
        """The student with `scheduler`, sampling at `steps` steps unless told otherwise, with the teacher's
        classes."""
        return HFDDPMPipeline(
            unet=unet, scheduler=scheduler, default_num_inference_steps=steps, id2label=self.teacher.id2label
        )

    def checkpoint_objects(self) -> dict[str, Any]:
        return {}

    def observe(self, accelerator: Accelerator, output: LossOutput) -> None:
        pass

    def logs(self, accelerator: Accelerator, output: LossOutput) -> dict[str, float]:
        return {}


class ProgressiveDistillationObjective(DistillationObjective):
    """One round of progressive distillation (Salimans & Ho 2022, Algorithm 2): from the teacher's 2N-step DDIM to a
    student's N steps.

    For x_t on the student's grid, the teacher takes two deterministic DDIM steps t → t′ → s (t′ the midpoint, s the
    student's next timestep), the target x̃ is the x̂_0 with which one student step from x_t lands on that result
    (`progressive_distillation_target`), and the loss is max(SNR_t, 1) ‖x̃ − x̂_0‖² ("truncated SNR" weighting).
    """

    def __init__(
        self, teacher: Teacher, prediction_type: str, student_steps: int, class_dropout_prob: float = 0.0
    ) -> None:
        super().__init__(teacher, prediction_type, class_dropout_prob)
        self.student_steps = student_steps
        self.scheduler.set_timesteps(student_steps)
        timesteps = self.scheduler.timesteps.long()
        teacher_grid = copy.deepcopy(self.scheduler)
        teacher_grid.set_timesteps(2 * student_steps)
        if not torch.equal(teacher_grid.timesteps[0::2].long(), timesteps):
            raise ValueError(
                f"the {student_steps}-step grid is not every other step of the {2 * student_steps}-step one"
            )
        self.timesteps = timesteps
        self.midpoints = teacher_grid.timesteps[1::2].long()
        self.prev_timesteps = torch.cat([timesteps[1:], torch.tensor([-1])])

    def __call__(self, model: torch.nn.Module, batch: torch.Tensor, randomness: TrainingRandomness) -> LossOutput:
        original, sample, index, labels = self.noisy_batch(batch, self.timesteps, randomness)
        t, midpoint, s = (
            grid[index].to(original.device) for grid in (self.timesteps, self.midpoints, self.prev_timesteps)
        )
        alpha_bar_t = per_sample(self.scheduler.alpha_bar(t), original)
        alpha_bar_s = per_sample(self.scheduler.alpha_bar(s), original)
        one_step = self.teacher.ddim_step(sample, t, midpoint, labels)
        two_steps = self.teacher.ddim_step(one_step, midpoint, s, labels)
        target = progressive_distillation_target(sample, two_steps, alpha_bar_t, alpha_bar_s)
        prediction = predicted_original(self.scheduler, call_network(model, sample, t, labels), sample, t)
        error = (prediction - target).pow(2).mean(dim=(1, 2, 3))
        weighted = truncated_snr_weight(alpha_bar_t.flatten()) * error
        return LossOutput(
            loss=weighted.mean(), per_sample=weighted.detach(), mse=error.detach(), vlb=None, timesteps=t
        )

    def logs(self, accelerator: Accelerator, output: LossOutput) -> dict[str, float]:
        return {"mse_x0": accelerator.gather(output.mse).mean().item()}

    def pipeline(self, unet: torch.nn.Module) -> HFDDPMPipeline:
        """The student with its scheduler, sampling at its N steps unless told otherwise."""
        return self.student_pipeline(unet, DDIMScheduler.from_config(self.scheduler.config), self.student_steps)


class ConsistencyDistillationObjective(DistillationObjective):
    """Consistency distillation (Song et al. 2023, Algorithm 2) of the teacher's probability-flow ODE, with DDIM as
    the ODE solver on LCM's skipping grid τ_n = (n + 1) k − 1, k = T/N (Luo et al. 2023, §4.2).

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
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        if not 1 <= num_ddim_timesteps <= num_train_timesteps:
            raise ValueError(f"num_ddim_timesteps must be in [1, {num_train_timesteps}], got {num_ddim_timesteps}")
        lcm_options = inspect.signature(diffusers.LCMScheduler.__init__).parameters
        self.lcm_scheduler = diffusers.LCMScheduler.from_config(
            {key: value for key, value in stated_config(self.scheduler.config).items() if key in lcm_options},
            original_inference_steps=num_ddim_timesteps,
        )
        self.skip = num_train_timesteps // num_ddim_timesteps
        self.timesteps = torch.arange(1, num_ddim_timesteps + 1) * self.skip - 1
        self.target = copy.deepcopy(student).eval().requires_grad_(False)
        self.target_ema_decay = target_ema_decay
        self.num_inference_steps = num_inference_steps

    def consistency(
        self, model: torch.nn.Module, sample: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """f(x_t, t[, c]) of `model` (`schedulers.distillation.consistency_function`)."""
        c_skip, c_out = self.lcm_scheduler.get_scalings_for_boundary_condition_discrete(timesteps.float())
        output = call_network(model, sample, timesteps, labels)
        original = predicted_original(self.scheduler, output, sample, timesteps)
        return consistency_function(sample, original, per_sample(c_skip, sample), per_sample(c_out, sample))

    def __call__(self, model: torch.nn.Module, batch: torch.Tensor, randomness: TrainingRandomness) -> LossOutput:
        original, sample, index, labels = self.noisy_batch(batch, self.timesteps, randomness)
        t = self.timesteps[index].to(original.device)
        s = (t - self.skip).clamp(min=0)
        with torch.no_grad():
            self.target.to(original.device)
            target = self.consistency(self.target, self.teacher.ddim_step(sample, t, s, labels), s, labels)
        error = (self.consistency(model, sample, t, labels) - target).pow(2).mean(dim=(1, 2, 3))
        return LossOutput(loss=error.mean(), per_sample=error.detach(), mse=error.detach(), vlb=None, timesteps=t)

    @torch.no_grad()
    def after_update(self, model: torch.nn.Module) -> None:
        """θ⁻ ← μ θ⁻ + (1 − μ) θ."""
        for target, weight in zip(self.target.parameters(), model.parameters(), strict=True):
            target.lerp_(weight.detach().to(target.dtype), 1 - self.target_ema_decay)

    def checkpoint_objects(self) -> dict[str, Any]:
        return {"consistency_target": self.target}

    def pipeline(self, unet: torch.nn.Module) -> HFDDPMPipeline:
        """The consistency model with diffusers' `LCMScheduler` (multistep consistency sampling)."""
        scheduler = diffusers.LCMScheduler.from_config(self.lcm_scheduler.config)
        return self.student_pipeline(unet, scheduler, self.num_inference_steps)
