"""The training engine reproduces recorded runs bit for bit.

`tests/training_checksums.json` holds, for four short CPU runs of the training command, the SHA-256 of the saved
pipeline's UNet weights (the EMA weights, which depend on every update of the run) and of the logged losses. Between
them the runs take every path of the engine and of the denoising objective that changes a number: ε, v and the
bound's objectives, the linear and cosine schedules, fixed and learned variances with the hybrid loss, min-SNR
weighting, uniform and importance-sampled t, label dropout, gradient accumulation, bf16 autocast, and a kill after
a checkpoint followed by a resume, which must land on the uninterrupted run's numbers. Any change to the order of
random draws, the arithmetic of a step, the EMA, the learning-rate schedule or resume changes them.

Floating-point results depend on the CPU's kernels, so the runs use kernels whose arithmetic is the same on every
x86 CPU (`training_runner.REPRODUCIBLE_KERNELS`: scalar ATen, MKL's compatible path, no oneDNN or NNPACK) and two
threads, in a process of their own. `python tests/test_training_reproduces.py --record` re-records the file; do that
only for a change that is meant to alter the numbers, and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from training_runner import REPRODUCIBLE_KERNELS, TrainingRunner  # noqa: E402

CHECKSUMS = Path(__file__).with_name("training_checksums.json")
PINNED = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", REPRODUCIBLE_KERNELS: "1"}
# Frozen: the recorded checksums depend on these exact values.
COMMON = [
    "--train_batch_size", "16",
    "--save_images_steps", "1000",
    "--num_sample_images", "4",
    "--num_inference_steps", "3",
    "--logging_steps", "1",
    "--lr_warmup_steps", "5",
    "--report_to", "none",
    "--cpu_threads", "2",
    "--model_preset", "tiny",
]  # fmt: skip
RUNS = {
    "default": ["--max_train_steps", "30"],
    "learned_range_hybrid_accumulation_class_conditional": [
        "--max_train_steps", "12", "--reverse_variance", "learned_range", "--gradient_accumulation_steps", "3",
        "--class_conditional",
    ],
    "v_prediction_cosine_min_snr_bf16": [
        "--max_train_steps", "20", "--prediction_type", "v_prediction", "--beta_schedule", "cosine",
        "--snr_gamma", "5", "--mixed_precision", "bf16",
    ],
    # T = 20 so that the importance sampler's warm-up (10 losses per t) ends after 13 steps and it then samples.
    "importance_sampled_vlb": [
        "--max_train_steps", "30", "--reverse_variance", "learned_range", "--loss_type", "vlb",
        "--timestep_sampling", "loss_second_moment", "--num_train_timesteps", "20",
    ],
}  # fmt: skip


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


def train(runner: TrainingRunner, output_dir: Path, args: list[str], faults: dict | None = None) -> int:
    runner.start([*COMMON, *args, "--output_dir", output_dir], output_dir.with_suffix(".console"), faults)
    return runner.wait()


def killed_and_resumed(runner: TrainingRunner, output_dir: Path) -> dict[str, str]:
    """The default run killed by SIGKILL right after its first checkpoint (step 10), then resumed."""
    args = [*RUNS["default"], "--checkpointing_steps", "10"]
    kill = {"kill_after": {"hfddpm.training.checkpoints:CheckpointManager.save": 1}}
    assert train(runner, output_dir, args, kill) == -9
    assert train(runner, output_dir, [*args, "--resume_from_checkpoint", "latest"]) == 0
    return checksums_of(output_dir)


@pytest.fixture(scope="module")
def pinned_runner():
    runner = TrainingRunner(env=PINNED)
    yield runner
    runner.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNS)
def test_training_reproduces_the_recorded_run_bit_for_bit(name, pinned_runner, tmp_path):
    recorded = json.loads(CHECKSUMS.read_text())["runs"][name]
    if name == "default":  # killed and resumed: the uninterrupted run's numbers
        assert killed_and_resumed(pinned_runner, tmp_path / name) == recorded
    else:
        assert train(pinned_runner, tmp_path / name, RUNS[name]) == 0
        assert checksums_of(tmp_path / name) == recorded


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile

    runner = TrainingRunner(env=PINNED)
    with tempfile.TemporaryDirectory() as folder:
        runs = {}
        for name, args in RUNS.items():
            assert train(runner, Path(folder) / name, args) == 0, (Path(folder) / f"{name}.console").read_text()
            runs[name] = checksums_of(Path(folder) / name)
        assert killed_and_resumed(runner, Path(folder) / "resumed") == runs["default"], "resume is not exact"
    runner.close()
    assert len({run["weights"] for run in runs.values()}) == len(runs), "two runs trained alike"
    record = {"recorded_with": {"torch": torch.__version__, **PINNED}, "runs": runs}
    CHECKSUMS.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
