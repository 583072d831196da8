"""Progressive distillation (Salimans & Ho 2022) of any hfddpm or stock DDPM/DDIM checkpoint into 1–4-step students.

    accelerate launch --config_file examples/accelerate_config.yaml examples/distill_progressive.py \
        --teacher outputs/ddpm-digits

Each round halves the teacher's DDIM step count, 64 → 32 → … → 1 by default, and leaves an ordinary pipeline
folder, OUTPUT_DIR/steps-N, that samples at its N steps: `HFDDPMPipeline.from_pretrained("OUTPUT_DIR/steps-4")()`.
The student predicts v (or x_0) and is trained on the teacher's data (the built-in digits unless told otherwise).
Resume after a stop with --resume_from_checkpoint latest: finished rounds are kept, the unfinished one resumes.
"""

import sys

from hfddpm.training import run_command


def main(argv: list[str]) -> int:
    from hfddpm.training import ProgressiveDistillationConfig, distill_progressive  # the [train] extra

    return distill_progressive(ProgressiveDistillationConfig.from_command_line(argv, description=__doc__))


if __name__ == "__main__":
    sys.exit(run_command(lambda: main(sys.argv[1:])))
