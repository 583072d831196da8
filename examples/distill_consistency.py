"""Consistency distillation (Song et al. 2023; Luo et al. 2023) of any hfddpm or stock DDPM/DDIM checkpoint.

    accelerate launch examples/distill_consistency.py --teacher outputs/ddpm-digits

The student is a consistency model of the teacher's probability-flow ODE, sampled in 1–4 steps by diffusers'
`LCMScheduler`; OUTPUT_DIR is an ordinary pipeline folder that samples at --num_inference_steps by default:
`HFDDPMPipeline.from_pretrained("outputs/consistency-digits")()`.
"""

import sys

from hfddpm.training import distill_consistency_command

if __name__ == "__main__":
    sys.exit(distill_consistency_command(sys.argv[1:], description=__doc__))
