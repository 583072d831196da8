"""Training throughput: hfddpm's training iteration against stock diffusers', measured in the same run.

    python benchmarks/train_speed.py                     # digits preset, batch 64, 8 px, float32
    python benchmarks/train_speed.py --mixed_precision bf16
    python benchmarks/train_speed.py --preset ddpm-cifar10-32 --resolution 32 --channels 3 --batch_size 16

Both sides train the same UNet (same initial weights), batch, resolution, precision, noise schedule, loss
(ε-prediction MSE), optimizer (AdamW, same hyper-parameters), EMA and gradient clipping, on the built-in digits:

- stock: the loop body of diffusers' examples/unconditional_image_generation/train_unconditional.py — images
  transformed per item in the data loader on every step (resize, centre crop, random flip, to tensor, normalise:
  what its torchvision Compose does with PIL images; torchvision has no CPU wheel here, so PIL does it), images and
  noise cast to the mixed-precision dtype before `add_noise`, AdamW as the example builds it, `EMAModel` with its
  defaults, `loss.item()` and a tracker call every step.
- hfddpm: `TrainingImages` (decoded and resized once), the objective `DenoisingLoss` (noising in float32),
  fused AdamW, foreach EMA, logging every 10 steps, as examples/train_unconditional.py does.

The two alternate in blocks of steps (ABAB…) and the medians are reported: a shared machine's speed drifts.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler as StockDDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from hfddpm import DDPMScheduler, create_unet
from hfddpm.image_data import ImagePreprocessing, TrainingImages, load_digits_dataset, pretensorize
from hfddpm.training.objectives import DenoisingLoss

# The stock example's defaults (its argparse), used by both sides here.
STOCK_EXAMPLE = argparse.Namespace(
    learning_rate=1e-4,
    lr_scheduler="cosine",
    lr_warmup_steps=500,
    adam_beta1=0.95,
    adam_beta2=0.999,
    adam_weight_decay=1e-6,
    adam_epsilon=1e-8,
    max_grad_norm=1.0,
    ema_max_decay=0.9999,
    ema_inv_gamma=1.0,
    ema_power=0.75,
    num_train_timesteps=1000,
    beta_schedule="linear",
)


def optimizer_and_schedule(hyper, unet, **adamw) -> tuple:
    """AdamW and the learning-rate schedule of the hyper-parameters `hyper`, as the stock example builds them."""
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=hyper.learning_rate,
        betas=(hyper.adam_beta1, hyper.adam_beta2),
        weight_decay=hyper.adam_weight_decay,
        eps=hyper.adam_epsilon,
        **adamw,
    )
    schedule = get_scheduler(
        hyper.lr_scheduler, optimizer, num_warmup_steps=hyper.lr_warmup_steps, num_training_steps=100_000
    )
    return optimizer, schedule


def ema_options(hyper) -> dict:
    """`EMAModel`'s options as the stock example passes them (its warm-up on)."""
    return {
        "decay": hyper.ema_max_decay,
        "use_ema_warmup": True,
        "inv_gamma": hyper.ema_inv_gamma,
        "power": hyper.ema_power,
    }


def stock_side(hyper, accelerator, unet, dataset, image_column, *, resolution, channels, batch_size, random_flip):
    """The loop body of diffusers' train_unconditional.py with the hyper-parameters `hyper` (its argument names):
    a function taking one step, and the `EMAModel` it updates."""

    def transforms(examples):  # Resize, CenterCrop, RandomHorizontalFlip, ToTensor, Normalize([0.5], [0.5])
        images = []
        for image in examples[image_column]:
            image = image.convert("RGB" if channels == 3 else "L")
            scale = resolution / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), PIL.Image.BILINEAR)
            left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
            image = image.crop((left, top, left + resolution, top + resolution))
            if random_flip and torch.rand(1) < 0.5:
                image = image.transpose(PIL.Image.FLIP_LEFT_RIGHT)
            array = np.asarray(image, dtype=np.float32) / 255.0
            tensor = torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
            images.append((tensor - 0.5) / 0.5)
        return {"input": images}

    dataset.set_transform(transforms)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    T = hyper.num_train_timesteps
    scheduler = StockDDPMScheduler(num_train_timesteps=T, beta_schedule=hyper.beta_schedule)
    optimizer, lr_scheduler = optimizer_and_schedule(hyper, unet)
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    ema = EMAModel(unet.parameters(), **ema_options(hyper))
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    batches = epochs(loader)
    logs = []

    def step():
        clean_images = next(batches)["input"].to(weight_dtype)
        noise = torch.randn(clean_images.shape, dtype=weight_dtype, device=clean_images.device)
        timesteps = torch.randint(0, T, (clean_images.shape[0],), device=clean_images.device).long()
        noisy_images = scheduler.add_noise(clean_images, noise, timesteps)
        with accelerator.accumulate(unet):
            model_output = unet(noisy_images, timesteps).sample
            loss = F.mse_loss(model_output.float(), noise.float())
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(unet.parameters(), hyper.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            ema.step(unet.parameters())
        logs.append(
            {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0], "ema_decay": ema.cur_decay_value}
        )
        return logs[-1]["loss"]

    return step, ema


