"""`HFDDPMPipeline`: image generation with any diffusers scheduler, unconditional or class-conditional with
classifier-free guidance, saved in the stock layout.

Checkpoint layout. `save_pretrained` writes the folder stock `DDPMPipeline` writes — `model_index.json`,
`unet/` (config and safetensors weights) and `scheduler/` (`scheduler_config.json`) — and `model_index.json` names
only stock diffusers classes: `DDIMPipeline` when the scheduler is a DDIM scheduler, `DDPMPipeline` otherwise, and
diffusers' `DDPMScheduler`/`DDIMScheduler` for hfddpm's subclasses of them. So:

- `HFDDPMPipeline.from_pretrained` loads its own folders and stock ones (google/ddpm-cifar10-32 and any folder
  `DDPMPipeline`/`DDIMPipeline.save_pretrained` wrote), giving hfddpm's schedulers in place of stock DDPM/DDIM ones;
- stock `DiffusionPipeline.from_pretrained` loads an hfddpm folder as a stock `DDPMPipeline` or `DDIMPipeline`
  with stock schedulers: hfddpm-only keys such as `reverse_variance` are ignored with diffusers' warning about
  unexpected config attributes, and the stock `variance_type` holds the nearest stock choice;
- `unet/` is a plain `UNet2DModel` folder.

Loading runs no code from a checkpoint: `HFDDPMPipeline.from_pretrained` reads safetensors weights only (pickle
weights need `allow_pickle=True`, and even then go through `torch.load(weights_only=True)`) and imports components
from diffusers and hfddpm only.
"""

# No `from __future__ import annotations`: diffusers < 0.37 needs `__init__`'s annotations as classes, not strings.
import inspect
import itertools
import json
import logging
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor

from .. import __version__
from ..arguments import checked_integer, checked_number, is_integer
from ..conditioning import guided_prediction, num_classes, predict
from ..eval_mode import eval_mode
from ..schedulers import DDIMScheduler, DDPMScheduler
from ..schedulers.checks import ETA_MEANING
from ..schedulers.gaussian_diffusion import LEARNED_VARIANCES, check_num_inference_steps
from ..schedulers.langevin import langevin_corrector_step
from .checkpoint_safety import (
    check_checkpoint_folder,
    check_finite_weights,
    check_model_index,
    check_unet_folder,
    fetch_model_index,
    load_scheduler,
    nonfinite_weights,
    safetensors_index,
    scheduler_class_of,
)

logger = logging.getLogger(__name__)

# "latent": the sample x_0 itself, in [−1, 1] and unclamped, as diffusers' pipelines return their latents.
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# Earlier names of callback tensors, still accepted with a FutureWarning: {old: diffusers' name}.
DEPRECATED_CALLBACK_TENSORS = {"sample": "latents"}
# w of classifier-free guidance when class labels are given without a guidance_scale (benchmarks/RESULTS.md,
# "Class-conditional generation", measures the choice).
DEFAULT_GUIDANCE_SCALE = 1.5
# Keyword arguments of `from_pretrained` that say where and how to fetch a Hub repository.
_DOWNLOAD_KWARGS = (
    "cache_dir",
    "force_download",
    "proxies",
    "local_files_only",
    "token",
    "revision",
    "variant",
    "use_safetensors",
)
# `from_pretrained` options with which diffusers imports code named by the caller or the checkpoint, or loads
# another repository (a model card's base model) without these checks.
_REMOTE_CODE_KWARGS = ("custom_pipeline", "trust_remote_code", "load_connected_pipeline")


class NonFiniteSampleError(ValueError):
    """The sample turned NaN or infinite while sampling (a ValueError, so that command lines report it in one
    line)."""


def consumes_model_variance(scheduler: SchedulerMixin) -> bool:
    """Whether `scheduler.step` reads a learned-variance network's extra output channels."""
    config = scheduler.config
    if isinstance(scheduler, (DDPMScheduler, DDIMScheduler)) and config.reverse_variance is not None:
        return config.reverse_variance in LEARNED_VARIANCES
    return isinstance(scheduler, diffusers.DDPMScheduler) and config.variance_type in LEARNED_VARIANCES


