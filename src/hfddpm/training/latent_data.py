"""Training latents for latent diffusion (Rombach et al. 2022): the training images encoded once by an autoencoder,
the parameters μ(x), σ(x) of its q(E|x) cached as the decoded images are (in datasets' cache, keyed by the images
and the autoencoder's weights), and per item and epoch a fresh draw z = s·(μ + σ ε − b), ε ~ N(0, I) from a
generator seeded with (seed, epoch, item), so that a resumed run draws the same latents. Class labels pass through.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import AutoencoderKL

from ..eval_mode import eval_mode
from ..image_data import TrainingImages
from ..models.latent_space import shift
from ..records import weights_fingerprint

ENCODE_BATCH = 256


@dataclass(eq=False)
class TrainingLatents(torch.utils.data.Dataset):
    """Latents drawn from the cached q(E|x) of each training image (see the module docstring)."""

    moments: object  # a datasets.Dataset of float32 "mean" and "std" bytes, each of `shape`
    shape: tuple[int, int, int]
    scaling_factor: float
    shift_factor: float
    identity: str  # the images' and the autoencoder's fingerprints, and s and b
    seed: int = 0
    labels: list[int] | None = None
    label_names: list[str] | None = None
    epoch: int = field(default=0, init=False)

    @classmethod
    @torch.no_grad()
    def encode(cls, images: TrainingImages, vae: AutoencoderKL, device: torch.device) -> TrainingLatents:
        """Encode `images` (their stored pixels, uncropped and unflipped) with `vae` on `device`, once."""
        vae = vae.to(device)
        encoded_by = f"{images.fingerprint()}:{weights_fingerprint(vae.state_dict())}"  # what the moments depend on
        identity = f"{encoded_by}:{vae.config.scaling_factor}:{shift(vae)}"  # and the drawn latents

        def moments(batch):
            rows = zip(batch["pixels"], batch["shape"], strict=True)
            pixels = np.stack([np.frombuffer(data, np.uint8).reshape(shape) for data, shape in rows])
            with eval_mode(vae):
                posterior = vae.encode(torch.from_numpy(pixels).to(device, vae.dtype) / 127.5 - 1).latent_dist
            mean, std = (part.float().cpu().numpy() for part in (posterior.mean, posterior.std))
            return {"mean": [m.tobytes() for m in mean], "std": [s.tobytes() for s in std]}

        encoded = images.pixels.map(
            moments,
            batched=True,
            batch_size=ENCODE_BATCH,
            remove_columns=images.pixels.column_names,
            new_fingerprint=hashlib.sha256(encoded_by.encode()).hexdigest()[:32],
            desc="Encoding images into latents",
        )
        first = np.frombuffer(images.pixels[0]["pixels"], np.uint8).reshape(images.pixels[0]["shape"])
        with eval_mode(vae):
            shape = vae.encode(torch.zeros(1, *first.shape, device=device, dtype=vae.dtype)).latent_dist.mean.shape
        return cls(
            encoded,
            tuple(shape[1:]),
            vae.config.scaling_factor,
            shift(vae),
            hashlib.sha256(identity.encode()).hexdigest()[:16],
            images.seed,
            images.labels,
            images.label_names,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def fingerprint(self) -> str:
        return self.identity

    def __len__(self) -> int:
        return len(self.moments)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor] | list[tuple[torch.Tensor, int]]:
        rows = self.moments[[int(i) for i in indices]]
        latents = [
            self._draw(np.frombuffer(mean, np.float32), np.frombuffer(std, np.float32), int(index))
            for index, mean, std in zip(indices, rows["mean"], rows["std"], strict=True)
        ]
        if self.labels is None:
            return latents
        return [(latent, self.labels[int(index)]) for latent, index in zip(latents, indices, strict=True)]

    def _draw(self, mean: np.ndarray, std: np.ndarray, index: int) -> torch.Tensor:
        noise = np.random.default_rng([self.seed, self.epoch, index]).standard_normal(mean.shape, dtype=np.float32)
        latent = (mean + std * noise - self.shift_factor) * self.scaling_factor
        return torch.from_numpy(latent.reshape(self.shape))
