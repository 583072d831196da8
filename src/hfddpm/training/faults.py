"""What a long run watches for, and how it ends: a non-finite loss, gradient or updated weight, a request to stop,
and the one line and exit status that answer a fault or bad input.

The loss, gradient and stop request are decided from one gather across processes per optimizer step, so every
data-parallel process takes the same branch: all skip (or stop at) a step whose loss is NaN or Inf on any process,
and all stop when any process received SIGTERM or SIGINT. The updated weights need no gather: the replicas hold the
same ones.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..arguments import first_line
from ..lazy import missing_extra
from ..run_folder import launched_as_main_process

if TYPE_CHECKING:
    from accelerate import Accelerator


class CheckpointError(RuntimeError):
    """A checkpoint or a pipeline could not be written or read; the message says which, why, and what to do."""


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient of an optimizer step was NaN or Inf and the run was told to stop."""


class RunInterrupted(Exception):
    """SIGTERM or SIGINT stopped the run after it saved a checkpoint; `exit_code` is 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequest:
    """Within `with StopRequest():`, SIGTERM and SIGINT only record that the run should stop: the training loop
    finishes its optimizer step, saves a checkpoint and exits. A second signal while it does so takes the signal's
    usual effect (SIGINT: KeyboardInterrupt; SIGTERM: termination). A signal the process ignores when the block
    starts stays ignored: `nohup` and a shell's background job (`cmd &`) start with SIGINT ignored, so that Ctrl-C in
    the terminal does not reach them."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # elsewhere Python cannot install handlers
            ignored = [signum for signum in self.SIGNALS if signal.getsignal(signum) == signal.SIG_IGN]
            self._previous = {
                signum: signal.signal(signum, self._record) for signum in self.SIGNALS if signum not in ignored
            }
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _record(self, signum: int, frame) -> None:
        if self.signum is not None:  # asked twice: stop now
            signal.signal(signum, self._previous[signum])
            signal.raise_signal(signum)
            return
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name} received: saving a checkpoint after this step, then stopping "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )


@dataclass(frozen=True)
class StepCheck:
    """The verdict on one optimizer step, the same on every process."""

    fault: str | None  # what was not finite, e.g. "the loss is nan"; None when the step may update the weights
    stop_signal: int | None  # the signal that asked the run to stop, or None


def check_step(
    accelerator: Accelerator, step_loss: torch.Tensor, grad_norm: torch.Tensor, stop: StopRequest
) -> StepCheck:
    """Gather this step's loss (summed over accumulated batches), gradient norm and stop request from every process.
    A non-finite loss is a fault in every precision, a non-finite gradient norm too except under fp16's grad scaler,
    whose scale overflows now and then on purpose: the scaler skips those updates itself, and the loop counts them."""
    values = (step_loss, grad_norm, step_loss.new_tensor(float(stop.signum or 0)))
    row = torch.stack([value.detach().float().reshape(()) for value in values]).reshape(1, 3)
    losses, norms, signals = accelerator.gather(row).cpu().double().T.tolist()
    fault = None
    if bad := [x for x in losses if not math.isfinite(x)]:
        fault = f"the loss is {bad[0]}"
    elif accelerator.scaler is None and (bad := [x for x in norms if not math.isfinite(x)]):
        fault = f"the gradient norm is {bad[0]}"
    return StepCheck(fault, stop_signal=next((int(s) for s in signals if s), None))


def weights_are_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter of `model` is finite. Their joint 2-norm (one fused reduction per step) is finite when
    they all are; only when it is not (a NaN or ±Inf, or squares past float32's range) is each parameter looked at."""
    weights = [parameter.detach() for parameter in model.parameters()]
    if math.isfinite(torch.nn.utils.get_total_norm(weights).item()):
        return True
    return all(bool(torch.isfinite(weight).all()) for weight in weights)


def run_command(train: Callable[[], int]) -> int:
    """Run `train` (which returns an exit status) and answer its faults with one line on stderr, from the main
    process (RANK 0). Exit status: 0 done; 1 a fault stopped the run (a non-finite loss, a checkpoint that could not
    be written or read, a failed push); 2 a bad argument or input; 128 + N stopped by signal N after saving."""
    from ..hub import HubError

    try:
        return train()
    except RunInterrupted as interruption:
        message, status = str(interruption), interruption.exit_code
    except KeyboardInterrupt:
        message, status = "interrupted; the checkpoints written so far are kept", 128 + signal.SIGINT
    except ImportError as error:
        if (friendly := missing_extra(error)) is error:
            raise
        message, status = f"error: {friendly}", 2
    except (ValueError, FileNotFoundError, NotADirectoryError, HubError, CheckpointError, NonFiniteLossError) as error:
        message = f"error: {first_line(error)}"
        status = 1 if isinstance(error, (CheckpointError, NonFiniteLossError)) else 2
    if launched_as_main_process():
        print(message, file=sys.stderr)
    return status
