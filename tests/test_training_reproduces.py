"""The training engine reproduces recorded runs bit for bit.

`tests/training_checksums.json` holds, for a few short CPU runs of `examples/train_unconditional.py`, the SHA-256
of the saved pipeline's UNet weights (the EMA weights, which depend on every update of the run) and of the logged
losses. They were recorded before the training loop moved from the example script into `hfddpm.training`; any
change to the order of random draws, the arithmetic of a step, the EMA, the learning-rate schedule or resume
changes them.

Floating-point results depend on the CPU kernels, so the runs pin them: ATen's dispatch, oneDNN and MKL are held to
AVX2 and the thread count to 2, in a fresh process (the variables are read when torch loads), so that CPUs with
and without AVX-512 give the same bits (pinned so, an AVX-512 machine reproduced an AVX2 machine's default run).
`python tests/test_training_reproduces.py --record` re-records the file; do that only for a change that is meant to
alter the numbers, and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPOSITORY = Path(__file__).resolve().parents[1]
CHECKSUMS = Path(__file__).with_name("training_checksums.json")
PINNED_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
# Frozen, unlike test_train_script.FAST (a speed knob): the recorded checksums depend on these exact values.
COMMON = [
    "--train_batch_size", "16",
    "--save_images_steps", "1000",
    "--num_sample_images", "4",
    "--num_inference_steps", "3",
    "--logging_steps", "1",
    "--lr_warmup_steps", "5",
    "--report_to", "none",
    "--cpu_threads", "2",
]  # fmt: skip
RUNS = {
    "default": ["--max_train_steps", "30"],
    "learned_range_hybrid": ["--max_train_steps", "30", "--variance_type", "learned_range"],
    # T = 20 so that the importance sampler's warm-up (10 losses per t) ends after 13 steps and it then samples.
    "importance_sampled_vlb": [
        "--max_train_steps", "30", "--variance_type", "learned_range", "--loss_type", "vlb",
        "--timestep_sampling", "loss_second_moment", "--num_train_timesteps", "20",
    ],
    "gradient_accumulation": ["--max_train_steps", "12", "--gradient_accumulation_steps", "3"],
    "v_prediction_cosine_min_snr": [
        "--max_train_steps", "20", "--prediction_type", "v_prediction", "--beta_schedule", "cosine",
        "--snr_gamma", "5",
    ],
    "bf16": ["--max_train_steps", "10", "--mixed_precision", "bf16"],
}  # fmt: skip
# Killed by SIGKILL right after checkpoint-10 is written, then resumed with --resume_from_checkpoint latest.
KILLED_AND_RESUMED = "default_killed_and_resumed"


def checksums_of(output_dir: Path) -> dict[str, str]:
    """SHA-256 of the pipeline's UNet tensors (name, dtype, shape, bytes, in name order) and of the logged losses."""
    weights = load_file(output_dir / "unet" / "diffusion_pytorch_model.safetensors")
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    lines = (output_dir / "logs" / "train.jsonl").read_text().splitlines()
    losses = [(record["step"], record["loss"]) for record in map(json.loads, lines) if "loss" in record]
    return {"weights": digest.hexdigest(), "losses": hashlib.sha256(repr(losses).encode()).hexdigest()}


def train(output_dir: Path, args: list[str], kill_after_first_checkpoint: bool = False) -> int:
    """Run the training script in a fresh process with the kernels pinned; return its exit status."""
    code = (
        "import sys; sys.path.insert(0, 'tests'); from training_runner import run_once; "
        f"sys.exit(run_once({[*args, '--output_dir', str(output_dir)]!r}, {kill_after_first_checkpoint!r}))"
    )
    env = {**os.environ, **PINNED_KERNELS}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=600
    )
    if result.returncode not in (0, -9):
        raise AssertionError(f"training failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.returncode


def run_and_checksum(name: str, tmp_path: Path) -> dict[str, str]:
    output_dir = tmp_path / name
    if name == KILLED_AND_RESUMED:
        args = [*COMMON, *RUNS["default"], "--checkpointing_steps", "10"]
        assert train(output_dir, args, kill_after_first_checkpoint=True) == -9
        assert train(output_dir, [*args, "--resume_from_checkpoint", "latest"]) == 0
    else:
        assert train(output_dir, [*COMMON, *RUNS[name]]) == 0
    return checksums_of(output_dir)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*RUNS, KILLED_AND_RESUMED])
def test_training_reproduces_the_recorded_run_bit_for_bit(name, tmp_path):
    recorded = json.loads(CHECKSUMS.read_text())["runs"]
    assert run_and_checksum(name, tmp_path) == recorded[name]


def test_a_killed_and_resumed_run_was_recorded_equal_to_the_uninterrupted_one():
    recorded = json.loads(CHECKSUMS.read_text())["runs"]
    assert recorded[KILLED_AND_RESUMED] == recorded["default"]
    assert len({value["weights"] for value in recorded.values()}) == len(recorded) - 1  # the runs differ otherwise


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        runs = {name: run_and_checksum(name, Path(folder)) for name in [*RUNS, KILLED_AND_RESUMED]}
    record = {"recorded_with": {"torch": torch.__version__, **PINNED_KERNELS}, "runs": runs}
    CHECKSUMS.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
