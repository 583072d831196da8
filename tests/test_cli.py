"""The `hfddpm` command, subcommand by subcommand (`hfddpm.cli.main`, and the installed entry point): what each one
writes, and that a bad number, a bad output path or a missing library is one line, `hfddpm CMD: error: …`, with
status 2, before any work. Publishing (`hfddpm push` with a token) is tested with the Hub in test_hub.py."""

import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from hfddpm import DDIMScheduler, DDPMScheduler, HFDDPMPipeline
from hfddpm.cli import COMMANDS, main
from hfddpm.model_cards import model_card
from hfddpm.visualize import forward_noising_grid, save_image

from .conftest import tiny_unet

MISSING = "/nonexistent/checkpoint"  # a checkpoint argument that fails, without a network call, if it is loaded


def run(argv, capsys) -> tuple[int, list[str], str]:
    """The status of `hfddpm argv`, its error lines and its output (argparse's own errors exit, status 2 too)."""
    try:
        status = main([str(part) for part in argv])
    except SystemExit as exit_info:
        status = exit_info.code
    captured = capsys.readouterr()
    return status, captured.err.strip().splitlines(), captured.out


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS)])
def test_every_command_has_help(command, capsys):
    status, _, output = run([*command, "--help"], capsys)
    assert status == 0 and output.startswith("usage: hfddpm")


def test_sample_writes_one_png_per_image_drawn_from_seed_plus_i(checkpoint, tmp_path, capsys):
    sample = ["sample", checkpoint, "--num_inference_steps", "2"]
    assert run([*sample, "--num_images", "3", "--output_dir", tmp_path / "a"], capsys)[0] == 0
    status, _, output = run(
        [*sample, "--num_images", "2", "--seed", "1", "--batch_size", "1", "--output_dir", tmp_path / "b"], capsys
    )
    assert status == 0 and f"2 images written to {tmp_path / 'b'}" in output
    assert sorted(snapshot(tmp_path / "a")) == ["000000.png", "000001.png", "000002.png"]
    assert sorted(snapshot(tmp_path / "b")) == ["000001.png", "000002.png"]
    for name in ("000001.png", "000002.png"):  # image i depends on seed + i only, not on the batch
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "000000.png").read_bytes() != (tmp_path / "a" / "000001.png").read_bytes()
    status, errors, _ = run([*sample, "--output", tmp_path / "g.png", "--output_dir", tmp_path / "c"], capsys)
    assert (status, errors) == (
        2,
        ["hfddpm sample: error: pass exactly one of --output GRID.png and --output_dir FOLDER"],
    )


def test_sample_with_the_grids_settings_draws_the_training_grid_of_that_seed(checkpoint, tmp_path, capsys):
    from hfddpm.training.artefacts import save_sample_grid
    from hfddpm.training.config import TrainingConfig

    pipeline = HFDDPMPipeline.from_pretrained(checkpoint)
    save_sample_grid(
        pipeline, tmp_path / "final.png", TrainingConfig(num_sample_images=5, seed=3, num_inference_steps=2)
    )
    argv = ["sample", checkpoint, "--num_images", "5", "--num_inference_steps", "2", "--batch_size", "2"]
    status, _, output = run(
        [*argv, "--seed", "3", "--scheduler", "checkpoint", "--output", tmp_path / "cli.png"], capsys
    )
    assert status == 0 and f"5 images (DDPMScheduler, 2 steps) written to {tmp_path / 'cli.png'}" in output
    assert PIL.Image.open(tmp_path / "final.png").size == (3 * 80, 2 * 80)  # 3 × 2 cells, 8 px × 8, a border
    training = np.asarray(PIL.Image.open(tmp_path / "final.png"))
    assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / "cli.png")), training)
    assert run([*argv, "--seed", "4", "--output", tmp_path / "other.png"], capsys)[0] == 0
    assert not np.array_equal(np.asarray(PIL.Image.open(tmp_path / "other.png")), training)


@pytest.mark.parametrize("scheduler", ["euler-maruyama", "probability-flow"])
def test_sample_draws_in_continuous_time_with_more_steps_than_the_table(checkpoint, tmp_path, capsys, scheduler):
    argv = ["sample", checkpoint, "--num_images", "2", "--num_inference_steps", "150", "--scheduler", scheduler]
    status, _, output = run([*argv, "--output", tmp_path / "grid.png"], capsys)  # the checkpoint's T is 120
    assert status == 0 and "2 images (ScoreSDEScheduler, 150 steps)" in output


