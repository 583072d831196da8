"""The 2-D toy (data, MLP, sliced Wasserstein, the example script), the process pictures, and `hfddpm sample`."""

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from hfddpm import DDPMScheduler, HFDDPMPipeline
from hfddpm.cli import main
from hfddpm.evaluation.sample_quality import generate_samples
from hfddpm.evaluation.sliced_wasserstein import sliced_wasserstein
from hfddpm.models.point_denoiser import PointDenoiser
from hfddpm.training.toy_data import TOY_DATASETS, toy_points
from hfddpm.visualize import forward_noising_grid, reverse_trajectory_grid, sample_grid, save_image, to_pil

from .conftest import make_pipeline, tiny_unet

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_toy_2d.py"


def test_toy_datasets_have_their_shapes():
    for name in TOY_DATASETS:
        points = toy_points(name, 1000, torch.Generator().manual_seed(0))
        assert points.shape == (1000, 2) and points.abs().max() < 1.6
        assert torch.equal(points, toy_points(name, 1000, torch.Generator().manual_seed(0)))
    radius = toy_points("eight_gaussians", 4000).norm(dim=1)
    assert radius.mean().item() == pytest.approx(1.0, abs=0.01)
    circles = toy_points("circles", 4000).norm(dim=1)
    assert ((circles - 0.5).abs() < 0.15).float().mean().item() == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError, match="unknown toy dataset 'spiral'"):
        toy_points("spiral", 10)


def test_sliced_wasserstein_of_a_shift_is_its_length_over_root_d():
    # Projected on θ, a shift by c moves every point by θᵀc: W_2² = (θᵀc)², and E_θ (θᵀc)² = ‖c‖²/d on the sphere.
    # That holds for any number of points (200 give what 2000 give, to 1e-8): the only Monte Carlo error is over θ.
    # (θᵀc)²/‖c‖² = cos² φ has mean ½ and s.d. √⅛, so the mean over 4096 directions has a relative s.e. of
    # (1/√2)/64 = 1.1 %, and its square root SW_2 one of 0.55 %: 2 % is 3.6 of them.
    points = toy_points("two_moons", 200)
    assert sliced_wasserstein(points, points) == 0.0
    shifted = points + torch.tensor([0.3, 0.4])
    assert sliced_wasserstein(points, shifted, num_projections=4096) == pytest.approx(0.5 / math.sqrt(2), rel=0.02)


def test_point_denoiser_outputs_the_prediction_and_the_variance():
    points, t = torch.randn(5, 2, 1, 1), torch.tensor([0, 10, 50, 99, 3])
    assert PointDenoiser()(points, t).sample.shape == (5, 2, 1, 1)
    model = PointDenoiser(learned_variance=True)
    assert model(points, t).sample.shape == (5, 4, 1, 1) and model.config.out_channels == 4


