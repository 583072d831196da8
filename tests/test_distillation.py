"""Few-step distillation: the closed forms against the DDIM step, students against their teachers, and the scripts'
folders, resume and errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import diffusers
import pytest
import torch
from safetensors.torch import load_file

from hfddpm import DDIMScheduler, GaussianMixtureDenoiser, HFDDPMPipeline
from hfddpm.cli import main
from hfddpm.models.point_denoiser import PointDenoiser
from hfddpm.models.unet_presets import create_unet
from hfddpm.schedulers.gaussian_diffusion import ddim_step
from hfddpm.training.consistency import (
    ConsistencyDistillationConfig,
    ConsistencyDistillationObjective,
    consistency_function,
    distill_consistency,
)
from hfddpm.training.faults import run_command
from hfddpm.training.progressive import (
    ProgressiveDistillationConfig,
    ProgressiveDistillationObjective,
    distill_progressive,
    progressive_distillation_target,
    truncated_snr_weight,
)
from hfddpm.training.teacher import Teacher, load_teacher
from hfddpm.visualize import reverse_trajectory_grid

from .conftest import short_run


def distill_progressive_command(argv: list[str]) -> int:
    return run_command(lambda: distill_progressive(ProgressiveDistillationConfig.from_command_line(argv)))


def distill_consistency_command(argv: list[str]) -> int:
    return run_command(lambda: distill_consistency(ConsistencyDistillationConfig.from_command_line(argv)))


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def alpha_bars(*timesteps: int, dtype=torch.float64) -> list[torch.Tensor]:
    scheduler = DDIMScheduler()
    return [scheduler.alpha_bar(t).to(dtype) for t in timesteps]


def test_one_step_from_the_target_lands_on_the_teachers_two_steps():
    """Salimans & Ho 2022, Algorithm 2, in float64: one DDIM step t → t″ with x̃ lands on the teacher's t → t′ → t″."""
    generator = torch.Generator().manual_seed(1)
    sample, first, second = torch.randn(3, 4, 1, 8, 8, generator=generator, dtype=torch.float64)
    for t, midpoint, s in ((999, 874, 749), (249, 124, -1), (61, 30, -1)):
        alpha_bar_t, alpha_bar_mid, alpha_bar_s = alpha_bars(t, midpoint, s)
        after_one = ddim_step(sample, first, alpha_bar_t, alpha_bar_mid)  # the teacher's x̂_0 at t, then at t′
        after_two = ddim_step(after_one, second, alpha_bar_mid, alpha_bar_s)
        target = progressive_distillation_target(sample, after_two, alpha_bar_t, alpha_bar_s)
        torch.testing.assert_close(ddim_step(sample, target, alpha_bar_t, alpha_bar_s), after_two, rtol=0, atol=1e-12)
        # Solving with t′ in place of t″ (the swap of diffusers' first attempt) lands elsewhere.
        swapped = progressive_distillation_target(sample, after_two, alpha_bar_t, alpha_bar_mid)
        assert (ddim_step(sample, swapped, alpha_bar_t, alpha_bar_s) - after_two).abs().max() > 1e-2


def test_truncated_snr_weight_is_max_snr_one():
    alpha_bar = torch.tensor([1e-4, 0.5, 0.9, 0.99], dtype=torch.float64)
    expected = torch.tensor([1.0, 1.0, 9.0, 99.0], dtype=torch.float64)
    torch.testing.assert_close(truncated_snr_weight(alpha_bar), expected, rtol=1e-12, atol=0)


def test_consistency_model_meets_its_boundary_condition_exactly():
    """f(x, 0) = x bit for bit, whatever the network says (LCMScheduler's c_skip(0) = 1, c_out(0) = 0)."""
    teacher = Teacher(create_unet("tiny", sample_size=8, in_channels=1), DDIMScheduler())
    student = create_unet("tiny", sample_size=8, in_channels=1)
    objective = ConsistencyDistillationObjective(teacher, "v_prediction", student)
    sample = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        at_zero = objective.consistency(student, sample, torch.zeros(3, dtype=torch.long))
        at_twenty = objective.consistency(student, sample, torch.full((3,), 19))
    assert torch.equal(at_zero, sample)
    assert not torch.allclose(at_twenty, sample, atol=1e-2)  # away from the boundary the network decides
    assert torch.equal(
        consistency_function(sample, torch.zeros_like(sample), torch.tensor(1.0), torch.tensor(0.0)), sample
    )


