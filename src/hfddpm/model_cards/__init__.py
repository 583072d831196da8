"""Model cards for hfddpm checkpoints: `template.md` (Jinja, as huggingface_hub's `ModelCard` renders it) filled
from what a training run leaves in its folder.

A training run writes `training_args.json` (the script's arguments, never the Hub token), `training_info.json`
(hardware, time, versions, final loss), `samples/final.png`, and, with `--eval_every`, `evaluation.json`.
`model_card` turns them into the README.md of a Hub repository: metadata the Hub indexes (library, pipeline tag,
tags, datasets, license, a model-index with the measured metrics), a usage snippet, the training configuration,
the sample grid and the evaluation numbers with how they were measured. A folder without some of these files
gets a card without those parts.

Strings from the folder's records (class names, paths, dataset names, the hardware) are data: in code the card writes
them as Python literals (`python_literal`), in its text as inert markdown text (`markdown_text`), so none of them
becomes code, HTML, a heading, a link or a table cell of its own.
"""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .. import durable
from ..idx_data import IDX_DATASETS
from ..pipelines.pipeline_hfddpm import DEFAULT_GUIDANCE_SCALE
from ..records import pipeline_fingerprint, read_record
from ..schedulers.gaussian_diffusion import LEARNED_VARIANCES

TEMPLATE = Path(__file__).parent / "template.md"
SAMPLE_GRID = "samples/final.png"
TAGS = ["diffusers", "diffusers:HFDDPMPipeline", "hfddpm", "ddpm", "unconditional-image-generation"]
# How each metric of `hfddpm evaluate` reads in a card.
METRIC_NAMES = {
    "bits_per_dim": "bits/dim (upper bound, held-out)",
    "bits_per_dim_continuous": "bits/dim (continuous-time upper bound, held-out)",
    "nll_ode": "bits/dim (probability-flow ODE, held-out)",
    "fd_digits": "Fréchet distance, digits-classifier features",
    "digits_class_coverage": "digit classes drawn (share ≥ 5 %)",
    "digits_confidence": "digits classifier's mean confidence",
    "fd_fashion": "Fréchet distance, Fashion-MNIST-classifier features",
    "fashion_class_coverage": "Fashion-MNIST classes drawn (share ≥ 5 %)",
    "fashion_confidence": "Fashion-MNIST classifier's mean confidence",
    "fid": "FID",
    "fd_dinov2": "FD_DINOv2",
    "psnr": "PSNR of the reconstructions (dB)",
}
AUTOENCODER_TAGS = ["diffusers", "hfddpm", "autoencoder", "latent-diffusion"]


INLINE_MARKUP = re.compile(r"[\\`*\[\]|]")  # escapes, code spans, emphasis, links, table cells
# A block marker where a line may begin: a heading, list item, rule, setext underline or fence ('>' and '<' are
# HTML-escaped); matched as the place a backslash goes, before the marker or after an ordered list item's digits.
BLOCK_MARKER = re.compile(r"^(?=[#+\-=_~])|^\d+(?=[.)](?:\s|$))")


def python_literal(value: object) -> str:
    """`value` as a Python literal that `ast.literal_eval` reads back as `value` — a string double-quoted, as ruff
    writes it (JSON's escapes are Python's) — without backticks or angle brackets (written `\\x60`, `\\x3c`,
    `\\x3e`), so it stays code in a markdown code span or block, and no HTML, wherever it is rendered."""
    literal = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
    return literal.replace("`", "\\x60").replace("<", "\\x3c").replace(">", "\\x3e")


def markdown_text(value: object) -> str:
    """`value` as markdown text that renders as itself, on one line: HTML-escaped, every run of whitespace (line
    breaks too) one space, markdown's inline markup and table-cell separator backslash-escaped, and no block marker
    at its start."""
    text = INLINE_MARKUP.sub(r"\\\g<0>", html.escape(" ".join(str(value).split()), quote=False))
    return BLOCK_MARKER.sub(r"\g<0>\\", text, count=1)


@dataclass
class TrainingData:
    description: str  # for the card's text
    hub_ids: list[str]  # for the `datasets` metadata: Hub datasets only
    eval_type: str  # the model-index's dataset type and name
    eval_name: str