@pytest.mark.slow
def test_toy_example_trains_both_models_and_draws_the_figures(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--datasets", "eight_gaussians", "--steps", "1000", "--num_samples", "1000",
         "--output_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("forward_process", "reverse_process", "samples", "loss_curves"):
        assert PIL.Image.open(tmp_path / f"{name}.png").size[0] > 300
    distances = json.loads((tmp_path / "distances.json").read_text())["eight_gaussians"]
    noise = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
    noise_distance = sliced_wasserstein(noise, toy_points("eight_gaussians", 1000))  # 0.38
    # 1000 steps (a sixth of a minute) bring both models within 0.4 × N(0, I)'s distance to the data (measured:
    # 0.12 and 0.09 of 0.38); an untrained or mis-scheduled model stays near N(0, I) or diverges.
    assert distances["ε, fixed β̃"] < 0.4 * noise_distance and distances["mean & variance"] < 0.4 * noise_distance
    assert distances["data vs data (floor)"] < distances["ε, fixed β̃"]


def test_forward_noising_grid_shows_each_image_at_each_timestep():
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    grid = forward_noising_grid(images, DDPMScheduler(), timesteps=(0, 500, 999), scale=4)
    # x_0 and three timesteps, 2-pixel gaps, a 14-pixel label line
    assert grid.size == (4 * 32 + 3 * 2, 14 + 3 * 32 + 2 * 2)
    first = torch.tensor(np.array(grid.convert("L").crop((0, 14, 32, 46))), dtype=torch.float32).flatten()
    expected = ((images[0, 0] + 1) * 127.5).round().repeat_interleave(4, 0).repeat_interleave(4, 1).flatten()
    assert torch.allclose(first, expected, atol=1)  # the first column is the image itself


def test_reverse_trajectory_grid_records_x_t_and_the_prediction_every_few_steps():
    pipe = make_pipeline(tiny_unet(channels=1, sample_size=8), DDPMScheduler(timestep_spacing="trailing"))
    grid = reverse_trajectory_grid(pipe, num_images=2, num_inference_steps=10, every=4, scale=2)
    # Steps 4, 8 and the last (10): three columns; two rows (x_t, x̂_0) per image.
    assert grid.size == (3 * 16 + 2 * 2, 14 + 4 * 16 + 3 * 2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    HFDDPMPipeline(unet=tiny_unet(channels=1, sample_size=8), scheduler=DDPMScheduler()).save_pretrained(folder)
    return folder


@pytest.mark.slow  # a fresh interpreter imports torch and diffusers: seconds before the command starts
def test_sample_command_writes_a_grid_from_the_installed_entry_point(checkpoint, tmp_path):
    command = shutil.which("hfddpm") or pytest.fail("the hfddpm console script is not installed")
    grid = tmp_path / "grid.png"
    result = subprocess.run(
        [command, "sample", str(checkpoint), "--num_images", "6", "--steps", "3", "--scheduler", "ddim",
         "--output", str(grid)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "6 images (DDIMScheduler, 3 steps) written to" in result.stdout
    assert PIL.Image.open(grid).size == (3 * 80, 2 * 80)  # 3 × 2 cells of 8 px × 8 with a 1-unit border


def test_sample_command_writes_one_png_per_image_reproducibly(checkpoint, tmp_path, capsys):
    assert (
        main(["sample", str(checkpoint), "--num_images", "3", "--steps", "2", "--output_dir", str(tmp_path / "a")])
        == 0
    )
    assert (
        main(["sample", str(checkpoint), "--num_images", "2", "--steps", "2", "--output_dir", str(tmp_path / "b")])
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    for name in ("000000.png", "000001.png"):  # image i depends on seed + i only
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert main(["sample", str(checkpoint), "--steps", "2"]) == 2
    assert (
        "hfddpm sample: error: pass exactly one of --output GRID.png and --output_dir FOLDER"
        in capsys.readouterr().err
    )


def test_visualize_command_draws_both_processes(checkpoint, tmp_path):
    assert main(["visualize", "forward", "--output", str(tmp_path / "f.png"), "--timesteps", "0", "999"]) == 0
    assert PIL.Image.open(tmp_path / "f.png").size == (3 * 64 + 2 * 2, 14 + 4 * 64 + 3 * 2)
    assert (
        main(
            [
                "visualize",
                "reverse",
                str(checkpoint),
                "--steps",
                "4",
                "--every",
                "2",
                "--output",
                str(tmp_path / "r.png"),
            ]
        )
        == 0
    )
    assert PIL.Image.open(tmp_path / "r.png").size == (2 * 64 + 2, 14 + 8 * 64 + 7 * 2)


@pytest.mark.parametrize(
    "command", [[], ["sample"], ["inpaint"], ["evaluate"], ["visualize"], ["push"], ["analytic-variance"]]
)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0 and "usage: hfddpm" in capsys.readouterr().out


@pytest.mark.slow
def test_toy_distillation_draws_students_that_beat_the_teachers_few_step_ddim(tmp_path):
    example = EXAMPLE.with_name("distill_toy_2d.py")
    result = subprocess.run(
        [sys.executable, str(example), "--datasets", "eight_gaussians", "--steps", "1000", "--round_steps", "300",
         "--num_samples", "1000", "--output_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert PIL.Image.open(tmp_path / "distilled.png").size[0] > 600
    distances = json.loads((tmp_path / "distillation.json").read_text())["eight_gaussians"]
    # The teacher's own DDIM at 1 and 2 steps lands near the mean of the modes; the distilled students must do
    # better at every step count shown, which is what the figure shows.
    for steps in ("4 steps", "2 steps", "1 step"):
        assert distances[f"student, {steps}"] < distances[f"teacher DDIM, {steps}"], distances


def _existing(tmp_path, name, content=b"the user's own file"):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("command", "make_output", "message"),
    [
        (["sample", "CKPT", "--output"], lambda tmp: tmp, "--output {} is a folder; name a file in it"),
        (
            ["sample", "CKPT", "--output"],
            lambda tmp: tmp / "grid",
            "--output {} has no image extension PIL writes; end it in .png",
        ),
        (
            ["sample", "CKPT", "--output"],
            lambda tmp: tmp / "grid.xyz",
            "--output {} has no image extension PIL writes; end it in .png",
        ),
        (
            ["sample", "CKPT", "--output"],
            lambda tmp: _existing(tmp, "grid.png"),
            "--output {} exists; pass --overwrite to replace it, or name another file",
        ),
        (
            ["sample", "CKPT", "--output"],
            lambda tmp: _existing(tmp, "notes.txt") / "grid.png",
            "--output {} lies under {}, which is a file; name a folder elsewhere",
        ),
        (
            ["sample", "CKPT", "--output_dir"],
            lambda tmp: _existing(tmp, "notes.txt"),
            "--output_dir {} is a file; name a folder",
        ),
        (
            ["sample", "CKPT", "--output_dir"],
            lambda tmp: _existing(tmp, "out/000001.png").parent,
            "--output_dir {}/000001.png exists; pass --overwrite to replace it, or name another file",
        ),
        (
            ["visualize", "forward", "--output"],
            lambda tmp: tmp / "forward",
            "--output {} has no image extension PIL writes; end it in .png",
        ),
        (
            ["visualize", "forward", "--output"],
            lambda tmp: _existing(tmp, "forward.png"),
            "--output {} exists; pass --overwrite to replace it, or name another file",
        ),
        (["visualize", "reverse", "CKPT", "--output"], lambda tmp: tmp, "--output {} is a folder; name a file in it"),
        (
            ["inpaint", "CKPT", "--image", "x.png", "--mask", "m.png", "--output"],
            lambda tmp: tmp / "c.jpg",
            "--output {} must name a .png file",
        ),
        (
            ["inpaint", "CKPT", "--image", "x.png", "--mask", "m.png", "--output"],
            lambda tmp: _existing(tmp, "c.png"),
            "--output {} exists; pass --overwrite to replace it, or name another file",
        ),
        (
            ["evaluate", "CKPT", "--output_dir"],
            lambda tmp: _existing(tmp, "evaluation.json").parent,
            "--output_dir {}/evaluation.json exists; pass --overwrite to replace it, or name another file",
        ),
    ],
)
def test_every_command_checks_its_output_path_before_any_work_and_writes_nothing(
    checkpoint, tmp_path, capsys, command, make_output, message
):
    output = make_output(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    argv = [str(checkpoint) if part == "CKPT" else part for part in command] + [str(output), "--steps", "2"]
    if command[0] == "evaluate":
        argv = argv[:-2]
    assert main(argv) == 2
    expected = message.format(output, *[p for p in output.parents if p.is_file()])
    assert capsys.readouterr().err.strip().splitlines() == [f"hfddpm {command[0]}: error: {expected}"]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_outputs_replace_a_file_only_with_overwrite_atomically_and_create_missing_folders(checkpoint, tmp_path):
    grid = _existing(tmp_path, "grid.png")
    assert (
        main(["sample", str(checkpoint), "--num_images", "2", "--steps", "2", "--output", str(grid), "--overwrite"])
        == 0
    )
    assert PIL.Image.open(grid).size == (2 * 80, 80)
    nested = tmp_path / "new" / "folder" / "grid.bmp"  # any format PIL writes
    assert main(["sample", str(checkpoint), "--num_images", "2", "--steps", "2", "--output", str(nested)]) == 0
    assert PIL.Image.open(nested).format == "BMP"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".partial")]


def test_a_full_disk_while_writing_an_image_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    old = _existing(tmp_path, "grid.png", b"old")

    def full_disk(self, fp, format=None, **params):
        Path(fp).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PIL.Image.Image, "save", full_disk)
    with pytest.raises(
        OSError, match=r"^no space left to write .*grid.png \(.*\); free disk space or write elsewhere$"
    ):
        save_image(PIL.Image.new("L", (2, 2)), old)
    assert old.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num_images", "0"], "argument --num_images: must be at least 1, got 0"),
        (["--steps", "0"], "argument --num_inference_steps/--steps: must be at least 1, got 0"),
        (["--batch_size", "2.5"], "argument --batch_size: must be an integer, got '2.5'"),
        (["--eta", "nan"], "argument --eta: must be a finite number, got nan"),
        (["--guidance_scale", "inf"], "argument --guidance_scale: must be a finite number, got inf"),
        (["--seed", "-1"], "argument --seed: must be at least 0, got -1"),
        (["--seed", str(2**32)], "argument --seed: must be in [0, 4294967295], got 4294967296"),
        (["--corrector_steps", "-1"], "argument --corrector_steps: must be at least 0, got -1"),
    ],
)
def test_sample_refuses_out_of_range_and_non_finite_numbers_in_one_line(checkpoint, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", str(checkpoint), "--output", "never.png", *argv])
    assert exit_info.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(message)


def test_sample_with_the_grids_settings_draws_the_training_grid_of_that_seed(checkpoint, tmp_path):
    from hfddpm.training.artefacts import save_sample_grid
    from hfddpm.training.config import TrainingConfig

    pipeline = HFDDPMPipeline.from_pretrained(checkpoint)
    config = TrainingConfig(num_sample_images=5, seed=3, num_inference_steps=2)
    save_sample_grid(pipeline, tmp_path / "samples" / "final.png", config)
    argv = ["sample", str(checkpoint), "--num_images", "5", "--steps", "2", "--seed", "3", "--batch_size", "2"]
    assert main([*argv, "--output", str(tmp_path / "cli.png")]) == 0
    training = np.asarray(PIL.Image.open(tmp_path / "samples" / "final.png"))
    assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / "cli.png")), training)
    assert main([*argv[:-2], "--seed", "4", "--output", str(tmp_path / "other.png")]) == 0
    assert not np.array_equal(np.asarray(PIL.Image.open(tmp_path / "other.png")), training)


