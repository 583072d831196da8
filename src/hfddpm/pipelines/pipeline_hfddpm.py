"""`HFDDPMPipeline`: unconditional image generation with any diffusers scheduler, saved in the stock layout.

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
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from .. import __version__
from ..eval_mode import eval_mode
from ..schedulers import DDIMScheduler, DDPMScheduler
from ..schedulers.gaussian_diffusion import LEARNED_VARIANCES
from ..schedulers.langevin import langevin_corrector_step
from .checkpoint_safety import check_checkpoint_folder, check_model_index, check_weights, fetch_model_index

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt")
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
_HFDDPM_SCHEDULERS = {cls.__name__: cls for cls in (DDPMScheduler, DDIMScheduler)}
# `from_pretrained` options with which diffusers imports code named by the caller or the checkpoint.
_REMOTE_CODE_KWARGS = ("custom_pipeline", "trust_remote_code")


def consumes_model_variance(scheduler: SchedulerMixin) -> bool:
    """Whether `scheduler.step` reads a learned-variance network's extra output channels."""
    config = scheduler.config
    if isinstance(scheduler, (DDPMScheduler, DDIMScheduler)) and config.reverse_variance is not None:
        return config.reverse_variance in LEARNED_VARIANCES
    return isinstance(scheduler, diffusers.DDPMScheduler) and config.variance_type in LEARNED_VARIANCES


