#!/usr/bin/env bash
# Bound and exact likelihood of digits models trained in discrete and in continuous time (the default run's settings,
# 2000 steps each), then the table and the plot of their schedules:
#
#     bash benchmarks/continuous_study.sh [OUTPUT_ROOT]     # default outputs/continuous; about an hour on 2 CPU cores
#
# Each model: the discrete bound (discrete-time models, 100 stratified terms), the continuous-time bound (100 strata of
# t), both on the 297 held-out digits; −log p through the probability-flow ODE on the first 100 of them (one
# dequantization and one Hutchinson probe each); fd_digits of 256 samples at 50 DDIM steps.
set -euo pipefail
root=${1:-outputs/continuous}
export OMP_NUM_THREADS=1
mkdir -p "$root"

train() {
    local name=$1
    shift
    [ -f "$root/$name/model_index.json" ] || python examples/train_unconditional.py --output_dir "$root/$name" \
        --overwrite_output_dir --cpu_threads 1 --report_to none "$@"
}
measure() {
    local name=$1
    shift
    hfddpm evaluate "$root/$name" --metrics "$@" bits_per_dim_continuous fd_digits --num_samples 256 \
        --num_inference_steps 50 --output_dir "$root/eval/$name-bounds"
    hfddpm evaluate "$root/$name" --metrics nll_ode --max_images 100 --output_dir "$root/eval/$name-ode"
}
lane_a() {
    train simple
    train vlb --reverse_variance learned_range --loss_type vlb --timestep_sampling loss_second_moment
    train vdm-learned --continuous_time learned --loss_type vlb
    measure simple bits_per_dim
    measure vlb bits_per_dim
    measure vdm-learned
}
lane_b() {
    train hybrid --reverse_variance learned_range
    train vdm-fixed --continuous_time linear_logsnr --loss_type vlb
    train vp-likelihood --continuous_time vp --loss_type vlb --timestep_sampling importance
    measure hybrid bits_per_dim
    measure vdm-fixed
    measure vp-likelihood
}
lane_a &
lane_b &
wait
python benchmarks/continuous_study.py "$root"
