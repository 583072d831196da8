"""A small CNN for the built-in 8×8 digits: the feature extractor of the offline metrics, shipped with the package.

Its features (the 64 activations before the last layer) play the role Inception's play in FID, for data that
Inception was never trained on and that needs no download: `fd_digits` is the Fréchet distance between generated
and real digits in this space, and its class predictions say which digits a generator draws and how clearly.

The shipped weights (`assets/digits-classifier/`) are those `train_digits_classifier()` returns with its defaults
(`python examples/train_digits_classifier.py` writes them); their accuracy on the 297 held-out digits is
`HELD_OUT_ACCURACY`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..image_data import load_digits_dataset

SHIPPED_WEIGHTS = Path(__file__).parent / "assets" / "digits-classifier"
HELD_OUT_ACCURACY = 287 / 297  # of the shipped weights on the "test" split (0.966), measured by the training script


class DigitsClassifier(ModelMixin, ConfigMixin):
    """conv 3×3 (8×8) → conv 3×3 stride 2 (4×4) → conv 3×3 stride 2 (2×2) → linear → features → linear → logits.

    Takes images in [0, 1] of any size and channel count (an `HFDDPMPipeline`'s ``output_type="pt"``): they are
    averaged to grey, resized to `image_size` with an antialiased bilinear filter and scaled to [−1, 1].
    """

    @register_to_config
    def __init__(
        self, channels: tuple[int, int, int] = (32, 64, 64), feature_dim: int = 64, image_size: int = 8
    ) -> None:
        super().__init__()
        first, second, third = channels
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, first, 3, padding=1),
            torch.nn.SiLU(),
            torch.nn.Conv2d(first, second, 3, stride=2, padding=1),
            torch.nn.SiLU(),
            torch.nn.Conv2d(second, third, 3, stride=2, padding=1),
            torch.nn.SiLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(third * math.ceil(image_size / 4) ** 2, feature_dim),
            torch.nn.SiLU(),
        )
        self.head = torch.nn.Linear(feature_dim, 10)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        grey = images.float().mean(dim=1, keepdim=True)
        size = self.config.image_size
        if grey.shape[-2:] != (size, size):
            grey = F.interpolate(grey, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return grey.clamp(0, 1) * 2 - 1

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The (N, feature_dim) activations before the last layer, for images in [0, 1]."""
        return self.body(self.preprocess(images.to(self.device)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits over the ten digits, for images in [0, 1]."""
        return self.head(self.features(images))


def digits_tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The built-in digits of a split as images in [0, 1] of shape (N, 1, 8, 8), and their labels."""
    rows = load_digits_dataset(split).with_format("numpy")[:]
    images = torch.from_numpy(np.stack(rows["image"]).astype(np.float32) / 255).unsqueeze(1)
    return images, torch.from_numpy(rows["label"]).long()


def _shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by up to one pixel in each direction (zero fill): generated digits are not all centred."""
    padded = F.pad(images, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (len(images), 2), generator=generator)
    return torch.stack([p[:, y : y + 8, x : x + 8] for p, (y, x) in zip(padded, offsets.tolist(), strict=True)])


def train_digits_classifier(
    epochs: int = 60, batch_size: int = 64, learning_rate: float = 2e-3, seed: int = 0
) -> tuple[DigitsClassifier, float]:
    """Train on the 1500 "train" digits (random one-pixel shifts, AdamW, cosine schedule, label smoothing 0.1);
    return the classifier in eval mode and its accuracy on the 297 "test" digits. Deterministic on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitsClassifier()
    images, labels = digits_tensors("train")
    steps_per_epoch = math.ceil(len(images) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            batch = order[start : start + batch_size]
            logits = model(_shift(images[batch], generator))
            loss = F.cross_entropy(logits, labels[batch], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    return model, held_out_accuracy(model)


@torch.no_grad()
def held_out_accuracy(model: DigitsClassifier) -> float:
    """Accuracy on the 297 "test" digits, which training never sees."""
    images, labels = digits_tensors("test")
    return (model(images).argmax(1) == labels.to(model.device)).float().mean().item()
