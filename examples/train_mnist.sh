#!/usr/bin/env bash
# The MNIST experiment: DDPM at 28×28 with DDPM's linear schedule (β from 1e-4 to 0.02, T = 1000), ε-prediction
# and L_simple, batch 128, 20 epochs of the 60 000 training digits (9 380 steps), Adam at 2e-4 with EMA, the
# "mnist-28" UNet (6.5M parameters). The offline digits metrics are logged every 1000 steps.
#
#     bash examples/train_mnist.sh                                   # MNIST from the Hub (ylecun/mnist)
#     bash examples/train_mnist.sh --dataset_name path/to/mnist      # a local save_to_disk copy
#
# Compute: 0.85 TFLOP per step of 128 images (forward and backward, counted with torch.utils.flop_counter), 7.9 PFLOP
# for the 9 380 steps; a GPU's time is that over the FLOP/s it sustains on this small network. On 2 CPU cores
# (AVX2, CPU-B of benchmarks/RESULTS.md) a step took 25–42 s: 3 to 5 days.
set -euo pipefail
cd "$(dirname "$0")/.."
accelerate launch --config_file examples/accelerate_config.yaml examples/train_unconditional.py \
    --dataset_name ylecun/mnist --resolution 28 --channels 1 --model_preset mnist-28 \
    --beta_schedule linear --num_train_timesteps 1000 --prediction_type epsilon --reverse_variance fixed_small \
    --train_batch_size 128 --num_epochs 20 --learning_rate 2e-4 --lr_scheduler constant_with_warmup \
    --lr_warmup_steps 500 --ema_max_decay 0.9999 \
    --eval_every 1000 --eval_metrics fd_digits digits_scores --eval_num_samples 1000 \
    --checkpointing_steps 1000 --save_images_steps 1000 --output_dir outputs/ddpm-mnist "$@"
