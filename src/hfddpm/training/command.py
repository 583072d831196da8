"""Training as a command: faults and bad input become one line on stderr and an exit status, never a traceback."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from .checkpoints import CheckpointError
from .config import launched_as_main_process
from .guards import NonFiniteLossError, RunInterrupted


def run_command(train: Callable[[], int]) -> int:
    """Run `train` (which returns an exit status) and answer its faults with one line on stderr.

    Exit status: 0 done; 1 a fault stopped the run (a non-finite loss, a checkpoint that could not be written or
    read, a failed push); 2 a bad argument or input; 128 + N stopped by signal N after saving a checkpoint. Only
    the main process (RANK 0) prints.
    """
    from ..hub import HubError

    main_process = launched_as_main_process()
    try:
        return train()
    except RunInterrupted as interruption:
        if main_process:
            print(interruption, file=sys.stderr)
        return interruption.exit_code
    except KeyboardInterrupt:
        if main_process:
            print("interrupted; the checkpoints written so far are kept", file=sys.stderr)
        return 128 + signal.SIGINT
    except (ValueError, FileNotFoundError, NotADirectoryError, HubError, CheckpointError, NonFiniteLossError) as error:
        if main_process:
            print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1 if isinstance(error, (CheckpointError, NonFiniteLossError)) else 2
