"""Train the autoencoder of latent diffusion with Accelerate and save it as an AutoencoderPipeline (`vae/`,
safetensors), for a latent diffusion run's --vae.

    accelerate launch --config_file examples/accelerate_config.yaml examples/train_autoencoder.py \
        --dataset_name fashion_mnist --resolution 28 --output_dir outputs/autoencoder-fashion

The output folder holds the pipeline (`AutoencoderPipeline.from_pretrained(output_dir)`, or the autoencoder alone:
`AutoencoderKL.from_pretrained(output_dir, subfolder="vae")`), `samples/` (training images above their
reconstructions), `checkpoints/` and `logs/`, as a DDPM run's. `hfddpm.training.train_autoencoder` builds the
`AutoencoderKL` and its loss, `AutoencoderLoss` (reconstruction + β·KL), and hands them to the same engine as
examples/train_unconditional.py, with its resume, fault handling and one-line errors.
"""

import sys

from hfddpm.training import run_command


def main(argv: list[str]) -> int:
    from hfddpm.training import AutoencoderConfig, train_autoencoder  # needs the [train] extra

    return train_autoencoder(AutoencoderConfig.from_command_line(argv, description=__doc__))


if __name__ == "__main__":
    sys.exit(run_command(lambda: main(sys.argv[1:])))
