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
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
from accelerate import PartialState

from .. import durable
from ..conditioning import num_classes
from ..pipelines import HFDDPMPipeline
from .artefacts import record_arguments
from .command import run_command
from .config import DEFAULT_CLASS_DROPOUT_PROB, TrainingConfig, launched_as_main_process, training_argument_parser
from .distillation import (
    STUDENT_PREDICTION_TYPES,
    ConsistencyDistillationObjective,
    DistillationObjective,
    ProgressiveDistillationObjective,
    Teacher,
    check_student_prediction_type,
)
from .engine import Trainer
from .setup import (
    check_output_dir,
    check_output_path,
    create_accelerator,
    delete_run_outputs,
    load_training_images,
    output_dir_lock,
    remove_earlier_run_outputs,
)

LINEAGE_FILE = "distillation.json"
# The options that say which images (and labels) a run trains on, read from a teacher's training_args.json when none
# is given, and the label dropout the teacher trained with.
DATA_OPTIONS = (
    "dataset_name",
    "dataset_config_name",
    "train_data_dir",
    "split",
    "image_column",
    "label_column",
    "class_dropout_prob",
)


@dataclass(kw_only=True)
class DistillationConfig(TrainingConfig):
    """A distillation run: the engine's options, the teacher, and the student's prediction type (None: the teacher's
    when it is v or x_0, else v). The noise schedule, resolution and channels are the teacher's, and so is the data
    when the teacher's folder records it (`load_teacher`)."""

    teacher: str | None = None
    prediction_type: str | None = None
    resolution: int | None = None
    learning_rate: float = 2e-4
    lr_scheduler: str = "linear"
    lr_warmup_steps: int = 0
    checkpointing_steps: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.teacher:
            raise ValueError("--teacher is required: a pipeline folder or Hub repository to distil")
        if self.prediction_type is not None:
            check_student_prediction_type(self.prediction_type, "--prediction_type")


