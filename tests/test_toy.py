"""The 2-D toy: its point clouds, the point denoiser, the sliced Wasserstein distance, and the two example scripts
(examples/train_toy_2d.py, examples/distill_toy_2d.py), run in this process."""

import importlib
import json
import math
from pathlib import Path

import PIL.Image
import pytest
import torch

from hfddpm.evaluation.sliced_wasserstein import sliced_wasserstein
from hfddpm.models.point_denoiser import PointDenoiser
from hfddpm.training.toy_data import TOY_DATASETS, toy_points

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_each_toy_dataset_is_seeded_and_has_its_shape():
    for name in TOY_DATASETS:
        points = toy_points(name, 1000, torch.Generator().manual_seed(0))
        assert points.shape == (1000, 2) and points.abs().max() < 1.6
        assert torch.equal(points, toy_points(name, 1000, torch.Generator().manual_seed(0)))
    # Eight modes on the unit circle; two circles of radii 1 and 0.5, half the points on each.
    assert toy_points("eight_gaussians", 4000).norm(dim=1).mean().item() == pytest.approx(1.0, abs=0.01)
    circles = toy_points("circles", 4000).norm(dim=1)
    assert ((circles - 0.5).abs() < 0.15).float().mean().item() == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError, match=r"unknown toy dataset 'spiral'; choose one of \('swiss_roll'"):
        toy_points("spiral", 10)


def test_the_sliced_wasserstein_distance_of_a_shift_is_its_length_over_root_d():
    # Projected on θ, a shift by c moves every point by θᵀc: W_2² = (θᵀc)², and E_θ (θᵀc)² = ‖c‖²/d on the sphere.
    # That holds for any number of points: the only Monte Carlo error is over θ. (θᵀc)²/‖c‖² = cos² φ has mean ½ and
    # s.d. √⅛, so the mean over 4096 directions has a relative s.e. of (1/√2)/64 = 1.1 %, and its square root SW_2
    # one of 0.55 %: 2 % is 3.6 of them.
    points = toy_points("two_moons", 200)
    assert sliced_wasserstein(points, points) == 0.0
    shifted = points + torch.tensor([0.3, 0.4])
    assert sliced_wasserstein(points, shifted, num_projections=4096) == pytest.approx(0.5 / math.sqrt(2), rel=0.02)
    with pytest.raises(ValueError, match=r"need two point clouds of one shape \(N, d\)"):
        sliced_wasserstein(points, points[:10])


def test_the_point_denoiser_is_called_like_a_unet_and_outputs_the_variance_when_learned():
    points, t = torch.randn(5, 2, 1, 1), torch.tensor([0, 10, 50, 99, 3])
    assert PointDenoiser()(points, t).sample.shape == (5, 2, 1, 1)
    model = PointDenoiser(learned_variance=True)
    assert model(points, t).sample.shape == (5, 4, 1, 1) and model.config.out_channels == 4
    assert model(points, 7).sample.shape == (5, 4, 1, 1)  # one timestep for the batch, as UNet2DModel takes it
    # Each point is denoised on its own: the batch does not mix.
    torch.testing.assert_close(model(points[:2], t[:2]).sample, model(points, t).sample[:2])


def example(name, monkeypatch):
    """The example script `name` as a module (distill_toy_2d imports train_toy_2d, from its own folder)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module(name)


def existing(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("the user's own file")
    return path


@pytest.mark.parametrize("script", ["train_toy_2d", "distill_toy_2d"])
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--output_dir", "FILE"], "--output_dir {file}/{first} lies under {file}, which is a file"),
        (["--output_dir", "RUN"], "--output_dir {run}/{first} exists; pass --overwrite"),
        (["--steps", "10"], r"--steps must be in [50, inf), got 10"),
        (["--seed", "-3"], r"--seed must be in [0, 4294967295], got -3"),
        (["--datasets", "spiral"], "argument --datasets: invalid choice: 'spiral'"),
    ],
)
def test_the_toy_examples_check_their_options_and_outputs_before_training(
    script, argv, message, tmp_path, monkeypatch, capsys
):
    from hfddpm.training import run_command

    module = example(script, monkeypatch)
    first = module.OUTPUTS[0]
    file, run = existing(tmp_path / "notes.txt"), tmp_path / "run"
    existing(run / first)
    argv = [{"FILE": str(file), "RUN": str(run)}.get(part, part) for part in argv]
    before = sorted(tmp_path.rglob("*"))
    try:
        status = run_command(lambda: module.main(argv))  # as `python examples/<script>.py` runs it
    except SystemExit as exit_info:  # argparse's own refusals
        status = exit_info.code
    assert status == 2 and sorted(tmp_path.rglob("*")) == before
    assert message.format(file=file, run=run, first=first) in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.slow
def test_the_toy_example_trains_both_models_to_near_the_data_and_draws_the_figures(tmp_path, monkeypatch):
    options = ["--datasets", "eight_gaussians", "--steps", "1000", "--num_samples", "1000"]
    assert example("train_toy_2d", monkeypatch).main([*options, "--output_dir", str(tmp_path)]) == 0
    for name in ("forward_process", "reverse_process", "samples", "loss_curves"):
        assert PIL.Image.open(tmp_path / f"{name}.png").size[0] > 300
    distances = json.loads((tmp_path / "distances.json").read_text())["eight_gaussians"]
    noise = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
    noise_distance = sliced_wasserstein(noise, toy_points("eight_gaussians", 1000))  # 0.38
    # 1000 steps bring both models within 0.4 × N(0, I)'s distance to the data (measured: 0.13 and 0.10 of 0.38);
    # an untrained or mis-scheduled model stays near N(0, I) or diverges.
    assert distances["ε, fixed β̃"] < 0.4 * noise_distance and distances["mean & variance"] < 0.4 * noise_distance
    assert distances["data vs data (floor)"] < min(distances["ε, fixed β̃"], distances["mean & variance"])


@pytest.mark.slow
def test_toy_distillation_draws_students_that_beat_the_teachers_few_step_ddim(tmp_path, monkeypatch):
    options = ["--datasets", "eight_gaussians", "--steps", "1000", "--round_steps", "150", "--batch_size", "128"]
    assert example("distill_toy_2d", monkeypatch).main([*options, "--output_dir", str(tmp_path)]) == 0
    assert PIL.Image.open(tmp_path / "distilled.png").size[0] > 600
    distances = json.loads((tmp_path / "distillation.json").read_text())["eight_gaussians"]
    # Each student starts as a copy of the teacher, whose deterministic DDIM at 4, 2 and 1 steps overshoots far
    # past the data (measured: 2.2, 6.5, 16.8); the distilled students land near it (0.24–0.25, where the teacher's
    # 100 ancestral steps reach 0.15).
    for steps in ("4 steps", "2 steps", "1 step"):
        assert distances[f"student, {steps}"] < distances[f"teacher DDIM, {steps}"], distances
        assert distances[f"student, {steps}"] < 4 * distances["teacher, 100 ancestral steps"], distances
