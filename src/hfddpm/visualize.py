"""Pictures of the two processes as single grid images: the forward noising of real images, and the reverse
trajectory of a pipeline (its x_t and its prediction x̂_0 every few steps)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import PIL.Image
import PIL.ImageDraw
import PIL.ImageOps
import torch
from diffusers.utils import make_image_grid

from . import durable

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

    from .pipelines import HFDDPMPipeline

LABEL_HEIGHT = 14  # pixels of the text line above a labelled grid


def image_format(path: str | os.PathLike) -> str | None:
    """The PIL format that writes `path`, from its extension (".png" → "PNG"); None when PIL writes no such file."""
    PIL.Image.init()
    image_format = PIL.Image.registered_extensions().get(Path(path).suffix.lower())
    return image_format if image_format in PIL.Image.SAVE else None


def check_image_path(
    path: str | os.PathLike, what: str, overwrite: bool = False, suffixes: Sequence[str] = ()
) -> Path:
    """`path` as a Path if an image can be written there before any work starts: an extension PIL writes (one of
    `suffixes` when given), and `durable.check_output_file`'s checks; else a one-line ValueError."""
    path = durable.check_output_file(path, what, overwrite)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"{what} {path} must name a {' or '.join(suffixes)} file")
    if image_format(path) is None:
        raise ValueError(f"{what} {path} has no image extension PIL writes; end it in .png")
    return path


def save_image(image: PIL.Image.Image, path: str | os.PathLike) -> None:
    """Save `image` to `path` atomically (the old file or the new one, never half), in the format its extension
    names; a failed write is one line saying why (a full disk says so)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with durable.replacing(path) as temporary:
            image.save(temporary, format=image_format(path))
    except OSError as error:
        raise OSError(
            f"{durable.write_problem(error)} to write {path} ({error.strerror or error}); free disk space or write "
            "elsewhere"
        ) from None


def to_pil(images: torch.Tensor, scale: int = 1) -> list[PIL.Image.Image]:
    """Images in [−1, 1] of shape (N, C, H, W) as PIL images, enlarged `scale` times (nearest neighbour)."""
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).numpy()
    pictures = [PIL.Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]
    return [PIL.ImageOps.scale(p, scale, PIL.Image.NEAREST) for p in pictures]


def sample_grid(pictures: list[PIL.Image.Image], cell_size: int = 64, cols: int | None = None) -> PIL.Image.Image:
    """Images in a grid of `cols` columns (None: near-square), row by row, each enlarged (nearest neighbour) to at
    least `cell_size` pixels wide and framed by a black border one original pixel wide; empty cells are black."""
    cols = cols or math.ceil(math.sqrt(len(pictures)))
    rows = math.ceil(len(pictures) / cols)
    scale = max(1, cell_size // pictures[0].width)
    cells = [
        PIL.ImageOps.expand(PIL.ImageOps.scale(p, scale, PIL.Image.NEAREST), border=scale, fill=0) for p in pictures
    ]
    cells += [PIL.Image.new(cells[0].mode, cells[0].size)] * (rows * cols - len(cells))
    return make_image_grid(cells, rows=rows, cols=cols)


def labelled_grid(rows: list[list[PIL.Image.Image]], column_labels: Sequence[str], gap: int = 2) -> PIL.Image.Image:
    """A grid of equally sized images, `gap` white pixels apart, with a line of text above each column."""
    width, height = rows[0][0].size
    columns = len(rows[0])
    canvas = PIL.Image.new(
        "RGB", (columns * (width + gap) - gap, LABEL_HEIGHT + len(rows) * (height + gap) - gap), "white"
    )
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            canvas.paste(image.convert("RGB"), (c * (width + gap), LABEL_HEIGHT + r * (height + gap)))
    draw = PIL.ImageDraw.Draw(canvas)
    for column, label in enumerate(column_labels):
        draw.text((column * (width + gap) + 2, 1), label, fill="black")
    return canvas


def forward_noising_grid(
    images: torch.Tensor,
    scheduler: SchedulerMixin,
    timesteps: Sequence[int] = (0, 50, 100, 200, 300, 400, 500, 700, 999),
    generator: torch.Generator | None = None,
    scale: int = 4,
) -> PIL.Image.Image:
    """One row per image (in [−1, 1]), one column per timestep: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Ho et al. 2020,
    eq. 4) with one ε per image, so a row shows the same noise growing."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=generator)
    columns = [images] + [scheduler.add_noise(images.float(), noise, torch.full((len(images),), t)) for t in timesteps]
    pictures = [to_pil(column, scale) for column in columns]
    rows = [list(row) for row in zip(*pictures, strict=True)]
    return labelled_grid(rows, ["x_0"] + [f"t={t}" for t in timesteps])


def reverse_trajectory_grid(
    pipeline: HFDDPMPipeline,
    num_images: int = 4,
    num_inference_steps: int | None = None,
    every: int = 5,
    generator: torch.Generator | list[torch.Generator] | None = None,
    scale: int = 4,
) -> PIL.Image.Image:
    """For each image two rows: x_t and the step's prediction x̂_0, every `every` steps and at the last one; at the
    pipeline's own step count unless `num_inference_steps` is given.

    Runs the pipeline (with its own scheduler) and records the tensors through its `callback_on_step_end`.
    """
    num_inference_steps = pipeline.inference_steps(num_inference_steps)
    recorded: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def record(pipe, index, timestep, tensors):
        if index % every == every - 1 or index == num_inference_steps - 1:
            latents, predicted = tensors["latents"].cpu(), tensors["pred_original_sample"]
            predicted = torch.zeros_like(latents) if predicted is None else predicted.cpu()
            recorded.append((int(timestep), latents, predicted))
        return {}

    pipeline(
        batch_size=num_images,
        generator=generator if generator is not None else torch.Generator().manual_seed(0),
        num_inference_steps=num_inference_steps,
        output_type="pt",
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=["latents", "pred_original_sample"],
    )
    samples = [to_pil(latents, scale) for _, latents, _ in recorded]
    predictions = [to_pil(predicted, scale) for _, _, predicted in recorded]
    rows = [[column[image] for column in kind] for image in range(num_images) for kind in (samples, predictions)]
    return labelled_grid(rows, [f"t={t}" for t, _, _ in recorded])
