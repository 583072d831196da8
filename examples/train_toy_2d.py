"""Diffusion on 2-D point clouds, as the tutorials draw it: T = 100 steps, an MLP, figures of both processes.

    python examples/train_toy_2d.py                       # every dataset, both models: ~2 minutes on 2 CPU cores
    python examples/train_toy_2d.py --datasets swiss_roll --steps 5000 --output_dir outputs/toy

Two models per dataset, sharing hfddpm's `DDPMScheduler` with the image models:
- "ε, fixed β̃": the MLP predicts ε, trained on L_simple, sampled with the posterior variance β̃_t;
- "mean & variance": the MLP's last layer outputs the mean (through ε̂) and the variance (``learned_range``) of
  p_θ(x_{t−1}|x_t), trained on the variational bound with a continuous decoder and importance-sampled t.
Figures in --output_dir: forward_process.png and reverse_process.png (10 snapshots across the 100 steps, one row
per dataset), loss_curves.png, samples.png (samples over data); distances.json holds the sliced Wasserstein
distance from 2000 samples to 2000 fresh data points, and between two data draws (the floor). Files of an earlier
run are replaced only with --overwrite, and the folder is checked before training starts.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import torch

from hfddpm import DDPMScheduler, durable
from hfddpm.arguments import check_options, option, parse_options
from hfddpm.evaluation.sliced_wasserstein import sliced_wasserstein
from hfddpm.models.point_denoiser import PointDenoiser
from hfddpm.schedulers.bound_terms import Decoder
from hfddpm.training import run_command
from hfddpm.training.objectives import DenoisingLoss
from hfddpm.training.timestep_sampling import LossSecondMomentSampler
from hfddpm.training.toy_data import TOY_DATASETS, toy_points

NUM_TIMESTEPS = 100
MODELS = {
    "ε, fixed β̃": {"reverse_variance": "fixed_small", "loss_type": "simple"},
    "mean & variance": {"reverse_variance": "learned_range", "loss_type": "vlb"},
}

# What a run writes in --output_dir: the four figures, then the distances.
OUTPUTS = ("forward_process.png", "reverse_process.png", "samples.png", "loss_curves.png", "distances.json")
SEEDS = "[0, 4294967295]"


@dataclasses.dataclass(kw_only=True)
class ToyOptions:
    """The command line of the toy examples (each field is a flag)."""

    datasets: list[Literal[TOY_DATASETS]] = option(TOY_DATASETS, "the point clouds to train on")
    steps: int = option(1500, "training steps per model", interval="[50, inf)")
    batch_size: int = option(256, interval="[1, inf)")
    num_samples: int = option(2000, "points drawn, and fresh data points compared with them", interval="[2, inf)")
    seed: int = option(0, interval=SEEDS)
    output_dir: str = option("outputs/toy-2d")
    overwrite: bool = option(False, "replace the files of an earlier run")

    def __post_init__(self) -> None:
        check_options(self)


def noise_schedule(reverse_variance: str) -> DDPMScheduler:
    """DDPM's linear schedule stretched to T = 100 steps (β_1 = 1e-4 · 1000/T, β_T = 0.02 · 1000/T, Nichol &
    Dhariwal 2021's rule for other T), so that x_T is noise: ᾱ_T = 4 · 10⁻⁵."""
    return DDPMScheduler(
        num_train_timesteps=NUM_TIMESTEPS,
        beta_start=1e-4 * 1000 / NUM_TIMESTEPS,
        beta_end=0.02 * 1000 / NUM_TIMESTEPS,
        clip_sample=False,
        reverse_variance=reverse_variance,
    )


def fit(model, objective, data: torch.Tensor, steps: int, batch_size: int, seed: int, lr: float = 1e-3):
    """AdamW with a cosine schedule and clipping on random batches of `data` (points as (B, 2, 1, 1) "images"),
    minimising `objective`, an `hfddpm.training.Objective` (a diffusion loss, or a distillation round) that draws its
    randomness from the run's generator; a loss-aware timestep sampler learns from every batch. The per-step
    losses."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        batch = data[torch.randint(0, len(data), (batch_size,), generator=generator)]
        output = objective(model, batch[:, :, None, None], generator)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if (sampler := getattr(objective, "timestep_sampler", None)) is not None:
            sampler.update(output.timesteps, output.per_sample)
        losses.append(output.loss.item())
    return losses


def train(data: torch.Tensor, options: dict, steps: int, batch_size: int, seed: int):
    torch.manual_seed(seed)
    scheduler = noise_schedule(options["reverse_variance"])
    model = PointDenoiser(learned_variance=options["reverse_variance"] == "learned_range")
    sampler = LossSecondMomentSampler(NUM_TIMESTEPS) if options["loss_type"] == "vlb" else None
    objective = DenoisingLoss(scheduler, options["loss_type"], timestep_sampler=sampler, decoder=Decoder.CONTINUOUS)
    losses = fit(model, objective, data, steps, batch_size, seed)
    return model.eval(), scheduler, losses


@torch.no_grad()
def reverse_process(model, scheduler, num_points: int, seed: int) -> list[torch.Tensor]:
    """x_T ~ N(0, I), then every step of the scheduler: [x_T, x_{T−1}, …, x_0] (T + 1 clouds)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_points, 2, 1, 1, generator=generator)
    scheduler.set_timesteps(NUM_TIMESTEPS)
    trajectory = [x.flatten(1)]
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t).sample, t, x, generator=generator).prev_sample
        trajectory.append(x.flatten(1))
    return trajectory


