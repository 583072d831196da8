"""The training engine: one loop, with Accelerate, for every objective.

`Trainer(config, accelerator, objective, model, images).run()` trains `model` on `images` to minimise `objective`
(`hfddpm.training.objectives`) and leaves a pipeline folder. The loop (`train_epochs`), in the order diffusers'
training examples follow:

1. for each batch, the objective's loss and its backward pass, inside `accelerator.accumulate`;
2. every `gradient_accumulation_steps` batches, gradient clipping, then one check across processes
   (`faults.check_step`): a NaN or Inf loss or gradient stops the run or skips the update before the optimizer, EMA
   or learning-rate schedule move; a SIGTERM/SIGINT is honoured after the step, with a checkpoint;
3. the optimizer step, after which weights that are no longer finite stop the run before anything saves them; the
   learning-rate schedule and EMA step, then the objective's `after_update`;
4. a log line every `logging_steps`, then the periodic work: checkpoint, sample grid, evaluation, pipeline save.

At the end the data-parallel replicas are checked identical, and the EMA pipeline, its sample grid, evaluation,
`training_info.json` and model card are written, then published. Resume restores the model, optimizer, EMA,
schedule, random generators, the objective's own state and the position in the data: a resumed run is
bit-identical on CPU.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .. import durable
from ..arguments import first_line
from ..hub import HubError
from ..model_cards import card_repo_id, model_card
from ..pipelines import HFDDPMPipeline
from .artefacts import (
    check_eval_metrics,
    evaluate_during_training,
    publish,
    push,
    record_arguments,
    save_pipeline,
    save_sample_grid,
    training_info,
)
from .checkpoints import CheckpointManager, RunState
from .config import RunConfig
from .faults import NonFiniteLossError, RunInterrupted, StepCheck, StopRequest, check_step, weights_are_finite
from .objectives import LossOutput, Objective
from .output_folder import replace_earlier_runs


class Trainer:
    """Train `model` on `images` (a dataset with `set_epoch` and `fingerprint`) to minimise `objective`, as `config`
    says, with the `accelerator` that `setup.create_accelerator(config, ...)` makes. With --overwrite_output_dir, the
    earlier runs in `replaces` (default: the output folder) are deleted when `run` starts: after everything it needs
    was built and checked."""

    def __init__(
        self,
        config: RunConfig,
        accelerator: Accelerator,
        objective: Objective,
        model: torch.nn.Module,
        images: torch.utils.data.Dataset,
        replaces: list[Path] | None = None,
        records: dict[str, dict] | None = None,
    ) -> None:
        self.config, self.accelerator, self.objective, self.images = config, accelerator, objective, images
        self.output_dir = Path(config.output_dir)
        self.replaces = [self.output_dir] if replaces is None else replaces
        self.records = records or {}  # the run's own records besides its arguments, e.g. a student's lineage
        # What a resume must match (`checkpoints.check_same_run`): the options, the data, the objective's own.
        self.identity = {**config.run_identity(), "data": images.fingerprint(), **getattr(objective, "identity", {})}
        check_eval_metrics(config, accelerator.device)
        self.started = time.perf_counter()  # training time counts from here: set-up before the engine is not in it
        dataloader = torch.utils.data.DataLoader(
            images, batch_size=config.train_batch_size, shuffle=True, num_workers=config.dataloader_num_workers
        )
        optimizer = torch.optim.AdamW(  # fused into one kernel on CPU and CUDA, instead of a loop over parameters
            model.parameters(),
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay,
            eps=config.adam_epsilon,
            fused=accelerator.device.type in ("cpu", "cuda"),
        )
        self.ema = None
        if config.use_ema:  # diffusers' EMA with its warm-up: decay min(1 − (1 + step/γ)^−p, max decay)
            ema_options = {"inv_gamma": config.ema_inv_gamma, "power": config.ema_power, "foreach": True}
            self.ema = EMAModel(model.parameters(), decay=config.ema_max_decay, use_ema_warmup=True, **ema_options)
            self.ema.to(accelerator.device)
        self.model, self.optimizer, self.dataloader = accelerator.prepare(model, optimizer, dataloader)
        # The schedule counts optimizer steps, however many batches each accumulates.
        steps_per_epoch = math.ceil(len(self.dataloader) / config.gradient_accumulation_steps)
        self.max_train_steps = config.max_train_steps or config.num_epochs * steps_per_epoch
        self.num_epochs = math.ceil(self.max_train_steps / steps_per_epoch)
        self.lr_scheduler = get_scheduler(
            config.lr_scheduler,
            self.optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=self.max_train_steps,
        )
        # The randomness of each step (t, ε, label dropout): per process, so replicas draw different noise.
        self.generator = torch.Generator(accelerator.device).manual_seed(config.seed + accelerator.process_index)
        self.checkpoints = CheckpointManager(self.output_dir / "checkpoints", config.checkpoints_total_limit)
        self.checkpointed = {"lr_scheduler": self.lr_scheduler, "objective": objective}
        self.checkpointed.update({"ema": self.ema} if self.ema is not None else {})
        self.state, self.last_checkpoint_step, self.intermediate_pushes = RunState(), 0, []
        self.step_loss = torch.zeros((), device=accelerator.device)  # the loss of this step's accumulated batches
        self.final_loss: float | None = None  # the last logged loss
        self.grad_norm: torch.Tensor | None = None  # of the last optimizer step
        self.last_output: LossOutput | None = None  # of the last batch
        self.progress: tqdm | None = None  # while `run` trains

    def run(self) -> int:
        """Resume if asked, train to the last step, save the final artefacts and publish; the exit status (0, or 1
        when a push failed). Faults raise (see `hfddpm.training.faults`)."""
        replace_earlier_runs(self.config, self.accelerator, self.replaces)
        self.resume()
        accelerator = self.accelerator
        if accelerator.is_main_process:
            record_arguments(self.config, self.output_dir, self.records)
        accelerator.init_trackers("train", config=self.config.tracker_config())
        accelerator.print(
            f"{len(self.images)} images, {accelerator.num_processes} process(es) × batch "
            f"{self.config.train_batch_size} × {self.config.gradient_accumulation_steps} accumulation; "
            f"{self.max_train_steps} steps"
        )
        self.progress = tqdm(
            total=self.max_train_steps, initial=self.state.global_step, disable=not accelerator.is_local_main_process
        )
        self.model.train()
        self.reset_running_loss()  # images/s counts training, not the set-up and resume before it
        try:
            with StopRequest() as stop_request:
                self.train_epochs(stop_request)
            self.progress.close()
            self.finish()
        finally:
            self.progress.close()
            for tracker in accelerator.trackers:  # not `end_training`: that also ends the process group, which
                tracker.finish()  # another run in this process (a distillation round) still needs
        return publish(self.config, self.output_dir, self.intermediate_pushes) if accelerator.is_main_process else 0

    def train_epochs(self, stop_request: StopRequest) -> None:
        """Train from the current position to `max_train_steps`, or until a signal stops the run."""
        state = self.state
        if state.global_step >= self.max_train_steps:  # resumed from a checkpoint at the last step
            return
        for epoch in range(state.epoch, self.num_epochs):
            state.epoch = epoch
            self.dataloader.set_epoch(epoch)
            self.images.set_epoch(epoch)
            skipped = state.batches_in_epoch
            for batch in self.accelerator.skip_first_batches(self.dataloader, skipped) if skipped else self.dataloader:
                state.batches_in_epoch += 1
                with self.accelerator.accumulate(self.model):
                    output = self.objective(self.model, batch, self.generator)
                    self.step_loss += output.loss.detach()
                    self.accelerator.backward(output.loss)
                    check = self.optimizer_step(stop_request) if self.accelerator.sync_gradients else None
                self.observe(output)
                if check is None:  # more batches to accumulate before the optimizer steps
                    continue
                self.end_optimizer_step(check)
                if state.global_step >= self.max_train_steps:
                    return
                if check.stop_signal is not None:
                    self.stop(check.stop_signal)
            state.batches_in_epoch = 0

    def optimizer_step(self, stop_request: StopRequest) -> StepCheck:
        """Clip the gradient, check the step on every process, and update the weights only if it is finite."""
        self.grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        check = check_step(self.accelerator, self.step_loss, self.grad_norm, stop_request)
        if check.fault is None:
            self.optimizer.step()
            if not weights_are_finite(self.model):
                # The update, from a finite loss, is made and cannot be skipped (the next would overflow as well):
                # stop before the EMA, a checkpoint or a pipeline save takes it. Replicas stop together.
                raise NonFiniteLossError(
                    f"step {self.state.global_step + 1}: the update made the weights non-finite; the run stopped "
                    f"before saving them, and {self.last_checkpoint()}: lower --learning_rate, then resume with "
                    "--resume_from_checkpoint latest"
                )
        elif self.accelerator.scaler is not None:
            self.accelerator.scaler.update()  # closes clip_grad_norm_'s unscale_ without a step
        self.optimizer.zero_grad(set_to_none=True)
        self.step_loss.zero_()
        return check

    def observe(self, output: LossOutput) -> None:
        """After every batch: the objective learns from its losses (when it does), and the running loss grows."""
        if hasattr(self.objective, "observe"):
            self.objective.observe(self.accelerator, output)
        self.running_loss += output.loss.detach()
        self.running_count += 1
        self.last_output = output

    def end_optimizer_step(self, check: StepCheck) -> None:
        """Move the schedule and EMA after an update (or count the skipped one), then log and do the periodic work."""
        state = self.state
        if check.fault is not None:
            self.handle_nonfinite_step(check.fault)
        elif self.accelerator.optimizer_step_was_skipped:
            state.skipped_steps += 1  # fp16 overflow: the grad scaler skipped this update
        else:
            self.lr_scheduler.step()
            if self.ema is not None:
                self.ema.step(self.model.parameters())
            if hasattr(self.objective, "after_update"):
                self.objective.after_update(self.accelerator.unwrap_model(self.model))
        state.global_step += 1
        self.progress.update(1)
        if state.global_step % self.config.logging_steps == 0 or state.global_step == self.max_train_steps:
            self.log()
        self.periodic_work()

    def handle_nonfinite_step(self, fault: str) -> None:
        """Stop the run on a NaN or Inf step (--on_nonfinite_loss stop), or warn that its update was skipped."""
        self.state.nonfinite_steps += 1
        message = f"step {self.state.global_step + 1}: {fault}"
        if self.config.on_nonfinite_loss == "stop":
            raise NonFiniteLossError(
                f"{message}; the run stopped without updating the weights, and {self.last_checkpoint()}: lower "
                "--learning_rate or --max_grad_norm, or pass --on_nonfinite_loss skip, then resume with "
                "--resume_from_checkpoint latest"
            )
        if self.accelerator.is_main_process:
            warning = f"warning: {message}; its update was skipped (--on_nonfinite_loss skip)"
            self.progress.write(warning, file=sys.stderr)  # on a line of its own, not after the bar

    # Checkpoints and resume

    def resume(self) -> None:
        """Restore the checkpoint `--resume_from_checkpoint` names ("latest": a fresh start when there is none)."""
        spec = self.config.resume_from_checkpoint
        if spec == "latest" and self.checkpoints.latest() is None:
            if (self.output_dir / "model_index.json").is_file():
                raise FileNotFoundError(
                    f"--resume_from_checkpoint latest: {self.output_dir} holds a finished run without checkpoints; "
                    "pass --overwrite_output_dir to train it again, or another --output_dir"
                )
            self.accelerator.print(f"No checkpoint in {self.checkpoints.folder} yet: starting a new run")
        elif spec:
            path = self.checkpoints.resolve(spec)
            record = self.checkpoints.load(self.accelerator, path, self.checkpointed, self.generator, self.identity)
            self.state = RunState.from_record(record)
            self.last_checkpoint_step = self.state.global_step
            self.accelerator.print(f"Resuming from {path} at step {self.state.global_step}")

    def save_checkpoint(self) -> None:
        record = self.state.record(len(self.dataloader), self.wall_time())
        objects, generator = self.checkpointed, self.generator
        self.checkpoints.save(self.accelerator, self.state.global_step, record, objects, generator, self.identity)
        self.last_checkpoint_step = self.state.global_step

    def last_checkpoint(self) -> str:
        """Which checkpoint a resume would start from, for an error line."""
        kept = self.checkpoints.latest()
        return f"{kept.name} is its last checkpoint" if kept else "it has no checkpoint yet"

    def stop(self, signum: int) -> None:
        """Save a checkpoint of the step reached (unless one was just saved) and end the run with 128 + signum."""
        step = self.state.global_step
        if self.last_checkpoint_step != step:
            self.save_checkpoint()
        raise RunInterrupted(
            f"{signal.Signals(signum).name}: stopped at step {step} and saved checkpoint-{step}; continue with "
            "--resume_from_checkpoint latest",
            signum,
        )

    def wall_time(self) -> float:
        """Seconds of training in this run, earlier segments (before a resume) included."""
        return self.state.wall_time_seconds + time.perf_counter() - self.started

    # Logs and periodic work

    def reset_running_loss(self) -> None:
        self.running_loss, self.running_count, self.running_since = 0.0, 0, time.perf_counter()

    def log(self) -> None:
        """Log the mean loss since the last log (over every process), the schedule, counters and throughput."""
        accelerator, state = self.accelerator, self.state
        self.final_loss = accelerator.gather(self.running_loss.reshape(1) / self.running_count).mean().item()
        logs = {"loss": self.final_loss, "lr": self.lr_scheduler.get_last_lr()[0], "grad_norm": float(self.grad_norm)}
        logs.update(
            {name: accelerator.gather(value).double().mean().item() for name, value in self.last_output.logs.items()}
        )
        if self.ema is not None:
            logs["ema_decay"] = self.ema.cur_decay_value or 0.0
        logs.update(skipped_steps=state.skipped_steps, nonfinite_steps=state.nonfinite_steps)
        images_seen = self.running_count * self.config.train_batch_size * accelerator.num_processes
        logs["images_per_second"] = images_seen / (time.perf_counter() - self.running_since)
        accelerator.log(logs, step=state.global_step)
        self.progress.set_postfix(loss=f"{self.final_loss:.4f}", lr=f"{logs['lr']:.2e}")
        self.reset_running_loss()

    def periodic_work(self) -> None:
        """Checkpoint (every process), then on the main process: sample grid, evaluation, pipeline save and push."""
        config, step = self.config, self.state.global_step
        if step % config.checkpointing_steps == 0 and step < self.max_train_steps:
            self.save_checkpoint()
        if not self.accelerator.is_main_process:
            return
        if step % config.save_images_steps == 0:
            self.save_grid(self.output_dir / "samples" / f"step_{step:07d}.png", self.inference_pipeline())
        if config.eval_every and step % config.eval_every == 0:
            self.evaluate(self.inference_pipeline())
        if config.save_model_steps and step % config.save_model_steps == 0:
            save_pipeline(self.inference_pipeline(), self.output_dir)
            if config.hub_push_intermediate:
                self.push_intermediate(step)

    def push_intermediate(self, step: int) -> None:
        """Start pushing the pipeline saved at `step` in the background; one that fails, even before it starts, is a
        warning, and training goes on."""
        try:
            self.intermediate_pushes.append(
                push(self.config, self.output_dir, f"Pipeline at step {step}", run_as_future=True)
            )
        except HubError as error:
            tqdm.write(f"warning: the push at step {step} failed: {first_line(error)}", file=sys.stderr)

    def inference_pipeline(self) -> HFDDPMPipeline:
        """The objective's pipeline around the EMA weights (the trained ones without EMA), progress bar off."""
        unet = self.accelerator.unwrap_model(self.model)
        if self.ema is not None:  # a copy of the model's class and config holding the EMA weights, in float32
            averaged = type(unet).from_config(unet.config).to(unet.device).eval()
            self.ema.copy_to(averaged.parameters())
            unet = averaged
        pipeline = self.objective.pipeline(unet)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def save_grid(self, path: Path, pipeline: HFDDPMPipeline) -> None:
        grid = getattr(self.objective, "save_grid", save_sample_grid)(pipeline, path, self.config)
        if any(tracker.name == "tensorboard" for tracker in self.accelerator.trackers):
            writer = self.accelerator.get_tracker("tensorboard").writer
            writer.add_image("samples", np.asarray(grid.convert("RGB")), self.state.global_step, dataformats="HWC")

    def evaluate(self, pipeline: HFDDPMPipeline) -> Any:
        report = evaluate_during_training(self.config, pipeline, self.accelerator.device)
        self.accelerator.log({f"eval/{name}": value for name, value in report.metrics.items()}, self.state.global_step)
        return report

    def finish(self) -> None:
        """Check the replicas agree, then save the EMA pipeline, its grid, evaluation, records and model card."""
        accelerator, state = self.accelerator, self.state
        with torch.no_grad():  # Σ of every parameter in float64: equal on replicas that hold the same weights
            checksum = sum(p.detach().double().sum() for p in self.model.parameters()).reshape(1)
        checksums = accelerator.gather(checksum.to(accelerator.device))
        if (checksums != checksums[0]).any():
            raise RuntimeError(f"data-parallel replicas diverged: parameter checksums {checksums.tolist()}")
        accelerator.log(
            {"replica_checksum": checksums[0].item(), "num_processes": accelerator.num_processes}, state.global_step
        )
        if state.skipped_steps:
            accelerator.print(f"The fp16 grad scaler skipped {state.skipped_steps} of {state.global_step} updates")
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return
        pipeline = self.inference_pipeline()
        save_pipeline(pipeline, self.output_dir)
        self.save_grid(self.output_dir / "samples" / "final.png", pipeline)
        if self.config.eval_every:
            durable.write_text(self.output_dir / "evaluation.json", self.evaluate(pipeline).to_json())
        steps = {name: getattr(state, name) for name in ("global_step", "skipped_steps", "nonfinite_steps")}
        info = training_info(
            accelerator, self.model, wall_time_seconds=round(self.wall_time(), 1), final_loss=self.final_loss, **steps
        )
        durable.write_text(self.output_dir / "training_info.json", json.dumps(info, indent=2))
        card = model_card(self.output_dir, card_repo_id(self.output_dir))  # --hub_model_id, else the folder name
        durable.write_text(self.output_dir / "README.md", str(card))
        accelerator.print(
            f"Saved the pipeline and its model card to {self.output_dir}, samples to "
            f"{self.output_dir / 'samples' / 'final.png'}"
        )
