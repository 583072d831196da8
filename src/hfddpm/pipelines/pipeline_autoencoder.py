"""`AutoencoderPipeline`: the first stage of latent diffusion, an `AutoencoderKL` saved as a diffusers folder
(`model_index.json` and `vae/`), whose `vae/` is what `--vae` and `HFDDPMPipeline(vae=...)` take. Calling it
reconstructs images: x̂ = D(z/s + b) from z = s·(μ(x) − b) (`hfddpm.models.latent_space`)."""

# No `from __future__ import annotations`: diffusers < 0.37 needs `__init__`'s annotations as classes, not strings.
import json
import os
from typing import Any

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput

from .. import __version__, durable
from ..eval_mode import eval_mode
from ..models.latent_space import decode, encode
from .loading import safe_components
from .pipeline_hfddpm import IMAGE_PROCESSOR


class AutoencoderPipeline(DiffusionPipeline):
    """Reconstruct images through an autoencoder's latent space.

    Args:
        vae: an `AutoencoderKL` whose `scaling_factor` is 1/std of its training latents (training sets it).
    """

    model_cpu_offload_seq = "vae"

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.register_modules(vae=vae)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *, allow_pickle: bool = False, **kwargs: Any
    ) -> "AutoencoderPipeline":
        """`DiffusionPipeline.from_pretrained`, as safely as `HFDDPMPipeline.from_pretrained`."""
        folder, components = safe_components(pretrained_model_name_or_path, allow_pickle, kwargs, required=("vae",))
        return super().from_pretrained(folder, **components, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        super().save_pretrained(save_directory, **kwargs)
        durable.finish_tree(os.path.join(save_directory, "vae"))

    def to_json_string(self) -> str:
        index = json.loads(super().to_json_string())
        index["_hfddpm_version"] = __version__
        return json.dumps(index, indent=2, sort_keys=True) + "\n"

    @torch.no_grad()
    def __call__(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """The reconstructions of `images` (NCHW in [−1, 1]): through the encoder's mean, or a draw from q(z|x) with
        `generator`; `output_type` as `HFDDPMPipeline`'s ("latent": the latents z)."""
        if output_type == "latent":
            with eval_mode(self.vae):
                images = encode(self.vae, images.to(self._execution_device), generator)
        else:
            images = IMAGE_PROCESSOR.postprocess(self.reconstruct(images, generator), output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x̂ = D(z/s + b) of z = s·(E(x) − b), E(x) the encoder's mean (a draw from q(E|x) with `generator`), as
        images in [−1, 1] (clamped, as an image holds them)."""
        with eval_mode(self.vae):
            latents = encode(self.vae, images.to(self._execution_device), generator)
            return decode(self.vae, latents).clamp(-1, 1)
