"""Progressive distillation (Salimans & Ho 2022): round by round, a student learns to land in one deterministic DDIM
step where two of its teacher's land, halving the step count — 64 → 32 → … → 1 by default.

Each round is an engine run whose student starts from the previous round's model, and whose output is an ordinary
`HFDDPMPipeline` folder, `OUTPUT_DIR/steps-N`, sampling at its N steps by default.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate import PartialState

from ..arguments import option
from ..conditioning import call_network
from ..pipelines import HFDDPMPipeline
from ..records import read_record, weights_fingerprint
from ..run_folder import run_lock
from ..schedulers import DDIMScheduler
from ..schedulers.gaussian_diffusion import per_sample
from .config import ENGINE
from .objectives import LossOutput
from .output_folder import check_output_dir
from .teacher import (
    DISTILLATION,
    LINEAGE_FILE,
    DistillationConfig,
    DistillationObjective,
    Teacher,
    load_teacher,
    predicted_original,
    student_data,
    train_student,
)


def progressive_distillation_target(
    sample: torch.Tensor, sample_after_two_steps: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_s: torch.Tensor
) -> torch.Tensor:
    """The x̃ with which one DDIM step from x_t lands on the teacher's two-step result x_s (Salimans & Ho 2022,
    Algorithm 2, the line that solves for x̃), with α = √ᾱ and σ = √(1 − ᾱ):

    x̃ = (x_s − (σ_s/σ_t) x_t) / (α_s − (σ_s/σ_t) α_t),

    so that `ddim_step(x_t, x̃, ᾱ_t, ᾱ_s)` = x_s exactly. s is the student's next timestep (t″ = t − 1/N of the
    paper), not the teacher's midpoint t′; the denominator is positive because the SNR grows from t to s.
    """
    ratio = ((1 - alpha_bar_s) / (1 - alpha_bar_t)) ** 0.5
    return (sample_after_two_steps - ratio * sample) / (alpha_bar_s**0.5 - ratio * alpha_bar_t**0.5)


def truncated_snr_weight(alpha_bar: torch.Tensor) -> torch.Tensor:
    """max(SNR(t), 1) with SNR = ᾱ/(1 − ᾱ): the "truncated SNR" weighting of an x-space loss (Salimans & Ho 2022,
    §4), which keeps the weight of the noisiest timesteps at 1 where plain SNR weighting would give them none."""
    return (alpha_bar / (1 - alpha_bar)).clamp(min=1)


class ProgressiveDistillationObjective(DistillationObjective):
    """One round (Salimans & Ho 2022, Algorithm 2): from the teacher's 2N-step DDIM to a student's N steps.

    For x_t on the student's grid, the teacher takes two deterministic DDIM steps t → t′ → s (t′ the midpoint, s the
    student's next timestep), the target x̃ is the x̂_0 with which one student step from x_t lands on that result
    (`progressive_distillation_target`), and the loss is max(SNR_t, 1) ‖x̃ − x̂_0‖² ("truncated SNR" weighting).
    """

    def __init__(self, teacher: Teacher, prediction_type: str, student_steps: int, class_dropout_prob: float = 0.0):
        super().__init__(teacher, prediction_type, class_dropout_prob)
        self.student_steps = student_steps
        self.scheduler.set_timesteps(student_steps)
        self.timesteps = self.scheduler.timesteps.long()
        teacher_grid = copy.deepcopy(self.scheduler)
        teacher_grid.set_timesteps(2 * student_steps)
        self.midpoints = teacher_grid.timesteps[1::2].long()
        self.prev_timesteps = torch.cat([self.timesteps[1:], torch.tensor([-1])])

    def __call__(self, model: torch.nn.Module, batch: torch.Tensor, generator: torch.Generator) -> LossOutput:
        original, sample, index, labels = self.noisy_batch(batch, self.timesteps, generator)
        t, midpoint, s = (
            grid[index].to(original.device) for grid in (self.timesteps, self.midpoints, self.prev_timesteps)
        )
        alpha_bar_t = per_sample(self.scheduler.alpha_bar(t), original)
        alpha_bar_s = per_sample(self.scheduler.alpha_bar(s), original)
        two_steps = self.teacher.ddim_step(self.teacher.ddim_step(sample, t, midpoint, labels), midpoint, s, labels)
        target = progressive_distillation_target(sample, two_steps, alpha_bar_t, alpha_bar_s)
        prediction = predicted_original(self.scheduler, call_network(model, sample, t, labels), sample, t)
        error = (prediction - target).pow(2).mean(dim=(1, 2, 3))
        weighted = truncated_snr_weight(alpha_bar_t.flatten()) * error
        return LossOutput(weighted.mean(), weighted.detach(), t, {"mse_x0": error.detach()})

    def pipeline(self, unet: torch.nn.Module) -> HFDDPMPipeline:
        """The student with its scheduler, sampling at its N steps unless told otherwise."""
        return self.student_pipeline(unet, DDIMScheduler.from_config(self.scheduler.config), self.student_steps)


@dataclass(kw_only=True)
class ProgressiveDistillationConfig(DistillationConfig):
    """Progressive distillation: rounds from `teacher_steps` to `final_steps`, `max_train_steps` each."""

    output_dir: str = option(
        "outputs/progressive-digits", "the rounds' parent folder (steps-N each)", group=ENGINE, path="owned"
    )
    max_train_steps: int | None = option(500, "optimizer steps of each round", interval="[1, inf)", group=ENGINE)
    teacher_steps: int = option(64, "DDIM steps of the first teacher", interval="[2, inf)", group=DISTILLATION)
    final_steps: int = option(1, "steps of the last student", interval="[1, inf)", group=DISTILLATION)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.resume_from_checkpoint not in (None, "latest"):
            raise ValueError(
                "--resume_from_checkpoint must be 'latest' for progressive distillation: each round has its own "
                f"checkpoints, and the unfinished round resumes from its newest; got {self.resume_from_checkpoint!r}"
            )
        halvings = math.log2(self.teacher_steps / self.final_steps)
        if halvings < 1 or halvings != int(halvings):
            raise ValueError(
                f"--teacher_steps ({self.teacher_steps}) must be --final_steps ({self.final_steps}) times a power of "
                "2 (each round halves the steps), e.g. 64 and 1"
            )

    def rounds(self) -> list[ProgressiveDistillationConfig]:
        """Each round's configuration: its folder `steps-N`, its N = teacher_steps/2, /4, …, final_steps, and the
        push for the last round only."""
        steps = [self.teacher_steps >> k for k in range(1, int(math.log2(self.teacher_steps // self.final_steps)) + 1)]
        last = {name: getattr(self, name) for name in ("push_to_hub", "hub_push_intermediate", "hub_dry_run")}
        return [
            replace(
                self,
                output_dir=str(Path(self.output_dir) / f"steps-{n}"),
                num_inference_steps=n,
                **{name: value and n == steps[-1] for name, value in last.items()},
            )
            for n in steps
        ]


def finished_round(round_dir: Path, lineage: dict) -> bool:
    """Whether `round_dir` holds the finished round `lineage` describes; a finished round of another distillation
    (another teacher or step counts) is refused."""
    if not ((round_dir / "training_info.json").is_file() and (round_dir / LINEAGE_FILE).is_file()):
        return False
    recorded = read_record(round_dir / LINEAGE_FILE)
    if any(
        recorded.get(key) != lineage[key] for key in ("method", "teacher", "round", "rounds", "teacher_steps", "steps")
    ):
        raise ValueError(
            f"{round_dir} holds a round of another distillation (teacher {recorded.get('teacher')}, "
            f"{recorded.get('teacher_steps')} → {recorded.get('steps')} steps); pass --overwrite_output_dir to "
            "replace it, or another --output_dir"
        )
    return True


def check_distilled_from(round_dir: Path, teacher: HFDDPMPipeline) -> None:
    """Refuse a finished round whose recorded teacher is not the weights it would be distilled from now."""
    recorded = read_record(round_dir / LINEAGE_FILE).get("teacher_weights")
    if recorded not in (None, current := weights_fingerprint(teacher.unet.state_dict())):
        raise ValueError(
            f"{round_dir} was distilled from other teacher weights ({recorded}) than it would be now ({current}); "
            "pass --overwrite_output_dir to distil again, or another --output_dir"
        )


def distill_progressive(config: ProgressiveDistillationConfig) -> int:
    """Progressive distillation, round by round; with --resume_from_checkpoint latest, finished rounds are kept and
    the unfinished one resumes. Every folder is checked before the first round, and the rounds' parent folder is
    locked for the distillation's life. The exit status (0, or 1 when a push failed)."""
    teacher, config = load_teacher(config)
    if config.teacher_steps > (steps := teacher.scheduler.config.num_train_timesteps):
        raise ValueError(f"--teacher_steps {config.teacher_steps} exceeds the teacher's T = {steps}")
    rounds = config.rounds()
    lineages = [
        {
            "method": "progressive distillation (Salimans & Ho 2022)",
            "loss": "x-space squared error to the two-teacher-step target, weight max(SNR, 1)",
            "teacher": config.teacher,
            "round": number,
            "rounds": len(rounds),
            "teacher_steps": 2 * round_config.num_inference_steps,
            "steps": round_config.num_inference_steps,
        }
        for number, round_config in enumerate(rounds, start=1)
    ]
    resuming = config.resume_from_checkpoint is not None
    finished = [
        resuming and finished_round(Path(c.output_dir), lineage) for c, lineage in zip(rounds, lineages, strict=True)
    ]
    for round_config, done in zip(rounds, finished, strict=True):
        if not done:
            check_output_dir(round_config)
    # The first round replaces every round's earlier outputs at once (no stale later round may outlive a stopped
    # run), once its data is loaded and checked.
    everything = [Path(round_config.output_dir) for round_config in rounds]
    with run_lock(Path(config.output_dir)):
        status, earlier_seconds, source = 0, 0.0, config.teacher
        for round_config, lineage, done in zip(rounds, lineages, finished, strict=True):
            round_dir = Path(round_config.output_dir)
            if done:
                check_distilled_from(round_dir, teacher)
            else:
                lineage.update(distilled_from=source, earlier_rounds_seconds=round(earlier_seconds, 1))

                def objective(teacher: Teacher, student: torch.nn.Module, n: int = lineage["steps"]):
                    dropout = config.class_dropout_prob or 0.0
                    return ProgressiveDistillationObjective(teacher, config.prediction_type, n, dropout)

                data = student_data(round_config, teacher)
                replaces = everything if lineage["round"] == 1 else None
                status = max(status, train_student(round_config, objective, teacher, lineage, data, replaces))
            earlier_seconds += read_record(round_dir / "training_info.json")["wall_time_seconds"]
            teacher, source = HFDDPMPipeline.from_pretrained(round_dir), str(round_dir)
    PartialState().destroy_process_group()
    return status