# A student of the exact denoiser of a 2-D Gaussian mixture (points as 2-channel 1×1 images).
MEANS = torch.tensor([[0.6, 0.3], [-0.5, -0.4]]).reshape(2, 2, 1, 1)


def mixture_teacher() -> Teacher:
    scheduler = DDIMScheduler(clip_sample=False, timestep_spacing="trailing", prediction_type="epsilon")
    return Teacher(GaussianMixtureDenoiser.for_scheduler(scheduler, MEANS, [0.1, 0.15], [0.4, 0.6]), scheduler)


def deterministic_samples(predict_original, scheduler: DDIMScheduler, noise: torch.Tensor, steps: int) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    timesteps = [*scheduler.timesteps.tolist(), -1]
    sample = noise
    for t, s in zip(timesteps[:-1], timesteps[1:], strict=True):
        batch_t = torch.full((len(sample),), t)
        sample = ddim_step(sample, predict_original(sample, batch_t), scheduler.alpha_bar(t), scheduler.alpha_bar(s))
    return sample


@pytest.mark.slow
def test_a_student_distilled_to_half_the_steps_beats_the_teachers_own_half_step_ddim():
    """Teacher: the exact mixture denoiser at 8 DDIM steps. A 4-step student, trained for 1500 steps, must land
    closer to the teacher's 8-step samples (same x_T) than the teacher's own 4-step DDIM, and its loss must fall."""
    torch.manual_seed(0)
    teacher = mixture_teacher()
    student = PointDenoiser(dims=2)
    objective = ProgressiveDistillationObjective(teacher, "v_prediction", student_steps=4)
    data_generator = torch.Generator().manual_seed(3)
    fixed_batch = teacher.unet.sample_data(512, data_generator).float()
    loss_before = objective(student, fixed_batch, generator(7)).loss.item()
    optimizer = torch.optim.Adam(student.parameters(), lr=2e-3)
    steps = generator(0)
    for _ in range(1500):
        output = objective(student, teacher.unet.sample_data(256, data_generator).float(), steps)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    loss_after = objective(student, fixed_batch, generator(7)).loss.item()
    assert loss_after < 0.2 * loss_before

    noise = torch.randn(2000, 2, 1, 1, generator=torch.Generator().manual_seed(4))
    teacher_scheduler = teacher.scheduler
    reference = deterministic_samples(teacher.predict_original, teacher_scheduler, noise, 8)
    teacher_half = deterministic_samples(teacher.predict_original, teacher_scheduler, noise, 4)

    def student_original(sample, timesteps):
        with torch.no_grad():
            output = student(sample, timesteps).sample
        return objective.scheduler.convert_prediction(output, sample, timesteps, "sample")

    student_half = deterministic_samples(student_original, objective.scheduler, noise, 4)
    student_error = (student_half - reference).flatten(1).norm(dim=1).mean()
    teacher_error = (teacher_half - reference).flatten(1).norm(dim=1).mean()
    assert student_error < 0.5 * teacher_error, (student_error, teacher_error)


# The scripts, on a tiny teacher.


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("teacher") / "tiny"
    unet = create_unet("tiny", sample_size=8, in_channels=1)
    HFDDPMPipeline(unet=unet, scheduler=DDIMScheduler(timestep_spacing="trailing")).save_pretrained(folder)
    return str(folder)


def engine_options(output_dir, **extra) -> dict:
    return short_run(output_dir, cpu_threads=2, **extra)


def unet_weights(folder) -> dict[str, torch.Tensor]:
    return load_file(f"{folder}/unet/diffusion_pytorch_model.safetensors")


def assert_same_weights(first, second) -> None:
    one, two = unet_weights(first), unet_weights(second)
    assert one.keys() == two.keys()
    assert all(torch.equal(one[name], two[name]) for name in one)


