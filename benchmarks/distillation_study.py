"""Few-step generation: distilled students against the teacher's samplers at 1, 2, 4 and 8 network evaluations.

    accelerate launch --config_file examples/accelerate_config.yaml examples/train_unconditional.py  # the teacher
    accelerate launch --config_file examples/accelerate_config.yaml examples/distill_progressive.py \
        --teacher outputs/ddpm-digits  # steps-32 … steps-1
    accelerate launch --config_file examples/accelerate_config.yaml examples/distill_consistency.py \
        --teacher outputs/ddpm-digits
    python benchmarks/distillation_study.py outputs/ddpm-digits outputs/progressive-digits outputs/consistency-digits
    python benchmarks/distillation_study.py outputs/latent-fashion outputs/progressive-latent-fashion \
        outputs/consistency-latent-fashion --classifier fashion --reference_steps 50 --tag _latent_fashion

Every cell: 500 samples, image i from seed i (the same x_T for every sampler at a given step count), scored as in
the sampler study: the Fréchet distance in the shipped classifier's features (fd_digits against the 1500 training
digits; fd_fashion against the 10,000 Fashion-MNIST test images, with the floor of 500 training images), the classes
drawn (share of the ten with ≥ 5 % of the samples) and the classifier's mean confidence. A latent teacher's samplers
decode with its autoencoder. Rows: the progressive student of each round at its own step count; the consistency
student through `LCMScheduler`; the teacher with DDIM η = 0 on its "trailing" grid, stock
`DPMSolverMultistepScheduler` and stock `UniPCMultistepScheduler` (each on the "trailing" grid and on their default,
"linspace"); and the teacher's DDIM at `--reference_steps` as references. Writes distillation_study.json,
distillation_study.png (quality against network evaluations) and the 1- and 4-step students' grids into
--output_dir.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import diffusers
import torch
from sampler_study import plot

from hfddpm import DDIMScheduler, HFDDPMPipeline
from hfddpm.evaluation.classifiers import CLASSIFIERS, labelled_images
from hfddpm.evaluation.features import ClassifierFeatures
from hfddpm.evaluation.frechet import FeatureStatistics, frechet_distance
from hfddpm.evaluation.sample_quality import class_scores, generate_samples, reference_statistics
from hfddpm.training.teacher import stated_config
from hfddpm.visualize import sample_grid

EVALUATIONS = (1, 2, 4, 8)
NUM_SAMPLES = 500
REFERENCE_SPLIT = {"digits": "train", "fashion": "test"}


def teacher_samplers(teacher: HFDDPMPipeline) -> dict[str, HFDDPMPipeline]:
    """The teacher's network with DDIM η = 0 and two stock multistep solvers, as pipelines."""
    config = dict(teacher.scheduler.config)
    stock_config = {
        key: value for key, value in stated_config(config).items() if key not in DDIMScheduler.hfddpm_options
    }
    schedulers = {
        "teacher DDIM η=0 (trailing)": DDIMScheduler.from_config(config, timestep_spacing="trailing"),
    }
    for name, solver in (
        ("DPM-Solver++(2M)", diffusers.DPMSolverMultistepScheduler),
        ("UniPC", diffusers.UniPCMultistepScheduler),
    ):
        for spacing in ("trailing", "linspace"):
            schedulers[f"stock {name}, {spacing}"] = solver.from_config(stock_config, timestep_spacing=spacing)
    return {
        name: HFDDPMPipeline(unet=teacher.unet, scheduler=scheduler, vae=teacher.vae)
        for name, scheduler in schedulers.items()
    }


def score(
    pipeline: HFDDPMPipeline, steps: int, extractor: ClassifierFeatures, reference: FeatureStatistics, classifier: str
) -> dict:
    """The classifier's Fréchet distance, classes drawn and confidence of `NUM_SAMPLES` samples at `steps` steps."""
    start = time.perf_counter()
    images = generate_samples(pipeline, NUM_SAMPLES, batch_size=500, num_inference_steps=steps, progress_bar=False)
    if not torch.isfinite(images).all():
        return {"fd": float("nan"), "nfe": steps}
    scores = class_scores(extractor.probabilities(images), classifier)
    return {
        "fd": frechet_distance(FeatureStatistics.of(extractor(images)), reference),
        "classes": scores[f"{classifier}_class_coverage"],
        "confidence": scores[f"{classifier}_confidence"],
        "nfe": steps,
        "seconds": round(time.perf_counter() - start, 2),
    }


