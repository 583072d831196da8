"""Fine-tune a latent diffusion model's autoencoder and UNet together on its bound (LSGM, Vahdat et al. 2021) and save
it as an HFDDPMPipeline with its `vae/`, like the model it starts from.

    accelerate launch --config_file examples/accelerate_config.yaml examples/train_lsgm.py \
        --model outputs/latent-fashion --output_dir outputs/lsgm-fashion --max_train_steps 500

The model is a two-stage one (examples/train_autoencoder.py, then examples/train_unconditional.py --vae); its data
are found from its training_args.json. `hfddpm.training.train_lsgm` hands `LSGMLoss` (the bound for the autoencoder;
L_simple, or the bound with --prior_objective bound, for the UNet) and both networks to the engine of
examples/train_unconditional.py, with its resume, fault handling and one-line errors. One process only.
"""

import sys

from hfddpm.training import run_command


def main(argv: list[str]) -> int:
    from hfddpm.training import LSGMConfig, train_lsgm  # needs the [train] extra

    return train_lsgm(LSGMConfig.from_command_line(argv, description=__doc__))


if __name__ == "__main__":
    sys.exit(run_command(lambda: main(sys.argv[1:])))
