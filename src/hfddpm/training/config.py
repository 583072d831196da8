"""The training configuration: one dataclass whose construction checks every value, and its command line.

`TrainingConfig(**values)` is what the engine runs; `training_argument_parser()` is the command line of
`examples/train_unconditional.py`, whose flags are the dataclass's fields. The parser sets only the flags given, so
the defaults live in one place, the dataclass.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from ..arguments import is_integer, is_number
from ..image_data import DIGITS
from ..models.unet_presets import UNET_PRESETS
from ..schedulers.gaussian_diffusion import PREDICTION_TYPES, ReverseVariance
from .losses import LossType
from .timestep_sampling import TimestepSampling

DEFAULT_MAX_TRAIN_STEPS = 2000
# p_uncond of Ho & Salimans (2022): the share of training labels replaced by "no label", so that one network learns
# the conditional and the unconditional model.
DEFAULT_CLASS_DROPOUT_PROB = 0.1
# The values each named option may take, for the dataclass's checks and the command line's choices alike.
CHOICES = {
    "channels": (1, 3),
    "model_preset": tuple(sorted(UNET_PRESETS)),
    "prediction_type": PREDICTION_TYPES,
    "beta_schedule": ("linear", "cosine"),
    "reverse_variance": tuple(choice.value for choice in ReverseVariance if choice != ReverseVariance.ANALYTIC),
    "loss_type": tuple(choice.value for choice in LossType),
    "timestep_sampling": tuple(choice.value for choice in TimestepSampling),
    "lr_scheduler": ("constant", "constant_with_warmup", "linear", "cosine"),
    "on_nonfinite_loss": ("stop", "skip"),
    "mixed_precision": ("no", "fp16", "bf16"),
    "inference_scheduler": ("ddpm", "ddim"),
    "report_to": ("tensorboard", "none"),
}
_POSITIVE_COUNTS = (
    "train_batch_size",
    "gradient_accumulation_steps",
    "checkpointing_steps",
    "save_images_steps",
    "logging_steps",
    "num_sample_images",
    "num_inference_steps",
    "num_epochs",
    "max_train_steps",
    "cpu_threads",
    "preprocessing_num_workers",
    "eval_every",
    "eval_num_samples",
    "save_model_steps",
    "checkpoints_total_limit",
    "resolution",
    "num_train_timesteps",
)
_NON_NEGATIVE_COUNTS = ("lr_warmup_steps", "dataloader_num_workers")
# The interval each real-valued option must lie in, as its brackets say; every one must also be finite (None, where
# the option allows it, is its absence).
_INTERVALS = {
    "learning_rate": ("(", 0.0, math.inf, ")"),
    "max_grad_norm": ("(", 0.0, math.inf, ")"),
    "adam_beta1": ("[", 0.0, 1.0, ")"),
    "adam_beta2": ("[", 0.0, 1.0, ")"),
    "adam_epsilon": ("(", 0.0, math.inf, ")"),
    "adam_weight_decay": ("[", 0.0, math.inf, ")"),
    "vlb_weight": ("[", 0.0, math.inf, ")"),
    "ema_max_decay": ("[", 0.0, 1.0, "]"),
    "ema_inv_gamma": ("(", 0.0, math.inf, ")"),
    "ema_power": ("(", 0.0, math.inf, ")"),
    "snr_gamma": ("(", 0.0, math.inf, ")"),
}
_KIND_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "True or False",
    list[str]: "a list of strings",
    type(None): "None",
}
_KIND_ORDER = list(_KIND_NAMES)
MAX_SEED = 2**32 - 1  # NumPy's limit; `accelerate.utils.set_seed` seeds NumPy too


def _in_interval(value: float, interval: tuple[str, float, float, str]) -> bool:
    left, low, high, right = interval
    above = low <= value if left == "[" else low < value
    below = value <= high if right == "]" else value < high
    return math.isfinite(value) and above and below


@dataclass(kw_only=True)
class TrainingConfig:
    """Everything a training run is told; the field names are the training script's flags (see its `--help`).

    A subclass adding options extends `positive_counts` and `intervals`, the tables its values are checked against.
    """

    positive_counts: ClassVar[tuple[str, ...]] = _POSITIVE_COUNTS
    intervals: ClassVar[dict[str, tuple[str, float, float, str]]] = _INTERVALS

    # data
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_data_dir: str | None = None
    split: str = "train"
    image_column: str | None = None
    cache_dir: str | None = None
    resolution: int = 8
    channels: int | None = None
    random_crop: bool = False
    random_flip: bool = False
    dataloader_num_workers: int = 0
    preprocessing_num_workers: int | None = None
    class_conditional: bool = False
    label_column: str | None = None
    # model and objective
    model_preset: str = "digits"
    model_config: str | None = None
    prediction_type: str = "epsilon"
    beta_schedule: str = "linear"
    num_train_timesteps: int = 1000
    reverse_variance: str = ReverseVariance.FIXED_SMALL.value
    loss_type: str | None = None
    vlb_weight: float = 1e-3
    timestep_sampling: str = TimestepSampling.UNIFORM.value
    snr_gamma: float | None = None
    class_dropout_prob: float | None = None
    # training
    output_dir: str = "outputs/ddpm-digits"
    overwrite_output_dir: bool = False
    seed: int = 0
    train_batch_size: int = 64
    num_epochs: int | None = None
    max_train_steps: int | None = None
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    learning_rate: float = 2e-3
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 100
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    on_nonfinite_loss: str = "stop"
    use_ema: bool = True
    ema_max_decay: float = 0.9999
    ema_inv_gamma: float = 1.0
    ema_power: float = 0.75
    mixed_precision: str | None = None
    cpu_threads: int | None = None
    # checkpoints, samples and logs
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    resume_from_checkpoint: str | None = None
    save_images_steps: int = 500
    save_model_steps: int | None = None
    num_sample_images: int = 64
    inference_scheduler: str = "ddim"
    num_inference_steps: int = 50
    logging_steps: int = 10
    report_to: str = "tensorboard"
    eval_every: int | None = None
    eval_metrics: list[str] | None = None
    eval_num_samples: int = 256
    # Hugging Face Hub
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = field(default=None, repr=False)  # never printed, never recorded
    hub_private_repo: bool = False
    hub_revision: str | None = None
    hub_push_intermediate: bool = False
    hub_include_training_state: bool = False
    hub_dry_run: bool = False

    def __post_init__(self) -> None:
        from ..evaluation.report import METRICS
        from ..hub import check_repo_id, resolve_token

        self._check_types()
        for name, choices in CHOICES.items():
            if getattr(self, name) is not None and getattr(self, name) not in choices:
                raise ValueError(f"--{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        if unknown := sorted(set(self.eval_metrics or ()) - set(METRICS)):
            raise ValueError(f"--eval_metrics must be among {list(METRICS)}, got {unknown}")
        if self.num_epochs is None and self.max_train_steps is None:
            self.max_train_steps = DEFAULT_MAX_TRAIN_STEPS
        for name in self.positive_counts:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be at least 1, got {value}")
        for name in _NON_NEGATIVE_COUNTS:
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be at least 0, got {getattr(self, name)}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"--seed must be in [0, {MAX_SEED}], got {self.seed}")
        for name, interval in self.intervals.items():
            if getattr(self, name) is not None and not _in_interval(getattr(self, name), interval):
                left, low, high, right = interval
                raise ValueError(
                    f"--{name} must be a finite number in {left}{low:g}, {high:g}{right}, got {getattr(self, name)}"
                )
        self._check_class_conditioning()
        if self.hub_push_intermediate and not (self.push_to_hub and self.save_model_steps):
            raise ValueError("--hub_push_intermediate needs --push_to_hub and --save_model_steps")
        if self.push_to_hub or self.hub_dry_run:
            self.hub_model_id = self.hub_model_id or Path(self.output_dir).resolve().name
            check_repo_id(self.hub_model_id)
            if self.push_to_hub and not self.hub_dry_run:
                resolve_token(self.hub_token, self.output_dir)  # fail now, not after hours of training
        if self.eval_every and not self.eval_metrics:
            if self.dataset_source != DIGITS:
                raise ValueError(
                    "--eval_every needs --eval_metrics for datasets other than the built-in digits "
                    "(fid, fd_dinov2 or bits_per_dim)"
                )
            self.eval_metrics = ["fd_digits", "digits_scores"]

    def _check_class_conditioning(self) -> None:
        """--label_column and --class_dropout_prob only with --class_conditional, whose dropout defaults to 0.1."""
        if not self.class_conditional:
            for name in ("label_column", "class_dropout_prob"):
                if getattr(self, name) is not None:
                    raise ValueError(f"--{name} is for class-conditional training; add --class_conditional or drop it")
            return
        if self.class_dropout_prob is None:
            self.class_dropout_prob = DEFAULT_CLASS_DROPOUT_PROB
        if not _in_interval(self.class_dropout_prob, ("(", 0.0, 1.0, ")")):
            raise ValueError(
                f"--class_dropout_prob must be a finite number in (0, 1) (0.1 or 0.2 in Ho & Salimans 2022; 0 would "
                f"leave the 'no label' embedding that guidance needs untrained), got {self.class_dropout_prob}"
            )

    def _check_types(self) -> None:
        """Refuse a value of the wrong type in one line; make NumPy numbers and paths plain int, float and str (the
        configuration is recorded as JSON). A bool is no count and no number."""
        hints = typing.get_type_hints(type(self))
        for option in fields(self):
            value, hint = getattr(self, option.name), hints[option.name]
            kinds = set(typing.get_args(hint) or (hint,))
            if value is None and type(None) in kinds:
                continue
            if bool in kinds and isinstance(value, bool):
                continue
            if int in kinds and is_integer(value):
                setattr(self, option.name, int(value))
            elif float in kinds and is_number(value):
                setattr(self, option.name, float(value))
            elif str in kinds and isinstance(value, (str, os.PathLike)):
                setattr(self, option.name, os.fspath(value))
            elif list[str] in kinds and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                setattr(self, option.name, list(value))
            else:
                expected = " or ".join(_KIND_NAMES[kind] for kind in sorted(kinds, key=_KIND_ORDER.index))
                raise TypeError(f"--{option.name} must be {expected}, got {value!r} ({type(value).__name__})")

    @property
    def dataset_source(self) -> str:
        """The training data as `hfddpm.evaluate` names it: an image folder, a dataset name, or the built-in digits."""
        return self.train_data_dir or self.dataset_name or DIGITS

    def recorded(self) -> dict:
        """The configuration as the run records it (training_args.json, trackers, model card): never the token."""
        return {key: value for key, value in asdict(self).items() if key != "hub_token"}

    def tracker_config(self) -> dict:
        """The configuration as trackers take hyper-parameters: scalars only (TensorBoard's hparams refuses lists)."""
        return {
            key: ", ".join(map(str, value)) if isinstance(value, list) else value
            for key, value in self.recorded().items()
            if value is not None
        }


class _DeprecatedAlias(argparse.Action):
    """An old flag name: sets the new one's value, and the main process says to use the new name."""

    def __init__(self, option_strings: list[str], dest: str, new_flag: str, **kwargs: object) -> None:
        self.new_flag = new_flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        if launched_as_main_process():
            print(f"warning: {option_string} is deprecated; use {self.new_flag}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def training_argument_parser(
    description: str | None = None, config_class: type[TrainingConfig] | None = None, objective_arguments: bool = True
) -> argparse.ArgumentParser:
    """The training script's command line; `TrainingConfig(**vars(parser.parse_args()))` completes and checks it.

    A script training another objective passes its `config_class` (a subclass, whose defaults the help shows) and
    leaves out the "model and objective" flags where the objective sets them (`objective_arguments=False`).
    """
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", help="Hub dataset or save_to_disk folder (default: the built-in digits)")
    data.add_argument("--dataset_config_name", help="configuration of the Hub dataset")
    data.add_argument("--train_data_dir", help="folder of images, read with datasets' imagefolder")
    data.add_argument("--split", help="dataset split to train on")
    data.add_argument("--image_column", help="column holding the images (default: the first image column)")
    data.add_argument("--cache_dir", help="where datasets caches downloads and preprocessed images")
    data.add_argument("--resolution", type=int, help="square training resolution in pixels")
    data.add_argument(
        "--channels", type=int, choices=CHOICES["channels"], help="1 grayscale, 3 RGB (default: the first image's)"
    )
    data.add_argument("--random_crop", action="store_true", help="crop at random instead of at the centre")
    data.add_argument("--random_flip", action="store_true", help="flip horizontally with probability 1/2")
    data.add_argument("--dataloader_num_workers", type=int)
    data.add_argument("--preprocessing_num_workers", type=int, help="processes decoding images once, before training")
    data.add_argument(
        "--class_conditional",
        action="store_true",
        help="condition on class labels: the digits' own, an image folder's subfolder names, or --label_column",
    )
    data.add_argument("--label_column", help="column holding the class labels (default: the first ClassLabel column)")

    if objective_arguments:
        _add_objective_arguments(parser.add_argument_group("model and objective"))
    _add_training_arguments(parser.add_argument_group("training"))
    _add_output_arguments(parser.add_argument_group("checkpoints, samples and logs"))
    _add_hub_arguments(parser.add_argument_group("Hugging Face Hub"))
    _document_defaults(parser, config_class or TrainingConfig)
    return parser


def _add_objective_arguments(model: argparse._ArgumentGroup) -> None:
    model.add_argument("--model_preset", choices=CHOICES["model_preset"], help="UNet preset")
    model.add_argument("--model_config", help="UNet2DModel config.json to use instead of a preset")
    model.add_argument("--prediction_type", choices=CHOICES["prediction_type"])
    model.add_argument("--beta_schedule", choices=CHOICES["beta_schedule"])
    model.add_argument("--num_train_timesteps", type=int, help="T, the number of diffusion steps")
    model.add_argument(
        "--reverse_variance",
        choices=CHOICES["reverse_variance"],
        help="σ²_t of p_θ(x_{t−1}|x_t) (fixed_small is β̃_t); the learned ones train with the hybrid loss "
        "L_simple + λ L_vlb",
    )
    model.add_argument(
        "--variance_type",
        dest="reverse_variance",
        choices=CHOICES["reverse_variance"],
        action=_DeprecatedAlias,
        new_flag="--reverse_variance",
        help="deprecated name of --reverse_variance",
    )
    model.add_argument(
        "--loss_type",
        choices=CHOICES["loss_type"],
        help="simple: L_simple; hybrid: L_simple + λ L_vlb (learned variance); vlb: the bound alone "
        "(default: hybrid for a learned variance, simple otherwise)",
    )
    model.add_argument("--vlb_weight", type=float, help="λ of the hybrid loss (learned variance)")
    model.add_argument(
        "--timestep_sampling",
        choices=CHOICES["timestep_sampling"],
        help="how t is drawn; loss_second_moment is Improved DDPM's importance sampling, for --loss_type vlb",
    )
    model.add_argument("--snr_gamma", type=float, help="min-SNR-γ loss weighting (Hang et al. 2023 use 5)")
    model.add_argument(
        "--class_dropout_prob",
        type=float,
        help=f"share of labels dropped to 'no label' in class-conditional training, so one network is also "
        f"unconditional and classifier-free guidance works (default {DEFAULT_CLASS_DROPOUT_PROB})",
    )


def _document_defaults(parser: argparse.ArgumentParser, config_class: type[TrainingConfig]) -> None:
    """Append each flag's default, read from `config_class` (the one place defaults are written), to its help."""
    defaults = {option.name: option.default for option in fields(config_class)}
    for action in parser._actions:  # argparse has no public list of a parser's actions
        default = defaults.get(action.dest)
        shown = default is not None and default is not False  # 0 is a default worth showing; `in` would skip it
        if action.option_strings and shown and not isinstance(action, _DeprecatedAlias):
            action.help = f"{action.help}; default {default}" if action.help else f"default {default}"


def launched_as_main_process() -> bool:
    """Whether this process is the main one of its launch (RANK 0, or no distributed launcher): the one that prints,
    before Accelerate exists to say so."""
    return os.environ.get("RANK", "0") == "0"


def _add_training_arguments(train: argparse._ArgumentGroup) -> None:
    train.add_argument("--output_dir", help="where the run writes everything")
    train.add_argument("--overwrite_output_dir", action="store_true", help="delete an earlier run's output first")
    train.add_argument("--seed", type=int)
    train.add_argument("--train_batch_size", type=int, help="per process")
    train.add_argument("--num_epochs", type=int, help="epochs to train (or set --max_train_steps)")
    train.add_argument("--max_train_steps", type=int, help=f"optimizer steps (default {DEFAULT_MAX_TRAIN_STEPS})")
    train.add_argument("--gradient_accumulation_steps", type=int)
    train.add_argument("--gradient_checkpointing", action="store_true")
    train.add_argument("--learning_rate", type=float)
    train.add_argument("--lr_scheduler", choices=CHOICES["lr_scheduler"])
    train.add_argument("--lr_warmup_steps", type=int, help="in optimizer steps")
    train.add_argument("--adam_beta1", type=float)
    train.add_argument("--adam_beta2", type=float)
    train.add_argument("--adam_weight_decay", type=float)
    train.add_argument("--adam_epsilon", type=float)
    train.add_argument("--max_grad_norm", type=float, help="gradient clipping")
    train.add_argument(
        "--on_nonfinite_loss",
        choices=CHOICES["on_nonfinite_loss"],
        help="a NaN or Inf loss (or gradient) stops the run, keeping the last checkpoint, or skips that update",
    )
    train.add_argument("--use_ema", action=argparse.BooleanOptionalAction, help="save EMA weights")
    train.add_argument("--ema_max_decay", type=float)
    train.add_argument("--ema_inv_gamma", type=float)
    train.add_argument("--ema_power", type=float)
    train.add_argument("--mixed_precision", choices=CHOICES["mixed_precision"], help="default: accelerate's config")
    train.add_argument(
        "--cpu_threads",
        type=int,
        help="PyTorch threads per process when training on CPU (default: this machine's cores divided among its "
        "processes; `accelerate launch` alone would leave one)",
    )


def _add_output_arguments(output: argparse._ArgumentGroup) -> None:
    from ..evaluation.report import METRICS

    output.add_argument("--checkpointing_steps", type=int, help="checkpoint every N steps")
    output.add_argument("--checkpoints_total_limit", type=int, help="checkpoints kept")
    output.add_argument(
        "--resume_from_checkpoint",
        help='"latest" (the newest complete checkpoint; a fresh start when there is none yet) or a checkpoint folder',
    )
    output.add_argument("--save_images_steps", type=int, help="sample grid every N steps")
    output.add_argument("--save_model_steps", type=int, help="save the pipeline every N steps (always at the end)")
    output.add_argument("--num_sample_images", type=int, help="images in each sample grid")
    output.add_argument(
        "--inference_scheduler", choices=CHOICES["inference_scheduler"], help="saved with the pipeline"
    )
    output.add_argument("--num_inference_steps", type=int, help="steps of the sample grids")
    output.add_argument("--logging_steps", type=int, help="log every N steps")
    output.add_argument("--report_to", choices=CHOICES["report_to"], help="besides jsonl")
    output.add_argument(
        "--eval_every", type=int, help="every N steps and at the end, measure --eval_metrics and log them"
    )
    output.add_argument(
        "--eval_metrics",
        nargs="+",
        choices=list(METRICS),
        help="default: fd_digits and digits_scores (offline) for the built-in digits; fid and fd_dinov2 need weights",
    )
    output.add_argument("--eval_num_samples", type=int, help="samples drawn for each evaluation")


def _add_hub_arguments(hub: argparse._ArgumentGroup) -> None:
    hub.add_argument("--push_to_hub", action="store_true", help="publish the final pipeline and its model card")
    hub.add_argument("--hub_model_id", help="'user/name' of the repository (default: the output folder's name)")
    hub.add_argument("--hub_token", help="token to push with (default: $HF_TOKEN or the saved login)")
    hub.add_argument("--hub_private_repo", action="store_true", help="create the repository private")
    hub.add_argument("--hub_revision", help="branch to push to (created if needed; default main)")
    hub.add_argument(
        "--hub_push_intermediate", action="store_true", help="push every --save_model_steps save, in the background"
    )
    hub.add_argument(
        "--hub_include_training_state", action="store_true", help="also push checkpoints/ (optimizer states)"
    )
    hub.add_argument(
        "--hub_dry_run", action="store_true", help="write the folder that would be pushed to output_dir/hub-export"
    )


def parse_training_config(argv: list[str] | None = None, description: str | None = None) -> TrainingConfig:
    """The command line `argv` as a checked `TrainingConfig` (argparse exits on an unknown flag or choice)."""
    return TrainingConfig(**vars(training_argument_parser(description).parse_args(argv)))
