#!/usr/bin/env bash
# Bound and exact likelihood of digits models trained in discrete and in continuous time (the default run's settings,
# 2000 steps each), then the table and the plot of their schedules:
#
#     bash benchmarks/continuous_study.sh [OUTPUT_ROOT]     # default outputs/continuous; about 2 hours on 2 CPU cores
#
# Each model, on the 297 held-out digits: the discrete bound (discrete-time models, 100 stratified terms), the
# continuous-time bound (100 strata of t) and −log p through the probability-flow ODE (one dequantization and one
# Hutchinson probe per image); fd_digits of 256 samples at 50 DDIM steps.
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
    [ -f "$root/eval/$name/evaluation.json" ] || hfddpm evaluate "$root/$name" --num_samples 256 \
        --metrics "$@" bits_per_dim_continuous nll_ode fd_digits --num_inference_steps 50 --output_dir "$root/eval/$name"
}
lane_a() {
    train simple
    train vlb --reverse_variance learned_range --loss_type vlb --timestep_sampling loss_second_moment
    train vdm-learned --continuous_time learned --loss_type vlb
    train vdm-learned-fourier --continuous_time learned --loss_type vlb --fourier_features
    train vlb-fourier --reverse_variance learned_range --loss_type vlb --timestep_sampling loss_second_moment \
        --fourier_features
    measure simple bits_per_dim
    measure vlb bits_per_dim
    measure vdm-learned
    measure vdm-learned-fourier
    measure vlb-fourier bits_per_dim
}
lane_b() {
    train hybrid --reverse_variance learned_range
    train vdm-fixed --continuous_time linear_logsnr --loss_type vlb
    train vp-likelihood --continuous_time vp --loss_type vlb --timestep_sampling importance
    train vdm-fixed-fourier --continuous_time linear_logsnr --loss_type vlb --fourier_features
    measure hybrid bits_per_dim
    measure vdm-fixed
    measure vp-likelihood
    measure vdm-fixed-fourier
}
lane_a &
lane_b &
wait
python benchmarks/continuous_study.py "$root"
