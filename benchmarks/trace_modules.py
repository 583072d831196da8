"""Which of hfddpm's modules a training step and a sampling call run code in, counted with a profile hook.

    python benchmarks/trace_modules.py
    PYTHONPATH=/path/to/other/checkout/src python benchmarks/trace_modules.py   # another version, same count

A training step: the default training script (tiny UNet, batch 8) run for 1 step, then for 3 and for 6 steps, with
every periodic save off (the examples/ beside the imported hfddpm); a module whose call count grows with the steps
runs in every step (the data loader's `image_data` included). A sampling call: `HFDDPMPipeline` with hfddpm's DDIM
and DDPM schedulers, 5 steps.
"""

import collections
import runpy
import sys
import tempfile
from pathlib import Path

import torch


def module_calls(run) -> collections.Counter:
    """Calls of functions defined in hfddpm's modules while `run()` runs, per module."""
    counts = collections.Counter()

    def hook(frame, event, arg):
        module = frame.f_globals.get("__name__", "")
        if event == "call" and module.startswith("hfddpm"):
            counts[module] += 1

    sys.setprofile(hook)
    try:
        run()
    finally:
        sys.setprofile(None)
    return counts


def training_run(steps: int, output_dir: str):
    import hfddpm  # the examples of the checkout that holds the imported hfddpm

    script = Path(hfddpm.__file__).parents[2] / "examples" / "train_unconditional.py"

    def run():
        sys.argv = [str(script), "--max_train_steps", str(steps), "--output_dir", output_dir]
        sys.argv += ["--model_preset", "tiny", "--train_batch_size", "8", "--logging_steps", "100000"]
        sys.argv += ["--checkpointing_steps", "100000", "--save_images_steps", "100000"]
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exit:
            assert not exit.code, exit.code

    return run


def main() -> None:
    from hfddpm import DDIMScheduler, DDPMScheduler, HFDDPMPipeline, create_unet

    with tempfile.TemporaryDirectory() as folder:
        training_run(1, f"{folder}/warm-up")()  # imports and first calls out of the count
        short, long = (module_calls(training_run(n, f"{folder}/run{n}")) for n in (3, 6))
    per_step = sorted(module for module in long if long[module] > short[module])
    print(f"training step: {len(per_step)} modules: {', '.join(per_step)}")
    for scheduler in (DDIMScheduler(), DDPMScheduler()):
        pipe = HFDDPMPipeline(create_unet("tiny", in_channels=1, sample_size=8), scheduler)
        pipe.set_progress_bar_config(disable=True)
        called = sorted(module_calls(lambda pipe=pipe: pipe(batch_size=2, num_inference_steps=5)))
        print(f"sampling call, {type(scheduler).__name__}: {len(called)} modules: {', '.join(called)}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
