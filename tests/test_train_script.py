"""examples/train_unconditional.py run as a user runs it, in subprocesses, on the built-in digits."""

import json
import os
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


def train(output_dir, *args, env=None, check=True, launcher=None):
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = command(output_dir, *args)
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
    assert pipe.unet.config.in_channels == 1 and pipe.unet.config.sample_size == 16
    pipe.set_progress_bar_config(disable=True)
    image = pipe(generator=torch.manual_seed(0), num_inference_steps=5).images[0]
    assert image.size == (16, 16) and image.mode == "L"


def test_killed_run_resumes_exactly(tmp_path):
    # Gradient accumulation 2 and a kill past the epoch boundary (47 steps/epoch): data position, noise, optimizer,
    # EMA and LR schedule must all continue as if nothing happened.
    args = ["--max_train_steps", "70", "--checkpointing_steps", "10", "--gradient_accumulation_steps", "2"]
    train(tmp_path / "whole", *args)

    killed = subprocess.Popen(
        command(tmp_path / "killed", *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    marker = tmp_path / "killed" / "checkpoints" / "checkpoint-50" / "training_state.json"
    deadline = time.time() + 300
    while not marker.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "model_index.json").exists(), "the run finished before it was killed"

    train(tmp_path / "killed", *args, "--resume_from_checkpoint", "latest")
    whole, resumed = weights(tmp_path / "whole"), weights(tmp_path / "killed")
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)  # bit for bit on CPU
    log_whole = read_jsonl_log(tmp_path / "whole" / "logs" / "train.jsonl")
    log_resumed = read_jsonl_log(tmp_path / "killed" / "logs" / "train.jsonl")
    assert [log_resumed[s]["loss"] for s in range(51, 71)] == [log_whole[s]["loss"] for s in range(51, 71)]
    # The LR schedule counts optimizer steps, not batches: with accumulation it still ends at its final value.
    assert log_whole[70]["lr"] == pytest.approx(0.0, abs=1e-9) and log_whole[35]["lr"] > 1e-3


def test_bf16_mixed_precision_on_cpu(tmp_path):
    train(tmp_path / "bf16", "--max_train_steps", "30", "--mixed_precision", "bf16")
    log = read_jsonl_log(tmp_path / "bf16" / "logs" / "train.jsonl")
    losses = [log[s]["loss"] for s in range(1, 31)]
    assert all(map(torch.isfinite, torch.tensor(losses))) and sum(losses[-5:]) < 0.5 * sum(losses[:5])
    assert weights(tmp_path / "bf16")["conv_in.weight"].dtype == torch.float32  # EMA weights saved in float32


def test_two_processes_on_cpu_keep_identical_replicas(tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    train(tmp_path / "ddp", "--max_train_steps", "12", env={"ACCELERATE_USE_CPU": "1"}, launcher=launcher)
    log = read_jsonl_log(tmp_path / "ddp" / "logs" / "train.jsonl")
    assert log[12]["num_processes"] == 2 and "replica_checksum" in log[12]
    # Each process saw its own shard and noise: the logged loss is the mean of two different losses.
    assert json.loads((tmp_path / "ddp" / "training_args.json").read_text())["train_batch_size"] == 16


def test_learned_variance_trains_with_the_hybrid_loss(tmp_path):
    train(tmp_path / "hybrid", "--max_train_steps", "15", "--variance_type", "learned_range")
    log = read_jsonl_log(tmp_path / "hybrid" / "logs" / "train.jsonl")
    assert all(0 < log[s]["vlb_bits_per_dim"] < 100 for s in range(1, 16))
    pipe = HFDDPMPipeline.from_pretrained(tmp_path / "hybrid")
    assert pipe.unet.config.out_channels == 2 and pipe.scheduler.config.reverse_variance == "learned_range"


def test_v_prediction_cosine_min_snr_and_gradient_checkpointing(tmp_path):
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
    train(tmp_path / "plain", *args)
    train(tmp_path / "checkpointed", *args, "--gradient_checkpointing")
    plain = read_jsonl_log(tmp_path / "plain" / "logs" / "train.jsonl")
    checkpointed = read_jsonl_log(tmp_path / "checkpointed" / "logs" / "train.jsonl")
    # Recomputing activations in the backward pass changes nothing but memory.
    assert [plain[s]["loss"] for s in range(1, 7)] == pytest.approx([checkpointed[s]["loss"] for s in range(1, 7)])
    config = HFDDPMPipeline.from_pretrained(tmp_path / "plain").scheduler.config
    assert (config.prediction_type, config.beta_schedule) == ("v_prediction", "squaredcos_cap_v2")


def test_an_earlier_run_is_not_overwritten_by_accident(tmp_path):
    train(tmp_path / "run", "--max_train_steps", "3")
    before = weights(tmp_path / "run")
    result = train(tmp_path / "run", "--max_train_steps", "3", "--seed", "1", check=False)
    assert result.returncode != 0
    assert "holds an earlier run; pass --resume_from_checkpoint latest" in result.stderr
    assert all(torch.equal(before[k], v) for k, v in weights(tmp_path / "run").items())
    train(tmp_path / "run", "--max_train_steps", "3", "--seed", "1", "--overwrite_output_dir")
    assert not all(torch.equal(before[k], v) for k, v in weights(tmp_path / "run").items())

    (tmp_path / "file").write_text("")
    result = train(tmp_path / "file", check=False)
    assert result.returncode != 0 and "is a file; choose a folder" in result.stderr