def forward_process(scheduler, data: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """[x_0, x_1, …, x_T] with x_t ~ q(x_t|x_0) (diffusers' timestep t − 1), one ε per point, so that each point
    can be followed."""
    noise = torch.randn(data.shape, generator=torch.Generator().manual_seed(seed))
    return [data] + [scheduler.add_noise(data, noise, torch.full((len(data),), t)) for t in range(NUM_TIMESTEPS)]


def snapshot_row(axes, clouds: list[torch.Tensor], labels: list[str], color: str) -> None:
    for axis, cloud, label in zip(axes, clouds, labels, strict=True):
        axis.scatter(cloud[:, 0], cloud[:, 1], s=1, alpha=0.5, color=color)
        axis.set(xlim=(-2.5, 2.5), ylim=(-2.5, 2.5), xticks=[], yticks=[])
        axis.set_title(label, fontsize=8)


def main(argv: list[str] | None = None) -> int:
    args = parse_options(ToyOptions, argv, __doc__)
    for name in OUTPUTS:  # before minutes of training
        durable.check_output_file(Path(args.output_dir) / name, "--output_dir", args.overwrite)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    # In the papers' 1-based notation: x_0 is data, x_T (T = 100) is noise. forward_process()[t] and
    # reverse_process()[T − t] are both x_t.
    snapshots = [round(i * NUM_TIMESTEPS / 9) for i in range(10)]
    rows = len(args.datasets)
    forward_fig, forward_axes = plt.subplots(rows, 10, figsize=(15, 1.6 * rows), squeeze=False)
    reverse_fig, reverse_axes = plt.subplots(rows, 10, figsize=(15, 1.6 * rows), squeeze=False)
    samples_fig, samples_axes = plt.subplots(rows, len(MODELS), figsize=(3.2 * len(MODELS), 3 * rows), squeeze=False)
    loss_fig, loss_axes = plt.subplots(1, len(MODELS), figsize=(5 * len(MODELS), 3.2), squeeze=False)
    distances = {}
    for row, name in enumerate(args.datasets):
        data = toy_points(name, 10_000, torch.Generator().manual_seed(args.seed))
        fresh = toy_points(name, args.num_samples, torch.Generator().manual_seed(args.seed + 1))
        floor = toy_points(name, args.num_samples, torch.Generator().manual_seed(args.seed + 2))
        distances[name] = {"data vs data (floor)": sliced_wasserstein(fresh, floor)}
        clouds = forward_process(noise_schedule("fixed_small"), data[: args.num_samples], args.seed)
        snapshot_row(forward_axes[row], [clouds[t] for t in snapshots], [f"x_{t}" for t in snapshots], "C0")
        forward_axes[row][0].set_ylabel(name, fontsize=9)
        for column, (model_name, options) in enumerate(MODELS.items()):
            start = time.perf_counter()
            model, scheduler, losses = train(data, options, args.steps, args.batch_size, args.seed)
            trajectory = reverse_process(model, scheduler, args.num_samples, args.seed)
            samples = trajectory[-1]
            distance = sliced_wasserstein(samples, fresh)
            distances[name][model_name] = distance
            print(f"{name:16s} {model_name:16s} SW₂ {distance:.4f}  ({time.perf_counter() - start:.0f} s)", flush=True)
            if column == len(MODELS) - 1:
                snapshot_row(
                    reverse_axes[row],
                    [trajectory[NUM_TIMESTEPS - t] for t in reversed(snapshots)],
                    [f"x_{t}" for t in reversed(snapshots)],
                    "C1",
                )
                reverse_axes[row][0].set_ylabel(name, fontsize=9)
            axis = samples_axes[row][column]
            axis.scatter(fresh[:, 0], fresh[:, 1], s=1, alpha=0.3, color="0.6", label="data")
            axis.scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.5, color="C1", label="samples")
            axis.set(xlim=(-1.6, 1.6), ylim=(-1.6, 1.6), xticks=[], yticks=[])
            axis.set_title(f"{name}, {model_name}: SW₂ {distance:.3f}", fontsize=8)
            loss_axes[0][column].plot(
                torch.tensor(losses[: len(losses) // 50 * 50]).reshape(-1, 50).mean(1), label=name
            )
            loss_axes[0][column].set(title=f"{model_name} ({options['loss_type']} loss)", xlabel="step / 50")
    forward_fig.suptitle("Forward process q(x_t|x_0), T = 100")
    reverse_fig.suptitle(f"Reverse process p_θ(x_(t−1)|x_t) of the {list(MODELS)[-1]} model")
    for axis, options in zip(loss_axes[0], MODELS.values(), strict=True):
        if options["loss_type"] == "simple":  # the bound with a continuous decoder can be negative: linear axis
            axis.set_yscale("log")
        axis.legend(fontsize=7)
    for figure, name in zip((forward_fig, reverse_fig, samples_fig, loss_fig), OUTPUTS[:4], strict=True):
        figure.tight_layout()
        with durable.replacing(output_dir / name) as temporary:  # the old figure or the new one, never half
            figure.savefig(temporary, format="png", dpi=90)
    durable.write_text(output_dir / "distances.json", json.dumps(distances, indent=2, ensure_ascii=False))
    print(f"figures and distances.json written to {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(lambda: main(sys.argv[1:])))  # a bad option or output folder: one line, status 2