@dataclass(kw_only=True)
class ProgressiveDistillationConfig(DistillationConfig):
    """Progressive distillation: rounds from `teacher_steps` to `final_steps`, `max_train_steps` each."""

    positive_counts: ClassVar[tuple[str, ...]] = (*TrainingConfig.positive_counts, "teacher_steps", "final_steps")
    output_dir: str = "outputs/progressive-digits"
    teacher_steps: int = 64
    final_steps: int = 1
    max_train_steps: int | None = 500

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

    def student_steps(self) -> list[int]:
        """The step count of each round's student: teacher_steps/2, teacher_steps/4, …, final_steps."""
        return [self.teacher_steps >> k for k in range(1, int(math.log2(self.teacher_steps // self.final_steps)) + 1)]


@dataclass(kw_only=True)
class ConsistencyDistillationConfig(DistillationConfig):
    """Consistency distillation on an N-point skipping grid with a target network of decay μ; the saved pipeline
    samples at `num_inference_steps`."""

    positive_counts: ClassVar[tuple[str, ...]] = (*TrainingConfig.positive_counts, "num_ddim_timesteps")
    intervals: ClassVar[dict[str, tuple[str, float, float, str]]] = {
        **TrainingConfig.intervals,
        "target_ema_decay": ("[", 0.0, 1.0, ")"),
    }
    output_dir: str = "outputs/consistency-digits"
    num_ddim_timesteps: int = 50
    target_ema_decay: float = 0.95
    num_inference_steps: int = 2
    max_train_steps: int | None = 2000

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.num_inference_steps <= self.num_ddim_timesteps:
            raise ValueError(
                f"--num_inference_steps ({self.num_inference_steps}) must be at most --num_ddim_timesteps "
                f"({self.num_ddim_timesteps}): LCMScheduler samples on that grid"
            )


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
    """The teacher pipeline, and `config` completed from it: its resolution and channels (others are refused), the
    student's prediction type, and its training data unless --dataset_name or --train_data_dir name some."""
    teacher = HFDDPMPipeline.from_pretrained(config.teacher)
    size, channels = teacher.unet.config.sample_size, teacher.unet.config.in_channels
    size = size if isinstance(size, int) else size[0]
    if config.resolution not in (None, size):
        raise ValueError(f"--resolution {config.resolution} differs from the teacher's {size}; leave it out")
    if config.channels not in (None, channels):
        raise ValueError(f"--channels {config.channels} differs from the teacher's {channels}; leave it out")
    teacher_prediction = teacher.scheduler.config.get("prediction_type", "epsilon")
    prediction_type = config.prediction_type or (
        teacher_prediction if teacher_prediction in STUDENT_PREDICTION_TYPES else "v_prediction"
    )
    data = {}
    if not (config.dataset_name or config.train_data_dir):
        data = teacher_data(config.teacher, size, channels)
    classes = num_classes(teacher.unet)
    if config.class_conditional and classes is None:
        raise ValueError(f"--class_conditional: the teacher {config.teacher} is unconditional; drop the flag")
    if classes is not None:  # the student learns the teacher's conditional and unconditional steps, as it trained
        given = (config.class_dropout_prob, data.get("class_dropout_prob"), DEFAULT_CLASS_DROPOUT_PROB)
        data.update(class_conditional=True, class_dropout_prob=next(p for p in given if p is not None))
    return teacher, replace(config, resolution=size, channels=channels, prediction_type=prediction_type, **data)


def teacher_data(teacher: str, size: int, channels: int) -> dict:
    """The data options the teacher's training_args.json records; the built-in digits ({}) for an 8×8 grey teacher
    that records none; otherwise a ValueError asking for the data."""
    record = Path(teacher) / "training_args.json"
    if record.is_file():
        args = json.loads(record.read_text(encoding="utf-8"))
        return {name: args[name] for name in DATA_OPTIONS if name in args}
    if (size, channels) == (8, 1):
        return {}
    raise ValueError(
        f"--teacher {teacher} does not record its training data: pass --dataset_name or --train_data_dir (the "
        "images the teacher was trained on)"
    )


def write_lineage(output_dir: Path, lineage: dict) -> None:
    """`distillation.json`: how the student in `output_dir` came to be, which its model card shows."""
    durable.write_text(output_dir / LINEAGE_FILE, json.dumps(lineage, indent=2))


def train_student(
    config: DistillationConfig,
    objective_for: Callable[[Teacher, torch.nn.Module], DistillationObjective],
    teacher: HFDDPMPipeline,
    lineage: dict,
) -> int:
    """One engine run: the student starts as a copy of the teacher's network; `objective_for(teacher, student)`
    makes the objective."""
    output_dir = Path(config.output_dir)
    student = copy.deepcopy(teacher.unet).float().train().requires_grad_(True)
    if config.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    objective = objective_for(Teacher.from_pipeline(teacher), student)
    accelerator = create_accelerator(config, output_dir)
    remove_earlier_run_outputs(config, accelerator, output_dir)
    images = load_training_images(config, accelerator)
    teacher_classes = objective.teacher.id2label
    if config.class_conditional and dict(enumerate(images.label_names)) != teacher_classes:
        raise ValueError(
            f"the data's classes {images.label_names} are not the teacher's {list(teacher_classes.values())}; "
            "pass the teacher's data (--dataset_name or --train_data_dir, and --label_column)"
        )
    if accelerator.is_main_process:
        record_arguments(config, output_dir)  # first: it marks the folder as a run's
        write_lineage(output_dir, lineage)
    status = Trainer(config, accelerator, objective, student, images).run()
    accelerator.wait_for_everyone()  # the next round reads what the main process wrote
    return status


def finished_round(round_dir: Path, lineage: dict) -> bool:
    """Whether `round_dir` holds the finished round `lineage` describes; a finished round of another distillation
    (another teacher or step counts) is refused."""
    if not ((round_dir / "training_info.json").is_file() and (round_dir / LINEAGE_FILE).is_file()):
        return False
    recorded = json.loads((round_dir / LINEAGE_FILE).read_text(encoding="utf-8"))
    if any(
        recorded.get(key) != lineage[key] for key in ("method", "teacher", "round", "rounds", "teacher_steps", "steps")
    ):
        raise ValueError(
            f"{round_dir} holds a round of another distillation (teacher {recorded.get('teacher')}, "
            f"{recorded.get('teacher_steps')} → {recorded.get('steps')} steps); pass --overwrite_output_dir to "
            "replace it, or another --output_dir"
        )
    return True


def round_configs(config: ProgressiveDistillationConfig) -> list[ProgressiveDistillationConfig]:
    """Each round's configuration: its folder `steps-N`, its step count, and the push for the last round only."""
    steps = config.student_steps()
    return [
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


def distill_progressive(config: ProgressiveDistillationConfig) -> int:
    """Progressive distillation, round by round; with --resume_from_checkpoint latest, finished rounds are kept and
    the unfinished one resumes. Every folder is checked before the first round. The exit status (0, or 1 when a
    push failed). The rounds' parent folder is locked for the distillation's life."""
    check_output_path(config.output_dir)  # the rounds' parent: each round's folder is checked below
    teacher, config = load_teacher(config)
    num_train_timesteps = teacher.scheduler.config.num_train_timesteps
    if config.teacher_steps > num_train_timesteps:
        raise ValueError(f"--teacher_steps {config.teacher_steps} exceeds the teacher's T = {num_train_timesteps}")
    rounds = round_configs(config)
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
        resuming and finished_round(Path(round_config.output_dir), lineage)
        for round_config, lineage in zip(rounds, lineages, strict=True)
    ]
    for round_config, done in zip(rounds, finished, strict=True):
        if not done:
            check_output_dir(round_config)
    with output_dir_lock(Path(config.output_dir)):
        if config.overwrite_output_dir and not resuming and launched_as_main_process():
            for round_config in rounds:  # all at once: no stale later round may outlive a stopped run
                delete_run_outputs(Path(round_config.output_dir))
        status = train_rounds(config, teacher, rounds, lineages, finished)
    PartialState().destroy_process_group()
    return status


def train_rounds(
    config: ProgressiveDistillationConfig,
    teacher: HFDDPMPipeline,
    rounds: list[ProgressiveDistillationConfig],
    lineages: list[dict],
    finished: list[bool],
) -> int:
    """Train the unfinished rounds, each from the previous round's student; the highest exit status."""
    status, earlier_seconds, source = 0, 0.0, config.teacher
    for round_config, lineage, done in zip(rounds, lineages, finished, strict=True):
        round_dir = Path(round_config.output_dir)
        if not done:
            lineage.update(distilled_from=source, earlier_rounds_seconds=round(earlier_seconds, 1))

            def objective(
                teacher: Teacher, student: torch.nn.Module, n: int = lineage["steps"]
            ) -> DistillationObjective:
                return ProgressiveDistillationObjective(
                    teacher, config.prediction_type, n, config.class_dropout_prob or 0.0
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

    with output_dir_lock(Path(config.output_dir)):
        status = train_student(config, objective, teacher, lineage)
    PartialState().destroy_process_group()
    return status


def distill_progressive_command(argv: list[str] | None = None, description: str | None = None) -> int:
    """`examples/distill_progressive.py`: parse `argv` and distil; exit statuses as `run_command` says."""
    parser = distillation_argument_parser(ProgressiveDistillationConfig, description)
    return run_command(lambda: distill_progressive(ProgressiveDistillationConfig(**vars(parser.parse_args(argv)))))


def distill_consistency_command(argv: list[str] | None = None, description: str | None = None) -> int:
    """`examples/distill_consistency.py`: parse `argv` and distil; exit statuses as `run_command` says."""
    parser = distillation_argument_parser(ConsistencyDistillationConfig, description)
    return run_command(lambda: distill_consistency(ConsistencyDistillationConfig(**vars(parser.parse_args(argv)))))