def training_data(args: dict) -> TrainingData:
    if args.get("train_data_dir"):
        name = Path(args["train_data_dir"]).name
        return TrainingData(f"the images of a local folder ({name})", [], "imagefolder", name)
    name = args.get("dataset_name")
    if name in IDX_DATASETS:
        known = IDX_DATASETS[name]
        return TrainingData(known.description, [known.hub_id], known.hub_id, known.hub_id.split("/")[-1])
    if name in (None, "digits"):
        description = "the UCI handwritten digits (8×8, shipped with scikit-learn)"
        return TrainingData(description, [], "digits", "UCI handwritten digits")
    if os.path.isdir(name):
        return TrainingData(f"a local saved dataset ({Path(name).name})", [], "saved-dataset", Path(name).name)
    return TrainingData(f"the Hub dataset {name}", [name], name, name)


def _model_rows(
    args: dict, info: dict, unet: dict, scheduler: dict, vae: dict, lineage: dict, network_class: str = "UNet2DModel"
) -> list[tuple]:
    """The network (of class `network_class`) and its objective as (setting, value) rows: a diffusion model's, or an
    autoencoder's."""
    images = vae or unet
    rows = [
        ("data", f"{training_data(args).description}, split {args.get('split', 'train')}"),
        ("resolution", f"{images.get('sample_size')} px, {images.get('in_channels')} channel(s)"),
    ]
    if vae:
        factor = 2 ** (len(vae.get("block_out_channels", [])) - 1)
        latent = f"{vae.get('latent_channels')}×{vae.get('sample_size', 0) // factor}² latents"
        rows.append(("latent space", f"AutoencoderKL, {latent}, scaling factor {vae.get('scaling_factor', 0):.4f}"))
    if not unet:
        rows.append(("network", f"AutoencoderKL, {info.get('parameters', '?')} parameters"))
        loss = f"{args.get('reconstruction_loss', '?')} reconstruction + β KL, β = {args.get('kl_weight', '?')}"
        return [*rows, ("loss", loss)]
    learned = scheduler.get("reverse_variance") in LEARNED_VARIANCES
    loss = lineage.get("loss") or args.get("loss_type") or ("hybrid" if learned else "simple")
    preset = "the teacher's" if lineage else f"preset {args.get('model_preset', '?')}"
    network = f"{network_class}, {info.get('parameters', '?')} parameters"
    if "prior_objective" in args:  # an LSGM fine-tune (hfddpm.training.lsgm), which trains both networks
        prior = "L_simple" if args["prior_objective"] == "simple" else "the bound"
        loss, preset = f"LSGM: the bound for the autoencoder, {prior} for the UNet", f"fine-tuned from {args['model']}"
        network = f"UNet2DModel and AutoencoderKL, {info.get('parameters', '?')} parameters together"
    schedule = f"{scheduler.get('beta_schedule')}, T = {scheduler.get('num_train_timesteps')}"
    if continuous := args.get("continuous_time"):
        schedule = f"continuous time, {continuous}; sampled on its table of T = {scheduler.get('num_train_timesteps')}"
        loss = {"vlb": "the continuous-time bound (likelihood weighting)", "simple": "L_simple at t ~ U[0, 1]"}[loss]
        scheduler = {**scheduler, "reverse_variance": "fixed_small (DDPM's β̃ when sampled by DDPMScheduler)"}
    rows += [
        ("network", f"{network}, {preset}"),
        ("noise schedule", schedule),
        ("prediction", str(scheduler.get("prediction_type"))),
        ("reverse variance", str(scheduler.get("reverse_variance") or scheduler.get("variance_type"))),
        ("loss", loss + (f", min-SNR γ = {args['snr_gamma']}" if args.get("snr_gamma") else "")),
    ]
    if unet.get("num_class_embeds"):
        dropout = f", label dropout p = {args['class_dropout_prob']}" if args.get("class_dropout_prob") else ""
        rows.append(("class conditioning", f"{unet['num_class_embeds'] - 1} classes + 'no label'{dropout}"))
    return rows


