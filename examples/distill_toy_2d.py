"""Progressive distillation on the 2-D toy: 1-, 2- and 4-step students beside the teacher's own few-step DDIM.

    python examples/distill_toy_2d.py --output_dir docs/toy-2d

For each dataset, the toy's "ε, fixed β̃" MLP (`train_toy_2d.py`, T = 100) is the teacher; its 64-step DDIM is
distilled round by round into students of 32, 16, …, 1 steps (`ProgressiveDistillationObjective`, the student
predicting v, each round starting from the previous model). distilled.png draws, one row per dataset, the teacher's
1000-point samples with 100 ancestral steps, then the students and the teacher's DDIM (η = 0) at 4, 2 and 1 steps,
all from the same x_T, over the data; distillation.json holds the sliced Wasserstein distance of each to fresh
data.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from train_toy_2d import ToyOptions, fit, reverse_process, train

from hfddpm import DDIMScheduler, durable
from hfddpm.arguments import option, parse_options
from hfddpm.evaluation.sliced_wasserstein import sliced_wasserstein
from hfddpm.training import run_command
from hfddpm.training.progressive import ProgressiveDistillationObjective
from hfddpm.training.teacher import Teacher
from hfddpm.training.toy_data import toy_points

TEACHER_STEPS = 64
ROUNDS = (32, 16, 8, 4, 2, 1)  # each round's student steps
SHOWN_STEPS = (4, 2, 1)
OUTPUTS = ("distilled.png", "distillation.json")


@dataclasses.dataclass(kw_only=True)
class DistillOptions(ToyOptions):
    """The toy's options (--steps trains the teacher), and the distillation's."""

    round_steps: int = option(800, "distillation steps per round", interval="[1, inf)")
    num_samples: int = option(1000, "points drawn, and fresh data points compared with them", interval="[2, inf)")


@torch.no_grad()
def ddim_samples(model, scheduler: DDIMScheduler, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """Deterministic DDIM (η = 0) from x_T = `noise` in `steps` steps."""
    scheduler.set_timesteps(steps)
    x = noise
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t).sample, t, x, eta=0.0).prev_sample
    return x.flatten(1)


def distil(teacher_model, teacher_scheduler: DDIMScheduler, data, steps: int, batch_size: int, seed: int) -> dict:
    """The student of every round: {steps: (model, its scheduler)}."""
    students, model, scheduler = {}, teacher_model, teacher_scheduler
    for n in ROUNDS:
        student = copy.deepcopy(model).train().requires_grad_(True)
        objective = ProgressiveDistillationObjective(Teacher(model, scheduler), "v_prediction", n)
        fit(student, objective, data, steps, batch_size, seed, lr=3e-4)
        model, scheduler = student.eval(), objective.scheduler
        students[n] = (model, scheduler)
    return students


def main(argv: list[str] | None = None) -> int:
    args = parse_options(DistillOptions, argv, __doc__)
    for name in OUTPUTS:  # before minutes of training
        durable.check_output_file(Path(args.output_dir) / name, "--output_dir", args.overwrite)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    columns = ["teacher, 100 ancestral steps"] + [
        f"{who}, {n} step{'s' * (n > 1)}" for n in SHOWN_STEPS for who in ("student", "teacher DDIM")
    ]
    figure, axes = plt.subplots(
        len(args.datasets), len(columns), figsize=(2.2 * len(columns), 2.3 * len(args.datasets)), squeeze=False
    )
    distances = {}
    for row, name in enumerate(args.datasets):
        data = toy_points(name, 10_000, torch.Generator().manual_seed(args.seed))
        fresh = toy_points(name, args.num_samples, torch.Generator().manual_seed(args.seed + 1))
        model, noise_scheduler, _ = train(
            data, {"reverse_variance": "fixed_small", "loss_type": "simple"}, args.steps, args.batch_size, args.seed
        )
        teacher_scheduler = DDIMScheduler.from_config(noise_scheduler.config, timestep_spacing="trailing")
        students = distil(model, teacher_scheduler, data, args.round_steps, args.batch_size, args.seed)
        noise = torch.randn(args.num_samples, 2, 1, 1, generator=torch.Generator().manual_seed(args.seed + 3))
        clouds = [reverse_process(model, noise_scheduler, args.num_samples, args.seed)[-1]]
        for n in SHOWN_STEPS:
            clouds.append(ddim_samples(*students[n], noise, n))
            clouds.append(ddim_samples(model, teacher_scheduler, noise, n))
        distances[name] = {}
        for axis, label, cloud in zip(axes[row], columns, clouds, strict=True):
            distances[name][label] = distance = sliced_wasserstein(cloud, fresh)
            axis.scatter(fresh[:, 0], fresh[:, 1], s=1, alpha=0.3, color="0.6")
            axis.scatter(cloud[:, 0], cloud[:, 1], s=1, alpha=0.5, color="C1")
            axis.set(xlim=(-1.6, 1.6), ylim=(-1.6, 1.6), xticks=[], yticks=[])
            axis.set_title(f"{label}\nSW₂ {distance:.3f}", fontsize=7)
        axes[row][0].set_ylabel(name, fontsize=9)
        print(name, {label: round(value, 4) for label, value in distances[name].items()}, flush=True)
    figure.suptitle(f"Progressive distillation of the toy's {TEACHER_STEPS}-step DDIM (samples over the data, grey)")
    figure.tight_layout()
    with durable.replacing(output_dir / "distilled.png") as temporary:
        figure.savefig(temporary, format="png", dpi=90)
    durable.write_text(output_dir / "distillation.json", json.dumps(distances, indent=2, ensure_ascii=False))
    print(f"distilled.png and distillation.json written to {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(lambda: main(sys.argv[1:])))  # a bad option or output folder: one line, status 2