class HFDDPMPipeline(DiffusionPipeline):
    """Unconditional image generation: start from N(0, σ_max² I) and apply the scheduler's reverse steps.

    Works with hfddpm's `DDPMScheduler` and `DDIMScheduler` and with any stock diffusers scheduler: the loop calls
    `scale_model_input` and starts from `init_noise_sigma`, which sigma-parameterised schedulers (Euler, Heun, …)
    need. The sample is kept in float32 whatever the UNet's dtype, so a half-precision UNet only changes the network
    evaluations. See the module docstring for the checkpoint layout.

    Args:
        unet: a `UNet2DModel` (or any model called as `unet(sample, t).sample`); with 2C output channels it is a
            learned-variance model.
        scheduler: the noise scheduler.
        default_num_inference_steps: the step count a call without `num_inference_steps` samples at (None: 50),
            saved in `model_index.json`: a distilled student samples at its own step count without being told.
    """

    model_cpu_offload_seq = "unet"
    # Subclassing API: diffusers' callbacks documentation names this attribute as where a pipeline lists its tensors.
    _callback_tensor_inputs = ["sample", "pred_original_sample"]

    def __init__(
        self, unet: UNet2DModel, scheduler: SchedulerMixin, default_num_inference_steps: int | None = None
    ) -> None:
        super().__init__()
        if default_num_inference_steps is not None and (
            type(default_num_inference_steps) is not int or default_num_inference_steps < 1
        ):
            raise ValueError(
                f"default_num_inference_steps must be a positive integer or None, got {default_num_inference_steps!r}"
            )
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(default_num_inference_steps=default_num_inference_steps)

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
        if not allow_pickle:
            kwargs["use_safetensors"] = True
        folder = str(pretrained_model_name_or_path)
        if not os.path.isdir(folder):
            download_kwargs = {k: kwargs[k] for k in _DOWNLOAD_KWARGS if k in kwargs}
            check_model_index(fetch_model_index(folder, download_kwargs), folder)
            # Pickle-only weights are fetched too (not unpickled), so the folder check below names them.
            download_kwargs["use_safetensors"] = kwargs.get("use_safetensors") if allow_pickle else None
            folder = cls.download(folder, **download_kwargs)
        index = check_checkpoint_folder(folder, passed=kwargs)
        if "unet" not in kwargs and check_weights(os.path.join(folder, "unet"), allow_pickle):  # allowed pickles
            kwargs["use_safetensors"] = False  # read them without diffusers' warning about missing safetensors
        if "scheduler" not in kwargs:
            scheduler_class = _hfddpm_scheduler_class(index)
            if scheduler_class is not None:
                kwargs["scheduler"] = scheduler_class.from_pretrained(folder, subfolder="scheduler")
        return super().from_pretrained(folder, **kwargs)

    def to_json_string(self) -> str:
        """`model_index.json` in the stock form described in the module docstring."""
        index = json.loads(super().to_json_string())
        index["_class_name"] = (
            "DDIMPipeline" if isinstance(self.scheduler, diffusers.DDIMScheduler) else "DDPMPipeline"
        )
        index["_hfddpm_version"] = __version__
        if index.get("default_num_inference_steps") is None:  # stock pipelines take no such argument
            index.pop("default_num_inference_steps", None)
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
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("sample",),
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
            output_type: ``"pil"`` (list of PIL images), ``"np"`` (float array NHWC in [0, 1]) or ``"pt"``
                (float tensor NCHW in [0, 1]).
            return_dict: return an `ImagePipelineOutput` rather than a tuple.
            corrector_steps: Langevin corrector steps before each reverse step, at its noise level: predictor–
                corrector sampling (Song et al. 2021, Algorithms 1 and 5), each costing one more network
                evaluation; needs hfddpm's `DDPMScheduler` or `DDIMScheduler`.
            corrector_snr: the corrector's signal-to-noise ratio r, which sets its step size.
            callback_on_step_end: called after each step as in diffusers' pipelines,
                `callback_on_step_end(pipeline, step_index, timestep, callback_kwargs)`, with the tensors named in
                `callback_on_step_end_tensor_inputs` ("sample": x after the step, "pred_original_sample": the
                step's x̂_0 where the scheduler gives it); a returned "sample" replaces x.

        The progress bar is configured with `set_progress_bar_config(disable=True)` as in diffusers.
        """
        num_inference_steps = self.inference_steps(num_inference_steps)
        self._check_inputs(batch_size, generator, num_inference_steps, eta, output_type)
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}, "
                f"got {sorted(unknown)}"
            )
        if corrector_steps < 0 or (corrector_steps and not isinstance(self.scheduler, (DDPMScheduler, DDIMScheduler))):
            raise ValueError(
                f"corrector_steps must be >= 0 and needs hfddpm's DDPMScheduler or DDIMScheduler, got "
                f"{corrector_steps} with {type(self.scheduler).__name__}"
            )
        # Private, no public twin: under enable_model_cpu_offload `self.device` is cpu, the UNet runs elsewhere.
        device = self._execution_device
        channels = self.unet.config.in_channels
        size = self.unet.config.sample_size
        shape = (batch_size, channels, *((size, size) if isinstance(size, int) else size))

        sample = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        sample = sample * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        step_kwargs = self._step_kwargs(generator, eta, use_clipped_model_output)
        keep_variance = consumes_model_variance(self.scheduler)
        unet_dtype = self.unet.dtype  # diffusers finds it by walking every module: once, not at every step

        with eval_mode(self.unet):
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                for _ in range(corrector_steps):
                    sample = self._langevin_correction(sample, t, corrector_snr, generator, unet_dtype)
                model_input = self.scheduler.scale_model_input(sample, t).to(unet_dtype)
                model_output = self.unet(model_input, t).sample.to(torch.float32)
                if model_output.shape[1] == 2 * channels and not keep_variance:
                    model_output = model_output[:, :channels]
                output = self.scheduler.step(model_output, t, sample, **step_kwargs)
                sample = output.prev_sample
                if callback_on_step_end is not None:
                    tensors = {"sample": sample, "pred_original_sample": getattr(output, "pred_original_sample", None)}
                    callback_kwargs = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
                    sample = callback_on_step_end(self, i, t, callback_kwargs).get("sample", sample)

        image = (sample / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)

    def _langevin_correction(self, sample, t, snr, generator, unet_dtype: torch.dtype) -> torch.Tensor:
        """One corrector step at timestep t (`langevin_corrector_step`), from the network's ε̂."""
        output = self.unet(sample.to(unet_dtype), t).sample.to(torch.float32)
        epsilon = self.scheduler.convert_prediction(output[:, : sample.shape[1]], sample, t, "epsilon")
        alpha_bar = self.scheduler.alpha_bar(t)
        alpha = alpha_bar / self.scheduler.alpha_bar(int(t) - 1)  # α_t = 1 − β_t
        return langevin_corrector_step(sample, epsilon, alpha_bar, alpha, snr, generator)

    def _check_inputs(self, batch_size, generator, num_inference_steps, eta, output_type) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"got {len(generator)} generators for batch_size={batch_size}: pass one generator, or one per image"
            )
        max_steps = self.scheduler.config.get("num_train_timesteps")
        if (
            not isinstance(num_inference_steps, int)
            or num_inference_steps < 1
            or (max_steps is not None and num_inference_steps > max_steps)
        ):
            raise ValueError(
                f"num_inference_steps must be an integer in [1, {max_steps}], got {num_inference_steps!r}"
            )
        if eta < 0:
            raise ValueError(f"eta must be >= 0 (0 is deterministic DDIM, 1 is DDPM-like), got {eta}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
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

    def _step_kwargs(self, generator, eta, use_clipped_model_output) -> dict:
        """The keyword arguments this scheduler's `step` accepts, as diffusers' pipelines pass them."""
        accepted = inspect.signature(self.scheduler.step).parameters
        kwargs = {}
        if "generator" in accepted:
            kwargs["generator"] = generator
        if "eta" in accepted:
            kwargs["eta"] = eta
        elif eta != 0:
            logger.warning("%s ignores eta=%s", type(self.scheduler).__name__, eta)
        if use_clipped_model_output is None and isinstance(self.scheduler, DDIMScheduler):
            use_clipped_model_output = bool(self.scheduler.config.clip_sample or self.scheduler.config.thresholding)
        if use_clipped_model_output is not None and "use_clipped_model_output" in accepted:
            kwargs["use_clipped_model_output"] = use_clipped_model_output
        return kwargs


def _hfddpm_scheduler_class(index: dict) -> type | None:
    """hfddpm's subclass for a model_index.json whose scheduler is a stock (or hfddpm) DDPM or DDIM scheduler."""
    library, class_name = (index.get("scheduler") or [None, None])[:2]
    if library in ("diffusers", *(cls.__module__ for cls in _HFDDPM_SCHEDULERS.values())):
        return _HFDDPM_SCHEDULERS.get(class_name)
    return None