def hfddpm_side(args, accelerator, unet):
    hyper = STOCK_EXAMPLE
    preprocessing = ImagePreprocessing(args.resolution, args.channels, center_crop=True, random_flip=True)
    dataset = load_digits_dataset("train")
    images = TrainingImages(pretensorize(dataset, "image", preprocessing), preprocessing)
    loader = torch.utils.data.DataLoader(images, batch_size=args.batch_size, shuffle=True, drop_last=True)
    objective = DenoisingLoss(DDPMScheduler(num_train_timesteps=hyper.num_train_timesteps))
    optimizer, lr_scheduler = optimizer_and_schedule(hyper, unet, fused=True)
    unet, optimizer, loader = accelerator.prepare(unet, optimizer, loader)
    ema = EMAModel(unet.parameters(), **ema_options(hyper), foreach=True)
    generator = torch.Generator(accelerator.device).manual_seed(0)
    batches = epochs(loader)
    count = itertools.count(1)

    def step():
        with accelerator.accumulate(unet):
            output = objective(unet, next(batches), generator)
            accelerator.backward(output.loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(unet.parameters(), hyper.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:
            lr_scheduler.step()
            ema.step(unet.parameters())
        if next(count) % 10 == 0:
            output.loss.item()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--resolution", type=int, default=8)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--mixed_precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--block_steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=6, help="timed blocks per side")
    args = parser.parse_args()

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    torch.manual_seed(0)
    unet = create_unet(args.preset, in_channels=args.channels, sample_size=args.resolution)
    images = dict(resolution=args.resolution, channels=args.channels, batch_size=args.batch_size, random_flip=True)
    stock, _ = stock_side(STOCK_EXAMPLE, accelerator, _copy(unet), load_digits_dataset("train"), "image", **images)
    sides = {
        "stock diffusers": stock,
        "hfddpm": hfddpm_side(args, accelerator, _copy(unet)),
    }
    for step in sides.values():  # warm-up: first calls allocate and pick kernels
        for _ in range(3):
            step()
    synchronize(accelerator.device)
    seconds = {name: [] for name in sides}
    for _ in range(args.blocks):
        for name, step in sides.items():
            start = time.perf_counter()
            for _ in range(args.block_steps):
                step()
            synchronize(accelerator.device)
            seconds[name].append((time.perf_counter() - start) / args.block_steps)

    params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(
        f"{args.preset} UNet ({params:.2f}M parameters), batch {args.batch_size}, {args.resolution}×{args.resolution}×"
        f"{args.channels}, precision {args.mixed_precision}, {accelerator.device}, {torch.get_num_threads()} threads"
    )
    speed = {name: args.batch_size / statistics.median(values) for name, values in seconds.items()}
    for name, images_per_second in speed.items():
        spread = [round(args.batch_size / v) for v in seconds[name]]
        print(f"  {name:16s} {images_per_second:8.1f} images/s  (blocks: {spread})")
    print(f"  ratio hfddpm / stock: {speed['hfddpm'] / speed['stock diffusers']:.2f}×")


def epochs(loader):
    """The loader's batches, epoch after epoch; unlike `itertools.cycle`, each epoch is loaded afresh (shuffled,
    transformed), as a training loop loads it."""
    while True:
        yield from loader


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU kernels, so a timed block measures their completion rather than their launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _copy(unet):
    copy = type(unet).from_config(unet.config)
    copy.load_state_dict(unet.state_dict())
    return copy.train()


if __name__ == "__main__":
    main()
