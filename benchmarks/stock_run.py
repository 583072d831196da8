"""A run's training budget spent by stock diffusers' loop: the same UNet, data, hyper-parameters and number of steps
as an hfddpm run, trained by the loop body of diffusers' train_unconditional.py (`train_speed.stock_side`).

    python benchmarks/stock_run.py outputs/fashion-cpu outputs/fashion-cpu-stock
    python benchmarks/fashion_study.py outputs/fashion-cpu-stock     # measured as the hfddpm run is

The EMA weights are saved, as the stock example saves them, beside the hfddpm run's own scheduler, so that the two
folders differ in their training alone and sample alike. `stock_training.json` records the time and speed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import UNet2DModel
from train_speed import stock_side

from hfddpm import HFDDPMPipeline
from hfddpm.image_data import load_image_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished hfddpm training run")
    parser.add_argument("output_dir", help="a new or empty folder")
    parser.add_argument("--max_train_steps", type=int, help="default: the run's")
    args = parser.parse_args()
    output = Path(args.output_dir)
    if output.exists() and any(output.iterdir()):
        raise SystemExit(f"{output} is not empty; name a new folder")
    hyper = argparse.Namespace(**json.loads((Path(args.run) / "training_args.json").read_text()))
    steps = args.max_train_steps or hyper.max_train_steps
    if hyper.cpu_threads:
        torch.set_num_threads(hyper.cpu_threads)
    accelerator = Accelerator(mixed_precision=hyper.mixed_precision or "no")
    set_seed(hyper.seed)
    unet = UNet2DModel.from_config(UNet2DModel.load_config(Path(args.run) / "unet")).train()
    dataset, image_column = load_image_dataset(
        hyper.dataset_name, hyper.dataset_config_name, hyper.train_data_dir, hyper.split, hyper.image_column
    )
    step, ema = stock_side(
        hyper,
        accelerator,
        unet,
        dataset,
        image_column,
        resolution=hyper.resolution,
        channels=hyper.channels,
        batch_size=hyper.train_batch_size,
        random_flip=hyper.random_flip,
    )
    started = time.perf_counter()
    for number in range(1, steps + 1):
        loss = step()
        if number % 100 == 0:
            print(f"step {number}/{steps}  loss {loss:.4f}  {time.perf_counter() - started:.0f} s", flush=True)
    seconds = time.perf_counter() - started

    pipeline = HFDDPMPipeline.from_pretrained(args.run)
    ema.copy_to(accelerator.unwrap_model(unet).parameters())
    pipeline.unet.load_state_dict(accelerator.unwrap_model(unet).state_dict())
    pipeline.save_pretrained(output)
    record = {
        "like_run": args.run,
        "steps": steps,
        "batch_size": hyper.train_batch_size,
        "wall_time_seconds": round(seconds, 1),
        "images_per_second": round(steps * hyper.train_batch_size / seconds, 1),
        "final_loss": loss,
        "threads": torch.get_num_threads(),
    }
    (output / "stock_training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
