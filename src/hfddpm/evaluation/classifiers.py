"""Small CNNs for the digits and Fashion-MNIST: the feature extractors of the offline metrics, shipped in the package.

Their features (the 64 activations before the last layer) play the role Inception's play in FID, for data that
Inception was never trained on and that needs no download: `fd_digits` and `fd_fashion` are the Fréchet distances
between generated and real images in these spaces, and their class predictions say which classes a generator draws
and how clearly.

The shipped weights (`assets/<name>-classifier/`) are those `train_classifier(name)` returns with its defaults
(`python examples/train_classifier.py NAME` writes them); their accuracy on the held-out split is `HELD_OUT_ACCURACY`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..image_data import load_image_dataset

ASSETS = Path(__file__).parent / "assets"  # the shipped weights
# name: (dataset, image size, training epochs). The digits: 1,500 training images; Fashion-MNIST: 60,000.
CLASSIFIERS = {"digits": ("digits", 8, 60), "fashion": ("fashion_mnist", 28, 8)}
# Of the shipped weights on the held-out "test" split, measured by the training script.
HELD_OUT_ACCURACY = {"digits": 287 / 297, "fashion": 9235 / 10_000}


def shipped_weights(name: str) -> Path:
    return ASSETS / f"{name}-classifier"


def classifier_metrics(name: str) -> tuple[str, str]:
    """The metrics of the classifier `name`: its Fréchet distance and its class scores."""
    return f"fd_{name}", f"{name}_scores"


# The offline sample metrics of each dataset with a shipped classifier.
DATASET_METRICS = {dataset: classifier_metrics(name) for name, (dataset, _, _) in CLASSIFIERS.items()}


class ImageClassifier(ModelMixin, ConfigMixin):
    """conv 3×3 (S×S) → conv 3×3 stride 2 (S/2) → conv 3×3 stride 2 (S/4) → linear → features → linear → logits, at
    the `image_size` S of its data (8 for the digits, 28 for Fashion-MNIST).

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


def labelled_images(dataset: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A grey labelled dataset's split as images in [0, 1] of shape (N, 1, H, W), and their labels."""
    rows = load_image_dataset(dataset, split=split)[0].with_format("numpy")[:]
    images = torch.from_numpy(np.stack(rows["image"]).astype(np.float32) / 255).unsqueeze(1)
    return images, torch.from_numpy(rows["label"]).long()


def _shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by up to one pixel in each direction (zero fill): generated digits are not all centred."""
    size = images.shape[-1]
    padded = F.pad(images, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (len(images), 2), generator=generator)
    return torch.stack([p[:, y : y + size, x : x + size] for p, (y, x) in zip(padded, offsets.tolist(), strict=True)])


def train_classifier(
    name: str = "digits",
    epochs: int | None = None,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    seed: int = 0,
) -> tuple[ImageClassifier, float]:
    """Train the classifier `name` of `CLASSIFIERS` on its dataset's "train" split (random one-pixel shifts, AdamW,
    cosine schedule, label smoothing 0.1; `epochs` by default the table's); return it in eval mode and its accuracy on
    the "test" split. Deterministic on the CPU."""
    dataset, size, default_epochs = CLASSIFIERS[name]
    epochs = epochs or default_epochs
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ImageClassifier(image_size=size)
    images, labels = labelled_images(dataset, "train")
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
    return model, held_out_accuracy(model, dataset)


@torch.no_grad()
def held_out_accuracy(model: ImageClassifier, dataset: str) -> float:
    """Accuracy on the dataset's "test" split, which training never sees."""
    images, labels = labelled_images(dataset, "test")
    logits = torch.cat([model(batch) for batch in images.split(1000)])
    return (logits.argmax(1) == labels.to(model.device)).float().mean().item()
