"""Tour of hfddpm in one run: pipelines from a preset and from a stock diffusers folder, and a sampler check.

    python examples/quickstart.py --output_dir outputs/quickstart

1. Builds a pipeline from the "tiny" UNet preset (random weights), saves it, loads it back with
   `HFDDPMPipeline.from_pretrained` and samples with DDPM and DDIM.
2. Writes a folder with stock diffusers' `DDPMPipeline.save_pretrained` and samples it with `HFDDPMPipeline`.
3. Replaces the UNet by the exact denoiser of a two-mode Gaussian mixture and shows how close 50-step samplers
   come to the data: the measurement that separates sampler error from training error.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import diffusers
import torch
from diffusers.utils import make_image_grid

from hfddpm import DDIMScheduler, DDPMScheduler, GaussianMixtureDenoiser, HFDDPMPipeline, create_unet


def preset_pipeline(output_dir: Path) -> None:
    torch.manual_seed(0)
    pipe = HFDDPMPipeline(
        unet=create_unet("tiny", sample_size=32), scheduler=DDPMScheduler(reverse_variance="fixed_large")
    )
    pipe.save_pretrained(output_dir / "tiny-random")
    pipe = HFDDPMPipeline.from_pretrained(output_dir / "tiny-random")
    images = pipe(batch_size=8, generator=torch.manual_seed(0), num_inference_steps=50).images
    make_image_grid(images, rows=2, cols=4).save(output_dir / "tiny-random-ddpm.png")

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    images = pipe(batch_size=8, generator=torch.manual_seed(0), num_inference_steps=20).images
    make_image_grid(images, rows=2, cols=4).save(output_dir / "tiny-random-ddim.png")
    print(
        f"1. preset pipeline saved to {output_dir / 'tiny-random'}; grids tiny-random-ddpm.png, tiny-random-ddim.png"
    )


def stock_folder(output_dir: Path) -> None:
    torch.manual_seed(1)
    unet = diffusers.UNet2DModel(
        sample_size=32, block_out_channels=(32, 64), norm_num_groups=8, layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )  # fmt: skip
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(output_dir / "stock-ddpm")
    pipe = HFDDPMPipeline.from_pretrained(output_dir / "stock-ddpm")
    images = pipe(batch_size=4, generator=torch.manual_seed(0), num_inference_steps=50).images
    make_image_grid(images, rows=1, cols=4).save(output_dir / "stock-ddpm.png")
    print(f"2. stock DDPMPipeline folder loaded with a {type(pipe.scheduler).__module__.split('.')[0]} scheduler")


def exact_denoiser_study() -> None:
    print("3. two-mode Gaussian mixture (weights 0.3/0.7, std 0.1), exact denoiser, 50 steps, 2000 samples:")
    print(f"   {'sampler':<34}{'weight of mode 1':>18}{'spread / data spread':>22}")
    mode = 0.3 * torch.sin(torch.linspace(0, math.pi, 8, dtype=torch.float64))[None, :, None].expand(1, 8, 8)
    means = torch.stack([mode, -mode])
    for name, scheduler, eta in [
        ("DDPM, fixed_small (β̃)", DDPMScheduler(clip_sample=False, timestep_spacing="linspace"), 0.0),
        ("DDPM, fixed_large (β)", DDPMScheduler(clip_sample=False, timestep_spacing="linspace",
                                                reverse_variance="fixed_large"), 0.0),
        ("DDIM, η = 0", DDIMScheduler(clip_sample=False, timestep_spacing="trailing"), 0.0),
        ("DDIM, η = 1", DDIMScheduler(clip_sample=False, timestep_spacing="trailing"), 1.0),
    ]:  # fmt: skip
        denoiser = GaussianMixtureDenoiser.for_scheduler(scheduler, means, stds=[0.1, 0.1], weights=[0.3, 0.7])
        pipe = HFDDPMPipeline(unet=denoiser, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        out = pipe(batch_size=2000, generator=torch.manual_seed(0), num_inference_steps=50, eta=eta, output_type="pt")
        samples = out.images.double() * 2 - 1
        distances = torch.stack([((samples - m) ** 2).flatten(1).sum(1) for m in means], dim=1)
        nearest = distances.argmin(1)
        spread = (samples - means[nearest]).std().item() / 0.1
        print(f"   {name:<34}{(nearest == 0).double().mean().item():>18.3f}{spread:>22.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/quickstart"))
    args = parser.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    preset_pipeline(args.output_dir)
    stock_folder(args.output_dir)
    exact_denoiser_study()


if __name__ == "__main__":
    main()
