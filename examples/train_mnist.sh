#!/usr/bin/env bash
# The MNIST experiment: DDPM at 28×28 with DDPM's linear schedule (β from 1e-4 to 0.02, T = 1000), ε-prediction
# and L_simple, batch 128, 20 epochs of the 60 000 training images (9 380 steps), Adam at 2e-4 with EMA, the
# "mnist-28" UNet (6.5M parameters). The offline metrics of the data's shipped classifier (fd_fashion for
# Fashion-MNIST, fd_digits otherwise) are logged every 1000 steps.
#
#     bash examples/train_mnist.sh                                            # MNIST (IDX files, else the Hub)
#     bash examples/train_mnist.sh --dataset_name fashion_mnist               # Fashion-MNIST, offline with
#                                                                             #   apt-get install dataset-fashion-mnist
#     bash examples/train_mnist.sh --dataset_name fashion_mnist --model_preset mnist-28-cpu   # on 2 CPU cores
#
# Compute: 0.85 TFLOP per step of 128 images with "mnist-28" (forward and backward, torch.utils.flop_counter), 7.9
# PFLOP for the 9 380 steps; a GPU's time is that over the FLOP/s it sustains on this small network. On 2 CPU cores
# "mnist-28" trains 31 images/s (CPU-C of benchmarks/RESULTS.md: 11 hours for the recipe), "mnist-28-cpu" 158.
set -euo pipefail
cd "$(dirname "$0")/.."
accelerate launch --config_file examples/accelerate_config.yaml examples/train_unconditional.py \
    --dataset_name mnist --resolution 28 --channels 1 --model_preset mnist-28 \
    --beta_schedule linear --num_train_timesteps 1000 --prediction_type epsilon --reverse_variance fixed_small \
    --train_batch_size 128 --num_epochs 20 --learning_rate 2e-4 --lr_scheduler constant_with_warmup \
    --lr_warmup_steps 500 --ema_max_decay 0.9999 --eval_every 1000 --eval_num_samples 1000 \
    --checkpointing_steps 1000 --save_images_steps 1000 --output_dir outputs/ddpm-mnist "$@"