def test_the_sampling_progress_bar_counts_steps_across_batches(checkpoint, capsys):
    pipeline = HFDDPMPipeline.from_pretrained(checkpoint)
    generate_samples(pipeline, 3, batch_size=2, num_inference_steps=4, progress_bar=True)
    assert "Sampling: 100%" in (err := capsys.readouterr().err) and " 8/8 " in err  # 2 batches × 4 steps


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda pipe: generate_samples(pipe, True, num_inference_steps=2),
            TypeError,
            r"num_samples must be an integer, got True \(bool\)",
        ),
        (
            lambda pipe: generate_samples(pipe, 2, batch_size=2.0),
            TypeError,
            r"batch_size must be an integer, got 2.0 \(float\)",
        ),
        (lambda pipe: generate_samples(pipe, 0), ValueError, r"num_samples must be a positive integer, got 0"),
        (
            lambda pipe: reverse_trajectory_grid(pipe, 2, 2, every=True),
            TypeError,
            r"every must be an integer, got True \(bool\)",
        ),
        (
            lambda pipe: sample_grid([PIL.Image.new("L", (8, 8))], cols=1.5),
            TypeError,
            r"cols must be an integer, got 1.5 \(float\)",
        ),
        (lambda pipe: sample_grid([]), ValueError, r"sample_grid needs at least one image"),
    ],
)
def test_library_calls_refuse_non_integer_counts_and_take_numpy_integers(checkpoint, call, error, message):
    pipeline = make_pipeline(HFDDPMPipeline.from_pretrained(checkpoint).unet, DDPMScheduler())
    with pytest.raises(error, match=f"^{message}$"):
        call(pipeline)
    images = generate_samples(pipeline, np.int64(2), batch_size=np.int32(1), num_inference_steps=2)
    assert images.shape == (2, 1, 8, 8)
    assert sample_grid(to_pil(images * 2 - 1), cols=np.int64(2)).size == (2 * 80, 80)


def _toy_example():
    spec = importlib.util.spec_from_file_location("train_toy_2d", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--output_dir", "FILE"],
            "error: --output_dir {file}/forward_process.png lies under {file}, which is a file",
        ),
        (["--output_dir", "RUN"], "error: --output_dir {run}/forward_process.png exists; pass --overwrite"),
        (["--steps", "10"], "argument --steps: must be at least 50, got 10"),
        (["--seed", "-3"], "argument --seed: must be at least 0, got -3"),
    ],
)
def test_toy_example_checks_its_outputs_and_numbers_before_training(tmp_path, monkeypatch, capsys, argv, message):
    file, run = _existing(tmp_path, "notes.txt"), tmp_path / "run"
    _existing(run, "forward_process.png")
    argv = [{"FILE": str(file), "RUN": str(run)}.get(part, part) for part in argv]
    monkeypatch.setattr(sys, "argv", ["train_toy_2d.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        _toy_example().main()
    assert exit_info.value.code == 2
    assert message.format(file=file, run=run) in capsys.readouterr().err.strip().splitlines()[-1]