def _training_rows(args: dict, info: dict) -> list[tuple[str, str]]:
    """The engine's configuration and the run's record as (setting, value) rows, from whatever the folder records."""
    rows = []
    if args:
        processes, accumulation = info.get("num_processes", 1), args.get("gradient_accumulation_steps", 1)
        batch = f"batch {args.get('train_batch_size')} × {processes} process(es) × {accumulation} accumulation"
        optimizer = (
            f"AdamW, learning rate {args.get('learning_rate')}, {args.get('lr_scheduler')} schedule with "
            f"{args.get('lr_warmup_steps')} warm-up steps"
        )
        ema = f"max decay {args.get('ema_max_decay')}; these are the EMA weights" if args.get("use_ema") else "no"
        rows += [
            ("optimizer steps", f"{info.get('global_step', args.get('max_train_steps'))}, {batch}"),
            ("optimizer", optimizer),
            ("EMA", ema),
            ("precision", info.get("mixed_precision") or args.get("mixed_precision") or "no"),
        ]
    if info:
        rows += [
            ("hardware", info["device"]),
            ("training time", f"{info['wall_time_seconds'] / 60:.1f} min"),
            *([("final loss", f"{info['final_loss']:.4f}")] if info.get("final_loss") is not None else []),
            ("software", ", ".join(f"{name} {version}" for name, version in info["versions"].items())),
        ]
    return rows


def _lineage_rows(lineage: dict, info: dict) -> list[tuple[str, str]]:
    """How a distilled student came to be, from its `distillation.json` (none for a model trained from data)."""
    if not lineage:
        return []
    rows = [("method", lineage["method"]), ("teacher", lineage["teacher"])]
    if "round" not in lineage:
        grid = f"{lineage.get('num_ddim_timesteps')} DDIM timesteps, target EMA μ = {lineage.get('target_ema_decay')}"
        return [*rows, ("skipping grid", grid)]
    steps = f"{lineage['round']} of {lineage.get('rounds')}: {lineage.get('teacher_steps')} → {lineage['steps']} steps"
    rows += [("distilled from", lineage["distilled_from"]), ("round", steps)]
    if info:
        total = lineage.get("earlier_rounds_seconds", 0.0) + info["wall_time_seconds"]
        rows.append(("distillation time, this round and the earlier ones", f"{total / 60:.1f} min"))
    return rows


def _evaluation_rows(evaluation: dict) -> list[tuple[str, str, str]]:
    """(metric, value, how it was measured) rows from an `evaluation.json`."""
    details, rows = evaluation.get("details", {}), []
    for name, value in evaluation.get("metrics", {}).items():
        if name == "bits_per_dim" and (bound := details.get("bits_per_dim")):
            how = (
                f"± {bound['standard_error']:.3f}; {bound['num_images']} {bound['split']} images, "
                f"{bound['num_timesteps']} terms each, reverse variance {bound['reverse_variance']}"
            )
        elif name in ("bits_per_dim_continuous", "nll_ode") and (result := details.get(name)):
            how = f"± {result['standard_error']:.3f}; {result['num_images']} {result['split']} images, " + (
                f"{result['num_probes']} dequantization(s) and Hutchinson probe(s) each"
                if name == "nll_ode"
                else f"{result['num_times']} strata of t each"
            )
        elif name == "psnr" and (psnr := details.get("psnr")):
            how = f"mean over {psnr['num_images']} {psnr['split']} images, {psnr['reconstructed']}"
        elif samples := details.get("samples"):
            how = f"{samples['num_samples']} samples ({samples['source']}) against {samples['reference']}"
        else:
            how = "see evaluation.json"
        rows.append((METRIC_NAMES.get(name, name), f"{value:.4f}", how))
    return rows