def study(
    teacher_path: str, progressive: str, consistency: str, output: Path, tag: str, classifier: str, reference_steps
) -> dict:
    extractor = ClassifierFeatures(classifier)
    dataset, size, _ = CLASSIFIERS[classifier]
    reference = reference_statistics(extractor, dataset, REFERENCE_SPLIT[classifier], size, 1)
    teacher = HFDDPMPipeline.from_pretrained(teacher_path)
    rows: dict[str, list[tuple[int, HFDDPMPipeline]]] = {
        "progressive student": [
            (n, HFDDPMPipeline.from_pretrained(Path(progressive) / f"steps-{n}")) for n in EVALUATIONS
        ],
        "consistency student (LCMScheduler)": [(n, HFDDPMPipeline.from_pretrained(consistency)) for n in EVALUATIONS],
    }
    for name, pipeline in teacher_samplers(teacher).items():
        rows[name] = [(n, pipeline) for n in EVALUATIONS]
    rows["teacher DDIM η=0 (trailing)"] += [(n, rows["teacher DDIM η=0 (trailing)"][0][1]) for n in reference_steps]
    # The yardstick: stock DPM-Solver++ at 10 steps, the sampler study's best at 10.
    rows["stock DPM-Solver++(2M), linspace"].append((10, rows["stock DPM-Solver++(2M), linspace"][0][1]))
    results: dict[str, dict[int, dict]] = {}
    if REFERENCE_SPLIT[classifier] == "test":  # the floor: as many real training images against the same reference
        real = labelled_images(dataset, "train")[0][:NUM_SAMPLES]
        results["real training images"] = {
            NUM_SAMPLES: {"fd": frechet_distance(FeatureStatistics.of(extractor(real)), reference)}
        }
    for name, cells in rows.items():
        for steps, pipeline in cells:
            results.setdefault(name, {})[steps] = cell = score(pipeline, steps, extractor, reference, classifier)
            print(
                f"{name:40s} {steps:5d}  fd {cell['fd']:.3f}  classes {cell.get('classes', float('nan')):.1f}  "
                f"confidence {cell.get('confidence', float('nan')):.3f}",
                flush=True,
            )
            (output / f"distillation_study{tag}.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return results


def student_grids(progressive: str, consistency: str, output: Path, tag: str) -> None:
    """8×8 grids (seeds 0–63) of the progressive and consistency students at 1 and 4 steps."""
    for label, folder, steps in (
        ("progressive", Path(progressive) / "steps-1", 1),
        ("progressive", Path(progressive) / "steps-4", 4),
        ("consistency", Path(consistency), 1),
        ("consistency", Path(consistency), 4),
    ):
        pipeline = HFDDPMPipeline.from_pretrained(folder)
        generators = [torch.Generator().manual_seed(i) for i in range(64)]
        images = pipeline(batch_size=64, generator=generators, num_inference_steps=steps).images
        sample_grid(images, cell_size=32).save(output / f"distilled_{label}_{steps}step{tag}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", nargs="?", default="outputs/ddpm-digits")
    parser.add_argument("progressive", nargs="?", default="outputs/progressive-digits")
    parser.add_argument("consistency", nargs="?", default="outputs/consistency-digits")
    parser.add_argument("--output_dir", default="benchmarks")
    parser.add_argument("--tag", default="", help="suffix of the files written, e.g. _v for a v-prediction teacher")
    parser.add_argument("--classifier", choices=list(CLASSIFIERS), default="digits", help="whose features score")
    parser.add_argument("--reference_steps", type=int, nargs="*", default=[50, 1000], help="the teacher's DDIM")
    args = parser.parse_args()
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    results = study(
        args.teacher, args.progressive, args.consistency, output, args.tag, args.classifier, args.reference_steps
    )
    plot(
        {
            name: {n: cell for n, cell in cells.items() if n <= 8}
            for name, cells in results.items()
            if "real" not in name
        },
        output / f"distillation_study{args.tag}.png",
        f"fd_{args.classifier} (lower is better)",
        f"Few-step generation on {args.teacher}",
    )
    student_grids(args.progressive, args.consistency, output, args.tag)
    print(f"written to {output / f'distillation_study{args.tag}.json'}")


if __name__ == "__main__":
    main()
