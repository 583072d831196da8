"""Train an unconditional DDPM with Accelerate and save it as an HFDDPMPipeline.

    accelerate launch --config_file examples/accelerate_config.yaml examples/train_unconditional.py  # 3-9 min, 2 cores
    accelerate launch examples/train_unconditional.py --dataset_name ylecun/mnist --resolution 28
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 examples/train_unconditional.py   # two processes on CPU

The output folder holds the pipeline (EMA weights; `HFDDPMPipeline.from_pretrained(output_dir)`), `samples/`
(a grid every --save_images_steps), `checkpoints/` (for --resume_from_checkpoint) and `logs/` (TensorBoard and
`train.jsonl`).

Faults (docs/reliability.md): SIGTERM or SIGINT saves a checkpoint and exits with 128 + the signal number (which
`accelerate launch` reports as 1); a kill or a full disk leaves every checkpoint complete or absent; a NaN or Inf loss
or gradient stops the run (or skips the update, --on_nonfinite_loss skip) without touching the weights, and an update
that makes them NaN or Inf stops it before anything saves them. A second run into the same --output_dir is refused,
and --overwrite_output_dir deletes only what a run wrote. Errors are one line: "error: <problem>; <fix>".

The objective and the loop are `hfddpm.training`'s: `train_unconditional` builds the denoising objective, the
UNet and the data, and hands them to the engine (`hfddpm.training.Trainer`).
"""

import sys

from hfddpm.training import train_unconditional_command

if __name__ == "__main__":
    sys.exit(train_unconditional_command(sys.argv[1:], description=__doc__))