def model_card(
    folder: str | os.PathLike, repo_id: str, sample_grid_link: str = SAMPLE_GRID, model_name: str | None = None
) -> ModelCard:
    """The model card of the checkpoint in `folder`, for the Hub repository `repo_id`; its sample grid is linked as
    `sample_grid_link` (the grid's place in the folder, unless the card is kept elsewhere), and it is titled
    `model_name` (default: the repository's name)."""
    folder = Path(folder)
    args = read_record(folder / "training_args.json")
    info = read_record(folder / "training_info.json")
    evaluation = read_record(folder / "evaluation.json")
    # Numbers of other weights than the folder's (measured before a resume, or on a pipeline saved since) are left out.
    stale_evaluation = bool(evaluation) and evaluation.get("weights") != pipeline_fingerprint(folder)
    evaluation = {} if stale_evaluation else evaluation
    index = read_record(folder / "model_index.json")
    scheduler = read_record(folder / "scheduler" / "scheduler_config.json")
    unet = read_record(folder / "unet" / "config.json")
    vae = read_record(folder / "vae" / "config.json")
    autoencoder = bool(vae) and not unet
    data = training_data(args)
    embeds = unet.get("num_class_embeds") or 1  # K classes and "no label"
    classes = list((index.get("id2label") or {}).values()) or [str(i) for i in range(embeds - 1)]  # ids if unnamed
    model_name = model_name or repo_id.split("/")[-1]
    splits = {"bits_per_dim": evaluation.get("details", {}).get("bits_per_dim", {}).get("split")}
    eval_results = [
        EvalResult(
            task_type="image-to-image" if autoencoder else "unconditional-image-generation",
            dataset_type=data.eval_type,
            dataset_name=data.eval_name,
            dataset_split=splits.get(name) or args.get("split", "train"),
            metric_type=name,
            metric_name=METRIC_NAMES.get(name, name),
            metric_value=round(float(value), 6),
        )
        for name, value in evaluation.get("metrics", {}).items()
    ]
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag=None if autoencoder else "unconditional-image-generation",
        license="apache-2.0",
        tags=AUTOENCODER_TAGS if autoencoder else TAGS + (["class-conditional"] if classes else []),
        datasets=data.hub_ids or None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    scheduler_class = (index.get("scheduler") or [None, "scheduler"])[1]
    network_class = (index.get("unet") or [None, "UNet2DModel"])[1]
    lineage = read_record(folder / "distillation.json")
    steps = index.get("default_num_inference_steps")
    text = {  # the card's prose; None for a part it lacks
        "model_name": model_name,
        "scheduler_class": scheduler_class,
        "network_class": network_class,
        "stock_pipeline": index.get("_class_name", "DDPMPipeline"),
        "dataset_description": data.description,
        "distilled_from": lineage.get("teacher"),
        "native_steps": steps,
        "sample_grid_caption": f"{args.get('num_sample_images', 'Samples')} samples from this model, "
        f"{scheduler_class} with {args.get('num_inference_steps', 50)} steps, seed {args.get('seed', 0)}"
        + (f"; column k shows class k, guidance scale {DEFAULT_GUIDANCE_SCALE}." if classes else "."),
    }
    tables = {
        "training": _lineage_rows(lineage, info)
        + _model_rows(args, info, unet, scheduler, vae, lineage, network_class)
        + _training_rows(args, info),
        "evaluation": _evaluation_rows(evaluation),
    }
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        repo_literal=python_literal(repo_id),
        class_literals=[python_literal(name) for name in classes],
        steps_literal=python_literal(steps),
        classes=[markdown_text(name) for name in classes],
        **{name: value and markdown_text(value) for name, value in text.items()},
        **{name: [[markdown_text(cell) for cell in row] for row in rows] for name, rows in tables.items()},
        guidance_scale=DEFAULT_GUIDANCE_SCALE,
        steps_argument="" if steps else "num_inference_steps=50, ",
        sample_grid=sample_grid_link if (folder / SAMPLE_GRID).is_file() else None,
        stale_evaluation=stale_evaluation,
        autoencoder=autoencoder,
        latent=bool(vae) and bool(unet),
    )


def card_repo_id(folder: str | os.PathLike) -> str:
    """The repository a run's card names, as the run chose it: its `--hub_model_id`, else the folder's name."""
    return read_record(Path(folder) / "training_args.json").get("hub_model_id") or Path(folder).resolve().name


def is_hfddpm_card(path: str | os.PathLike) -> bool:
    """Whether `path` is a model card hfddpm wrote (its metadata has the 'hfddpm' tag), so hfddpm may rewrite it."""
    try:
        return "hfddpm" in (ModelCard(Path(path).read_text(encoding="utf-8")).data.tags or [])
    except Exception:  # no file, or not a card at all: the user's own README
        return False


def rewrite_model_card(folder: str | os.PathLike) -> bool:
    """Rewrite the card (README.md) of the run in `folder` from its records, atomically, when hfddpm wrote it; False
    (nothing written) when the folder has no card of hfddpm's."""
    card = Path(folder) / "README.md"
    if not is_hfddpm_card(card):
        return False
    durable.write_text(card, str(model_card(folder, card_repo_id(folder))))
    return True
