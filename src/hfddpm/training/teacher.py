"""What progressive and consistency distillation share: the frozen teacher, its student's scheduler and start, the
distillation options, and one engine run of a student (`hfddpm.training.progressive`, `...consistency`).

Any checkpoint — hfddpm's or a stock DDPM/DDIM folder, predicting ε, x_0 or v — is a teacher: its network and
noise schedule define the deterministic DDIM sampler a student learns to shorten. The student starts as a copy of
the teacher's network, trains on the teacher's data, and records its lineage in `distillation.json`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator

from ..arguments import option
from ..conditioning import num_classes, predict
from ..image_data import TrainingImages
from ..models.latent_space import image_size
from ..pipelines import HFDDPMPipeline
from ..records import read_record, weights_fingerprint
from ..run_folder import RUN_RECORD, recorded_data
from ..schedulers import DDIMScheduler
from ..schedulers.gaussian_diffusion import ddim_step, per_sample
from .config import DEFAULT_CLASS_DROPOUT_PROB, ENGINE, RunConfig
from .engine import Trainer
from .latent_data import TrainingLatents
from .objectives import drop_labels
from .setup import create_accelerator, load_training_images

LINEAGE_FILE = "distillation.json"
# ε-prediction's x̂_0 = (x_t − σ ε̂)/α explodes as α → 0, at the first of few steps: students predict v or x_0.
STUDENT_PREDICTIONS = Literal["v_prediction", "sample"]
DISTILLATION = "distillation"


@dataclass(kw_only=True)
class DistillationConfig(RunConfig):
    """A distillation run: the engine's options, the teacher, and the student's prediction type. The noise schedule,
    resolution and channels are the teacher's, and so is the data when the teacher's folder records it."""

    teacher: str = option(help="pipeline folder or Hub repository to distil", group=DISTILLATION, path="input")
    prediction_type: STUDENT_PREDICTIONS | None = option(
        None,
        "what the student predicts (default: the teacher's when it is v or x_0, else v)",
        group=DISTILLATION,
        defines_run=True,
    )
    resolution: int | None = option(None, "the teacher's", group=DISTILLATION)
    learning_rate: float = option(2e-4, interval="(0, inf)", group=ENGINE)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = option("linear", group=ENGINE)
    lr_warmup_steps: int = option(0, "in optimizer steps", interval="[0, inf)", group=ENGINE)
    checkpointing_steps: int = option(100, "checkpoint every N steps", interval="[1, inf)", group=ENGINE)


class Teacher:
    """A frozen network with its noise schedule, used as the deterministic DDIM sampler it defines: any ε-, x_0- or
    v-prediction network (a learned variance's extra channels are ignored); x̂_0 is clipped as its scheduler clips
    (`clip_sample`), with ε̂ re-derived from the clipped x̂_0, as `HFDDPMPipeline` samples it. A class-conditional
    teacher is called with each sample's label ("no label" included), and its class names pass to the student."""

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler: DDIMScheduler,
        id2label: dict[int, str] | None = None,
        vae: torch.nn.Module | None = None,
    ) -> None:
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.num_classes = num_classes(unet)
        self.id2label = id2label
        self.vae = vae  # a latent teacher's autoencoder, which its students keep

    @classmethod
    def from_pipeline(cls, pipeline: HFDDPMPipeline) -> Teacher:
        """The teacher a pipeline's network and noise schedule define, whatever its scheduler class; its last step
        lands on x_0 itself (ᾱ = 1), as the students' do."""
        config = stated_config(pipeline.scheduler.config)
        id2label = pipeline.id2label if num_classes(pipeline.unet) is not None else None
        return cls(pipeline.unet, DDIMScheduler.from_config(config, set_alpha_to_one=True), id2label, pipeline.vae)

    @torch.no_grad()
    def predict_original(
        self, sample: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x̂_0(x_t, t[, c]), clipped as the teacher's scheduler says."""
        self.unet.to(sample.device)
        output = predict(self.unet, sample.to(self.unet.dtype), timesteps, class_labels)
        return self.scheduler.clip_original_sample(predicted_original(self.scheduler, output, sample, timesteps))

    def ddim_step(
        self, sample: torch.Tensor, timesteps: torch.Tensor, prev_timesteps: torch.Tensor, class_labels=None
    ) -> torch.Tensor:
        """One deterministic DDIM step of the teacher, x_t → x_s, per sample (`gaussian_diffusion.ddim_step`)."""
        alpha_bar_t = per_sample(self.scheduler.alpha_bar(timesteps), sample)
        alpha_bar_s = per_sample(self.scheduler.alpha_bar(prev_timesteps), sample)
        return ddim_step(sample, self.predict_original(sample, timesteps, class_labels), alpha_bar_t, alpha_bar_s)


def stated_config(config: dict) -> dict:
    """A scheduler config without diffusers' private keys: its `_use_default_values` would make `from_config` put
    the new class's defaults back in place of the values given."""
    return {key: value for key, value in config.items() if not key.startswith("_")}


def predicted_original(
    scheduler: DDIMScheduler, output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """x̂_0(x_t, t) from a network's `output` read as the scheduler's prediction type (a learned variance's extra
    channels dropped), in float32 and unclipped."""
    return scheduler.convert_prediction(output.float()[:, : sample.shape[1]], sample, timesteps, "sample")


class DistillationObjective:
    """What both distillation objectives share: a frozen teacher, the student's DDIM scheduler — the teacher's noise
    schedule and clipping, the student's prediction type, and the "trailing" grid, whose N-step timesteps are every
    other of its 2N-step ones, so each round's grid nests in its teacher's — and x_t drawn at timesteps of a grid.

    A class-conditional teacher's student learns the teacher's conditional and unconditional steps alike: batches are
    (images, labels), and each label becomes "no label" with probability `class_dropout_prob`, as in training. At
    sampling time guidance combines the student's own two predictions; that is not the distillation of the guided
    teacher (Meng et al. 2023), whose student learns ε̂_∅ + w (ε̂_c − ε̂_∅) at each w.
    """

    def __init__(self, teacher: Teacher, prediction_type: str, class_dropout_prob: float = 0.0) -> None:
        self.teacher = teacher
        # What a resume must find again (`checkpoints.check_same_run`): the same teacher weights.
        self.identity = {"teacher_weights": weights_fingerprint(teacher.unet.state_dict())}
        self.scheduler = DDIMScheduler.from_config(
            stated_config(teacher.scheduler.config),
            prediction_type=prediction_type,
            timestep_spacing="trailing",
            reverse_variance="fixed_small",
            analytic_gamma=None,
            set_alpha_to_one=True,
        )
        self.class_dropout_prob = class_dropout_prob

    def noisy_batch(
        self, batch: Any, grid: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(x_0, x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, the index into `grid` of each sample's t, the labels after dropout
        or None), all drawn from the run's generator."""
        images, labels = batch if self.teacher.num_classes is not None else (batch, None)
        original = images.float()
        index = torch.randint(0, len(grid), (len(original),), generator=generator, device=generator.device).cpu()
        noise = torch.randn(original.shape, generator=generator, device=generator.device).to(original.device)
        if labels is not None:
            labels = drop_labels(labels, self.teacher.num_classes, self.class_dropout_prob, generator)
        return original, self.scheduler.add_noise(original, noise, grid[index].to(original.device)), index, labels

    def student_pipeline(self, unet: torch.nn.Module, scheduler: Any, steps: int) -> HFDDPMPipeline:
        """The student with `scheduler` and the teacher's classes, sampling at `steps` steps unless told otherwise."""
        teacher = self.teacher
        return HFDDPMPipeline(
            unet, scheduler, default_num_inference_steps=steps, id2label=teacher.id2label, vae=teacher.vae
        )

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def load_teacher(config: DistillationConfig) -> tuple[HFDDPMPipeline, DistillationConfig]:
    """The teacher pipeline, and `config` completed from it: its resolution and channels (others are refused), the
    student's prediction type, and its training data unless --dataset_name or --train_data_dir name some (a column or
    split given as a flag is kept)."""
    teacher = HFDDPMPipeline.from_pretrained(config.teacher)
    _, channels, size, _ = teacher.sample_shape(1)
    if teacher.vae is not None:  # a latent teacher: the data are the images its latents decode to
        channels, size = teacher.vae.config.in_channels, image_size(teacher.vae, size)
    data = recorded_options(config, "teacher", size, channels)
    prediction = teacher.scheduler.config.get("prediction_type", "epsilon")
    prediction_type = config.prediction_type or ("v_prediction" if prediction == "epsilon" else prediction)
    classes = num_classes(teacher.unet)
    if config.class_conditional and classes is None:
        raise ValueError(f"--class_conditional: the teacher {config.teacher} is unconditional; drop the flag")
    if classes is not None:  # the student learns the teacher's conditional and unconditional steps, as it trained
        given = (config.class_dropout_prob, data.pop("class_dropout_prob", None), DEFAULT_CLASS_DROPOUT_PROB)
        data.update(class_conditional=True, class_dropout_prob=next(p for p in given if p is not None))
    return teacher, replace(config, resolution=size, channels=channels, prediction_type=prediction_type, **data)


def recorded_options(config: RunConfig, flag: str, size: int, channels: int) -> dict:
    """The data options of a run that starts from the pipeline `config.<flag>` ("teacher", "model"), whose images are
    `size` pixels square with `channels` channels (another --resolution or --channels is refused): what its
    training_args.json records (local paths found where they were recorded, and its label dropout) unless
    --dataset_name or --train_data_dir name data, a column or split given as a flag kept; the built-in digits ({})
    for an 8×8 grey pipeline that records none; otherwise a ValueError asking for the data."""
    folder = getattr(config, flag)
    for name, value in (("resolution", size), ("channels", channels)):
        if getattr(config, name) not in (None, value):
            raise ValueError(f"--{name} {getattr(config, name)} differs from the {flag}'s {value}; leave it out")
    record = Path(folder) / RUN_RECORD
    if config.dataset_name or config.train_data_dir or not record.is_file() and (size, channels) == (8, 1):
        return {}
    if not record.is_file():
        raise ValueError(
            f"--{flag} {folder} does not record its training data: pass --dataset_name or --train_data_dir"
        )
    dropout = read_record(record).get("class_dropout_prob")
    data = recorded_data(folder) | ({} if dropout is None else {"class_dropout_prob": dropout})
    defaults = {field.name: field.default for field in fields(config)}
    return {name: value for name, value in data.items() if getattr(config, name) == defaults[name]}  # flags win


def student_data(
    config: DistillationConfig, teacher: HFDDPMPipeline
) -> tuple[Accelerator, TrainingImages | TrainingLatents]:
    """The accelerator and the student's training images (a latent teacher's: their latents), whose classes must be
    the teacher's."""
    accelerator = create_accelerator(config, Path(config.output_dir))
    images = load_training_images(config, accelerator)
    teacher_classes = teacher.id2label if num_classes(teacher.unet) is not None else None
    if config.class_conditional and dict(enumerate(images.label_names)) != teacher_classes:
        raise ValueError(
            f"the data's classes {images.label_names} are not the teacher's {list(teacher_classes.values())}; "
            "pass the teacher's data (--dataset_name or --train_data_dir, and --label_column)"
        )
    if teacher.vae is not None:
        return accelerator, TrainingLatents.encode(images, teacher.vae, accelerator.device)
    return accelerator, images


def train_student(
    config: DistillationConfig,
    objective_for: Any,
    teacher: HFDDPMPipeline,
    lineage: dict,
    data: tuple[Accelerator, TrainingImages],
    replaces: list[Path] | None = None,
) -> int:
    """One engine run on `data` (`student_data`): the student starts as a copy of the teacher's network;
    `objective_for(teacher, student)` makes the objective; `lineage`, with the teacher's fingerprint, is recorded."""
    student = copy.deepcopy(teacher.unet).float().train().requires_grad_(True)
    if config.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    objective = objective_for(Teacher.from_pipeline(teacher), student)
    accelerator, images = data
    records = {LINEAGE_FILE: {**lineage, **objective.identity}}
    status = Trainer(config, accelerator, objective, student, images, replaces, records).run()
    accelerator.wait_for_everyone()  # the next round reads what the main process wrote
    return status