def forget_the_end_of_the_run(folder) -> None:
    """What a kill after the step-3 checkpoint leaves: the run's records and the checkpoint, not the finished
    pipeline."""
    for part in folder.iterdir():
        if part.name not in ("checkpoints", "training_args.json", "distillation.json"):
            shutil.rmtree(part) if part.is_dir() else part.unlink()
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["checkpoint-3"]


def count_network_evaluations(pipeline: HFDDPMPipeline) -> int:
    calls = []
    pipeline(output_type="np", callback_on_step_end=lambda pipe, i, t, tensors: calls.append(int(t)) or {})
    return len(calls)


@pytest.mark.slow
def test_progressive_rounds_are_pipelines_at_their_steps_and_resume_bit_exactly(tiny_teacher, tmp_path):
    config = ProgressiveDistillationConfig(teacher=tiny_teacher, teacher_steps=4, **engine_options(tmp_path / "run"))
    assert distill_progressive(config) == 0
    for steps in (2, 1):
        folder = tmp_path / "run" / f"steps-{steps}"
        pipeline = HFDDPMPipeline.from_pretrained(folder)
        assert pipeline.config.default_num_inference_steps == steps
        assert count_network_evaluations(pipeline) == steps
        lineage = json.loads((folder / "distillation.json").read_text())
        assert (lineage["teacher_steps"], lineage["steps"]) == (2 * steps, steps)
        assert f"{2 * steps} → {steps} steps" in (folder / "README.md").read_text()
    with pytest.raises(ValueError, match="holds an earlier run"):  # neither resumed nor overwritten
        distill_progressive(config)
    # A kill in the middle of round 2: the finished round 1 is kept, round 2 resumes from its checkpoint.
    shutil.copytree(tmp_path / "run", tmp_path / "uninterrupted")
    forget_the_end_of_the_run(tmp_path / "run" / "steps-1")
    resumed = ProgressiveDistillationConfig(
        teacher=tiny_teacher, teacher_steps=4, resume_from_checkpoint="latest", **engine_options(tmp_path / "run")
    )
    assert distill_progressive(resumed) == 0
    assert_same_weights(tmp_path / "run" / "steps-1", tmp_path / "uninterrupted" / "steps-1")
    assert_same_weights(tmp_path / "run" / "steps-2", tmp_path / "uninterrupted" / "steps-2")


@pytest.mark.slow
def test_consistency_student_samples_with_lcm_and_resumes_bit_exactly(tiny_teacher, tmp_path):
    config = ConsistencyDistillationConfig(teacher=tiny_teacher, **engine_options(tmp_path / "run"))
    assert distill_consistency(config) == 0
    pipeline = HFDDPMPipeline.from_pretrained(tmp_path / "run")
    assert isinstance(pipeline.scheduler, diffusers.LCMScheduler)
    assert pipeline.config.default_num_inference_steps == 2
    assert count_network_evaluations(pipeline) == 2
    shutil.copytree(tmp_path / "run", tmp_path / "uninterrupted")
    forget_the_end_of_the_run(tmp_path / "run")
    resumed = ConsistencyDistillationConfig(
        teacher=tiny_teacher, resume_from_checkpoint="latest", **engine_options(tmp_path / "run")
    )
    assert distill_consistency(resumed) == 0  # the target network resumes too, or the weights would differ
    assert_same_weights(tmp_path / "run", tmp_path / "uninterrupted")