def test_a_checkpoint_that_cannot_be_sampled_is_one_line_and_nothing_is_written(checkpoint, tmp_path, capsys):
    pickled, broken = tmp_path / "pickled", tmp_path / "broken"
    shutil.copytree(checkpoint, pickled)
    weights = pickled / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = HFDDPMPipeline.from_pretrained(checkpoint).unet.state_dict()
    torch.save(tensors, weights.with_suffix(".bin"))
    weights.unlink()
    broken_unet = tiny_unet(channels=1)
    with torch.no_grad():
        broken_unet.conv_out.bias.fill_(float("nan"))
    HFDDPMPipeline(unet=broken_unet, scheduler=DDPMScheduler()).save_pretrained(broken)
    grid = ["--num_images", "1", "--num_inference_steps", "1", "--output", tmp_path / "grid.png"]
    for source, words in [
        (pickled, r"diffusion_pytorch_model.bin is a pickle, .*--allow_pickle"),
        (broken, "non-finite weights"),
        (tmp_path / "absent", r"'.*absent' is not a local folder .*check the path or the repository id"),
    ]:
        status, errors, _ = run(["sample", source, *grid], capsys)
        assert status == 2 and len(errors) == 1 and errors[0].startswith("hfddpm sample: error: ")
        assert re.search(words, errors[0]) and not (tmp_path / "grid.png").exists()
    assert run(["sample", pickled, *grid, "--allow_pickle", "--device", "cpu"], capsys)[0] == 0
    assert (tmp_path / "grid.png").is_file()


def existing(tmp_path, name, content=b"the user's own file"):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


INPAINT = ["inpaint", MISSING, "--image", "x.png", "--mask", "m.png", "--output"]


@pytest.mark.parametrize(
    ("command", "make_output", "message"),
    [
        (["sample", MISSING, "--output"], lambda tmp: tmp, "--output {} is a folder; name a file in it"),
        (["sample", MISSING, "--output"], lambda tmp: tmp / "grid", "--output {} has no image extension PIL writes"),
        (["sample", MISSING, "--output"], lambda tmp: tmp / "g.xyz", "--output {} has no image extension PIL writes"),
        (
            ["sample", MISSING, "--output"],
            lambda tmp: existing(tmp, "grid.png"),
            "--output {} exists; pass --overwrite to replace it, or name another file",
        ),
        (
            ["sample", MISSING, "--output"],
            lambda tmp: existing(tmp, "notes.txt") / "grid.png",
            "--output {} lies under {}, which is a file; name a folder elsewhere",
        ),
        (["sample", MISSING, "--output_dir"], lambda tmp: existing(tmp, "notes.txt"), "--output_dir {} is a file"),
        (  # the files' names need the checkpoint's classes: checked after loading it, before sampling
            ["sample", "CHECKPOINT", "--num_images", "2", "--output_dir"],
            lambda tmp: existing(tmp, "out/000001.png").parent,
            "--output_dir {}/000001.png exists; pass --overwrite",
        ),
        (["visualize", "forward", "--output"], lambda tmp: tmp / "forward", "--output {} has no image extension"),
        (
            ["visualize", "forward", "--output"],
            lambda tmp: existing(tmp, "f.png"),
            "--output {} exists; pass --overwrite",
        ),
        (["visualize", "reverse", MISSING, "--output"], lambda tmp: tmp, "--output {} is a folder; name a file in it"),
        (INPAINT, lambda tmp: tmp / "c.jpg", "--output {} must name a .png file"),
        (INPAINT, lambda tmp: existing(tmp, "c.png"), "--output {} exists; pass --overwrite"),
        (
            ["evaluate", MISSING, "--output_dir"],
            lambda tmp: existing(tmp, "evaluation.json").parent,
            "--output_dir {}/evaluation.json exists; pass --overwrite",
        ),
    ],
)
def test_every_command_checks_its_output_path_before_any_work_and_writes_nothing(
    checkpoint, tmp_path, capsys, command, make_output, message
):
    output = make_output(tmp_path)
    before = snapshot(tmp_path)
    status, errors, _ = run([checkpoint if part == "CHECKPOINT" else part for part in [*command, output]], capsys)
    expected = message.format(output, *[p for p in output.parents if p.is_file()])
    assert status == 2 and len(errors) == 1 and errors[0].startswith(f"hfddpm {command[0]}: error: {expected}")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "argv, words",
    [
        (["sample", MISSING, "--num_images", "0"], r"--num_images must be in \[1, inf\), got 0"),
        (["sample", MISSING, "--num_inference_steps", "0"], r"--num_inference_steps must be in \[1, inf\), got 0"),
        (["sample", MISSING, "--batch_size", "2.5"], r"argument --batch_size: invalid int value: '2.5'"),
        (["sample", MISSING, "--eta", "nan"], r"--eta must be in \[0, 1\], got nan"),
        (["sample", MISSING, "--guidance_scale", "inf"], r"--guidance_scale must be in \[0, inf\), got inf"),
        (["sample", MISSING, "--seed", "-1"], r"--seed must be in \[0, 4294967295\], got -1"),
        (["sample", MISSING, "--seed", str(2**32)], r"--seed must be in \[0, 4294967295\], got 4294967296"),
        (["sample", MISSING, "--corrector_steps", "-1"], r"--corrector_steps must be in \[0, inf\), got -1"),
        (["sample", MISSING, "--scheduler", "pndm"], r"argument --scheduler: invalid choice: 'pndm'"),
        ([*INPAINT[:-1], "--jump_length", "0", "--output", "c.png"], r"--jump_length must be in \[1, inf\), got 0"),
        (["evaluate", MISSING, "--num_timesteps", "1"], r"--num_timesteps must be in \[2, inf\), got 1"),
        (["evaluate", MISSING, "--metrics", "fid2"], r"argument --metrics: invalid choice: 'fid2'"),
        (["visualize", "forward", "--output", "f.png", "--every", "0"], r"--every must be in \[1, inf\), got 0"),
        (["analytic-variance", MISSING, "--num_images", "0", "--in_place"], r"--num_images must be in \[1, inf\)"),
    ],
)
def test_numbers_and_choices_are_refused_in_one_line_before_any_work(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, errors, _ = run(argv, capsys)
    assert status == 2 and errors[-1].startswith(f"hfddpm {argv[0]}: error: ")
    assert re.search(words, errors[-1]) and not list(tmp_path.iterdir())


def test_outputs_replace_a_file_only_with_overwrite_atomically_and_create_missing_folders(
    checkpoint, tmp_path, capsys
):
    grid = existing(tmp_path, "grid.png")
    sample = ["sample", checkpoint, "--num_images", "2", "--num_inference_steps", "1", "--output"]
    assert run([*sample, grid, "--overwrite"], capsys)[0] == 0
    assert PIL.Image.open(grid).size == (2 * 80, 80)
    nested = tmp_path / "new" / "folder" / "grid.bmp"  # any format PIL writes
    assert run([*sample, nested], capsys)[0] == 0
    assert PIL.Image.open(nested).format == "BMP" and not list(tmp_path.rglob("*.partial"))


def test_a_full_disk_while_writing_an_image_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    old = existing(tmp_path, "grid.png", b"old")

    def full_disk(self, fp, format=None, **params):
        Path(fp).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PIL.Image.Image, "save", full_disk)
    with pytest.raises(
        OSError, match=r"^no space left to write .*grid.png \(.*\); free disk space or write elsewhere$"
    ):
        save_image(PIL.Image.new("L", (2, 2)), old)
    assert old.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


