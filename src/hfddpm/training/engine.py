"""The training engine: one loop, with Accelerate, for every objective.

`Trainer(config, accelerator, objective, model, images).run()` trains `model` on `images` to minimise `objective`
(`hfddpm.training.objectives`) and leaves a pipeline folder. Each optimizer step, in the order diffusers' training
examples follow:

1. forward and backward passes of `gradient_accumulation_steps` batches (`train_on_batch`, inside
   `accelerator.accumulate`);
2. gradient clipping, then one check across processes (`guards.check_step`): a NaN or Inf loss or gradient stops
   the run or skips the update before the optimizer, EMA or learning-rate schedule move; a SIGTERM/SIGINT is
   honoured after the step, with a checkpoint;
3. the optimizer step, after which weights that are no longer finite stop the run before anything saves them; the
   learning-rate schedule and EMA step, then the objective's `after_update`;
4. a log line every `logging_steps`, then the periodic work: checkpoint, sample grid, evaluation, pipeline save
   (and push).

At the end the data-parallel replicas are checked identical, and the EMA pipeline, its sample grid, evaluation,
`training_info.json` and model card are written. Resume restores the model, optimizer, EMA, schedule, random
generators, the objective's own state and the position in the data, so a resumed run is bit-identical on CPU.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from .. import durable
from ..pipelines import HFDDPMPipeline
from .artefacts import (
    evaluate_during_training,
    model_card_text,
    publish,
    push_in_background,
    record_arguments,
    save_pipeline,
    save_sample_grid,
    training_info,
)
from .checkpoints import CheckpointManager
from .config import TrainingConfig
from .guards import NonFiniteLossError, RunInterrupted, StepCheck, StopRequest, check_step, weights_are_finite
from .loop import TrainingRandomness, averaged_copy, replica_checksum
from .losses import LossOutput
from .objectives import Objective
from .setup import create_ema, create_optimizer
from .state import RunState

if TYPE_CHECKING:
    from ..evaluation import EvaluationReport


class Trainer:
    """Train `model` on `images` (a dataset with `set_epoch`) to minimise `objective`, as `config` says.

    `accelerator` is the one `setup.create_accelerator(config, ...)` makes: its accumulation must be the config's.
    """

    def __init__(
        self,
        config: TrainingConfig,
        accelerator: Accelerator,
        objective: Objective,
        model: torch.nn.Module,
        images: torch.utils.data.Dataset,
    ) -> None:
        if accelerator.gradient_accumulation_steps != config.gradient_accumulation_steps:
            raise ValueError(
                f"the Accelerator accumulates {accelerator.gradient_accumulation_steps} batches, the config "
                f"{config.gradient_accumulation_steps}: make it with hfddpm.training.setup.create_accelerator(config)"
            )
        if not callable(getattr(images, "set_epoch", None)):
            raise TypeError(
                f"images must be a dataset with set_epoch(epoch) (e.g. image_data.TrainingImages), got "
                f"{type(images).__name__}"
            )
        self.config, self.accelerator, self.objective, self.images = config, accelerator, objective, images
        self.output_dir = Path(config.output_dir)
        self.started = time.perf_counter()  # training time counts from here: set-up before the engine is not in it
        dataloader = torch.utils.data.DataLoader(
            images, batch_size=config.train_batch_size, shuffle=True, num_workers=config.dataloader_num_workers
        )
        optimizer = create_optimizer(config, model, accelerator.device)
        self.ema = create_ema(config, model)
        self.model, self.optimizer, self.dataloader = accelerator.prepare(model, optimizer, dataloader)
        if self.ema is not None:
            self.ema.to(accelerator.device)
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
        self.randomness = TrainingRandomness(config.seed, accelerator.process_index, accelerator.device)
        self.checkpoints = CheckpointManager(self.output_dir / "checkpoints", config.checkpoints_total_limit)
        self.checkpointed = {"lr_scheduler": self.lr_scheduler, **({"ema": self.ema} if self.ema is not None else {})}
        if clash := set(self.checkpointed) & set(objective.checkpoint_objects()):
            raise ValueError(f"the objective's checkpoint_objects use the engine's names {sorted(clash)}; rename them")
        self.checkpointed.update(objective.checkpoint_objects())
        self.after_update = getattr(objective, "after_update", None)  # optional in an `Objective`
        self.state = RunState()
        self.last_checkpoint_step = 0
        self.intermediate_pushes: list[Future] = []
        self.step_loss = torch.zeros((), device=accelerator.device)  # the loss of this step's accumulated batches
        self.final_loss: float | None = None  # the last logged loss
        self.grad_norm: torch.Tensor | None = None  # of the last optimizer step
        self.last_output: LossOutput | None = None  # of the last batch
        self.progress: tqdm | None = None  # while `run` trains
        self._reset_running_loss()

    # Run state and resume

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
            return
        if spec:
            path = self.checkpoints.resolve(spec)
            record = self.checkpoints.load(self.accelerator, path, self.checkpointed, self.randomness)
            self.state = RunState.from_record(record)
            self.last_checkpoint_step = self.state.global_step
            self.accelerator.print(f"Resuming from {path} at step {self.state.global_step}")

    def wall_time(self) -> float:
        """Seconds of training in this run, earlier segments (before a resume) included."""
        return self.state.wall_time_seconds + time.perf_counter() - self.started

    def save_checkpoint(self) -> None:
        record = self.state.record(len(self.dataloader), self.wall_time())
        step = self.state.global_step
        self.checkpoints.save(self.accelerator, step, record, self.checkpointed, self.randomness)
        self.last_checkpoint_step = step

    # The loop

    def run(self) -> int:
        """Resume if asked, train to the last step, save the final artefacts and publish; the exit status (0, or 1
        when a push failed). Faults raise (see `hfddpm.training.command`)."""
        self.resume()
        accelerator = self.accelerator
        if accelerator.is_main_process:
            record_arguments(self.config, self.output_dir)
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
        self._reset_running_loss()  # images/s counts training, not the set-up and resume before it
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
        for epoch in range(state.epoch, self.num_epochs):
            state.epoch = epoch
            self.dataloader.set_epoch(epoch)
            self.images.set_epoch(epoch)
            skipped = state.batches_in_epoch
            batches = self.accelerator.skip_first_batches(self.dataloader, skipped) if skipped else self.dataloader
            for batch in batches:
                check = self.train_on_batch(batch, stop_request)
                if check is None:  # more batches to accumulate before the optimizer steps
                    continue
                self.end_optimizer_step(check)
                if state.global_step >= self.max_train_steps:
                    return
                if check.stop_signal is not None:
                    self.stop(check.stop_signal)
            state.batches_in_epoch = 0

    def train_on_batch(self, batch: torch.Tensor, stop_request: StopRequest) -> StepCheck | None:
        """The forward and backward pass of one batch; at the last batch of an optimizer step, that step's check
        and update (`optimizer_step`), whose verdict is returned."""
        self.state.batches_in_epoch += 1
        check = None
        with self.accelerator.accumulate(self.model):
            output = self.objective(self.model, batch, self.randomness)
            self.step_loss += output.loss.detach()
            self.accelerator.backward(output.loss)
            if self.accelerator.sync_gradients:
                check = self.optimizer_step(stop_request)
        self.objective.observe(self.accelerator, output)
        self.running_loss += output.loss.detach()
        self.running_count += 1
        self.last_output = output
        return check

    def optimizer_step(self, stop_request: StopRequest) -> StepCheck:
        """Clip the gradient, check the step on every process, and update the weights only if it is finite."""
        self.grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        check = check_step(self.accelerator, self.step_loss, self.grad_norm, stop_request)
        if check.fault is None:
            self.optimizer.step()
            if not weights_are_finite(self.model):
                self.stop_for_nonfinite_weights()
        elif self.accelerator.scaler is not None:
            self.accelerator.scaler.update()  # closes clip_grad_norm_'s unscale_ without a step
        self.optimizer.zero_grad(set_to_none=True)
        self.step_loss.zero_()
        return check

    def end_optimizer_step(self, check: StepCheck) -> None:
        """Move the schedule and EMA after an update (or count the skipped one), then do the periodic work."""
        state = self.state
        if check.fault is not None:
            self.handle_nonfinite_step(check.fault)
        elif self.accelerator.optimizer_step_was_skipped:
            state.skipped_steps += 1  # fp16 overflow: the grad scaler skipped this update
        else:
            self.lr_scheduler.step()
            if self.ema is not None:
                self.ema.step(self.model.parameters())
            if self.after_update is not None:
                self.after_update(self.accelerator.unwrap_model(self.model))
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

    def stop_for_nonfinite_weights(self) -> None:
        """Stop the run whose last update, from a finite loss, made a weight NaN or Inf (a learning rate too large):
        before the EMA, a checkpoint or a pipeline save can take them, in either --on_nonfinite_loss mode (the update
        is made and cannot be skipped; the next one would overflow as well). Replicas hold the same weights, so every
        process stops here together."""
        raise NonFiniteLossError(
            f"step {self.state.global_step + 1}: the update made the weights non-finite; the run stopped before "
            f"saving them, and {self.last_checkpoint()}: lower --learning_rate, then resume with "
            "--resume_from_checkpoint latest"
        )

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

    # Periodic work

    def _reset_running_loss(self) -> None:
        self.running_loss, self.running_count, self.running_since = 0.0, 0, time.perf_counter()

    def log(self) -> None:
        """Log the mean loss since the last log (over every process), the schedule, counters and throughput."""
        accelerator, state = self.accelerator, self.state
        self.final_loss = accelerator.gather(self.running_loss.reshape(1) / self.running_count).mean().item()
        logs = {"loss": self.final_loss, "lr": self.lr_scheduler.get_last_lr()[0], "grad_norm": float(self.grad_norm)}
        logs.update(self.objective.logs(accelerator, self.last_output))
        if self.ema is not None:
            logs["ema_decay"] = self.ema.cur_decay_value or 0.0
        logs.update(skipped_steps=state.skipped_steps, nonfinite_steps=state.nonfinite_steps)
        images_seen = self.running_count * self.config.train_batch_size * accelerator.num_processes
        logs["images_per_second"] = images_seen / (time.perf_counter() - self.running_since)
        accelerator.log(logs, step=state.global_step)
        self.progress.set_postfix(loss=f"{self.final_loss:.4f}", lr=f"{logs['lr']:.2e}")
        self._reset_running_loss()

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
                self.intermediate_pushes.append(push_in_background(config, self.output_dir, step))

    def inference_pipeline(self) -> HFDDPMPipeline:
        """The objective's pipeline around the EMA weights (the trained ones without EMA), progress bar off."""
        unet = self.accelerator.unwrap_model(self.model)
        if self.ema is not None:
            unet = averaged_copy(unet, self.ema)
        pipeline = self.objective.pipeline(unet)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def save_grid(self, path: Path, pipeline: HFDDPMPipeline) -> None:
        grid = save_sample_grid(pipeline, path, self.config)
        if any(tracker.name == "tensorboard" for tracker in self.accelerator.trackers):
            writer = self.accelerator.get_tracker("tensorboard").writer
            writer.add_image("samples", np.asarray(grid.convert("RGB")), self.state.global_step, dataformats="HWC")

    def evaluate(self, pipeline: HFDDPMPipeline) -> EvaluationReport:
        report = evaluate_during_training(self.config, pipeline, self.accelerator.device)
        metrics = {f"eval/{name}": value for name, value in report.metrics.items()}
        self.accelerator.log(metrics, step=self.state.global_step)
        return report

    # The end

    def finish(self) -> None:
        """Check the replicas agree, then save the EMA pipeline, its grid, evaluation, records and model card."""
        accelerator, state = self.accelerator, self.state
        # Data-parallel replicas must hold the same weights: compare a float64 checksum across processes.
        checksums = accelerator.gather(replica_checksum(self.model).reshape(1).to(accelerator.device))
        if (checksums != checksums[0]).any():
            raise RuntimeError(f"data-parallel replicas diverged: parameter checksums {checksums.tolist()}")
        accelerator.log(
            {"replica_checksum": checksums[0].item(), "num_processes": accelerator.num_processes}, state.global_step
        )
        if state.skipped_steps:
            accelerator.print(
                f"The fp16 grad scaler skipped {state.skipped_steps} of {state.global_step} updates (overflow)"
            )
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return
        pipeline = self.inference_pipeline()
        save_pipeline(pipeline, self.output_dir)
        self.save_grid(self.output_dir / "samples" / "final.png", pipeline)
        if self.config.eval_every:
            durable.write_text(self.output_dir / "evaluation.json", self.evaluate(pipeline).to_json())
        info = training_info(
            accelerator,
            self.model,
            wall_time_seconds=round(self.wall_time(), 1),
            global_step=state.global_step,
            final_loss=self.final_loss,
            skipped_steps=state.skipped_steps,
            nonfinite_steps=state.nonfinite_steps,
        )
        durable.write_text(self.output_dir / "training_info.json", json.dumps(info, indent=2))
        durable.write_text(self.output_dir / "README.md", model_card_text(self.output_dir, self.config))
        accelerator.print(
            f"Saved the pipeline and its model card to {self.output_dir}, samples to "
            f"{self.output_dir / 'samples' / 'final.png'}"
        )
