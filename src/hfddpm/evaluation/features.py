"""Feature extractors for Fréchet distances: the shipped digits classifier, Inception (FID) and DINOv2 (FD_DINOv2).

Each takes images in [0, 1] of shape (N, C, H, W) — an `HFDDPMPipeline`'s ``output_type="pt"`` — and returns
(N, d) float features; its `name` identifies it (weights included) in the keys of cached reference statistics. None
downloads anything here: weights come from a local file, folder or the Hugging Face cache, and a missing one is
a one-line error that says where to put it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .classifiers import ImageClassifier, shipped_weights

INCEPTION_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception, as torchmetrics uses
DINOV2_DEFAULT = "facebook/dinov2-large"  # ViT-L/14, the network of FD_DINOv2 (Stein et al. 2023)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _rgb(images: torch.Tensor) -> torch.Tensor:
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class ClassifierFeatures:
    """The 64 penultimate activations of a shipped classifier (`classifiers`: "digits" or "fashion"), or of one saved
    at `path`; offline."""

    def __init__(
        self, name: str = "digits", device: str | torch.device = "cpu", path: str | os.PathLike | None = None
    ):
        path = path or shipped_weights(name)
        self.model = ImageClassifier.from_pretrained(path, use_safetensors=True).eval().to(device)
        self.name = f"{name}-classifier-{_file_digest(Path(path) / 'diffusion_pytorch_model.safetensors')}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(images)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes."""
        return self.model(images).softmax(dim=1)


class InceptionFeatures:
    """The 2048-d pool features of the FID Inception network, through torchmetrics' `NoTrainInceptionV3`.

    Needs torch-fidelity (which needs torchvision) and the weights file `pt_inception-2015-12-05-6726825d.pth`
    at `weights` or in torch hub's checkpoint folder; the file is checked to hold tensors only before use.
    """

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> None:
        default = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_NAME  # torch-fidelity's place
        path = Path(weights) if weights is not None else default
        if not path.is_file():
            raise FileNotFoundError(
                f"FID needs the Inception weights {INCEPTION_WEIGHTS_NAME}; none at {path}: download it once from "
                "https://github.com/toshas/torch-fidelity/releases and put it there or pass --inception_weights PATH"
            )
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            torch.load(path, map_location="cpu", weights_only=True)  # refuses a pickle that holds more than tensors
        except Exception:  # pickle's and torch's errors: not a file of tensors alone
            raise ValueError(
                f"--inception_weights {path} is not {INCEPTION_WEIGHTS_NAME} (not a file of tensors); download it "
                "again"
            ) from None
        try:
            network = NoTrainInceptionV3(
                name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
            )
        except ModuleNotFoundError as error:  # torchmetrics names no module: say which, for `missing_extra`
            raise ImportError(str(error), name="torch_fidelity") from None
        self.network = network.to(device)
        self.name = f"inception-v3-fid-{_file_digest(path)}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # torch-fidelity's Inception takes uint8 RGB and resizes to 299×299 itself.
        uint8 = (_rgb(images).clamp(0, 1) * 255).round().to(torch.uint8)
        return self.network(uint8.to(next(self.network.parameters()).device)).reshape(len(images), -1).double()


class Dinov2Features:
    """The class-token embedding (after the final layer norm) of a DINOv2 ViT, via transformers' `Dinov2Model`.

    `model` is a local folder or a Hub id already in the Hugging Face cache (it is loaded with
    `local_files_only=True`); images are resized to 224×224 (bicubic) and normalised with ImageNet's statistics, as
    in Stein et al.'s dgm-eval.
    """

    def __init__(self, model: str | os.PathLike = DINOV2_DEFAULT, device: str | torch.device = "cpu") -> None:
        from transformers import Dinov2Model
        from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        try:
            self.network = Dinov2Model.from_pretrained(str(model), local_files_only=True, use_safetensors=True)
        except OSError as error:
            raise FileNotFoundError(
                f"FD_DINOv2 needs the DINOv2 weights {model!r} locally; none found: run `hf download {model}` "
                "where the Hub is reachable, or pass --dinov2_model FOLDER"
            ) from error
        self.network = self.network.to(device).eval()
        config = self.network.config
        self.name = f"dinov2-{Path(str(model)).name}-{config.hidden_size}x{config.num_hidden_layers}"
        self.mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=self.network.device).reshape(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_DEFAULT_STD, device=self.network.device).reshape(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        resized = F.interpolate(_rgb(images).float().to(self.network.device), size=(224, 224), mode="bicubic")
        return self.network(pixel_values=(resized.clamp(0, 1) - self.mean) / self.std).pooler_output.double()
