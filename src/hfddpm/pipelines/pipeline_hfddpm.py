"""`HFDDPMPipeline`: image generation with any diffusers scheduler, unconditional or class-conditional with
classifier-free guidance, in pixel space or in an autoencoder's latent space, saved in the stock layout.

`save_pretrained` writes stock `DDPMPipeline`'s folder (`model_index.json`, `unet/` with safetensors weights,
`scheduler/`), and `model_index.json` names only stock classes: `DDIMPipeline` for a DDIM scheduler, else
`DDPMPipeline`, and diffusers' `DDPMScheduler`/`DDIMScheduler` for hfddpm's subclasses. So
`HFDDPMPipeline.from_pretrained` loads its own folders and stock ones (google/ddpm-cifar10-32), with hfddpm's
schedulers for stock DDPM/DDIM ones; stock `DiffusionPipeline.from_pretrained` loads an hfddpm folder as a stock
pipeline (hfddpm-only scheduler keys are ignored with diffusers' warning; `variance_type` holds the nearest stock
choice); `unet/` is a plain `UNet2DModel` folder. Loading runs no code and reads no pickle from a checkpoint
(`hfddpm.pipelines.loading`).

A latent pipeline (Rombach et al. 2022) has a `vae/` as well: its `model_index.json` names `HFDDPMPipeline`, which
stock diffusers does not have, so no stock pipeline loads it and returns latents as if they were images.
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
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, ModelMixin, SchedulerMixin
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from .. import __version__, durable
from ..arguments import checked_integer, checked_number
from ..conditioning import guided_prediction, num_classes, predict
from ..eval_mode import eval_mode
from ..models.latent_space import decode
from ..schedulers import DDIMScheduler, DDPMScheduler
from ..schedulers.gaussian_diffusion import LEARNED_VARIANCES
from ..schedulers.langevin import langevin_corrector_step
from .loading import count_nonfinite, safe_components

logger = logging.getLogger(__name__)

# w of classifier-free guidance when class labels are given without a guidance_scale (benchmarks/RESULTS.md,
# "Class-conditional generation", measures the choice).
DEFAULT_GUIDANCE_SCALE = 1.5
IMAGE_PROCESSOR = VaeImageProcessor(do_resize=False, do_normalize=True)  # [−1, 1] → [0, 1] and output_type


class NonFiniteSampleError(ValueError):
    """The sample turned NaN or infinite while sampling (a ValueError: command lines report it in one line)."""


class HFDDPMPipeline(DiffusionPipeline):
    """Image generation: start from N(0, σ_max² I) and apply the scheduler's reverse steps.

    Works with hfddpm's `DDPMScheduler` and `DDIMScheduler` and with any stock diffusers scheduler, called in
    diffusers' order (`set_timesteps`, then the noise scaled by `init_noise_sigma`, and `scale_model_input` at
    every step), so sigma-parameterised schedulers (Euler, Heun, …) sample as in diffusers' own pipelines. The
    sample is kept in float32 whatever the UNet's dtype. See the module docstring for the checkpoint layout.

    A class-conditional UNet (`num_class_embeds` = classes + 1, the last index meaning "no label"; see
    `hfddpm.conditioning`) draws images of the `class_labels` it is given, with classifier-free guidance, and
    unconditional images when given none.

    Args:
        unet: a `UNet2DModel` (or any model called as `unet(sample, t).sample`, such as `FourierFeaturesUNet`);
            with 2C output channels it is a learned-variance model.
        scheduler: the noise scheduler.
        default_num_inference_steps: the step count a call without `num_inference_steps` samples at (None: 50),
            saved in `model_index.json`: a distilled student samples at its own step count without being told.
        id2label: the names of a class-conditional UNet's classes, {id: name} as in `DiTPipeline` (None: the ids'
            digits), saved in `model_index.json`.
        vae: for a latent diffusion model, the `AutoencoderKL` whose scaled latents the UNet denoises
            (`hfddpm.models.latent_space`): samples are decoded, x = D(z/s + b).
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents", "pred_original_sample"]

    def __init__(
        self,
        unet: ModelMixin,
        scheduler: SchedulerMixin,
        default_num_inference_steps: int = None,
        id2label: dict = None,
        vae: AutoencoderKL = None,
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        classes = num_classes(unet)
        if id2label is not None and sorted(int(key) for key in id2label) != list(range(classes or 0)):
            named = f"the UNet's classes 0 to {classes - 1}" if classes else "no class (the UNet is unconditional)"
            raise ValueError(f"id2label must name {named}, got {id2label}")
        id2label = None if id2label is None else {str(key): str(name) for key, name in id2label.items()}
        self.register_to_config(default_num_inference_steps=default_num_inference_steps, id2label=id2label)
        self._num_timesteps = 0

    @property
    def num_classes(self) -> int | None:
        """The classes of a class-conditional UNet, or None for an unconditional one."""
        return num_classes(self.unet)

    @property
    def id2label(self) -> dict[int, str]:
        """{id: name} of the classes (names "0", "1", … when none were saved); empty for an unconditional UNet."""
        names = self.config.get("id2label") or {index: index for index in range(self.num_classes or 0)}
        return {int(key): str(name) for key, name in names.items()}

    @property
    def labels(self) -> dict[str, int]:
        """{name: id} of the classes, sorted by name, as `DiTPipeline.labels`."""
        return dict(sorted((name, i) for i, name in self.id2label.items()))

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """The ids of class names, as `DiTPipeline.get_label_ids`; an unknown name is refused with the known ones."""
        names = [label] if isinstance(label, str) else list(label)
        if unknown := [name for name in names if name not in self.labels]:
            raise ValueError(f"unknown class name(s) {unknown}; this model's classes are {list(self.labels)}")
        return [self.labels[name] for name in names]

    @property
    def num_timesteps(self) -> int:
        """The denoising steps of the latest call (diffusers' name): the callback's step index runs up to this − 1."""
        return self._num_timesteps

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *, allow_pickle: bool = False, **kwargs: Any
    ) -> "HFDDPMPipeline":
        """`DiffusionPipeline.from_pretrained`, safely (`hfddpm.pipelines.loading`): safetensors weights only, unless
        `allow_pickle=True` for a source you trust (pickles are then read with `torch.load(weights_only=True)`); no
        code from the checkpoint; a stock `DDPMScheduler`/`DDIMScheduler` loads as hfddpm's subclass."""
        folder, components = safe_components(pretrained_model_name_or_path, allow_pickle, kwargs)
        return super().from_pretrained(folder, **components, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """diffusers' `save_pretrained`, the components' files given the modes a plain write would (safetensors
        writes its files 0600 whatever the umask)."""
        super().save_pretrained(save_directory, **kwargs)
        for name, component in self.components.items():
            if component is not None:
                durable.finish_tree(os.path.join(save_directory, name))

    def to_json_string(self) -> str:
        """`model_index.json` in the stock form described in the module docstring."""
        index = json.loads(super().to_json_string())
        if self.vae is not None:
            index["_class_name"] = "HFDDPMPipeline"
        else:
            index.pop("vae", None)
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
        """The step count a call samples at: `num_inference_steps`, else `default_num_inference_steps`, else 50."""
        if num_inference_steps is not None:
            return num_inference_steps
        default = self.config.get("default_num_inference_steps")
        return 50 if default is None else default

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
                hfddpm's `DDIMScheduler` when it clips or thresholds x̂_0, so ε̂ is re-derived from the clipped x̂_0:
                otherwise x_s = √ᾱ_s clip(x̂_0) + √(1 − ᾱ_s) ε̂ moves x by the whole clipping residual at every step,
                and deterministic DDIM drifts further from the data the more steps it takes. False: stock's behaviour.
            output_type: ``"pil"``, ``"np"`` (NHWC in [0, 1]), ``"pt"`` (NCHW in [0, 1]) or ``"latent"`` (the sample
                itself in float32, as diffusers' pipelines return latents: about [−1, 1] in pixel space, the scaled
                latents z of a latent pipeline, not decoded).
            return_dict: return an `ImagePipelineOutput` rather than a tuple.
            corrector_steps: Langevin corrector steps before each reverse step, at its noise level: predictor–
                corrector sampling (Song et al. 2021, Algorithms 1 and 5), each costing one more network
                evaluation; needs hfddpm's `DDPMScheduler` or `DDIMScheduler`.
            corrector_snr: the corrector's signal-to-noise ratio r, which sets its step size.
            class_labels: for a class-conditional UNet, the class of each image — ids or names (`labels`), one per
                image (the batch is then their number) or one for the whole batch. None draws unconditionally, from
                ε_θ(x_t, t, ∅).
            guidance_scale: classifier-free guidance's w (`hfddpm.conditioning.guided_prediction`): 1 samples the
                conditional model, 0 the unconditional one, w > 1 trades diversity for fidelity to the label at the
                cost of a second network evaluation per step. Default `DEFAULT_GUIDANCE_SCALE`; needs `class_labels`.
            callback_on_step_end, callback_on_step_end_tensor_inputs: as in diffusers' pipelines, called after each
                step with "latents" (x after the step) and "pred_original_sample" (the step's x̂_0 where the
                scheduler gives it); a returned "latents" replaces x.

        A sample that turns NaN or infinite stops the call with a `NonFiniteSampleError` naming the step.
        """
        device = self._execution_device  # private, no public twin: under CPU offload `self.device` is cpu
        labels, batch_size = self.class_label_ids(class_labels, batch_size, device)
        guidance_scale = self.checked_guidance_scale(guidance_scale, labels)
        tensor_names = self.checked_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        corrector_steps = self.checked_corrector(corrector_steps, corrector_snr)
        self.scheduler.set_timesteps(self.inference_steps(num_inference_steps), device=device)
        latents = randn_tensor(self.sample_shape(batch_size), generator=generator, device=device, dtype=torch.float32)
        latents = latents * self.scheduler.init_noise_sigma
        self._num_timesteps = len(self.scheduler.timesteps)
        step_kwargs = self.step_kwargs(self.scheduler, generator, eta, use_clipped_model_output)
        with eval_mode(self.unet):
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                for _ in range(corrector_steps):
                    latents = self.langevin_correction(latents, t, corrector_snr, generator, labels, guidance_scale)
                output = self.reverse_step(self.scheduler, latents, t, labels, guidance_scale, step_kwargs)
                latents = self.after_step(i, t, output, output.prev_sample, callback_on_step_end, tensor_names)
        return self.postprocess(latents, output_type, return_dict)

    def after_step(self, i, t, output, latents, callback, tensor_names) -> torch.Tensor:
        """The sample after step i: the callback's "latents" if it returns them; refused if NaN or infinite."""
        if callback is not None:
            tensors = {"latents": latents, "pred_original_sample": getattr(output, "pred_original_sample", None)}
            latents = callback(self, i, t, {name: tensors[name] for name in tensor_names}).pop("latents", latents)
        if not torch.isfinite(latents).all():
            bad = count_nonfinite(self.unet)
            cause = (
                f"the UNet holds {bad} non-finite weights; load a checkpoint whose weights are finite"
                if bad
                else "the network's output or the step overflowed; lower guidance_scale, or run the UNet in float32"
            )
            raise NonFiniteSampleError(
                f"the sample turned NaN or infinite at step {i + 1} of {self._num_timesteps} (timestep {int(t)}): "
                f"{cause}"
            )
        return latents

    def reverse_step(
        self, scheduler: SchedulerMixin, sample: torch.Tensor, t: torch.Tensor, labels, guidance_scale, step_kwargs
    ) -> Any:
        """`scheduler.step` from x_t with the (guided) network output at `scale_model_input(x_t)`, whose variance
        channels are dropped unless the scheduler reads them."""
        model_output = self.model_output(scheduler.scale_model_input(sample, t), t, labels, guidance_scale)
        stock_choice = scheduler.config.variance_type if isinstance(scheduler, diffusers.DDPMScheduler) else None
        reads_variance = (scheduler.config.get("reverse_variance") or stock_choice) in LEARNED_VARIANCES
        if model_output.shape[1] == 2 * sample.shape[1] and not reads_variance:
            model_output = model_output[:, : sample.shape[1]]
        return scheduler.step(model_output, t, sample, **step_kwargs)

    def model_output(
        self, sample: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, guidance_scale: float
    ) -> torch.Tensor:
        """The network's output at (x_t, t) in float32, guided towards `labels` with scale w: w = 1 (or no labels)
        is one evaluation of the conditional (or unconditional) network and w = 0 one of the unconditional
        network, so both are exact; any other w evaluates both halves as one batch of 2B."""
        sample = sample.to(self.unet.dtype)
        if labels is None or guidance_scale == 1:
            return predict(self.unet, sample, t, labels).float()
        if guidance_scale == 0:
            return predict(self.unet, sample, t).float()
        both = predict(
            self.unet, torch.cat([sample, sample]), t, torch.cat([labels, torch.full_like(labels, self.num_classes)])
        )
        conditional, unconditional = both.float().chunk(2)
        return guided_prediction(conditional, unconditional, guidance_scale, sample.shape[1])

    def langevin_correction(self, sample, t, snr, generator, labels, guidance_scale) -> torch.Tensor:
        """One corrector step at timestep t (`langevin_corrector_step`), from the network's (guided) ε̂."""
        output = self.model_output(sample, t, labels, guidance_scale)
        epsilon = self.scheduler.convert_prediction(output[:, : sample.shape[1]], sample, t, "epsilon")
        alpha_bar = self.scheduler.alpha_bar(t)
        alpha = alpha_bar / self.scheduler.alpha_bar(int(t) - 1)  # α_t = 1 − β_t
        return langevin_corrector_step(sample, epsilon, alpha_bar, alpha, snr, generator)

    def sample_shape(self, batch_size: int) -> tuple[int, ...]:
        """(batch_size, C, H, W) of the UNet's samples."""
        size = self.unet.config.sample_size
        return (batch_size, self.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))

    def class_label_ids(
        self, class_labels: Any, batch_size: int, device: torch.device
    ) -> tuple[torch.Tensor | None, int]:
        """`class_labels` (ids or names, one or one per image) as a tensor of ids, and the batch size they make.
        An id out of range is refused: the last one, K, would silently draw unconditional images."""
        if class_labels is None:
            return None, batch_size
        if self.num_classes is None:
            raise ValueError(
                "class_labels were given, but this checkpoint is unconditional (no num_class_embeds); drop them"
            )
        values = class_labels.tolist() if hasattr(class_labels, "tolist") else class_labels
        values = values if isinstance(values, (list, tuple)) else [values]
        ids = [
            self.get_label_ids(value)[0]
            if isinstance(value, str)
            else checked_integer("class label", value, 0, self.num_classes - 1)
            for value in values
        ]
        if len(ids) == 1:  # one label for the whole batch
            ids = ids * batch_size
        elif batch_size not in (1, len(ids)):
            raise ValueError(
                f"got {len(ids)} class_labels for batch_size={batch_size}: pass one label, or one per image"
            )
        return torch.tensor(ids, dtype=torch.long, device=device), len(ids)

    def checked_guidance_scale(self, guidance_scale: float | None, labels: torch.Tensor | None) -> float:
        """w: a finite number ≥ 0, and only with class labels (default `DEFAULT_GUIDANCE_SCALE`)."""
        if guidance_scale is None:
            return 1.0 if labels is None else DEFAULT_GUIDANCE_SCALE
        if labels is None:
            raise ValueError(
                "guidance_scale guides towards class_labels, and none were given: pass class_labels or drop it"
            )
        return checked_number(
            "guidance_scale", guidance_scale, "[0, inf)", "1: the conditional model, 0: the unconditional one"
        )

    def checked_callback(self, callback: Any, names: Any) -> list[str]:
        """The tensors to hand `callback` (a diffusers `PipelineCallback` names its own), among
        `_callback_tensor_inputs`."""
        names = list(
            callback.tensor_inputs if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)) else names
        )
        if unknown := set(names) - set(self._callback_tensor_inputs):
            raise ValueError(
                f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}, got "
                f"{sorted(unknown)}"
            )
        return names

    def checked_corrector(self, corrector_steps: int, corrector_snr: float) -> int:
        """k ≥ 0 corrector steps, with r > 0, only with hfddpm's schedulers (which give ε̂ and ᾱ_t)."""
        corrector_steps = checked_integer("corrector_steps", corrector_steps, 0)
        checked_number("corrector_snr", corrector_snr, "(0, inf)")
        if corrector_steps and not isinstance(self.scheduler, (DDPMScheduler, DDIMScheduler)):
            raise ValueError(
                f"corrector_steps needs hfddpm's DDPMScheduler or DDIMScheduler, not {type(self.scheduler).__name__}"
            )
        return corrector_steps

    def step_kwargs(self, scheduler: SchedulerMixin, generator, eta: float, use_clipped_model_output) -> dict:
        """The keyword arguments `scheduler.step` accepts, as diffusers' pipelines pass them."""
        accepted = inspect.signature(scheduler.step).parameters
        if eta and "eta" not in accepted:
            logger.warning("%s ignores eta=%s", type(scheduler).__name__, eta)
        if use_clipped_model_output is None and isinstance(scheduler, DDIMScheduler):
            use_clipped_model_output = bool(scheduler.config.clip_sample or scheduler.config.thresholding)
        kwargs = {"generator": generator, "eta": eta, "use_clipped_model_output": use_clipped_model_output}
        return {key: value for key, value in kwargs.items() if key in accepted and value is not None}

    def postprocess(self, sample: torch.Tensor, output_type: str, return_dict: bool) -> ImagePipelineOutput | tuple:
        """x in [−1, 1] (decoded from z by a latent pipeline's autoencoder) as images of `output_type` (diffusers'
        `VaeImageProcessor.postprocess`)."""
        if self.vae is not None and output_type != "latent":
            with eval_mode(self.vae):
                sample = decode(self.vae, sample)
        image = IMAGE_PROCESSOR.postprocess(sample, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=image) if return_dict else (image,)
