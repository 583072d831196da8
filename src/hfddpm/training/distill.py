"""Few-step students of any checkpoint: progressive and consistency distillation, run by the training engine.

`distill_progressive(config)` halves the teacher's DDIM step count round by round (`--teacher_steps` → … →
`--final_steps`), each round an engine run whose student starts from the previous round's model and whose output is
an ordinary `HFDDPMPipeline` folder, `OUTPUT_DIR/steps-N`, sampling at its N steps by default.
`distill_consistency(config)` trains one consistency model, saved in `OUTPUT_DIR` with diffusers' `LCMScheduler`.
Each folder records its lineage in `distillation.json`, which its model card shows.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from .. import durable
from ..pipelines import HFDDPMPipeline
from .command import run_command
from .config import TrainingConfig, training_argument_parser
from .distillation import (
    STUDENT_PREDICTION_TYPES,
    ConsistencyDistillationObjective,
    ProgressiveDistillationObjective,
    Teacher,
)
from .engine import Trainer
from .setup import check_output_dir, create_accelerator, load_training_images, remove_earlier_run_outputs

LINEAGE_FILE = "distillation.json"


@dataclass(kw_only=True)
class DistillationConfig(TrainingConfig):
    """A distillation run: the engine's options, the teacher, and the student's prediction type. The resolution and
    channels are the teacher's; the noise schedule is the teacher's."""

    teacher: str | None = None
    prediction_type: str = "v_prediction"
    resolution: int | None = None
    learning_rate: float = 2e-4
    lr_scheduler: str = "linear"
    lr_warmup_steps: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.teacher:
            raise ValueError("--teacher is required: a pipeline folder or Hub repository to distil")
        if self.prediction_type not in STUDENT_PREDICTION_TYPES:
            raise ValueError(
                f"--prediction_type of a student must be one of {list(STUDENT_PREDICTION_TYPES)} (an ε-prediction "
                f"student's x̂_0 explodes at the first of few steps), got {self.prediction_type!r}"
            )


@dataclass(kw_only=True)
class ProgressiveDistillationConfig(DistillationConfig):
    """Progressive distillation: rounds from `teacher_steps` to `final_steps`, `max_train_steps` each."""

    output_dir: str = "outputs/progressive-digits"
    teacher_steps: int = 64
    final_steps: int = 1
    max_train_steps: int | None = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("teacher_steps", "final_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        halvings = math.log2(self.teacher_steps / self.final_steps)
        if halvings < 1 or halvings != int(halvings):
            raise ValueError(
                f"--teacher_steps ({self.teacher_steps}) must be --final_steps ({self.final_steps}) times a power of "
                "2 (each round halves the steps), e.g. 64 and 1"
            )

    def student_steps(self) -> list[int]:
        """The step count of each round's student: teacher_steps/2, teacher_steps/4, …, final_steps."""
        return [self.teacher_steps >> k for k in range(1, int(math.log2(self.teacher_steps // self.final_steps)) + 1)]


@dataclass(kw_only=True)
class ConsistencyDistillationConfig(DistillationConfig):
    """Consistency distillation on an N-point skipping grid with a target network of decay μ; the saved pipeline
    samples at `num_inference_steps`."""

    output_dir: str = "outputs/consistency-digits"
    num_ddim_timesteps: int = 50
    target_ema_decay: float = 0.95
    num_inference_steps: int = 2
    max_train_steps: int | None = 2000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_ddim_timesteps < 1:
            raise ValueError(f"--num_ddim_timesteps must be at least 1, got {self.num_ddim_timesteps}")
        if not self.num_inference_steps <= self.num_ddim_timesteps:
            raise ValueError(
                f"--num_inference_steps ({self.num_inference_steps}) must be at most --num_ddim_timesteps "
                f"({self.num_ddim_timesteps}): LCMScheduler samples on that grid"
            )
        if not (math.isfinite(self.target_ema_decay) and 0 <= self.target_ema_decay < 1):
            raise ValueError(f"--target_ema_decay must be a finite number in [0, 1), got {self.target_ema_decay}")


def distillation_argument_parser(config_class: type[DistillationConfig], description: str | None = None):
    """The command line of a distillation script: the engine's flags (not the objective's: the teacher fixes the
    network and noise schedule), the teacher, and the method's own."""
    parser = training_argument_parser(description, config_class, objective_arguments=False)
    group = parser.add_argument_group("distillation")
    group.add_argument("--teacher", required=True, help="pipeline folder or Hub repository to distil")
    group.add_argument("--prediction_type", choices=STUDENT_PREDICTION_TYPES, help="what the student predicts")
    if config_class is ProgressiveDistillationConfig:
        group.add_argument("--teacher_steps", type=int, help="DDIM steps of the first teacher")
        group.add_argument("--final_steps", type=int, help="steps of the last student")
    else:
        group.add_argument("--num_ddim_timesteps", type=int, help="N of the skipping grid (LCM's)")
        group.add_argument("--target_ema_decay", type=float, help="μ of the target network")
    return parser


def load_teacher(config: DistillationConfig) -> tuple[HFDDPMPipeline, DistillationConfig]:
    """The teacher pipeline, and `config` with the teacher's resolution and channels (a different --resolution is
    refused)."""
    teacher = HFDDPMPipeline.from_pretrained(config.teacher)
    size, channels = teacher.unet.config.sample_size, teacher.unet.config.in_channels
    size = size if isinstance(size, int) else size[0]
    if config.resolution not in (None, size):
        raise ValueError(f"--resolution {config.resolution} differs from the teacher's {size}; leave it out")
    if config.channels not in (None, channels):
        raise ValueError(f"--channels {config.channels} differs from the teacher's {channels}; leave it out")
    return teacher, replace(config, resolution=size, channels=channels)


def write_lineage(output_dir: Path, lineage: dict) -> None:
    durable.write_text(output_dir / LINEAGE_FILE, json.dumps(lineage, indent=2))


def train_student(config: DistillationConfig, objective_for, teacher: HFDDPMPipeline, lineage: dict) -> int:
    """One engine run: the student starts as a copy of the teacher's network; `objective_for(teacher, student)`
    makes the objective."""
    output_dir = Path(config.output_dir)
    student = copy.deepcopy(teacher.unet).float().train().requires_grad_(True)
    objective = objective_for(Teacher.from_pipeline(teacher), student)
    accelerator = create_accelerator(config, output_dir)
    remove_earlier_run_outputs(config, accelerator, output_dir)
    images = load_training_images(config, accelerator)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_lineage(output_dir, lineage)
    status = Trainer(config, accelerator, objective, student, images).run()
    accelerator.wait_for_everyone()  # the next round reads what the main process wrote
    return status


def round_finished(round_dir: Path) -> bool:
    return (round_dir / "training_info.json").is_file() and (round_dir / "model_index.json").is_file()


def distill_progressive(config: ProgressiveDistillationConfig) -> int:
    """Progressive distillation, round by round; with --resume_from_checkpoint latest, finished rounds are kept and
    the unfinished one resumes. The exit status (0, or 1 when a push failed)."""
    check_output_dir(config)
    teacher, config = load_teacher(config)
    num_train_timesteps = teacher.scheduler.config.num_train_timesteps
    if config.teacher_steps > num_train_timesteps:
        raise ValueError(f"--teacher_steps {config.teacher_steps} exceeds the teacher's T = {num_train_timesteps}")
    steps = config.student_steps()
    rounds = [
        replace(
            config,
            output_dir=str(Path(config.output_dir) / f"steps-{n}"),
            num_inference_steps=n,
            push_to_hub=config.push_to_hub and n == steps[-1],
            hub_push_intermediate=config.hub_push_intermediate and n == steps[-1],
            hub_dry_run=config.hub_dry_run and n == steps[-1],
        )
        for n in steps
    ]
    resuming = config.resume_from_checkpoint is not None
    for round_config in rounds:  # refuse an earlier run in any round's folder before the first round starts
        if not (resuming and round_finished(Path(round_config.output_dir))):
            check_output_dir(round_config)
    status, earlier_seconds, source = 0, 0.0, config.teacher
    for number, (n, round_config) in enumerate(zip(steps, rounds, strict=True), start=1):
        round_dir = Path(round_config.output_dir)
        if not (resuming and round_finished(round_dir)):
            lineage = {
                "method": "progressive distillation (Salimans & Ho 2022)",
                "teacher": config.teacher,
                "distilled_from": source,
                "round": number,
                "rounds": len(steps),
                "teacher_steps": 2 * n,
                "steps": n,
                "earlier_rounds_seconds": round(earlier_seconds, 1),
            }
            objective = lambda teacher, student, n=n: ProgressiveDistillationObjective(  # noqa: E731
                teacher, config.prediction_type, n
            )
            status = max(status, train_student(round_config, objective, teacher, lineage))
        earlier_seconds += json.loads((round_dir / "training_info.json").read_text())["wall_time_seconds"]
        teacher, source = HFDDPMPipeline.from_pretrained(round_dir), str(round_dir)
    return status


def distill_consistency(config: ConsistencyDistillationConfig) -> int:
    """Consistency distillation into `config.output_dir`; the exit status (0, or 1 when a push failed)."""
    check_output_dir(config)
    teacher, config = load_teacher(config)
    lineage = {
        "method": "consistency distillation (Song et al. 2023; Luo et al. 2023)",
        "teacher": config.teacher,
        "distilled_from": config.teacher,
        "num_ddim_timesteps": config.num_ddim_timesteps,
        "target_ema_decay": config.target_ema_decay,
        "steps": config.num_inference_steps,
    }

    def objective(teacher: Teacher, student) -> ConsistencyDistillationObjective:
        return ConsistencyDistillationObjective(
            teacher,
            config.prediction_type,
            student,
            config.num_ddim_timesteps,
            config.target_ema_decay,
            config.num_inference_steps,
        )

    return train_student(config, objective, teacher, lineage)


def distill_progressive_command(argv: list[str] | None = None, description: str | None = None) -> int:
    """`examples/distill_progressive.py`: parse `argv` and distil; exit statuses as `run_command` says."""
    parser = distillation_argument_parser(ProgressiveDistillationConfig, description)
    return run_command(lambda: distill_progressive(ProgressiveDistillationConfig(**vars(parser.parse_args(argv)))))


def distill_consistency_command(argv: list[str] | None = None, description: str | None = None) -> int:
    """`examples/distill_consistency.py`: parse `argv` and distil; exit statuses as `run_command` says."""
    parser = distillation_argument_parser(ConsistencyDistillationConfig, description)
    return run_command(lambda: distill_consistency(ConsistencyDistillationConfig(**vars(parser.parse_args(argv)))))