class HFDDPMPipeline(DiffusionPipeline):
    """Image generation: start from N(0, σ_max² I) and apply the scheduler's reverse steps.

    Works with hfddpm's `DDPMScheduler` and `DDIMScheduler` and with any stock diffusers scheduler: the loop calls
    `scale_model_input` and starts from `init_noise_sigma`, which sigma-parameterised schedulers (Euler, Heun, …)
    need. The sample is kept in float32 whatever the UNet's dtype, so a half-precision UNet only changes the network
    evaluations. See the module docstring for the checkpoint layout.

    A class-conditional UNet (`num_class_embeds` = classes + 1, the last index meaning "no label"; see
    `hfddpm.conditioning`) draws images of the `class_labels` it is given, with classifier-free guidance, and
    unconditional images when given none.

    Args:
        unet: a `UNet2DModel` (or any model called as `unet(sample, t).sample`); with 2C output channels it is a
            learned-variance model.
        scheduler: the noise scheduler.
        default_num_inference_steps: the step count a call without `num_inference_steps` samples at (None: 50),
            saved in `model_index.json`: a distilled student samples at its own step count without being told.
        id2label: the names of a class-conditional UNet's classes, {id: name} as in `DiTPipeline` (None: the ids'
            digits), saved in `model_index.json`.
    """

    model_cpu_offload_seq = "unet"
    # Subclassing API: diffusers' callbacks documentation names this attribute as where a pipeline lists its tensors;
    # "latents" is the sample the loop carries, as diffusers' pipelines name it.
    _callback_tensor_inputs = ["latents", "pred_original_sample"]
    _num_timesteps = 0  # set by each call (`num_timesteps`)

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        default_num_inference_steps: int | None = None,
        id2label: dict | None = None,
    ) -> None:
        super().__init__()
        if default_num_inference_steps is not None and (
            type(default_num_inference_steps) is not int or default_num_inference_steps < 1
        ):
            raise ValueError(
                f"default_num_inference_steps must be a positive integer or None, got {default_num_inference_steps!r}"
            )
        self.register_modules(unet=unet, scheduler=scheduler)
        classes = num_classes(unet)
        self.register_to_config(
            default_num_inference_steps=default_num_inference_steps,
            id2label=None if id2label is None else _checked_id2label(id2label, classes),
        )
        if id2label is None and classes is not None:
            logger.warning(
                "the UNet is class-conditional but no id2label names its classes: its last class embedding (%d) is "
                "taken as 'no label', as hfddpm trains it; a UNet trained otherwise has no such entry",
                classes,
            )

    @property
    def num_classes(self) -> int | None:
        """The classes of a class-conditional UNet, or None for an unconditional one."""
        return num_classes(self.unet)

    @property
    def id2label(self) -> dict[int, str]:
        """{id: name} of the classes (names "0", "1", … when none were saved); empty for an unconditional UNet."""
        saved = self.config.get("id2label")
        if saved is not None:
            return {int(key): name for key, name in saved.items()}
        return {i: str(i) for i in range(self.num_classes or 0)}

    @property
    def labels(self) -> dict[str, int]:
        """{name: id} of the classes, sorted by name, as `DiTPipeline.labels`."""
        return dict(sorted((name, i) for i, name in self.id2label.items()))

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """The ids of class names, as `DiTPipeline.get_label_ids`; an unknown name is refused with the known ones."""
        names = [label] if isinstance(label, str) else list(label)
        labels = self.labels
        if unknown := [name for name in names if name not in labels]:
            raise ValueError(f"unknown class name(s) {unknown}; this model's classes are {list(labels)}")
        return [labels[name] for name in names]

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *, allow_pickle: bool = False, **kwargs: Any
    ) -> "HFDDPMPipeline":
        """Load a pipeline folder or Hub repository, as `DiffusionPipeline.from_pretrained` does, but safely.

        A stock `DDPMScheduler`/`DDIMScheduler` entry loads as hfddpm's subclass (so hfddpm's options in its config
        take effect). Since unpickling can run code, weights load from safetensors only; `allow_pickle=True`, for a
        source you trust, also accepts pickle weights (`diffusion_pytorch_model.bin`), read with
        `torch.load(weights_only=True)`, which refuses anything but tensors. Code is never run from a checkpoint:
        `custom_pipeline`, `trust_remote_code` and a model_index.json naming a custom pipeline or a library other
        than diffusers and hfddpm are refused before anything is imported. So are, in one line naming the fix, a
        folder missing a part and one saved by a newer hfddpm.
        """
        for option in _REMOTE_CODE_KWARGS:
            value = kwargs.pop(option, None)
            if value:
                raise ValueError(
                    f"{option}={value!r} would run code from outside diffusers and hfddpm, which "
                    f"HFDDPMPipeline.from_pretrained never does; drop {option}"
                )
        if kwargs.get("use_safetensors") is False and not allow_pickle:
            raise ValueError(
                "use_safetensors=False loads pickle weights, and unpickling can run code; "
                "pass allow_pickle=True as well if you trust the source"
            )
        if not isinstance(allow_pickle, bool):
            raise TypeError(f"allow_pickle must be True or False, got {allow_pickle!r}")
        if not allow_pickle:
            kwargs["use_safetensors"] = True
        folder = (
            os.fspath(pretrained_model_name_or_path)
            if isinstance(pretrained_model_name_or_path, os.PathLike)
            else pretrained_model_name_or_path
        )
        if not isinstance(folder, str):
            raise TypeError(
                f"pretrained_model_name_or_path must be a folder or a Hub repository id, got {type(folder).__name__}"
            )
        if not os.path.isdir(folder):
            download_kwargs = {k: kwargs[k] for k in _DOWNLOAD_KWARGS if k in kwargs}
            check_model_index(fetch_model_index(folder, download_kwargs), folder)
            # Pickle-only weights are fetched too (not unpickled), so the folder check below names them.
            download_kwargs["use_safetensors"] = kwargs.get("use_safetensors") if allow_pickle else None
            folder = cls.download(folder, **download_kwargs)
        index = check_checkpoint_folder(folder, passed=kwargs)
        weights = []
        if "unet" not in kwargs:
            unet_folder, variant = os.path.join(folder, "unet"), kwargs.get("variant")
            weights = check_unet_folder(unet_folder, allow_pickle, variant, index["unet"][1])
            if not (os.path.isfile(safetensors_index(unet_folder, variant)) or weights[0].endswith(".safetensors")):
                kwargs["use_safetensors"] = False  # allowed pickles alone: no warning about missing safetensors
        if "scheduler" not in kwargs and (scheduler_class := scheduler_class_of(index)) is not None:
            kwargs["scheduler"] = load_scheduler(folder, scheduler_class)
        pipeline = super().from_pretrained(folder, **kwargs)
        if weights:
            check_finite_weights(pipeline.unet, weights[0] if len(weights) == 1 else os.path.join(folder, "unet"))
        return pipeline

    def to_json_string(self) -> str:
        """`model_index.json` in the stock form described in the module docstring."""
        index = json.loads(super().to_json_string())
        index["_class_name"] = (
            "DDIMPipeline" if isinstance(self.scheduler, diffusers.DDIMScheduler) else "DDPMPipeline"
        )
        index["_hfddpm_version"] = __version__
        for option in ("default_num_inference_steps", "id2label"):
            if index.get(option) is None:  # an ordinary folder stays stock-identical
                index.pop(option, None)
        for name, component in self.components.items():
            stock_class = getattr(diffusers, type(component).__name__, None)
            if stock_class is not None and isinstance(component, stock_class):
                index[name] = ["diffusers", stock_class.__name__]
        return json.dumps(index, indent=2, sort_keys=True) + "\n"

    def inference_steps(self, num_inference_steps: int | None = None) -> int:
        """The step count a call with `num_inference_steps` samples at: that, else `default_num_inference_steps`,
        else 50."""
        if num_inference_steps is not None:
            return num_inference_steps
        return self.config.get("default_num_inference_steps") or 50

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        eta: float = 0.0,
        use_clipped_model_output: bool | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        corrector_steps: int = 0,
        corrector_snr: float = 0.16,
        class_labels: int | str | list[int | str] | torch.Tensor | None = None,
        guidance_scale: float | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        """Generate `batch_size` images.

        Args:
            batch_size: number of images.
            generator: a `torch.Generator`, or one per image (image i then depends on generator i only).
            num_inference_steps: reverse steps, between 1 and the scheduler's `num_train_timesteps`; None: the
                pipeline's `default_num_inference_steps` (a distilled student's own step count), else 50.
            eta: DDIM's η (0 deterministic, 1 DDPM-like); used by schedulers whose `step` takes it.
            use_clipped_model_output: passed to `step` (see diffusers' `DDIMScheduler.step`). None means True for
                hfddpm's `DDIMScheduler` when it clips or thresholds x̂_0: the step's ε̂ is then re-derived from the
                clipped x̂_0. Otherwise x_s = √ᾱ_s clip(x̂_0) + √(1 − ᾱ_s) ε̂ moves x by the whole clipping residual
                at every step, however small the step, and deterministic DDIM drifts further from the data the more
                steps it takes. Pass False for stock `DDIMPipeline`'s behaviour.
            output_type: ``"pil"`` (list of PIL images), ``"np"`` (float array NHWC in [0, 1]), ``"pt"``
                (float tensor NCHW in [0, 1]) or ``"latent"`` (the sample itself, float32 NCHW in about [−1, 1],
                neither rescaled nor clamped, as diffusers' pipelines return latents).
            return_dict: return an `ImagePipelineOutput` rather than a tuple.
            corrector_steps: Langevin corrector steps before each reverse step, at its noise level: predictor–
                corrector sampling (Song et al. 2021, Algorithms 1 and 5), each costing one more network
                evaluation; needs hfddpm's `DDPMScheduler` or `DDIMScheduler`.
            corrector_snr: the corrector's signal-to-noise ratio r, which sets its step size.
            class_labels: for a class-conditional UNet, the class of each image — ids or names (`labels`), one per
                image (the batch is then their number; `batch_size` must be 1 or that number) or one for the
                whole batch. None draws unconditionally, from ε_θ(x_t, t, ∅).
            guidance_scale: classifier-free guidance's w (`hfddpm.conditioning.guided_prediction`): 1 samples the
                conditional model, 0 the unconditional one, w > 1 trades diversity for fidelity to the label at the
                cost of a second network evaluation per step (both run as one batch). Default
                `DEFAULT_GUIDANCE_SCALE`; needs `class_labels`.
            callback_on_step_end: called after each step as in diffusers' pipelines,
                `callback_on_step_end(pipeline, step_index, timestep, callback_kwargs)`, with the tensors named in
                `callback_on_step_end_tensor_inputs` ("latents": x after the step, "pred_original_sample": the
                step's x̂_0 where the scheduler gives it); a returned "latents" replaces x. A diffusers
                `PipelineCallback` or `MultiPipelineCallbacks` brings its own tensor names. "sample", the earlier
                name of "latents", still works with a FutureWarning.

        The progress bar counts denoising steps and is turned off with `set_progress_bar_config(disable=True)`, as
        in diffusers. A sample that turns NaN or infinite stops the call with a `NonFiniteSampleError` naming the
        step and the likely cause.
        """
        device = self._execution_device  # private, no public twin: under CPU offload `self.device` is cpu
        class_labels, batch_size = self.class_label_ids(class_labels, batch_size, device)
        guidance_scale = self.check_guidance_scale(guidance_scale, class_labels)
        num_inference_steps, eta = self._check_inputs(
            batch_size, generator, self.inference_steps(num_inference_steps), eta, output_type
        )
        callback_names = self._callback_names(callback_on_step_end, callback_on_step_end_tensor_inputs)
        corrector_steps, corrector_snr = self._check_corrector(corrector_steps, corrector_snr)
        sample = randn_tensor(self.sample_shape(batch_size), generator=generator, device=device, dtype=torch.float32)
        sample = sample * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self._num_timesteps = len(self.scheduler.timesteps)
        step_kwargs = self._step_kwargs(self.scheduler, generator, eta, use_clipped_model_output)

        with eval_mode(self.unet):
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                for _ in range(corrector_steps):
                    sample = self._langevin_correction(
                        sample, t, corrector_snr, generator, class_labels, guidance_scale
                    )
                output = self.reverse_step(self.scheduler, sample, t, class_labels, guidance_scale, step_kwargs)
                sample = output.prev_sample
                if callback_on_step_end is not None:
                    sample = self._call_back(callback_on_step_end, callback_names, i, t, sample, output)
                self.check_finite(sample, i, t, guidance_scale if class_labels is not None else 1.0)
        return self.postprocess(sample, output_type, return_dict)

    @property
    def num_timesteps(self) -> int:
        """The denoising steps of the latest call (diffusers' name): the callback's step index runs up to this − 1."""
        return self._num_timesteps

    def check_finite(self, sample: torch.Tensor, step: int, t: torch.Tensor, guidance_scale: float) -> None:
        """Stop with a `NonFiniteSampleError` if the sample after step `step` (0-based) holds NaN or Inf.

        One reduction over the sample per step, against a network evaluation per step; hfddpm's schedulers already
        wait for the device once per step (they read the next timestep as a Python number), so waiting for this
        check adds no stall there.
        """
        if bool(torch.isfinite(sample).all()):
            return
        bad = sum(nonfinite_weights(self.unet).values())
        if bad:
            cause = f"the UNet has {bad} non-finite weights; load a checkpoint whose weights are finite"
        elif guidance_scale not in (0, 1):
            cause = (
                f"guidance_scale={guidance_scale:g} pushed the guided prediction past float32's range; lower it "
                "(1 to 5 is usual)"
            )
        elif self._network_dtype() != torch.float32:
            cause = f"the UNet runs in {self._network_dtype()}, whose range its output exceeded; run it in float32"
        else:
            cause = "the network's output or the scheduler's step overflowed; check the checkpoint and the scheduler"
        raise NonFiniteSampleError(
            f"the sample turned non-finite (NaN or Inf) at step {step + 1} of {self._num_timesteps} (timestep "
            f"{int(t)}): {cause}"
        )

    def reverse_step(
        self,
        scheduler: SchedulerMixin,
        sample: torch.Tensor,
        t: torch.Tensor,
        class_labels: torch.Tensor | None,
        guidance_scale: float,
        step_kwargs: dict,
    ) -> Any:
        """`scheduler.step` from x_t with the (guided) network output at `scale_model_input(x_t)`, whose variance
        channels are dropped unless the scheduler reads them."""
        model_output = self.model_output(scheduler.scale_model_input(sample, t), t, class_labels, guidance_scale)
        channels = sample.shape[1]
        if model_output.shape[1] == 2 * channels and not consumes_model_variance(scheduler):
            model_output = model_output[:, :channels]
        return scheduler.step(model_output, t, sample, **step_kwargs)

    def sample_shape(self, batch_size: int) -> tuple[int, ...]:
        """(batch_size, C, H, W) of the UNet's samples."""
        size = self.unet.config.sample_size
        return (batch_size, self.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))

    def model_output(
        self, sample: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None, guidance_scale: float
    ) -> torch.Tensor:
        """The network's output at (x_t, t) in float32, guided towards `class_labels` with scale w.

        w = 1 (or no labels) is one evaluation of the conditional (or unconditional) network and w = 0 one of the
        unconditional network, so both are exact; any other w evaluates both halves as one batch of 2B.
        """
        sample = sample.to(self._network_dtype())
        if class_labels is None or guidance_scale == 1:
            return predict(self.unet, sample, t, class_labels).to(torch.float32)
        if guidance_scale == 0:
            return predict(self.unet, sample, t).to(torch.float32)
        null = torch.full_like(class_labels, self.num_classes)
        both = predict(self.unet, torch.cat([sample, sample]), t, torch.cat([class_labels, null])).to(torch.float32)
        conditional, unconditional = both.chunk(2)
        return guided_prediction(conditional, unconditional, guidance_scale, sample.shape[1])

    def _network_dtype(self) -> torch.dtype:
        """The UNet's dtype from its first parameter (or buffer): `ModelMixin.dtype` walks every module, and this
        is asked at every step."""
        tensor = next(itertools.chain(self.unet.parameters(), self.unet.buffers()), None)
        return torch.float32 if tensor is None else tensor.dtype

    def class_label_ids(
        self, class_labels: Any, batch_size: int, device: torch.device
    ) -> tuple[torch.Tensor | None, int]:
        """`class_labels` (ids or names, one or one per image) as a tensor of ids, and the batch size they make."""
        batch_size = checked_integer("batch_size", batch_size)
        if class_labels is None:
            return None, batch_size
        if self.num_classes is None:
            raise ValueError(
                "class_labels were given, but this checkpoint is unconditional (its UNet has no num_class_embeds); "
                "drop class_labels and guidance_scale"
            )
        if isinstance(class_labels, (torch.Tensor, np.ndarray)):
            if class_labels.ndim > 1:
                raise ValueError(
                    f"class_labels must be one label or a 1-D sequence, got shape {tuple(class_labels.shape)}"
                )
            class_labels = class_labels.tolist()  # a 0-d array gives its one value
        values = list(class_labels) if isinstance(class_labels, (list, tuple)) else [class_labels]
        if not values:
            raise ValueError("class_labels is empty; pass at least one label, or None to draw unconditionally")
        ids = [self._class_id(value) for value in values]
        if len(ids) == 1:  # one label for the whole batch
            ids = ids * batch_size
        elif batch_size not in (1, len(ids)):
            raise ValueError(
                f"got {len(ids)} class_labels for batch_size={batch_size}: pass one label per image (the batch is "
                "then their number), or a single label for the whole batch"
            )
        return torch.tensor(ids, dtype=torch.long, device=device), len(ids)

    def _class_id(self, value: Any) -> int:
        """One label, an id or a name, as an id among the UNet's classes."""
        if isinstance(value, str):
            return self.get_label_ids(value)[0]
        if not is_integer(value):
            raise TypeError(f"a class label is an integer id or a class name, got {value!r} ({type(value).__name__})")
        if not 0 <= value < self.num_classes:
            raise ValueError(
                f"class label {value} is not one of this model's {self.num_classes} classes (ids 0 to "
                f"{self.num_classes - 1}: {self.id2label})"
            )
        return int(value)

    def check_guidance_scale(self, guidance_scale: float | None, class_labels: torch.Tensor | None) -> float:
        """w, checked: a finite number ≥ 0, and only with class labels (default `DEFAULT_GUIDANCE_SCALE`)."""
        if guidance_scale is None:
            return DEFAULT_GUIDANCE_SCALE if class_labels is not None else 1.0
        if class_labels is None:
            raise ValueError(
                "guidance_scale guides towards class_labels, and none were given: pass class_labels, or drop "
                "guidance_scale to draw unconditionally"
            )
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float, np.floating, np.integer)):
            raise TypeError(f"guidance_scale must be a number, got {guidance_scale!r}")
        if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise ValueError(
                f"guidance_scale must be a finite number >= 0 (1: the conditional model, 0: the unconditional one), "
                f"got {guidance_scale}"
            )
        return float(guidance_scale)

    def _callback_names(self, callback: Any, names: Any) -> list[str]:
        """The tensors to hand `callback`, checked: a diffusers `PipelineCallback` names its own, as in diffusers'
        pipelines; the deprecated "sample" warns."""
        if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
            names = callback.tensor_inputs
        if isinstance(names, str):
            raise TypeError(f"callback_on_step_end_tensor_inputs must be a list of names, got {names!r}")
        names = list(names)
        for old in set(names) & set(DEPRECATED_CALLBACK_TENSORS):
            warnings.warn(
                f"the callback tensor {old!r} is deprecated; name it {DEPRECATED_CALLBACK_TENSORS[old]!r}, as "
                "diffusers' pipelines do",
                FutureWarning,
                stacklevel=3,
            )
        if unknown := set(names) - set(self._callback_tensor_inputs) - set(DEPRECATED_CALLBACK_TENSORS):
            raise ValueError(
                f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}, "
                f"got {sorted(unknown)}"
            )
        return names

    def _call_back(
        self, callback: Callable, names: list[str], i: int, t: torch.Tensor, sample: torch.Tensor, output: Any
    ) -> torch.Tensor:
        """Run `callback_on_step_end` after step i, which left `sample`; the "latents" it returns (or, deprecated,
        "sample"), else `sample`, continues."""
        tensors = {"latents": sample, "pred_original_sample": getattr(output, "pred_original_sample", None)}
        tensors.update({old: tensors[new] for old, new in DEPRECATED_CALLBACK_TENSORS.items()})
        returned = callback(self, i, t, {name: tensors[name] for name in names}) or {}
        replaced = [returned[name] for name in ("latents", *DEPRECATED_CALLBACK_TENSORS) if name in returned]
        return next((tensor for tensor in replaced if tensor is not sample), sample)

    def postprocess(self, sample: torch.Tensor, output_type: str, return_dict: bool) -> ImagePipelineOutput | tuple:
        """x in [−1, 1] as images in [0, 1] of `output_type`, in an `ImagePipelineOutput` unless `return_dict` is
        False."""
        if output_type == "latent":
            image = sample
        else:
            image = (sample / 2 + 0.5).clamp(0, 1)
        if output_type not in ("pt", "latent"):
            image = image.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)

    def _langevin_correction(self, sample, t, snr, generator, class_labels, guidance_scale) -> torch.Tensor:
        """One corrector step at timestep t (`langevin_corrector_step`), from the network's (guided) ε̂."""
        output = self.model_output(sample, t, class_labels, guidance_scale)
        epsilon = self.scheduler.convert_prediction(output[:, : sample.shape[1]], sample, t, "epsilon")
        alpha_bar = self.scheduler.alpha_bar(t)
        alpha = alpha_bar / self.scheduler.alpha_bar(int(t) - 1)  # α_t = 1 − β_t
        return langevin_corrector_step(sample, epsilon, alpha_bar, alpha, snr, generator)

    def _check_corrector(self, corrector_steps: Any, corrector_snr: Any) -> tuple[int, float]:
        """The predictor–corrector options, checked: k ≥ 0 steps (only with hfddpm's schedulers) and r > 0."""
        corrector_steps = checked_integer("corrector_steps", corrector_steps, 0)
        corrector_snr = checked_number("corrector_snr", corrector_snr, 0, open_low=True)
        if corrector_steps and not isinstance(self.scheduler, (DDPMScheduler, DDIMScheduler)):
            raise ValueError(
                f"corrector_steps needs hfddpm's DDPMScheduler or DDIMScheduler, got {corrector_steps} with "
                f"{type(self.scheduler).__name__}; pass corrector_steps=0 or swap the scheduler"
            )
        return corrector_steps, corrector_snr

    def _check_inputs(self, batch_size, generator, num_inference_steps, eta, output_type) -> tuple[int, float]:
        """Refuse bad call arguments before sampling starts; return the step count and η as plain numbers."""
        single = generator is None or isinstance(generator, torch.Generator)
        if not single and not (isinstance(generator, list) and all(isinstance(g, torch.Generator) for g in generator)):
            raise TypeError(
                f"generator must be a torch.Generator or a list of them (one per image), got {generator!r}; "
                "use torch.Generator().manual_seed(seed)"
            )
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"got {len(generator)} generators for batch_size={batch_size}: pass one generator, or one per image"
            )
        max_steps = self.scheduler.config.get("num_train_timesteps")
        if max_steps is None:
            num_inference_steps = checked_integer("num_inference_steps", num_inference_steps)
        else:
            num_inference_steps = check_num_inference_steps(num_inference_steps, max_steps)
        eta = checked_number("eta", eta, 0, 1, meaning=ETA_MEANING)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        self._check_unet_channels()
        return num_inference_steps, eta

    def _check_unet_channels(self) -> None:
        in_channels, out_channels = self.unet.config.in_channels, self.unet.config.out_channels
        if out_channels not in (in_channels, 2 * in_channels):
            raise ValueError(
                f"the UNet has out_channels={out_channels} for in_channels={in_channels}; it must output in_channels "
                f"({in_channels}, a prediction) or 2 × in_channels ({2 * in_channels}, a prediction and a learned "
                "variance): build it with create_unet(..., learned_variance=False or True)"
            )
        if consumes_model_variance(self.scheduler) and out_channels != 2 * self.unet.config.in_channels:
            raise ValueError(
                f"the scheduler uses a learned variance but the UNet has out_channels={out_channels}, not "
                f"2 × in_channels; use a fixed variance (reverse_variance='fixed_small' or 'fixed_large')"
            )

    def _step_kwargs(self, scheduler: SchedulerMixin, generator, eta, use_clipped_model_output) -> dict:
        """The keyword arguments `scheduler.step` accepts, as diffusers' pipelines pass them."""
        accepted = inspect.signature(scheduler.step).parameters
        kwargs = {}
        if "generator" in accepted:
            kwargs["generator"] = generator
        if "eta" in accepted:
            kwargs["eta"] = eta
        elif eta != 0:
            logger.warning("%s ignores eta=%s", type(scheduler).__name__, eta)
        if use_clipped_model_output is None and isinstance(scheduler, DDIMScheduler):
            use_clipped_model_output = bool(scheduler.config.clip_sample or scheduler.config.thresholding)
        if use_clipped_model_output is not None and "use_clipped_model_output" in accepted:
            kwargs["use_clipped_model_output"] = use_clipped_model_output
        return kwargs


def _checked_id2label(id2label: Any, classes: int | None) -> dict[str, str]:
    """`id2label` as model_index.json stores it ({"0": name, …}), refused unless it names exactly the UNet's classes
    0 … K−1 with distinct strings."""
    if classes is None:
        raise ValueError("id2label names classes, but the UNet is unconditional (no num_class_embeds); drop id2label")
    if not isinstance(id2label, dict):
        raise TypeError(f"id2label must be a dict {{id: name}}, got {type(id2label).__name__}")
    try:
        ids = sorted(int(key) for key in id2label)
    except (TypeError, ValueError):
        raise ValueError(f"id2label's keys must be class ids 0 to {classes - 1}, got {list(id2label)}") from None
    names = list(id2label.values())
    if ids != list(range(classes)) or not all(isinstance(name, str) and name for name in names):
        raise ValueError(
            f"id2label must name each of the UNet's {classes} classes (ids 0 to {classes - 1}) with a non-empty "
            f"string, got {dict(id2label)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"id2label gives two classes the same name: {dict(id2label)}")
    return {str(int(key)): name for key, name in sorted(id2label.items(), key=lambda item: int(item[0]))}