def test_inpaint_keeps_the_known_pixels_and_draws_the_others(checkpoint, tmp_path, capsys):
    known = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:6, 2:6] = 255  # white: generated
    PIL.Image.fromarray(known, mode="L").save(tmp_path / "x.png")
    PIL.Image.fromarray(mask, mode="L").save(tmp_path / "m.png")
    argv = [
        "inpaint",
        checkpoint,
        "--image",
        tmp_path / "x.png",
        "--mask",
        tmp_path / "m.png",
        "--output",
        tmp_path / "c.png",
    ]
    status, _, output = run(
        [*argv, "--num_inference_steps", "3", "--jump_length", "1", "--jump_n_sample", "2"], capsys
    )
    assert status == 0 and "1 completion(s)" in output
    completion = np.asarray(PIL.Image.open(tmp_path / "c.png"))
    np.testing.assert_array_equal(completion[mask == 0], known[mask == 0])
    assert not np.array_equal(completion[mask == 255], known[mask == 255])


def test_visualize_draws_the_forward_process_of_data_and_the_reverse_process_of_a_checkpoint(
    checkpoint, tmp_path, capsys
):
    assert run(["visualize", "forward", "--output", tmp_path / "f.png", "--timesteps", "0", "999"], capsys)[0] == 0
    # x_0 and two timesteps of 4 digits, each 8 px enlarged 8 times, 2-pixel gaps, a 14-pixel line of labels
    assert PIL.Image.open(tmp_path / "f.png").size == (3 * 64 + 2 * 2, 14 + 4 * 64 + 3 * 2)
    reverse = ["visualize", "reverse", checkpoint, "--num_inference_steps", "4", "--every", "2"]
    status, _, output = run([*reverse, "--output", tmp_path / "r.png"], capsys)
    # steps 2 and 4 as columns; x_t and x̂_0 rows for each of 4 images
    assert status == 0 and PIL.Image.open(tmp_path / "r.png").size == (2 * 64 + 2, 14 + 8 * 64 + 7 * 2)
    assert "reverse process of 4 images written to" in output
    status, errors, _ = run(["visualize", "reverse", "--output", tmp_path / "n.png"], capsys)
    assert status == 2 and len(errors) == 1
    assert errors[0].startswith("hfddpm visualize: error: visualize reverse needs a checkpoint: hfddpm visualize")


