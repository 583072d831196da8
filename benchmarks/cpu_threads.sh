#!/usr/bin/env bash
# Training images/s of the default digits run with --cpu_threads 1 and 2, alone and beside one busy process (another
# job on the machine), each 400 steps; the figure is the mean of the logged images/s after step 100.
#     bash benchmarks/cpu_threads.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
measure() {  # threads label
    python examples/train_unconditional.py --output_dir "$root/run-$1-$2" --cpu_threads "$1" --max_train_steps 400 \
        --save_images_steps 1000 --checkpointing_steps 1000 --report_to none > /dev/null 2>&1
    python - "$root/run-$1-$2/logs/train.jsonl" "$1" "$2" <<'PY'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
rates = [r["images_per_second"] for r in records if r.get("step", 0) > 100 and "images_per_second" in r]
print(f"--cpu_threads {sys.argv[2]}, {sys.argv[3]}: {sum(rates) / len(rates):.0f} images/s")
PY
}
for threads in 1 2; do measure "$threads" alone; done
python -c "while True: pass" &
busy=$!
trap 'kill $busy; rm -rf "$root"' EXIT
for threads in 1 2; do measure "$threads" "beside a busy process"; done
