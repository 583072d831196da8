#!/usr/bin/env bash
# L_simple with a fixed variance against the hybrid loss with a learned variance, and the bound alone with importance
# sampling of t: three digits models trained alike (the default run's settings, 2000 steps), then the bound on the
# held-out split in bits/dim over all 1000 terms, and samples at 50 steps.
#
#     bash benchmarks/likelihood_digits.sh [OUTPUT_ROOT]      # default outputs/likelihood; about an hour on 2 CPU cores
set -euo pipefail
root=${1:-outputs/likelihood}
mkdir -p "$root"

train() {
    local name=$1 start=$SECONDS
    shift
    accelerate launch examples/train_unconditional.py --output_dir "$root/$name" --overwrite_output_dir "$@"
    echo "$name: trained in $((SECONDS - start)) s" | tee -a "$root/times.txt"
}

train simple
train hybrid --variance_type learned_range
train vlb --variance_type learned_range --loss_type vlb --timestep_sampling loss_second_moment

hfddpm evaluate "$root/simple" --output_dir "$root/simple/eval-fixed_small"
hfddpm evaluate "$root/simple" --reverse_variance fixed_large --output_dir "$root/simple/eval-fixed_large"
hfddpm evaluate "$root/hybrid" --output_dir "$root/hybrid/eval"
hfddpm evaluate "$root/vlb" --output_dir "$root/vlb/eval"
