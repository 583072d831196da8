"""Run the training command (what examples/train_unconditional.py runs) many times without paying its imports
each time, and inject faults.

`python tests/training_runner.py` imports the package once, then reads one JSON request per line on stdin and runs
each in a forked child (a real process: SIGKILL, SIGTERM and exit codes are real), answering `{"pid": …}` when the
child starts and `{"returncode": …}` when it ends. A request may ask the child to kill itself with SIGKILL at a
chosen call of a chosen function (before, after, or half-way through deleting a folder), to make chosen losses NaN,
to lower the file-size limit (a full disk) after a chosen call, or to run the script several times in one process
and record its memory after each. `TrainingRunner` is the test-side client.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import traceback
from pathlib import Path

from hfddpm.training import TrainingConfig, run_command, train_unconditional

# Set to "1" (with ATEN_CPU_CAPABILITY=default and MKL_CBWR=COMPATIBLE, read when torch loads) for arithmetic that is
# the same bits on every x86 CPU: scalar ATen kernels, MKL's compatible code path, and neither oneDNN nor NNPACK,
# whose kernels (and their blocking, chosen from the CPU's caches) differ between CPUs.
REPRODUCIBLE_KERNELS = "HFDDPM_REPRODUCIBLE_KERNELS"


class TrainingRunner:
    """Test-side client: `start(...)` a run, then `wait()` for its exit code; `train(...)` does both."""

    def __init__(self, env: dict | None = None):
        self.process = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**os.environ, **(env or {})},
        )

    def start(self, argv: list[str], console: Path, faults: dict | None = None, env: dict | None = None, repeat=1):
        request = {"argv": [str(a) for a in argv], "console": str(console), "faults": faults or {}}
        request.update(env=env or {}, repeat=repeat)
        self.process.stdin.write(json.dumps(request) + "\n")
        return json.loads(self.process.stdout.readline())["pid"]

    def wait(self) -> int:
        return json.loads(self.process.stdout.readline())["returncode"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def _patch(target: str, make_wrapper) -> None:
    """Replace `module:attribute` or `module:Class.method` by `make_wrapper(original)`."""
    module_name, path = target.split(":")
    owner = importlib.import_module(module_name)
    *classes, attribute = path.split(".")
    for name in classes:
        owner = getattr(owner, name)
    setattr(owner, attribute, make_wrapper(getattr(owner, attribute)))


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _counted(original, call: int, before=None, after=None):
    calls = 0

    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == call and before:
            before(*args)
        result = original(*args, **kwargs)
        if calls == call and after:
            after(*args)
        return result

    return wrapper


def _removing_half_then_die(original, name_contains: str, call: int):
    """`shutil.rmtree` that, at its `call`-th call on a folder whose name contains `name_contains` (leftovers of
    interrupted saves, `*.partial`, aside), deletes half of the folder's files and then SIGKILLs the process: a
    removal caught half-way."""
    calls = 0

    def rmtree(path, *args, **kwargs):
        nonlocal calls
        folder = Path(path)
        if name_contains in folder.name and not folder.name.endswith(".partial") and folder.is_dir():
            calls += 1
            if calls == call:
                files = sorted(p for p in folder.rglob("*") if p.is_file())
                for file in files[: max(1, len(files) // 2)]:
                    file.unlink()
                _kill_self()
        return original(path, *args, **kwargs)

    return rmtree


def _install_faults(faults: dict) -> None:
    for target, call in faults.get("kill_before", {}).items():
        _patch(target, lambda original, call=call: _counted(original, call, before=lambda *a: _kill_self()))
    for target, call in faults.get("kill_after", {}).items():
        _patch(target, lambda original, call=call: _counted(original, call, after=lambda *a: _kill_self()))
    if "kill_inside_rmtree" in faults:  # [name_contains, call]
        _patch("shutil:rmtree", lambda original: _removing_half_then_die(original, *faults["kill_inside_rmtree"]))
    if "nan_loss_at_calls" in faults:
        nan_calls, calls = set(faults["nan_loss_at_calls"]), 0

        def make_wrapper(objective_call):
            def wrapper(*args, **kwargs):
                nonlocal calls
                calls += 1
                output = objective_call(*args, **kwargs)
                if calls in nan_calls:
                    output.loss = output.loss * float("nan")
                return output

            return wrapper

        _patch("hfddpm.training.objectives:DenoisingLoss.__call__", make_wrapper)
    if "file_size_limit_after" in faults:
        target, call, limit = faults["file_size_limit_after"]
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG

        def shrink(*args):
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

        _patch(target, lambda original: _counted(original, call, after=shrink))


def train_unconditional_command(argv: list[str]) -> int:
    """examples/train_unconditional.py's `main`, with its exit statuses."""
    return run_command(lambda: train_unconditional(TrainingConfig.from_command_line(argv)))


def memory_kb() -> dict[str, int]:
    """This process's memory after a garbage collection: resident now and the peak so far, in kB."""
    gc.collect()
    status = Path("/proc/self/status").read_text().splitlines()
    resident = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return {"resident_kb": resident, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def _child(request: dict) -> int:
    console = os.open(request["console"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(console, 1)
    os.dup2(console, 2)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    os.environ.update(request["env"])
    # Python's own Ctrl-C handler, as in a terminal: a test run as a background job (`pytest &`, `nohup`) starts with
    # SIGINT ignored, and the run would keep it ignored (as it should for such a job of its own).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _install_faults(request["faults"])
    code = 0
    for repetition in range(request["repeat"]):
        try:
            code = train_unconditional_command(request["argv"])
        except SystemExit as exit:  # argparse, and parse_args' checks: as the interpreter reports them
            if isinstance(exit.code, str):
                print(exit.code, file=sys.stderr)
            code = exit.code if isinstance(exit.code, int) else 1
        if request["repeat"] > 1:
            print("MEMORY " + json.dumps({"repetition": repetition, **memory_kb()}), flush=True)
            shutil.rmtree(request["argv"][request["argv"].index("--output_dir") + 1], ignore_errors=True)
    return code


def run_once(argv: list[str], kill_after_first_checkpoint: bool = False) -> int:
    """One run in this process; with `kill_after_first_checkpoint`, SIGKILL right after the first checkpoint."""
    if kill_after_first_checkpoint:
        _install_faults({"kill_after": {"hfddpm.training.checkpoints:CheckpointManager.save": 1}})
    return train_unconditional_command(argv)


def serve() -> None:
    if os.environ.get(REPRODUCIBLE_KERNELS) == "1":  # the kernels whose arithmetic no CPU feature changes
        import torch

        torch.backends.mkldnn.enabled = False
        torch.backends.nnpack.set_flags(False)
    import datasets  # noqa: F401  (loaded by the data module on first use: once here, not in every child)
    import sklearn.datasets  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                code = _child(request)
            except BaseException:
                traceback.print_exc()
                code = 99
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve()
