"""What a training run is told: dataclasses whose fields are the scripts' flags, declared once with their help,
choices and intervals (`hfddpm.arguments.option`), checked when built, from Python, a JSON file or the command line.

`RunConfig` holds what every run has (data, the engine's optimizer and schedule, checkpoints, samples, logs and the
Hub); `TrainingConfig` adds the model and the denoising objective of `examples/train_unconditional.py`; the
distillation configs (`hfddpm.training.teacher`) add the teacher and their method's options instead.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..arguments import add_options, check_options, option
from ..image_data import DIGITS
from ..models.unet_presets import UNET_PRESETS
from ..run_folder import LOCAL_DATA, recorded_path
from ..schedulers.checks import PREDICTION_TYPES
from ..schedulers.gaussian_diffusion import LEARNED_VARIANCES, REVERSE_VARIANCES

DEFAULT_MAX_TRAIN_STEPS = 2000
# p_uncond of Ho & Salimans (2022): the share of training labels replaced by "no label", so that one network learns
# the conditional and the unconditional model.
DEFAULT_CLASS_DROPOUT_PROB = 0.1
SEEDS = "[0, 4294967295]"  # NumPy's limit; `accelerate.utils.set_seed` seeds NumPy too
COUNT = "[1, inf)"
METRIC_NAMES = Literal[
    "bits_per_dim", "fd_digits", "digits_scores", "fd_fashion", "fashion_scores", "fid", "fd_dinov2"
]
PRESET_NAMES = Literal[tuple(UNET_PRESETS)]
PREDICTIONS = Literal[PREDICTION_TYPES]
TRAINED_VARIANCES = Literal[tuple(choice for choice in REVERSE_VARIANCES if choice != "analytic")]
DATA, ENGINE, OUTPUT, HUB, MODEL = "data", "training", "checkpoints, samples and logs", "Hugging Face Hub", "model"


@dataclass(kw_only=True)
class RunConfig:
    """Everything a training run is told, whatever its objective; the field names are the scripts' flags."""

    dataset_name: str | None = option(
        None, "Hub dataset or save_to_disk folder (default: the built-in digits)", group=DATA, path="input"
    )
    dataset_config_name: str | None = option(None, "configuration of the Hub dataset", group=DATA)
    train_data_dir: str | None = option(
        None, "folder of images, read with datasets' imagefolder", group=DATA, path="input"
    )
    split: str = option("train", "dataset split to train on", group=DATA)
    image_column: str | None = option(None, "column holding the images (default: the first image column)", group=DATA)
    cache_dir: str | None = option(None, "where datasets caches downloads and preprocessed images", group=DATA)
    resolution: int | None = option(
        8, "square training resolution in pixels", interval=COUNT, group=DATA, defines_run=True
    )
    channels: Literal[1, 3] | None = option(
        None, "1 grayscale, 3 RGB (default: the first image's)", group=DATA, defines_run=True
    )
    random_crop: bool = option(False, "crop at random instead of at the centre", group=DATA)
    random_flip: bool = option(False, "flip horizontally with probability 1/2", group=DATA)
    dataloader_num_workers: int = option(0, interval="[0, inf)", group=DATA)
    preprocessing_num_workers: int | None = option(None, "processes decoding images once", interval=COUNT, group=DATA)
    class_conditional: bool = option(
        False,
        "condition on class labels: the digits', an image folder's subfolders, or --label_column",
        group=DATA,
        defines_run=True,
    )
    label_column: str | None = option(None, "column of class labels (default: the first ClassLabel)", group=DATA)
    class_dropout_prob: float | None = option(
        None,
        "share of labels dropped to 'no label' in class-conditional training, so that one network is also "
        f"unconditional and classifier-free guidance works (Ho & Salimans 2022; default {DEFAULT_CLASS_DROPOUT_PROB})",
        interval="(0, 1)",
        group=DATA,
    )
    output_dir: str = option("outputs/ddpm-digits", "where the run writes everything", group=ENGINE, path="owned")
    overwrite_output_dir: bool = option(False, "delete what an earlier run wrote there first", group=ENGINE)
    seed: int = option(0, interval=SEEDS, group=ENGINE)
    train_batch_size: int = option(64, "per process", interval=COUNT, group=ENGINE)
    num_epochs: int | None = option(None, "epochs to train (or --max_train_steps)", interval=COUNT, group=ENGINE)
    max_train_steps: int | None = option(
        None, f"optimizer steps (default {DEFAULT_MAX_TRAIN_STEPS})", interval=COUNT, group=ENGINE
    )
    gradient_accumulation_steps: int = option(1, interval=COUNT, group=ENGINE)
    gradient_checkpointing: bool = option(False, group=ENGINE)
    learning_rate: float = option(2e-3, interval="(0, inf)", group=ENGINE)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = option("cosine", group=ENGINE)
    lr_warmup_steps: int = option(100, "in optimizer steps", interval="[0, inf)", group=ENGINE)
    adam_beta1: float = option(0.9, interval="[0, 1)", group=ENGINE)
    adam_beta2: float = option(0.999, interval="[0, 1)", group=ENGINE)
    adam_weight_decay: float = option(0.0, interval="[0, inf)", group=ENGINE)
    adam_epsilon: float = option(1e-8, interval="(0, inf)", group=ENGINE)
    max_grad_norm: float = option(1.0, "gradient clipping", interval="(0, inf)", group=ENGINE)
    on_nonfinite_loss: Literal["stop", "skip"] = option(
        "stop",
        "a NaN or Inf loss (or gradient) stops the run, keeping the last checkpoint, or skips that update",
        group=ENGINE,
    )
    use_ema: bool = option(True, "save EMA weights", group=ENGINE)
    ema_max_decay: float = option(0.9999, interval="[0, 1]", group=ENGINE)
    ema_inv_gamma: float = option(1.0, interval="(0, inf)", group=ENGINE)
    ema_power: float = option(0.75, interval="(0, inf)", group=ENGINE)
    mixed_precision: Literal["no", "fp16", "bf16"] | None = option(None, "default: accelerate's config", group=ENGINE)
    cpu_threads: int = option(
        1,
        "PyTorch threads per process on CPU: 1 holds its speed when other jobs share the cores; on a machine of "
        "your own, the cores divided by the processes is up to 1.4× faster",
        interval=COUNT,
        group=ENGINE,
    )
    checkpointing_steps: int = option(500, "checkpoint every N steps", interval=COUNT, group=OUTPUT)
    checkpoints_total_limit: int | None = option(3, "checkpoints kept", interval=COUNT, group=OUTPUT)
    resume_from_checkpoint: str | None = option(
        None, '"latest" (the newest complete checkpoint; a fresh start when there is none) or a folder', group=OUTPUT
    )
    save_images_steps: int = option(500, "sample grid every N steps", interval=COUNT, group=OUTPUT)
    save_model_steps: int | None = option(
        None, "save the pipeline every N steps (and at the end)", interval=COUNT, group=OUTPUT
    )
    num_sample_images: int = option(64, "images in each sample grid", interval=COUNT, group=OUTPUT)
    num_inference_steps: int = option(50, "steps of the sample grids", interval=COUNT, group=OUTPUT)
    logging_steps: int = option(10, "log every N steps", interval=COUNT, group=OUTPUT)
    report_to: Literal["tensorboard", "none"] = option("tensorboard", "besides logs/train.jsonl", group=OUTPUT)
    eval_every: int | None = option(
        None, "measure --eval_metrics every N steps and at the end", interval=COUNT, group=OUTPUT
    )
    eval_metrics: list[METRIC_NAMES] | None = option(
        None, "default: the offline classifier metrics of the digits or fashion_mnist", group=OUTPUT
    )
    eval_num_samples: int = option(256, "samples drawn for each evaluation", interval=COUNT, group=OUTPUT)
    push_to_hub: bool = option(False, "publish the final pipeline and its model card", group=HUB)
    hub_model_id: str | None = option(
        None, "'user/name' of the repository (default: the output folder's name)", group=HUB
    )
    hub_token: str | None = option(None, "token to push with (default: $HF_TOKEN or the saved login)", group=HUB)
    hub_private_repo: bool = option(False, "create the repository private", group=HUB)
    hub_revision: str | None = option(None, "branch to push to (created if needed; default main)", group=HUB)
    hub_push_intermediate: bool = option(False, "push every --save_model_steps save, in the background", group=HUB)
    hub_include_training_state: bool = option(False, "also push checkpoints/ (optimizer states)", group=HUB)
    hub_dry_run: bool = option(False, "write the folder a push would upload to output_dir/hub-export", group=HUB)

    def __post_init__(self) -> None:
        check_options(self)
        if self.num_epochs is None and self.max_train_steps is None:
            self.max_train_steps = DEFAULT_MAX_TRAIN_STEPS
        if not self.class_conditional:
            for name in ("label_column", "class_dropout_prob"):
                if getattr(self, name) is not None:
                    raise ValueError(f"--{name} is for class-conditional training; add --class_conditional or drop it")
        elif self.class_dropout_prob is None:
            self.class_dropout_prob = DEFAULT_CLASS_DROPOUT_PROB
        if self.hub_push_intermediate and not (self.push_to_hub and self.save_model_steps):
            raise ValueError("--hub_push_intermediate needs --push_to_hub and --save_model_steps")
        if self.push_to_hub or self.hub_dry_run:
            from ..hub import check_repo_id, resolve_token

            self.hub_model_id = check_repo_id(self.hub_model_id or Path(self.output_dir).resolve().name)
            if self.push_to_hub and not self.hub_dry_run:
                resolve_token(self.hub_token, self.output_dir, "--hub_token")  # fail now, not after hours of training
        if self.eval_every and not self.eval_metrics:
            from ..evaluation.classifiers import DATASET_METRICS

            if self.dataset_source not in DATASET_METRICS:
                raise ValueError(
                    "--eval_every needs --eval_metrics for datasets other than the digits and fashion_mnist"
                )
            self.eval_metrics = list(DATASET_METRICS[self.dataset_source])

    @property
    def dataset_source(self) -> str:
        """The training data as `hfddpm.evaluate` names it: an image folder, a dataset name, or the built-in digits."""
        return self.train_data_dir or self.dataset_name or DIGITS

    def recorded(self) -> dict:
        """The configuration as the run records it (training_args.json, trackers, model card): never the token, and
        local data paths relative to the run folder (`hfddpm.run_folder.recorded_path`)."""
        record = {key: value for key, value in dataclasses.asdict(self).items() if key != "hub_token"}
        for name in LOCAL_DATA:
            if record[name]:
                record[name] = recorded_path(record[name], self.output_dir)
        return record

    def run_identity(self) -> dict:
        """The options that define the run (`option(defines_run=True)`), which a resume must not change."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("defines_run")}

    def tracker_config(self) -> dict:
        """The configuration as trackers take hyper-parameters: scalars only (TensorBoard's hparams refuses lists)."""
        return {key: ", ".join(map(str, v)) if isinstance(v, list) else v for key, v in self.recorded().items()}

    @classmethod
    def from_command_line(cls, argv: list[str] | None = None, description: str | None = None) -> RunConfig:
        """The command line `argv` as a checked config; `--config FILE.json` reads the options from a JSON object
        (flags given as well override it). argparse exits on an unknown flag or choice."""
        import argparse

        parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--config", help="a JSON file of options (the flags' names without --)")
        add_options(parser, cls)
        given = vars(parser.parse_args(argv))
        config_file = given.pop("config")
        options = read_config_file(config_file, cls) if config_file else {}
        try:
            return cls(**{**options, **given})
        except TypeError as error:  # a value of the wrong kind in the file: one line, as for a flag
            raise ValueError(str(error)) from None


@dataclass(kw_only=True)
class TrainingConfig(RunConfig):
    """A DDPM training run (`hfddpm.training.train_unconditional`): the run's options, the UNet and the objective."""

    model_preset: PRESET_NAMES = option(
        "digits", "UNet preset (hfddpm.models.UNET_PRESETS)", group=MODEL, defines_run=True
    )
    model_config: str | None = option(
        None, "UNet2DModel config.json to use instead of a preset", group=MODEL, defines_run=True, path="input"
    )
    prediction_type: PREDICTIONS = option("epsilon", group=MODEL, defines_run=True)
    beta_schedule: Literal["linear", "cosine"] = option("linear", group=MODEL, defines_run=True)
    num_train_timesteps: int = option(
        1000, "T, the number of diffusion steps", interval=COUNT, group=MODEL, defines_run=True
    )
    reverse_variance: TRAINED_VARIANCES = option(
        "fixed_small",
        "σ²_t of p_θ(x_{t−1}|x_t); the learned ones train with the hybrid loss",
        group=MODEL,
        defines_run=True,
    )
    loss_type: Literal["simple", "hybrid", "vlb"] | None = option(
        None,
        "L_simple, L_simple + λ L_vlb (learned variance) or the bound alone (default: by the variance)",
        group=MODEL,
        defines_run=True,
    )
    vlb_weight: float = option(1e-3, "λ of the hybrid loss", interval="[0, inf)", group=MODEL, defines_run=True)
    timestep_sampling: Literal["uniform", "loss_second_moment", "importance"] = option(
        "uniform",
        "how t is drawn; loss_second_moment is Improved DDPM's importance sampling, for the bound; importance, in "
        "continuous time, draws log-SNR uniformly (Song et al. 2021b), for --loss_type vlb",
        group=MODEL,
        defines_run=True,
    )
    snr_gamma: float | None = option(
        None, "min-SNR-γ weighting (Hang et al. 2023 use 5)", interval="(0, inf)", group=MODEL, defines_run=True
    )
    continuous_time: Literal["vp", "subvp", "ve", "linear_logsnr", "learned"] | None = option(
        None,
        "train at continuous t ∈ [0, 1] with this noise schedule: a score SDE of Song et al. (2021), VDM's fixed "
        "linear log-SNR or its learned one (Kingma et al. 2021, --loss_type vlb); the pipeline samples its table",
        group=MODEL,
        defines_run=True,
    )
    fourier_features: bool = option(
        False,
        "feed the UNet sin(2ⁿπ x), cos(2ⁿπ x) of its input too, n = 3 … 8 (VDM), for the likelihood at low noise; "
        "the pipeline then names hfddpm's FourierFeaturesUNet",
        group=MODEL,
        defines_run=True,
    )
    inference_scheduler: Literal["ddpm", "ddim"] = option("ddim", "saved with the pipeline", group=MODEL)
    vae: str | None = option(
        None,
        "an autoencoder (a train_autoencoder.py folder, its vae/, or a Hub repository) in whose latent space to "
        "diffuse: latent diffusion",
        group=MODEL,
        defines_run=True,
        path="input",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        learned = self.reverse_variance in LEARNED_VARIANCES
        self.loss_type = self.loss_type or ("hybrid" if learned else "simple")
        if self.loss_type != "vlb" and (self.loss_type == "hybrid") != learned:
            raise ValueError(
                f"--loss_type {self.loss_type} with --reverse_variance {self.reverse_variance}: hybrid's bound term "
                "trains a learned variance only, so pair hybrid with learned_range or learned, simple with fixed ones"
            )
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError(
                f"--num_inference_steps {self.num_inference_steps} exceeds T = --num_train_timesteps "
                f"{self.num_train_timesteps}: the sample grids cannot take more steps than there are timesteps"
            )
        if self.snr_gamma is not None and self.loss_type == "vlb":
            raise ValueError("--snr_gamma weights the squared error, which --loss_type vlb does not have; drop one")
        if self.continuous_time is not None:
            self.check_continuous_time()
        elif self.timestep_sampling == "importance":
            raise ValueError("--timestep_sampling importance is for --continuous_time; use loss_second_moment")
        if self.vae is not None:
            if self.loss_type != "simple":
                raise ValueError(
                    f"--loss_type {self.loss_type} with --vae: the bound's decoder term is for 8-bit pixels, not "
                    "latents; use --loss_type simple with a fixed --reverse_variance"
                )
            if self.random_crop or self.random_flip:
                raise ValueError("--vae encodes each image once, uncropped and unflipped: drop --random_crop/flip")

    def check_continuous_time(self) -> None:
        """What continuous-time training has: ε-prediction, a fixed sampling variance, L_simple or the bound, no
        latents; the learned schedule and log-SNR-uniform t with the bound only."""
        if self.loss_type == "hybrid" or self.prediction_type != "epsilon" or self.snr_gamma is not None:
            raise ValueError(
                "--continuous_time trains ε-prediction with --loss_type simple or vlb: drop --reverse_variance "
                "learned*, --prediction_type and --snr_gamma"
            )
        if self.vae is not None or self.timestep_sampling == "loss_second_moment":
            raise ValueError("--continuous_time takes no --vae nor --timestep_sampling loss_second_moment")
        if self.loss_type == "simple" and (self.continuous_time == "learned" or self.timestep_sampling != "uniform"):
            raise ValueError(
                "--continuous_time learned and --timestep_sampling importance are for the bound: add --loss_type vlb"
            )
        if self.continuous_time == "learned" and self.timestep_sampling == "importance":
            raise ValueError("--timestep_sampling importance needs a fixed schedule; drop it for the learned one")


def read_config_file(path: str, config_class: type[RunConfig]) -> dict:
    """The options in the JSON file `path`, refused in one line when it is missing, no JSON object, or names an
    option `config_class` does not have."""
    try:
        options = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"--config {path} cannot be read as JSON ({error}); fix the file") from None
    if not isinstance(options, dict):
        raise ValueError(f"--config {path} must hold a JSON object of options, got a {type(options).__name__}")
    if unknown := sorted(set(options) - {field.name for field in dataclasses.fields(config_class)}):
        raise ValueError(f"--config {path} names unknown options {unknown}; see --help for the options")
    return options
