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
    accelerate launch --config_file examples/accelerate_config.yaml examples/train_unconditional.py \
        --output_dir "$root/$name" --overwrite_output_dir --cpu_threads 2 "$@"
    echo "$name: trained in $((SECONDS - start)) s" | tee -a "$root/times.txt"
}

train simple
train hybrid --reverse_variance learned_range
train vlb --reverse_variance learned_range --loss_type vlb --timestep_sampling loss_second_moment

all_terms="--num_timesteps 1000"  # the exact sum over every t
hfddpm evaluate "$root/simple" $all_terms --output_dir "$root/simple/eval-fixed_small"
hfddpm evaluate "$root/simple" $all_terms --reverse_variance fixed_large --output_dir "$root/simple/eval-fixed_large"
hfddpm analytic-variance "$root/simple" --output_dir "$root/simple-analytic"  # Γ_t from 500 training digits
hfddpm evaluate "$root/simple-analytic" $all_terms --metrics bits_per_dim --output_dir "$root/simple-analytic/eval"
hfddpm evaluate "$root/hybrid" $all_terms --output_dir "$root/hybrid/eval"
hfddpm evaluate "$root/vlb" $all_terms --output_dir "$root/vlb/eval"

python benchmarks/plot_bound_terms.py docs/likelihood-terms.png \
    "L_simple, β̃=$root/simple/eval-fixed_small/evaluation.json" \
    "L_simple, β=$root/simple/eval-fixed_large/evaluation.json" \
    "L_simple, analytic=$root/simple-analytic/eval/evaluation.json" \
    "L_hybrid, learned_range=$root/hybrid/eval/evaluation.json" \
    "L_vlb, learned_range=$root/vlb/eval/evaluation.json"
python - "$root" <<'PY'  # the three models' final sample grids (DDIM, 50 steps, seed 0) side by side
import sys
import PIL.Image
import PIL.ImageOps
from hfddpm.visualize import labelled_grid
root = sys.argv[1]
grids = [PIL.Image.open(f"{root}/{name}/samples/final.png") for name in ("simple", "hybrid", "vlb")]
grids = [PIL.ImageOps.expand(g.resize((g.width // 2, g.height // 2)), border=(0, 0, 20, 0), fill="white") for g in grids]
labels = ["L_simple, fixed variance", "L_hybrid, learned_range", "L_vlb + importance sampling"]
labelled_grid([grids], labels).save("docs/likelihood-samples.png")
PY