def test_the_forward_grid_starts_from_the_images_themselves():
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    grid = forward_noising_grid(images, DDPMScheduler(), timesteps=(0, 500, 999), scale=4)
    assert grid.size == (4 * 32 + 3 * 2, 14 + 3 * 32 + 2 * 2)  # x_0 and three timesteps of three images
    first = torch.tensor(np.array(grid.convert("L").crop((0, 14, 32, 46))), dtype=torch.float32)
    expected = ((images[0, 0] + 1) * 127.5).round().repeat_interleave(4, 0).repeat_interleave(4, 1)
    torch.testing.assert_close(first, expected, atol=1, rtol=0)  # 8-bit rounding


def test_evaluate_estimates_the_bound_from_100_terms_by_default_and_records_it_in_the_run(
    run_with_card, tmp_path, capsys
):
    argv = [
        "evaluate",
        run_with_card,
        "--metrics",
        "bits_per_dim",
        "--max_images",
        "2",
        "--output_dir",
        tmp_path / "out",
    ]
    status, _, output = run(argv, capsys)
    assert status == 0 and "bits/dim ≤" in output and "on test (2 images, 100 terms each" in output  # of T = 120
    written = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert written["details"]["bits_per_dim"]["num_timesteps"] == 100
    assert (tmp_path / "out" / "bits_per_dim_terms.png").read_bytes()[:4] == b"\x89PNG"
    assert f"recorded in {run_with_card}/evaluation.json and its model card" in output
    recorded = json.loads((run_with_card / "evaluation.json").read_text())
    assert recorded["metrics"] == written["metrics"]
    assert f"| {written['metrics']['bits_per_dim']:.4f} | ± " in (run_with_card / "README.md").read_text()


@pytest.fixture
def small_run(tmp_path):
    """A run folder with T = 20 (the Γ_t estimate costs one network call per timestep) and hfddpm's card."""
    folder = tmp_path / "small"
    HFDDPMPipeline(unet=tiny_unet(channels=1), scheduler=DDIMScheduler(num_train_timesteps=20)).save_pretrained(folder)
    (folder / "README.md").write_text(str(model_card(folder, "small")))
    return folder


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "pass --output_dir NEW_FOLDER to save the pipeline with Analytic-DPM's variance there, or --in_place"),
        (["--in_place", "--output_dir", "OUT"], "pass --output_dir NEW_FOLDER"),
        (
            ["--output_dir", "USER"],
            "--output_dir {user} is not empty; name a new or empty folder (nothing was changed)",
        ),
        (["--output_dir", "FILE"], "--output_dir {file} is a file; name a folder"),
    ],
)
def test_analytic_variance_asks_where_to_write_and_never_rewrites_silently(small_run, tmp_path, capsys, argv, message):
    user, file = tmp_path / "mine", existing(tmp_path, "notes.txt")
    existing(user, "keep.txt")
    before = snapshot(tmp_path)
    names = {"OUT": tmp_path / "out", "USER": user, "FILE": file}
    status, errors, _ = run(["analytic-variance", small_run, *[names.get(a, a) for a in argv]], capsys)
    assert status == 2 and len(errors) == 1
    assert errors[0].startswith(f"hfddpm analytic-variance: error: {message.format(user=user, file=file)}")
    assert snapshot(tmp_path) == before


