"""examples/train_unconditional.py on the built-in digits: in a subprocess as a user runs it, or forked by
tests/training_runner.py (the `training_runner` fixture), which spares each run the imports."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hfddpm import DDIMScheduler, HFDDPMPipeline
from hfddpm.training.tracking import read_jsonl_log

from .fake_hub import FakeHub

pytestmark = pytest.mark.slow  # every test here trains or starts an interpreter

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_unconditional.py"
FAST = [
    "--train_batch_size", "16",
    "--save_images_steps", "1000",
    "--num_sample_images", "4",
    "--num_inference_steps", "3",
    "--logging_steps", "1",
    "--lr_warmup_steps", "5",
    "--report_to", "none",
]  # fmt: skip


def command(output_dir, *args):
    return [sys.executable, str(SCRIPT), "--output_dir", str(output_dir), *FAST, *args]


def train(output_dir, *args, env=None, check=True, launcher=None, runner=None):
    """Train and return the `CompletedProcess` (with `runner`, forked by it; its console output as stderr)."""
    cmd = command(output_dir, *args)
    if runner is not None:
        console = Path(output_dir).with_name(f"{Path(output_dir).name}.console.txt")
        runner.start(cmd[2:], console, env=env)
        result = subprocess.CompletedProcess(cmd, runner.wait(), "", console.read_text())
    else:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        if launcher is not None:
            cmd = [*launcher, *cmd[1:]]
        result = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"training failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def weights(output_dir):
    return load_file(Path(output_dir) / "unet" / "diffusion_pytorch_model.safetensors")


def test_run_writes_a_loadable_pipeline_samples_and_logs(tmp_path):
    train(tmp_path / "run", "--max_train_steps", "40", "--save_images_steps", "20", "--checkpointing_steps", "20")
    run = tmp_path / "run"
    assert (run / "samples" / "step_0000020.png").is_file() and (run / "samples" / "final.png").is_file()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["checkpoint-20"]
    args = json.loads((run / "training_args.json").read_text())
    assert args["max_train_steps"] == 40 and args["model_preset"] == "digits"
    log = read_jsonl_log(run / "logs" / "train.jsonl")
    losses = [log[step]["loss"] for step in range(1, 41)]
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])  # it learns
    assert log[40]["lr"] == pytest.approx(0.0, abs=1e-9)  # the cosine schedule reaches its end

    pipe = HFDDPMPipeline.from_pretrained(run)
    assert type(pipe.scheduler) is DDIMScheduler and pipe.scheduler.config.timestep_spacing == "trailing"
    assert pipe.unet.config.in_channels == 1 and pipe.unet.config.sample_size == 8
    pipe.set_progress_bar_config(disable=True)
    image = pipe(generator=torch.manual_seed(0), num_inference_steps=5).images[0]
    assert image.size == (8, 8) and image.mode == "L"


def test_bf16_mixed_precision_on_cpu(tmp_path, training_runner):
    train(tmp_path / "bf16", "--max_train_steps", "30", "--mixed_precision", "bf16", runner=training_runner)
    log = read_jsonl_log(tmp_path / "bf16" / "logs" / "train.jsonl")
    losses = [log[s]["loss"] for s in range(1, 31)]
    assert all(map(torch.isfinite, torch.tensor(losses))) and sum(losses[-5:]) < 0.5 * sum(losses[:5])
    assert weights(tmp_path / "bf16")["conv_in.weight"].dtype == torch.float32  # EMA weights saved in float32


def test_two_processes_stop_together_on_sigterm_and_resume_with_identical_replicas(tmp_path):
    # torchrun passes SIGTERM to both workers; they agree at the next step, save one checkpoint together, and exit.
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    run, args, env = tmp_path / "ddp", ["--max_train_steps", "12"], {"ACCELERATE_USE_CPU": "1"}
    stopped = subprocess.Popen(
        [*launcher, *command(run, *args)[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
    )
    log = run / "logs" / "train.jsonl"
    deadline = time.time() + 300
    while not (log.is_file() and log.read_text().count('"step": ') >= 3) and time.time() < deadline:
        time.sleep(0.05)
    stopped.send_signal(signal.SIGTERM)
    _, stderr = stopped.communicate(timeout=300)
    [step] = re.findall(r"SIGTERM: stopped at step (\d+) and saved checkpoint-\1", stderr)  # said once, by rank 0
    checkpoint = run / "checkpoints" / f"checkpoint-{step}"
    assert int(step) < 12 and (checkpoint / "training_state.json").is_file()
    assert all((checkpoint / f"randomness_{rank}.safetensors").is_file() for rank in (0, 1))

    train(run, *args, "--resume_from_checkpoint", "latest", env=env, launcher=launcher)
    log = read_jsonl_log(log)
    assert log[12]["num_processes"] == 2 and "replica_checksum" in log[12]
    # Each process saw its own shard and noise: the logged loss is the mean of two different losses.
    assert json.loads((run / "training_args.json").read_text())["train_batch_size"] == 16


ACCELERATE_LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
ACCELERATE_LAUNCH += [str(SCRIPT.parent / "accelerate_config.yaml")]


def test_accelerate_launch_with_the_shipped_config_is_quiet_and_reports_a_stop_as_status_1(tmp_path):
    """The README's launch: no list of defaults accelerate filled in. A SIGTERM to the training process saves and
    stops it as under python, but accelerate's launcher turns its 143 into 1 (and, without -q, its own traceback)."""
    run = tmp_path / "run"
    result = train(run, "--max_train_steps", "1", launcher=ACCELERATE_LAUNCH)
    assert "had defaults used instead" not in result.stderr
    shutil.rmtree(run)
    launcher = subprocess.Popen(
        [*ACCELERATE_LAUNCH[:3], "-q", *ACCELERATE_LAUNCH[3:], *command(run, "--max_train_steps", "2000")[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log = run / "logs" / "train.jsonl"
    deadline = time.time() + 300
    while not (log.is_file() and log.read_text().count('"step": ') >= 2) and time.time() < deadline:
        time.sleep(0.05)
    [training_process] = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    os.kill(int(training_process), signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == 1 and "Traceback" not in stderr
    [step] = re.findall(r"SIGTERM: stopped at step (\d+) and saved checkpoint-\1", stderr)
    assert (run / "checkpoints" / f"checkpoint-{step}" / "training_state.json").is_file()


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_learned_variance_trains_with_the_hybrid_loss(tmp_path, training_runner, precision):
    args = ["--max_train_steps", "15", "--variance_type", "learned_range", "--mixed_precision", precision]
    train(tmp_path / "hybrid", *args, runner=training_runner)
    log = read_jsonl_log(tmp_path / "hybrid" / "logs" / "train.jsonl")
    assert all(0 < log[s]["vlb_bits_per_dim"] < 100 and math.isfinite(log[s]["loss"]) for s in range(1, 16))
    pipe = HFDDPMPipeline.from_pretrained(tmp_path / "hybrid")
    assert pipe.unet.config.out_channels == 2 and pipe.scheduler.config.reverse_variance == "learned_range"
    assert all(torch.isfinite(w).all() for w in weights(tmp_path / "hybrid").values())


def test_the_bound_with_importance_sampling_trains_and_resumes_exactly(tmp_path, training_runner):
    # Pure L_vlb with p_t ∝ √E[L_t²]: the sampler's loss history is part of the checkpoint, so a run resumed from
    # checkpoint-30 ends with the weights of the uninterrupted run. T = 20 lets the warm-up (10 losses per t) end.
    args = ["--max_train_steps", "40", "--checkpointing_steps", "30", "--num_train_timesteps", "20"]
    args += ["--loss_type", "vlb", "--timestep_sampling", "loss_second_moment", "--variance_type", "learned_range"]
    train(tmp_path / "whole", *args, runner=training_runner)
    log = read_jsonl_log(tmp_path / "whole" / "logs" / "train.jsonl")
    assert log[40]["timestep_sampler_warm"] == 1 and math.isfinite(log[40]["loss"])
    checkpoint = tmp_path / "whole" / "checkpoints" / "checkpoint-30"
    assert (checkpoint / "timestep_sampler.safetensors").is_file()

    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoints" / "checkpoint-30")
    shutil.copy(tmp_path / "whole" / "training_args.json", tmp_path / "resumed")  # the mark of a run's folder
    train(tmp_path / "resumed", *args, "--resume_from_checkpoint", "latest", runner=training_runner)
    whole, resumed = weights(tmp_path / "whole"), weights(tmp_path / "resumed")
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


def test_offline_metrics_are_logged_during_training_and_saved_at_the_end(tmp_path, training_runner):
    train(
        tmp_path / "run",
        *("--max_train_steps", "20", "--eval_every", "10", "--eval_num_samples", "16"),
        *("--report_to", "tensorboard"),  # its hparams take scalars only: --eval_metrics is a list
        env={"HFDDPM_CACHE": str(tmp_path / "cache")},
        runner=training_runner,
    )
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    log = read_jsonl_log(tmp_path / "run" / "logs" / "train.jsonl")
    assert all(log[step]["eval/fd_digits"] > 0 and "eval/digits_confidence" in log[step] for step in (10, 20))
    report = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert report["metrics"]["fd_digits"] == log[20]["eval/fd_digits"]
    assert report["details"]["samples"]["num_samples"] == 16


def test_run_publishes_its_pipeline_and_card_and_never_writes_the_token(tmp_path):
    token = "hf_secretTokenForTheTrainingRun42"
    args = ["--max_train_steps", "4", "--save_model_steps", "2", "--push_to_hub", "--hub_model_id", "user/tiny-run"]
    args += ["--hub_token", token, "--hub_push_intermediate", "--checkpointing_steps", "2"]
    args += ["--report_to", "tensorboard"]
    with FakeHub() as hub:
        result = train(tmp_path / "run", *args, env={"HF_ENDPOINT": hub.endpoint})
    assert token not in result.stdout + result.stderr
    commits = hub.repos["user/tiny-run"]["commits"]
    assert [c["message"] for c in commits] == ["Pipeline at step 2", "Pipeline at step 4", "Final pipeline"]
    published = hub.published("user/tiny-run")
    assert "README.md" in published and "unet/diffusion_pytorch_model.safetensors" in published
    assert not any(name.startswith(("checkpoints/", "logs/")) for name in published)
    card = published["README.md"].decode()
    assert "diffusers:HFDDPMPipeline" in card and "| optimizer steps | 4, batch 16" in card
    every_file = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.name.startswith("events.out.tfevents") for p in every_file)  # TensorBoard's hparams
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-2" / "training_state.json").is_file()
    assert all(token.encode() not in p.read_bytes() for p in every_file)  # logs, args, card, checkpoints
    assert all(token.encode() not in content for content in published.values())

    train(tmp_path / "dry", "--max_train_steps", "2", "--hub_dry_run", "--hub_model_id", "user/dry")
    assert (tmp_path / "dry" / "hub-export" / "README.md").is_file()
    assert HFDDPMPipeline.from_pretrained(tmp_path / "dry" / "hub-export").unet.config.sample_size == 8


def test_push_without_a_token_fails_before_training(tmp_path):
    env = {"HF_TOKEN": "", "HF_TOKEN_PATH": str(tmp_path / "no-token")}
    result = train(tmp_path / "run", "--push_to_hub", "--hub_model_id", "user/x", env=env, check=False)
    assert result.returncode == 2 and "error: no Hugging Face token: pass --hub_token" in result.stderr
    assert not (tmp_path / "run").exists()


def test_v_prediction_cosine_min_snr_and_gradient_checkpointing(tmp_path, training_runner):
    args = [
        "--max_train_steps",
        "6",
        "--prediction_type",
        "v_prediction",
        "--beta_schedule",
        "cosine",
        "--snr_gamma",
        "5",
    ]
    train(tmp_path / "plain", *args, runner=training_runner)
    train(tmp_path / "checkpointed", *args, "--gradient_checkpointing", runner=training_runner)
    plain = read_jsonl_log(tmp_path / "plain" / "logs" / "train.jsonl")
    checkpointed = read_jsonl_log(tmp_path / "checkpointed" / "logs" / "train.jsonl")
    # Recomputing activations in the backward pass changes nothing but memory.
    assert [plain[s]["loss"] for s in range(1, 7)] == pytest.approx([checkpointed[s]["loss"] for s in range(1, 7)])
    config = HFDDPMPipeline.from_pretrained(tmp_path / "plain").scheduler.config
    assert (config.prediction_type, config.beta_schedule) == ("v_prediction", "squaredcos_cap_v2")


def test_an_earlier_run_is_not_overwritten_by_accident(tmp_path, training_runner):
    train(tmp_path / "run", "--max_train_steps", "3", runner=training_runner)
    before = weights(tmp_path / "run")
    result = train(tmp_path / "run", "--max_train_steps", "3", "--seed", "1", check=False, runner=training_runner)
    assert result.returncode == 2
    assert "error: " in result.stderr and "holds an earlier run; pass --resume_from_checkpoint latest" in result.stderr
    assert all(torch.equal(before[k], v) for k, v in weights(tmp_path / "run").items())
    # A finished run without checkpoints has nothing to resume from: "latest" does not silently start it again.
    result = train(tmp_path / "run", "--resume_from_checkpoint", "latest", check=False, runner=training_runner)
    assert result.returncode == 2 and "holds a finished run without checkpoints" in result.stderr
    train(tmp_path / "run", "--max_train_steps", "3", "--seed", "1", "--overwrite_output_dir", runner=training_runner)
    assert not all(torch.equal(before[k], v) for k, v in weights(tmp_path / "run").items())
