"""Consistency distillation (Song et al. 2023; Luo et al. 2023) of any hfddpm or stock DDPM/DDIM checkpoint.

    accelerate launch --config_file examples/accelerate_config.yaml examples/distill_consistency.py \
        --teacher outputs/ddpm-digits

The student is a consistency model of the teacher's probability-flow ODE, sampled in 1–4 steps by diffusers'
`LCMScheduler`; OUTPUT_DIR is an ordinary pipeline folder that samples at --num_inference_steps by default:
`HFDDPMPipeline.from_pretrained("outputs/consistency-digits")()`.
"""

import sys

from hfddpm.training import run_command


def main(argv: list[str]) -> int:
    from hfddpm.training import ConsistencyDistillationConfig, distill_consistency  # the [train] extra

    return distill_consistency(ConsistencyDistillationConfig.from_command_line(argv, description=__doc__))


if __name__ == "__main__":
    sys.exit(run_command(lambda: main(sys.argv[1:])))
