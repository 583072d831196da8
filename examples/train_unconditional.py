"""Train a DDPM with Accelerate and save it as an HFDDPMPipeline (EMA weights, safetensors).

    accelerate launch --config_file examples/accelerate_config.yaml examples/train_unconditional.py
    accelerate launch --config_file examples/accelerate_config.yaml examples/train_unconditional.py \
        --dataset_name ylecun/mnist --resolution 28
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 examples/train_unconditional.py   # two processes on CPU
    python examples/train_unconditional.py --config my_run.json                         # options from a JSON file

The output folder holds the pipeline (`HFDDPMPipeline.from_pretrained(output_dir)`), `samples/` (a grid every
--save_images_steps), `checkpoints/` (for --resume_from_checkpoint) and `logs/` (TensorBoard and train.jsonl).

What runs: `hfddpm.training.train_unconditional` loads the data and builds the UNet and the objective,
`DenoisingLoss` (one class: draw t and ε, noise x_0, call the network, weight the loss), and hands them to the
engine, `hfddpm.training.Trainer`, whose loop (`Trainer.train_epochs`) is batches → objective → optimizer step →
periodic work, with Accelerate, EMA, checkpoints, exact resume and the fault checks around it.

Faults (docs/reliability.md): SIGTERM or SIGINT saves a checkpoint and exits with 128 + the signal number (which
`accelerate launch` reports as 1); a kill or a full disk leaves every checkpoint complete or absent; a NaN or Inf
loss or gradient stops the run (or skips the update, --on_nonfinite_loss skip) without touching the weights, and an
update that makes them NaN or Inf stops it before anything saves them. Errors are one line: "error: <problem>; <fix>".
"""

import sys

from hfddpm.training import run_command


def main(argv: list[str]) -> int:
    from hfddpm.training import TrainingConfig, train_unconditional  # needs the [train] extra: a missing one is a line

    return train_unconditional(TrainingConfig.from_command_line(argv, description=__doc__))


if __name__ == "__main__":
    sys.exit(run_command(lambda: main(sys.argv[1:])))