@pytest.mark.slow
def test_stock_diffusers_loads_a_student_and_matches_it_at_the_students_steps(tiny_teacher, tmp_path):
    """Stock `DiffusionPipeline` loads a round as `DDIMPipeline`, ignores the default step count (it takes 50
    steps unless told), and at the student's own count draws our images."""
    config = ProgressiveDistillationConfig(
        teacher=tiny_teacher, teacher_steps=2, **engine_options(tmp_path / "run", max_train_steps=2)
    )
    assert distill_progressive(config) == 0
    folder = tmp_path / "run" / "steps-1"
    stock = diffusers.DiffusionPipeline.from_pretrained(folder)
    assert type(stock) is diffusers.DDIMPipeline
    ours = HFDDPMPipeline.from_pretrained(folder)
    stock_images = stock(batch_size=2, num_inference_steps=1, generator=torch.manual_seed(0), output_type="np")
    our_images = ours(batch_size=2, generator=torch.manual_seed(0), output_type="np")
    torch.testing.assert_close(
        torch.from_numpy(stock_images.images), torch.from_numpy(our_images.images), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize(
    ("config_class", "options", "message"),
    [
        (ProgressiveDistillationConfig, {"prediction_type": "epsilon"}, r"--prediction_type must be one of"),
        (ProgressiveDistillationConfig, {"teacher_steps": 4, "final_steps": 4}, "times a power of 2"),
        (
            ProgressiveDistillationConfig,
            {"resume_from_checkpoint": "checkpoint-3"},
            "must be 'latest' for progressive",
        ),
        (ConsistencyDistillationConfig, {"num_inference_steps": 60}, "at most --num_ddim_timesteps"),
        (ConsistencyDistillationConfig, {"target_ema_decay": 1.0}, r"--target_ema_decay must be in \[0, 1\)"),
    ],
)
def test_distillation_configs_refuse_bad_values_in_one_line(config_class, options, message):
    with pytest.raises(ValueError, match=message):
        config_class(teacher="t", **options)


def test_scripts_refuse_a_missing_teacher_and_a_resolution_it_lacks(tiny_teacher, tmp_path, capsys):
    missing = tmp_path / "no-such-teacher"
    assert distill_progressive_command(["--teacher", str(missing), "--output_dir", str(tmp_path / "a")]) == 2
    assert distill_consistency_command(["--teacher", str(missing), "--output_dir", str(tmp_path / "b")]) == 2
    argv = ["--teacher", tiny_teacher, "--resolution", "16", "--output_dir", str(tmp_path / "c")]
    assert distill_consistency_command(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)
    assert "differs from the teacher's 8" in lines[2]
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_a_learned_variance_teacher_is_distilled_from_its_prediction_channels():
    """A 2C-channel teacher (ε and the variance interpolation): its extra channels are ignored, the objective is
    finite, and the student pipeline samples with a fixed variance."""
    teacher_unet = create_unet("tiny", learned_variance=True, sample_size=8, in_channels=1)
    teacher = Teacher(teacher_unet, DDIMScheduler(reverse_variance="learned_range"))
    student = create_unet("tiny", learned_variance=True, sample_size=8, in_channels=1)
    objective = ProgressiveDistillationObjective(teacher, "v_prediction", 2)
    output = objective(student, torch.rand(4, 1, 8, 8) * 2 - 1, generator(0))
    assert torch.isfinite(output.loss)
    pipeline = objective.pipeline(student)
    assert pipeline.scheduler.config.reverse_variance == "fixed_small"  # the student's, whatever the teacher's
    assert pipeline(output_type="np").images.shape == (1, 8, 8, 1)


def test_without_a_default_step_count_model_index_is_stocks_and_calls_take_50_steps(tmp_path):
    pipeline = HFDDPMPipeline(unet=create_unet("tiny", sample_size=8, in_channels=1), scheduler=DDIMScheduler())
    pipeline.save_pretrained(tmp_path)
    assert "default_num_inference_steps" not in json.loads((tmp_path / "model_index.json").read_text())
    assert pipeline.inference_steps() == 50 and pipeline.inference_steps(3) == 3


@pytest.mark.slow
def test_two_processes_distil_two_rounds_with_identical_replicas(tiny_teacher, tmp_path):
    """Rounds follow each other in one process group: the engine ends its trackers, not the group, after a round."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    script = ["examples/distill_progressive.py", "--teacher", tiny_teacher, "--teacher_steps", "4"]
    options = ["--output_dir", str(tmp_path / "ddp"), "--max_train_steps", "3", "--train_batch_size", "8"]
    options += ["--num_sample_images", "4", "--report_to", "none", "--cpu_threads", "1"]
    result = subprocess.run(
        [*launcher, *script, *options],
        capture_output=True,
        text=True,
        env={**os.environ, "ACCELERATE_USE_CPU": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for steps in (2, 1):
        log = [json.loads(line) for line in (tmp_path / "ddp" / f"steps-{steps}" / "logs" / "train.jsonl").open()]
        assert any(entry.get("num_processes") == 2 and "replica_checksum" in entry for entry in log)


@pytest.mark.slow
def test_resuming_refuses_a_finished_round_of_another_distillation(tiny_teacher, tmp_path):
    options = engine_options(tmp_path / "run", max_train_steps=2)
    assert distill_progressive(ProgressiveDistillationConfig(teacher=tiny_teacher, teacher_steps=4, **options)) == 0
    other = ProgressiveDistillationConfig(
        teacher=tiny_teacher, teacher_steps=8, resume_from_checkpoint="latest", **options
    )
    with pytest.raises(ValueError, match="steps-2 holds a round of another distillation"):
        distill_progressive(other)  # steps-2 was round 1 of 2, here it would be round 2 of 3
    assert not (tmp_path / "run" / "steps-4").exists()  # refused before the first round started


def test_a_teacher_that_records_no_data_must_be_told_it(tmp_path, capsys):
    """An 8×8 grey teacher defaults to the built-in digits; any other needs --dataset_name or --train_data_dir."""
    folder = tmp_path / "teacher16"
    unet = create_unet("tiny", sample_size=16, in_channels=1)
    HFDDPMPipeline(unet=unet, scheduler=DDIMScheduler()).save_pretrained(folder)
    assert distill_consistency_command(["--teacher", str(folder), "--output_dir", str(tmp_path / "out")]) == 2
    assert "does not record its training data: pass --dataset_name or --train_data_dir" in capsys.readouterr().err


def test_the_command_line_samples_and_evaluates_a_student_at_its_own_step_count(tmp_path, capsys):
    folder = tmp_path / "student"
    unet = create_unet("tiny", sample_size=8, in_channels=1)
    scheduler = DDIMScheduler(timestep_spacing="trailing", prediction_type="v_prediction")
    HFDDPMPipeline(unet=unet, scheduler=scheduler, default_num_inference_steps=2).save_pretrained(folder)
    assert main(["sample", str(folder), "--num_images", "2", "--output", str(tmp_path / "grid.png")]) == 0
    assert "(DDIMScheduler, 2 steps)" in capsys.readouterr().out
    report_path = tmp_path / "report"
    argv = [
        "evaluate",
        str(folder),
        "--metrics",
        "digits_scores",
        "--num_samples",
        "4",
        "--output_dir",
        str(report_path),
    ]
    assert main(argv) == 0
    assert "2 steps" in json.loads((report_path / "evaluation.json").read_text())["details"]["samples"]["source"]
    steps_drawn = reverse_trajectory_grid(HFDDPMPipeline.from_pretrained(folder), num_images=1, every=1, scale=1)
    two_steps = reverse_trajectory_grid(HFDDPMPipeline.from_pretrained(folder), 1, 2, every=1, scale=1)
    assert steps_drawn.size == two_steps.size  # one column per step: the student's 2


def test_a_class_conditional_teachers_target_for_label_k_is_its_component_k_teachers():
    # The conditional teacher's two DDIM steps for a sample labelled k are those of component k's exact denoiser, and
    # for a dropped label ("no label") those of the whole mixture: the student learns both, as guidance needs.
    scheduler = DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    conditional = Teacher(
        GaussianMixtureDenoiser.for_scheduler(scheduler, MEANS, [0.1, 0.15], [0.4, 0.6], class_conditional=True),
        scheduler,
    )
    sample, t, s = torch.randn(6, 2, 1, 1), torch.full((6,), 749), torch.full((6,), 499)
    labels = torch.tensor([0, 1, 2, 0, 2, 1])
    stepped = conditional.ddim_step(sample, t, s, labels)
    for k, means, stds, weights in (
        (0, MEANS[:1], [0.1], [1.0]),
        (1, MEANS[1:], [0.15], [1.0]),
        (2, MEANS, [0.1, 0.15], [0.4, 0.6]),
    ):
        alone = Teacher(GaussianMixtureDenoiser.for_scheduler(scheduler, means, stds, weights), scheduler)
        assert torch.equal(stepped[labels == k], alone.ddim_step(sample, t, s)[labels == k])


@pytest.mark.slow
def test_a_class_conditional_teacher_gives_a_class_conditional_student(tmp_path):
    teacher = tmp_path / "teacher"
    torch.manual_seed(0)
    unet = create_unet("tiny", sample_size=8, in_channels=1, num_class_embeds=11)
    scheduler = DDIMScheduler(timestep_spacing="trailing")
    HFDDPMPipeline(unet=unet, scheduler=scheduler, id2label={k: str(k) for k in range(10)}).save_pretrained(teacher)
    config = ProgressiveDistillationConfig(teacher=str(teacher), teacher_steps=2, **engine_options(tmp_path / "run"))
    assert distill_progressive(config) == 0  # the built-in digits and their labels, as the 8×8 grey teacher
    student = HFDDPMPipeline.from_pretrained(tmp_path / "run" / "steps-1")
    assert (
        student.config.id2label == {str(k): str(k) for k in range(10)} and student.unet.config.num_class_embeds == 11
    )
    assert json.loads((tmp_path / "run" / "steps-1" / "training_args.json").read_text())["class_dropout_prob"] == 0.1
    student.set_progress_bar_config(disable=True)
    calls = []
    images = student(
        class_labels=["3", "7"], guidance_scale=2.0, output_type="np",
        callback_on_step_end=lambda pipe, i, t, tensors: calls.append(int(t)) or {},
    ).images  # fmt: skip
    assert images.shape == (2, 8, 8, 1) and len(calls) == 1  # guided, at its one step


def test_class_conditioning_must_match_the_teacher(tiny_teacher, tmp_path):
    with pytest.raises(ValueError, match="the teacher .* is unconditional; drop the flag"):
        load_teacher(
            ProgressiveDistillationConfig(
                teacher=tiny_teacher, class_conditional=True, **engine_options(tmp_path / "a")
            )
        )
    three_classes = tmp_path / "three-classes"
    unet = create_unet("tiny", sample_size=8, in_channels=1, num_class_embeds=4)
    HFDDPMPipeline(unet=unet, scheduler=DDIMScheduler(timestep_spacing="trailing")).save_pretrained(three_classes)
    config = ProgressiveDistillationConfig(
        teacher=str(three_classes), teacher_steps=2, **engine_options(tmp_path / "b")
    )
    with pytest.raises(
        ValueError, match=r"the data's classes \['0', '1', .*'9'\] are not the teacher's \['0', '1', '2'\]"
    ):
        distill_progressive(config)  # the built-in digits for an 8×8 grey teacher


@pytest.mark.parametrize("overwrite", [False, True])
def test_distillation_never_replaces_files_no_run_wrote(tiny_teacher, tmp_path, overwrite):
    """A consistency run into a folder of the user's, and a progressive round whose folder holds the user's saved
    pipeline, are refused before anything is written; a progressive run's parent folder receives only the rounds."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    options = engine_options(mine, overwrite_output_dir=overwrite)
    with pytest.raises(ValueError, match=r"mine holds README.md, which a run would replace, but no training run"):
        distill_consistency(ConsistencyDistillationConfig(teacher=tiny_teacher, **options))
    shutil.copytree(tiny_teacher, mine / "steps-2")
    progressive = ProgressiveDistillationConfig(teacher=tiny_teacher, teacher_steps=4, **options)
    with pytest.raises(
        ValueError, match=r"steps-2 holds unet, scheduler, model_index.json, which a run would replace"
    ):
        distill_progressive(progressive)
    assert sorted(path.name for path in mine.iterdir()) == ["README.md", "steps-2"]
    assert sorted(path.name for path in (mine / "steps-2").iterdir()) == ["model_index.json", "scheduler", "unet"]
    assert (mine / "README.md").read_text() == "my notes"