def test_analytic_variance_writes_a_new_folder_with_plain_modes_or_rewrites_the_run_when_asked(
    small_run, tmp_path, capsys
):
    before = snapshot(small_run)
    options = ["--num_images", "4", "--batch_size", "4"]
    out = tmp_path / "analytic"
    umask = os.umask(0o022)
    try:
        status, errors, output = run(["analytic-variance", small_run, "--output_dir", out, *options], capsys)
    finally:
        os.umask(umask)
    assert status == 0 and "now samples with reverse_variance='analytic'" in output
    assert "Estimating Γ_t: 100%" in "\n".join(errors)  # a progress bar over the 20 timesteps
    assert snapshot(small_run) == before  # the run is untouched
    # What hfddpm saves gets the modes of a plain write (safetensors writes 0600, a temporary folder is 0700).
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert modes["."] == modes["unet"] == 0o755 and modes["unet/diffusion_pytorch_model.safetensors"] == 0o644
    pipe = HFDDPMPipeline.from_pretrained(out)
    assert pipe.scheduler.config.reverse_variance == "analytic" and len(pipe.scheduler.config.analytic_gamma) == 20
    assert "| reverse variance | analytic |" in (out / "README.md").read_text()

    assert run(["analytic-variance", small_run, "--in_place", *options], capsys)[0] == 0
    rewritten = HFDDPMPipeline.from_pretrained(small_run).scheduler.config
    assert rewritten.analytic_gamma == pipe.scheduler.config.analytic_gamma  # same seed, same estimate
    assert "| reverse variance | analytic |" in (small_run / "README.md").read_text()
    assert not (small_run / ".scheduler.partial").exists()


def test_push_exports_what_it_would_upload(small_run, tmp_path, capsys):
    status, _, output = run(["push", small_run, "--repo_id", "user/x", "--export_dir", tmp_path / "e"], capsys)
    assert status == 0 and "files would be uploaded to user/x" in output and (tmp_path / "e" / "README.md").is_file()


@pytest.mark.slow  # a fresh interpreter imports torch and diffusers: seconds before the command starts
def test_the_installed_entry_point_samples_a_grid(checkpoint, tmp_path):
    command = shutil.which("hfddpm", path=str(Path(sys.executable).parent)) or pytest.fail("hfddpm is not installed")
    grid = tmp_path / "grid.png"
    result = subprocess.run(
        [command, "sample", str(checkpoint), "--num_images", "6", "--num_inference_steps", "3", "--scheduler",
         "ddim", "--output", str(grid)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "6 images (DDIMScheduler, 3 steps) written to" in result.stdout
    assert PIL.Image.open(grid).size == (3 * 80, 2 * 80)


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed")
def test_fid_without_torch_fidelity_is_one_line_naming_it_before_sampling(checkpoint, tmp_path, capsys):
    torch.save({"weight": torch.zeros(1)}, tmp_path / "weights.pth")
    argv = ["evaluate", str(checkpoint), "--metrics", "fid", "--inception_weights", str(tmp_path / "weights.pth")]
    assert main(argv) == 2
    stderr = capsys.readouterr().err
    assert "Sampling" not in stderr  # refused before the samples are drawn
    assert re.fullmatch(
        r"hfddpm evaluate: error: this needs torch_fidelity: pip install torch-fidelity .*", stderr.splitlines()[-1]
    )


def with_libraries_missing(checkpoint: Path, output_dir: Path) -> None:
    """Evaluate `checkpoint` without matplotlib, then without datasets, and import the training without accelerate."""
    sys.modules["matplotlib"] = None  # the bound's plot
    argv = ["evaluate", str(checkpoint), "--metrics", "bits_per_dim", "--max_images", "1", "--num_timesteps", "2"]
    assert main([*argv, "--output_dir", str(output_dir)]) == 2
    sys.modules["datasets"] = None  # the images
    assert main(argv) == 2
    sys.modules["accelerate"] = None
    for name in [name for name in sys.modules if name.startswith("hfddpm.training")]:
        del sys.modules[name]  # imported afresh, as in a new interpreter
    try:
        from hfddpm.training import train_unconditional  # noqa: F401
    except ImportError as error:
        print(error, file=sys.stderr)


@pytest.mark.slow
def test_a_missing_optional_library_is_one_line_naming_the_extra_that_installs_it(checkpoint, tmp_path):
    child = os.fork()  # a process whose libraries can be made missing (a fork of this one spares the imports)
    if child == 0:
        status = 1
        try:
            sys.stderr = open(tmp_path / "stderr.txt", "w", buffering=1)  # noqa: SIM115 (the child exits at once)
            with_libraries_missing(checkpoint, tmp_path / "out")
            status = 0
        finally:
            os._exit(status)
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0, (tmp_path / "stderr.txt").read_text()[-2000:]
    stderr = (tmp_path / "stderr.txt").read_text()
    plot, images, training = [line for line in stderr.splitlines() if "hfddpm[" in line]
    assert re.fullmatch(r"hfddpm evaluate: error: this needs matplotlib, .*pip install 'hfddpm\[eval\]'.*", plot)
    assert re.fullmatch(r"hfddpm evaluate: error: this needs datasets, .*pip install 'hfddpm\[train\]'.*", images)
    assert re.fullmatch(r"this needs accelerate, .*pip install 'hfddpm\[train\]'.*", training)
