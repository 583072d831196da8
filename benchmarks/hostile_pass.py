#!/usr/bin/env python3
"""Hostile-input acceptance pass for hfddpm.

Run with the project's interpreter (it needs numpy, PIL, safetensors, torch):

    python benchmarks/hostile_pass.py                                # this checkout
    python benchmarks/hostile_pass.py --repo ../snapshot-d0601bd     # another (`git archive` of a commit)
    python benchmarks/hostile_pass.py -k 5- -k 8-                    # only case ids containing 5- or 8-

Every command runs as `PYTHON REPO/examples/X.py` or `PYTHON -m hfddpm` with PYTHONPATH=REPO/src (so a snapshot of
the repository can be tested with the same venv), CPU only, offline, with an empty TORCH_HOME (no Inception weights).
Each case works in its own folder under --work (a new or empty folder; default a new temporary one); shared
fixtures (tiny trained runs) are built once and copied. Per-case logs of every command: WORK/cases/<id>/log.txt.

Output: one line per case, `PASS|FAIL <id> <reason>`, then a summary line starting with '#'.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# ----------------------------------------------------------------------------------------------------------------
# configuration

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--repo", default=Path(__file__).resolve().parents[1], help="repository whose src/ is tested")
parser.add_argument("--python", default=sys.executable, help="interpreter of the venv")
parser.add_argument("--work", default=None, help="scratch folder, new or empty (default: a new temporary one)")
parser.add_argument("--jobs", type=int, default=2, help="cases run at once")
parser.add_argument("-k", action="append", default=[], help="run only case ids containing this (repeatable)")
ARGS = parser.parse_args()

REPO = Path(ARGS.repo).resolve()
PY = ARGS.python
WORK = Path(ARGS.work or tempfile.mkdtemp(prefix="hfddpm-hostile-")).resolve()
if WORK.exists() and any(WORK.iterdir()):
    sys.exit(f"--work {WORK} is not empty; name a new or empty folder")
FX = WORK / "fx"
CASES_DIR = WORK / "cases"
TRAIN = str(REPO / "examples" / "train_unconditional.py")
PROG = str(REPO / "examples" / "distill_progressive.py")
CONS = str(REPO / "examples" / "distill_consistency.py")

TINY = [
    "--model_preset",
    "tiny",
    "--max_train_steps",
    "4",
    "--checkpointing_steps",
    "2",
    "--save_images_steps",
    "1000",
    "--num_sample_images",
    "4",
    "--num_inference_steps",
    "2",
    "--report_to",
    "none",
    "--train_batch_size",
    "8",
]
DIST = [
    "--max_train_steps",
    "2",
    "--checkpointing_steps",
    "1",
    "--save_images_steps",
    "1000",
    "--num_sample_images",
    "4",
    "--report_to",
    "none",
    "--train_batch_size",
    "8",
]
PROG_ARGS = DIST + ["--teacher_steps", "4", "--final_steps", "1"]
PROG1_ARGS = DIST + ["--teacher_steps", "2", "--final_steps", "1"]  # one round
CONS_ARGS = DIST + ["--num_ddim_timesteps", "4", "--num_inference_steps", "2"]
EVAL_FAST = ["--metrics", "bits_per_dim", "--num_timesteps", "2", "--max_images", "4", "--device", "cpu"]
HOSTILE_NAMES = ['cat"]; import os; os.system("echo pwned")  #', "<img src=x onerror=alert(1)>"]
LOCK = ".hfddpm-run.lock"

ENV = dict(os.environ)
ENV.update(
    PYTHONPATH=str(REPO / "src"),
    CUDA_VISIBLE_DEVICES="",
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    TORCH_HOME=str(WORK / "torch_home_empty"),
    HF_HUB_DISABLE_TELEMETRY="1",
    TQDM_MININTERVAL="5",
    OMP_NUM_THREADS="1",
    PYTHONWARNINGS="ignore",
)
ENV.pop("HF_TOKEN", None)


# ----------------------------------------------------------------------------------------------------------------
# helpers


class Result:
    def __init__(self, cmd, rc, out, err, seconds, timed_out=False):
        self.cmd, self.rc, self.out, self.err, self.seconds, self.timed_out = cmd, rc, out, err, seconds, timed_out

    @property
    def text(self):
        return self.out + "\n" + self.err


def _limit_memory(gib):
    def apply():
        limit = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def run(cmd, cwd, log=None, timeout=240, mem_gib=None):
    cmd = [str(c) for c in cmd]
    start = time.time()
    try:
        p = subprocess.run(
            cmd,
            cwd=str(cwd),
            env=ENV,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            preexec_fn=_limit_memory(mem_gib) if mem_gib else None,
        )
        r = Result(cmd, p.returncode, p.stdout, p.stderr, time.time() - start)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        r = Result(cmd, None, out, err, time.time() - start, timed_out=True)
    if log is not None:
        with open(log, "a", encoding="utf-8") as f:
            shown = " ".join(shlex.quote(c) for c in cmd)
            f.write(f"$ (cd {cwd}) {shown}\n")
            f.write(
                f"-> rc={r.rc} timed_out={r.timed_out} {r.seconds:.1f}s\n--- stdout ---\n{tail(r.out, 4000)}\n"
                f"--- stderr ---\n{tail(r.err, 6000)}\n\n"
            )
    return r


def tail(text, n):
    return text if len(text) <= n else "…" + text[-n:]


def lines_of(text):
    """Non-empty lines, with tqdm's carriage-return redraws reduced to their last state."""
    out = []
    for line in text.splitlines():
        line = line.split("\r")[-1].strip()
        if line:
            out.append(line)
    return out


def last_line(text):
    ls = lines_of(text)
    return ls[-1] if ls else ""


def short(s, n=150):
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def train(args, cwd, log, **kw):
    return run([PY, TRAIN, *args], cwd, log, **kw)


def prog(args, cwd, log, **kw):
    return run([PY, PROG, *args], cwd, log, **kw)


def cons(args, cwd, log, **kw):
    return run([PY, CONS, *args], cwd, log, **kw)


def hf(args, cwd, log, **kw):
    return run([PY, "-m", "hfddpm", *args], cwd, log, **kw)


def refusal(r, names=()):
    """(ok, detail): the command refused in one line — non-zero status, no traceback, the last stderr line an
    error — and, if `names` is given, that line names one of them."""
    if r.timed_out:
        return False, f"timed out after {r.seconds:.0f}s (no refusal)"
    if r.rc == 0:
        return False, "status 0 (accepted, not refused)"
    if "Traceback" in r.text:
        exc = [ln for ln in lines_of(r.err) if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", ln)]
        return False, f"traceback, rc {r.rc}: {short(exc[-1] if exc else last_line(r.err), 120)}"
    if r.rc is not None and r.rc < 0:
        return False, f"killed by signal {-r.rc}"
    line = last_line(r.err) or last_line(r.out)
    if "error" not in line.lower():
        return False, f"rc {r.rc} but the last line is no error: {short(line, 110)}"
    if names and not any(n.lower() in line.lower() for n in names):
        return False, f"refused but without naming {'/'.join(names)}: {short(line, 110)}"
    return True, line


def snapshot(path, exclude=(LOCK,)):
    """{relative path: digest} of a tree, symlinks recorded (not followed)."""
    path = Path(path)
    result = {}
    if not os.path.lexists(path):
        return result
    if path.is_symlink() or path.is_file():
        return {".": "L:" + os.readlink(path) if path.is_symlink() else sha(path)}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            p = Path(root, d)
            rel = str(p.relative_to(path))
            result[rel] = ("L:" + os.readlink(p)) if p.is_symlink() else "D"
        for f in files:
            if f in exclude:
                continue
            p = Path(root, f)
            rel = str(p.relative_to(path))
            result[rel] = ("L:" + os.readlink(p)) if p.is_symlink() else sha(p)
    return result


def sha(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_diff(before, after):
    removed = sorted(set(before) - set(after))
    added = sorted(set(after) - set(before))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    parts = []
    for label, items in (("lost", removed), ("changed", changed), ("added", added)):
        if items:
            top = sorted({i.split("/")[0] for i in items})
            parts.append(f"{label} {len(items)} ({', '.join(top[:4])}{'…' if len(top) > 4 else ''})")
    return "; ".join(parts)


def copytree(src, dst):
    shutil.copytree(src, dst, symlinks=True)
    return Path(dst)


def make_images(folder, count, size, seed, mode="L"):
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    for i in range(count):
        shape = (size, size) if mode == "L" else (size, size, 3)
        Image.fromarray((rng.rand(*shape) * 255).astype("uint8"), mode).save(folder / f"img{i:03d}.png")
    return folder


def is_empty_or_absent(p):
    p = Path(p)
    return not os.path.lexists(p) or (p.is_dir() and not any(p.iterdir()))


# ----------------------------------------------------------------------------------------------------------------
# fixtures (built once; cases copy them)

FIXTURE_ERRORS: dict[str, str] = {}


class FixtureMissing(Exception):
    pass


def need(*names):
    for n in names:
        if n in FIXTURE_ERRORS:
            raise FixtureMissing(f"fixture {n} failed: {FIXTURE_ERRORS[n]}")


def build_fixture(name, fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        FIXTURE_ERRORS[name] = short(f"{type(e).__name__}: {e}", 200)


def fx_images():
    w1 = FX / "w1"
    make_images(w1 / "imgsA", 24, 16, seed=1)  # the 16×16 run's data
    make_images(w1 / "imgsB", 40, 16, seed=2)  # other images (resume with other data)
    make_images(FX / "w2" / "imgsA", 40, 16, seed=3)  # same relative name, other working directory
    bad = make_images(FX / "bad_imgs", 8, 16, seed=4)
    (bad / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is no image at all" * 3)
    make_images(FX / "flat_imgs", 16, 8, seed=5)  # no class subfolders
    for k, name in enumerate(HOSTILE_NAMES):
        make_images(FX / "hostile_cls" / name, 8, 8, seed=10 + k)


def _check_trained(r, folder, what):
    if r.rc != 0 or not (Path(folder) / "model_index.json").is_file():
        raise RuntimeError(f"{what}: rc {r.rc}: {short(last_line(r.err), 150)}")


def fx_base():
    log = FX / "log.txt"
    r = train([*TINY, "--output_dir", FX / "base"], FX, log)
    _check_trained(r, FX / "base", "training the tiny digits run")
    r = train([*TINY, "--seed", "1", "--output_dir", FX / "base_seed1"], FX, log)
    _check_trained(r, FX / "base_seed1", "training the seed-1 run")


def fx_run16():
    # trained from w1 with relative paths: training_args.json records train_data_dir "imgsA"
    r = train(
        [*TINY, "--train_data_dir", "imgsA", "--resolution", "16", "--output_dir", "run16"], FX / "w1", FX / "log.txt"
    )
    _check_trained(r, FX / "w1" / "run16", "training the 16×16 image-folder run")


def fx_prog():
    r = prog([*PROG_ARGS, "--teacher", FX / "base", "--output_dir", FX / "prog"], FX, FX / "log.txt")
    _check_trained(r, FX / "prog" / "steps-1", "progressive distillation of the tiny run")


def fx_base_eval():
    copytree(FX / "base", FX / "base_eval")
    r = hf(["evaluate", FX / "base_eval", *EVAL_FAST], FX, FX / "log.txt")
    if r.rc != 0 or not (FX / "base_eval" / "evaluation.json").is_file():
        raise RuntimeError(f"evaluate: rc {r.rc}: {short(last_line(r.err), 150)}")


# ----------------------------------------------------------------------------------------------------------------
# cases

CASES: list[tuple[str, object]] = []


def case(cid):
    def register(fn):
        CASES.append((cid, fn))
        return fn

    return register


def verdict(ok, reason):
    return bool(ok), short(reason, 170)


# ---- 1. Validate then destroy -------------------------------------------------------------------------------

BAD_NEW_DATA = {
    "corrupt-image": lambda: ["--train_data_dir", FX / "bad_imgs"],
    "missing-image-column": lambda: ["--image_column", "picture"],
    "unlabelled-class-conditional": lambda: ["--train_data_dir", FX / "flat_imgs", "--class_conditional"],
}

for _kind, _extra in BAD_NEW_DATA.items():

    @case(f"1a-train-overwrite-{_kind}")
    def _c(d, log, extra=_extra):
        need("base", "images")
        run_dir = copytree(FX / "base", d / "run")
        before = snapshot(run_dir)
        r = train([*TINY, "--output_dir", run_dir, "--overwrite_output_dir", *extra()], d, log)
        ok, detail = refusal(r)
        lost = tree_diff(before, snapshot(run_dir))
        if lost:
            return verdict(False, f"earlier run damaged: {lost} (rc {r.rc}: {detail})")
        return verdict(ok, f"refused, earlier run intact: {detail}" if ok else detail)

    @case(f"1a-prog-overwrite-{_kind}")
    def _c(d, log, extra=_extra):
        need("base", "prog", "images")
        teacher = copytree(FX / "base", d / "teacher")
        out = copytree(FX / "prog", d / "prog")
        before = snapshot(out)
        r = prog([*PROG_ARGS, "--teacher", teacher, "--output_dir", out, "--overwrite_output_dir", *extra()], d, log)
        ok, detail = refusal(r)
        lost = tree_diff(before, snapshot(out))
        if lost and r.rc == 0:
            return verdict(
                False, f"accepted the bad input (status 0, option ignored?) and replaced the rounds: {lost}"
            )
        if lost:
            return verdict(False, f"earlier rounds damaged: {lost} (rc {r.rc}: {detail})")
        return verdict(ok, f"refused, rounds intact: {detail}" if ok else detail)


for _sub in ("samples", "logs"):

    @case(f"1b-overwrite-{_sub}-symlink")
    def _c(d, log, sub=_sub):
        need("base")
        run_dir = copytree(FX / "base", d / "run")
        user = d / f"user_{sub}"
        user.mkdir()
        (user / "keep.txt").write_text("the user's file\n")
        (user / "notes").mkdir()
        (user / "notes" / "more.txt").write_text("more\n")
        shutil.rmtree(run_dir / sub)
        os.symlink(user, run_dir / sub)
        user_before = snapshot(user)
        run_before = snapshot(run_dir)
        r = train([*TINY, "--output_dir", run_dir, "--overwrite_output_dir"], d, log)
        user_after = snapshot(user)
        lost = {k: v for k, v in user_before.items() if user_after.get(k) != v}
        if lost:
            return verdict(
                False,
                f"symlink followed: user's {sorted(lost)} deleted/changed (rc {r.rc}: "
                f"{refusal(r)[1] if r.rc else 'ran'})",
            )
        if r.rc == 0:
            added = sorted(set(user_after) - set(user_before))
            extra = f"; wrote {added} into the link's target" if added else ""
            return verdict(True, f"ran, user's files untouched{extra}")
        ok, detail = refusal(r)
        run_lost = tree_diff(
            {k: v for k, v in run_before.items() if not k.startswith(sub)},
            {k: v for k, v in snapshot(run_dir).items() if not k.startswith(sub)},
        )
        state = f"user's files intact{'; earlier run ' + run_lost if run_lost else ', earlier run intact'}"
        return verdict(ok and not run_lost, f"refused, {state}: {detail}" if ok else f"{detail} ({state})")


# ---- 2. Inputs are never outputs ------------------------------------------------------------------------------


def _input_kept(d, log, protected, cmd_fn, what):
    before = snapshot(protected)
    r = cmd_fn()
    after = snapshot(protected)
    ok, detail = refusal(r)
    changed = tree_diff(before, after)
    if changed:
        return verdict(False, f"{what} modified: {changed} (rc {r.rc}; {detail})")
    return verdict(ok, f"refused, {what} byte-identical: {detail}" if ok else f"{detail}; {what} unchanged")


# A distillation whose output is its teacher, lies in it, or holds it as a round folder (round 1 of 4 → 2 → 1 writes
# rounds/steps-2): (case, command, the teacher's place and the output's in the case folder, --overwrite_output_dir).
TEACHER_AS_OUTPUT = [
    ("2-prog-output-equals-teacher", "prog", "teacher", "teacher", False),
    ("2-prog-output-inside-teacher", "prog", "teacher", "teacher/distilled", False),
    ("2-prog-round-folder-equals-teacher", "prog", "rounds/steps-2", "rounds", False),
    ("2-prog-round-folder-equals-teacher-overwrite", "prog", "rounds/steps-2", "rounds", True),
    ("2-prog-output-equals-teacher-overwrite", "prog", "teacher", "teacher", True),
    ("2-cons-output-equals-teacher", "cons", "teacher", "teacher", False),
    ("2-cons-output-equals-teacher-overwrite", "cons", "teacher", "teacher", True),
    ("2-cons-output-inside-teacher", "cons", "teacher", "teacher/cm", False),
]
for _id, _command, _teacher, _output, _overwrite in TEACHER_AS_OUTPUT:

    @case(_id)
    def _c(d, log, command=_command, teacher=_teacher, output=_output, overwrite=_overwrite):
        need("base")
        t = copytree(FX / "base", d / teacher)
        distil, options = (prog, PROG_ARGS) if command == "prog" else (cons, CONS_ARGS)
        argv = [*options, "--teacher", t, "--output_dir", d / output, *(["--overwrite_output_dir"] * overwrite)]
        return _input_kept(d, log, t, lambda: distil(argv, d, log), "teacher")


@case("2-train-output-inside-train-data-dir")
def _c(d, log):
    need("images")
    data = copytree(FX / "w1" / "imgsA", d / "data")
    return _input_kept(
        d,
        log,
        data,
        lambda: train([*TINY, "--train_data_dir", data, "--resolution", "16", "--output_dir", data / "run"], d, log),
        "dataset",
    )


@case("2-push-export-dir-equals-folder")
def _c(d, log):
    need("base")
    f = copytree(FX / "base", d / "run")
    return _input_kept(d, log, f, lambda: hf(["push", f, "--repo_id", "a/b", "--export_dir", f], d, log), "run")


@case("2-push-export-dir-inside-folder")
def _c(d, log):
    need("base")
    f = copytree(FX / "base", d / "run")
    return _input_kept(
        d, log, f, lambda: hf(["push", f, "--repo_id", "a/b", "--export_dir", f / "export"], d, log), "run"
    )


@case("2-analytic-variance-output-inside-checkpoint")
def _c(d, log):
    need("base")
    f = copytree(FX / "base", d / "run")
    return _input_kept(
        d,
        log,
        f,
        lambda: hf(
            [
                "analytic-variance",
                f,
                "--output_dir",
                f / "analytic",
                "--num_images",
                "8",
                "--batch_size",
                "8",
                "--device",
                "cpu",
            ],
            d,
            log,
        ),
        "checkpoint",
    )


@case("2-evaluate-output-equals-dataset")
def _c(d, log):
    need("run16", "images")
    f = copytree(FX / "w1" / "run16", d / "run")
    data = copytree(FX / "w1" / "imgsA", d / "data")
    return _input_kept(
        d,
        log,
        data,
        lambda: hf(["evaluate", f, "--dataset", data, "--split", "train", "--output_dir", data, *EVAL_FAST], d, log),
        "dataset",
    )


# ---- 3. Resume continues the same run --------------------------------------------------------------------------


def _global_step(folder):
    try:
        return json.loads((Path(folder) / "training_info.json").read_text()).get("global_step")
    except Exception:  # noqa: BLE001
        return None


@case("3-resume-control-same-options")
def _c(d, log):
    need("base")
    run_dir = copytree(FX / "base", d / "run")
    r = train([*TINY, "--output_dir", run_dir, "--resume_from_checkpoint", "latest", "--max_train_steps", "8"], d, log)
    step = _global_step(run_dir)
    if r.rc == 0 and step == 8:
        return verdict(True, "control: resuming with the same options continues to step 8")
    return verdict(False, f"control resume failed: rc {r.rc}, global_step {step}: {refusal(r)[1]}")


for _opt, _val in (("prediction_type", "v_prediction"), ("beta_schedule", "cosine"), ("num_train_timesteps", "500")):

    @case(f"3-resume-changed-{_opt}")
    def _c(d, log, opt=_opt, val=_val):
        need("base")
        run_dir = copytree(FX / "base", d / "run")
        before = snapshot(run_dir)
        r = train(
            [
                *TINY,
                "--output_dir",
                run_dir,
                "--resume_from_checkpoint",
                "latest",
                "--max_train_steps",
                "8",
                f"--{opt}",
                val,
            ],
            d,
            log,
        )
        if r.rc == 0:
            return verdict(False, f"resumed with --{opt} {val} (status 0; now step {_global_step(run_dir)})")
        ok, detail = refusal(r, names=(opt,))
        changed = tree_diff(before, snapshot(run_dir))
        if ok and changed:
            return verdict(False, f"refused but the run changed: {changed}")
        return verdict(ok, detail)


@case("3-resume-changed-train_data_dir")
def _c(d, log):
    need("run16", "images")
    run_dir = copytree(FX / "w1" / "run16", d / "run")
    before = snapshot(run_dir)
    r = train(
        [
            *TINY,
            "--output_dir",
            run_dir,
            "--resume_from_checkpoint",
            "latest",
            "--max_train_steps",
            "8",
            "--train_data_dir",
            "imgsB",
            "--resolution",
            "16",
        ],
        FX / "w1",
        log,
    )
    if r.rc == 0:
        return verdict(False, f"resumed on other images (imgsB) with status 0 (now step {_global_step(run_dir)})")
    ok, detail = refusal(r, names=("train_data_dir", "data"))
    changed = tree_diff(before, snapshot(run_dir))
    if ok and changed:
        return verdict(False, f"refused but the run changed: {changed}")
    return verdict(ok, detail)


def _swap_teacher_weights(teacher):
    w = Path(teacher) / "unet" / "diffusion_pytorch_model.safetensors"
    shutil.copyfile(FX / "base_seed1" / "unet" / "diffusion_pytorch_model.safetensors", w)


def _interrupted_distillation(d, log, teacher, out):
    """A progressive distillation stopped by SIGTERM in its first round (a checkpoint saved, the round unfinished)."""
    args = [
        *DIST,
        "--teacher_steps",
        "4",
        "--final_steps",
        "1",
        "--max_train_steps",
        "60",
        "--checkpointing_steps",
        "2",
        "--teacher",
        teacher,
        "--output_dir",
        out,
    ]
    with open(d / "interrupted_run.txt", "w") as stream:
        proc = subprocess.Popen(
            [PY, PROG, *map(str, args)],
            cwd=d,
            env=ENV,
            stdout=stream,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 120
        while (
            time.time() < deadline and proc.poll() is None and not list(out.glob("steps-2/checkpoints/checkpoint-*"))
        ):
            time.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    if (out / "steps-2" / "model_index.json").exists() or not list(out.glob("steps-2/checkpoints/checkpoint-*")):
        raise RuntimeError(f"setup: could not stop the distillation inside its first round (exit {rc})")
    return args


@case("3-prog-resume-after-teacher-weights-changed")
def _c(d, log):
    need("base", "base_seed1")
    t = copytree(FX / "base", d / "teacher")
    out = d / "prog"
    args = _interrupted_distillation(d, log, t, out)
    control = copytree(out, d / "prog_control")
    r = prog([*args[:-1], control, "--resume_from_checkpoint", "latest"], d, log, timeout=120)
    if r.rc != 0 or not (control / "steps-1" / "model_index.json").exists():
        return verdict(False, f"setup: control resume (teacher unchanged) failed: rc {r.rc}: {refusal(r)[1]}")
    _swap_teacher_weights(t)
    r = prog([*args, "--resume_from_checkpoint", "latest"], d, log, timeout=120)
    if r.rc == 0:
        return verdict(False, "resumed the unfinished round against a teacher with other weights (status 0)")
    return verdict(*refusal(r, names=("teacher",)))


@case("3-cons-resume-after-teacher-weights-changed")
def _c(d, log):
    need("base")
    t = copytree(FX / "base", d / "teacher")
    out = d / "cm"
    args = [*CONS_ARGS, "--max_train_steps", "4", "--checkpointing_steps", "2", "--teacher", t, "--output_dir", out]
    r = cons(args, d, log)
    if r.rc != 0:
        return verdict(False, f"setup consistency distillation failed rc {r.rc}: {refusal(r)[1]}")
    _swap_teacher_weights(t)
    r = cons([*args, "--resume_from_checkpoint", "latest", "--max_train_steps", "8"], d, log)
    if r.rc == 0:
        return verdict(False, f"resumed against a teacher with other weights (status 0, now step {_global_step(out)})")
    return verdict(*refusal(r, names=("teacher",)))


@case("3-relative-train_data_dir-from-other-cwd")
def _c(d, log):
    need("run16", "images")
    # FX/w1/run16 records train_data_dir "imgsA" (24 images, in FX/w1); FX/w2/imgsA holds 40 other images.
    w2 = copytree(FX / "w2", d / "w2")
    r = prog(
        [
            *DIST,
            "--teacher_steps",
            "2",
            "--final_steps",
            "1",
            "--teacher",
            FX / "w1" / "run16",
            "--output_dir",
            "prog",
        ],
        w2,
        log,
    )
    counts = [int(m) for m in re.findall(r"(\d+) images, \d+ process", r.text)]
    if r.rc == 0 or counts:
        if counts and all(c == 24 for c in counts):
            return verdict(True, "used the teacher's own folder (24 images) recorded relative to its run")
        if 40 in counts:
            return verdict(
                False,
                f"distilled on {d.name}/w2/imgsA (40 images) of the new working directory, "
                "not the teacher's data (24 images)",
            )
        return verdict(False, f"rc {r.rc}, image counts {counts}: cannot tell which data")
    ok, detail = refusal(r, names=("imgsA", "train_data_dir", "data"))
    return verdict(ok, detail)


# ---- 4. Records describe the weights they sit beside ----------------------------------------------------------


@case("4-card-after-evaluate-then-resume")
def _c(d, log):
    need("base")
    run_dir = copytree(FX / "base", d / "run")
    r = hf(["evaluate", run_dir, *EVAL_FAST], d, log)
    if r.rc != 0:
        return verdict(False, f"evaluate failed: {refusal(r)[1]}")
    bpd = json.loads((run_dir / "evaluation.json").read_text())["metrics"]["bits_per_dim"]
    shown = f"{bpd:.4f}"
    if shown not in (run_dir / "README.md").read_text():
        return verdict(False, f"setup: card does not show bits/dim {shown} after evaluate")
    r = train([*TINY, "--output_dir", run_dir, "--resume_from_checkpoint", "latest", "--max_train_steps", "8"], d, log)
    if r.rc != 0:
        return verdict(False, f"resume failed: {refusal(r)[1]}")
    card = (run_dir / "README.md").read_text()
    hits = [ln for ln in card.splitlines() if shown in ln]
    if not hits:
        return verdict(True, "the card no longer shows the old bits/dim after more training")
    if any(
        re.search(r"stale|earlier|previous|older|outdated|before|not these weights|step 4", ln, re.I) for ln in hits
    ):
        return verdict(True, f"old bits/dim shown but marked: {short(hits[0], 100)}")
    return verdict(False, f"card still presents bits/dim {shown} (measured at step 4) for the step-8 weights")


@case("4-evaluate-16px-folder-run-without-dataset")
def _c(d, log):
    need("run16")
    f = copytree(FX / "w1" / "run16", d / "run")
    r = hf(["evaluate", f, *EVAL_FAST], FX / "w1", log)  # from the folder its relative train_data_dir names
    if r.rc != 0:
        ok, detail = refusal(r)
        return verdict(ok, f"refused: {detail}" if ok else detail)
    first = short(lines_of(r.out)[0] if lines_of(r.out) else "", 80)
    try:
        rec = json.loads((f / "evaluation.json").read_text())
        dataset = str(rec.get("dataset"))
    except Exception:  # noqa: BLE001
        dataset = "?"
    if "imgsA" in dataset or "imgsA" in first:
        return verdict(True, f"used the run's own data: {first}")
    said = [ln for ln in lines_of(r.text) if "imgsA" in ln or "train_data_dir" in ln]
    if said:
        return verdict(True, f"evaluated on {dataset} and said so: {short(said[0], 100)}")
    if dataset == "digits" or "digits" in first:
        return verdict(False, f"silently evaluated on the built-in 8×8 digits ('{first}', dataset={dataset})")
    return verdict(False, f"status 0, data unclear: '{first}', dataset={dataset}")


def _lock_held(path):
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return False
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()
            # e.g. "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
            for p in parts:
                if p.count(":") == 2 and p.rsplit(":", 1)[-1] == str(inode):
                    return True
    return False


@case("4-analytic-variance-in-place-while-training-holds-lock")
def _c(d, log):
    need("base")
    run_dir = copytree(FX / "base", d / "run")
    out = open(d / "background_training.txt", "w")
    proc = subprocess.Popen(
        [
            PY,
            TRAIN,
            *TINY,
            "--output_dir",
            str(run_dir),
            "--resume_from_checkpoint",
            "latest",
            "--max_train_steps",
            "1000000",
        ],
        cwd=d,
        env=ENV,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None and not _lock_held(run_dir / LOCK):
            time.sleep(0.5)
        if not _lock_held(run_dir / LOCK):
            return verdict(False, f"setup: background training never held {LOCK} (exit {proc.poll()})")
        sched = snapshot(run_dir / "scheduler")
        card = snapshot(run_dir / "README.md")
        r = hf(
            ["analytic-variance", run_dir, "--in_place", "--num_images", "8", "--batch_size", "8", "--device", "cpu"],
            d,
            log,
        )
        still = proc.poll() is None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.close()
    if not still:
        return verdict(False, "setup: background training ended before the check finished")
    changed = snapshot(run_dir / "scheduler") != sched or snapshot(run_dir / "README.md") != card
    if r.rc == 0:
        return verdict(
            False,
            f"rewrote the scheduler of a folder a running training holds (status 0"
            f"{', scheduler/card changed' if changed else ''})",
        )
    ok, detail = refusal(r)
    if changed:
        return verdict(False, f"refused but the scheduler/card changed: {detail}")
    return verdict(ok, detail)


# ---- 5. What is published loads --------------------------------------------------------------------------------


def _export_refused(d, log, f, what):
    e = d / "export"
    r = hf(["push", f, "--repo_id", "a/b", "--export_dir", e], d, log)
    if r.rc == 0:
        return verdict(False, f"exported a folder whose unet weights are {what} (status 0)")
    ok, detail = refusal(r)
    if not is_empty_or_absent(e):
        return verdict(False, f"refused but left files in the export folder: {detail}")
    return verdict(ok, detail)


@case("5-push-truncated-weights")
def _c(d, log):
    need("base")
    f = copytree(FX / "base", d / "run")
    w = f / "unet" / "diffusion_pytorch_model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    return _export_refused(d, log, f, "truncated")


@case("5-push-missing-weights")
def _c(d, log):
    need("base")
    f = copytree(FX / "base", d / "run")
    (f / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    return _export_refused(d, log, f, "missing")


@case("5-push-nan-weights")
def _c(d, log):
    need("base")
    from safetensors.torch import load_file, save_file

    f = copytree(FX / "base", d / "run")
    w = f / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(w))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone().fill_(float("nan"))
    save_file(tensors, str(w), metadata={"format": "pt"})
    return _export_refused(d, log, f, "NaN")


MARKER = "OUTSIDE-SECRET-MARKER-7f3a"


def _scan_for_marker(folder):
    hits = []
    for root, _, files in os.walk(folder):
        for n in files:
            p = Path(root, n)
            try:
                if MARKER.encode() in p.read_bytes():
                    hits.append(str(p.relative_to(folder)))
            except OSError:
                pass
    return hits


for _as in ("folder", "file"):

    @case(f"5-push-model-index-traversal-key-{_as}")
    def _c(d, log, as_=_as):
        need("base")
        deep = d / "x" / "y" / "z"
        deep.mkdir(parents=True)
        f = copytree(FX / "base", deep / "run")
        secret = d / "x" / "secret"  # run/../../../secret
        if as_ == "folder":
            secret.mkdir()
            cfg = json.loads((f / "unet" / "config.json").read_text())
            cfg["_secret"] = MARKER
            (secret / "config.json").write_text(json.dumps(cfg))
            (secret / "notes.json").write_text(json.dumps({"secret": MARKER}))
            shutil.copy(f / "unet" / "diffusion_pytorch_model.safetensors", secret)
        else:
            secret.write_text(MARKER + "\n")
        index = json.loads((f / "model_index.json").read_text())
        index["../../../secret"] = ["diffusers", "UNet2DModel"]
        (f / "model_index.json").write_text(json.dumps(index, indent=2))
        e = d / "x" / "y" / "z" / "w" / "export"  # export/../../../secret would land at x/y/secret
        e.parent.mkdir()
        outside_before = snapshot(d)
        r = hf(["push", f, "--repo_id", "a/b", "--export_dir", e], d, log)
        outside_after = {
            k: v
            for k, v in snapshot(d).items()
            if not k.startswith("x/y/z/w/export") and not k.startswith("x/y/z/w/.export") and k != "log.txt"
        }
        outside_before = {k: v for k, v in outside_before.items() if k != "log.txt"}
        written = tree_diff(outside_before, outside_after)
        copied = _scan_for_marker(e) if e.exists() else []
        if written:
            where = sorted({os.path.dirname(k) or k for k in set(outside_after) ^ set(outside_before)})
            also = (
                " (content from outside)"
                if any(
                    MARKER.encode() in (d / k).read_bytes()
                    for k in outside_after
                    if k not in outside_before and (d / k).is_file()
                )
                else ""
            )
            return verdict(False, f"wrote outside the export folder: {written} at {where[:3]}{also}")
        if copied:
            return verdict(False, f"copied the outside secret into the export: {copied[:3]}")
        if r.rc == 0:
            return verdict(True, "ran; nothing copied from outside, nothing written outside the export")
        ok, detail = refusal(r)
        return verdict(ok, f"refused: {detail}" if ok else detail)


@case("5-push-component-symlink-to-outside")
def _c(d, log):
    need("base")
    f = copytree(FX / "base", d / "run")
    outside = d / "outside_unet"
    shutil.move(str(f / "unet"), outside)
    cfg = json.loads((outside / "config.json").read_text())
    cfg["_outside"] = MARKER
    (outside / "config.json").write_text(json.dumps(cfg, indent=2))
    os.symlink(outside, f / "unet")
    e = d / "export"
    r = hf(["push", f, "--repo_id", "a/b", "--export_dir", e], d, log)
    copied = _scan_for_marker(e) if e.exists() else []
    if copied:
        return verdict(
            False, f"followed the unet symlink to outside: exported {copied[:3]}{' (status 0)' if r.rc == 0 else ''}"
        )
    if r.rc == 0:
        has_unet = (e / "unet").is_dir() and any((e / "unet").glob("*.safetensors"))
        return verdict(
            has_unet,
            "ran without following the link"
            if has_unet
            else "status 0 but the export has no unet weights (would not load)",
        )
    ok, detail = refusal(r)
    return verdict(ok, f"refused: {detail}" if ok else detail)


# ---- 6. Text from data -----------------------------------------------------------------------------------------


def _static_value(node):
    """Literal lists/tuples/strings/ints, with + and * of lists, as Python would compute them; else raise."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        a, b = _static_value(node.left), _static_value(node.right)
        return a + b if isinstance(node.op, ast.Add) else a * b
    return ast.literal_eval(node)


@case("6-card-of-hostile-class-names")
def _c(d, log):  # noqa: C901 (one case, its checks in order)
    need("images")
    data = copytree(FX / "hostile_cls", d / "cls")
    out = d / "run"
    r = train([*TINY, "--train_data_dir", data, "--class_conditional", "--output_dir", out], d, log)
    if r.rc != 0:
        ok, detail = refusal(r)
        return verdict(False, f"training refused the class names: {detail}" if ok else detail)
    if "pwned" in r.text:
        return verdict(False, "the class name's code ran during training")
    card = (out / "README.md").read_text()
    problems = []
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    if "<img" in card:
        outside = "<img" in re.sub(r"```.*?```", "", card, flags=re.S)
        problems.append("raw '<img' in the card" + ("" if outside else " (only inside the ```python block)"))
    labels = []
    for block in blocks:
        try:
            tree = ast.parse(block)
        except SyntaxError as e:
            problems.append(f"usage code does not parse ({e.msg}, line {e.lineno})")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "class_labels":
                        try:
                            labels.append(_static_value(kw.value))
                        except Exception:  # noqa: BLE001
                            problems.append("class_labels is not a literal")
    if not blocks:
        problems.append("no python usage block")
    elif not problems and not labels:
        problems.append("usage code has no class_labels")
    for value in labels:
        if set(value) != set(HOSTILE_NAMES):
            problems.append(f"class_labels {short(sorted(set(map(str, value))), 60)} are not the folder names")
    if problems:
        return verdict(False, "; ".join(problems))
    return verdict(True, "usage code parses, class_labels are the folder names, no raw <img")


# ---- 7. Every record is read through one reader ----------------------------------------------------------------

RECORDS = ("training_args.json", "evaluation.json", "distillation.json", "training_info.json")
STRING_FOR_NUMBER = {
    "training_args.json": ("num_train_timesteps", "a thousand"),
    "evaluation.json": ("metrics.bits_per_dim", "very low"),
    "distillation.json": ("steps", "one"),
    "training_info.json": ("global_step", "four"),
}
MISSING_KEY = {
    "training_args.json": "resolution",
    "evaluation.json": "metrics",
    "distillation.json": "teacher",
    "training_info.json": "global_step",
}


def _valid_record(folder, name):
    p = Path(folder) / name
    if p.is_file():
        return json.loads(p.read_text())
    if name == "distillation.json":
        return json.loads((FX / "prog" / "steps-2" / "distillation.json").read_text())
    if name == "evaluation.json":
        return json.loads((FX / "base_eval" / "evaluation.json").read_text())
    raise FileNotFoundError(p)


def _malform(folder, name, kind):
    p = Path(folder) / name
    if kind == "list":
        p.write_text("[1, 2, 3]\n")
        return
    rec = _valid_record(folder, name)
    if kind == "string-for-number":
        key, value = STRING_FOR_NUMBER[name]
        target = rec
        *path, last = key.split(".")
        for k in path:
            target = target[k]
        target[last] = value
    else:
        rec.pop(MISSING_KEY[name], None)
    p.write_text(json.dumps(rec, indent=2))


def _names_file(r, name):
    if r.rc == 0:
        return False, f"status 0: ran with the malformed {name} (a one-line refusal naming it was expected)"
    return refusal(r, names=(name,))


for _rec in RECORDS:
    for _kind in ("list", "string-for-number", "missing-key"):

        @case(f"7-{_rec.split('.')[0]}-{_kind}-push-export")
        def _c(d, log, rec=_rec, kind=_kind):
            need("base_eval", "prog")
            f = copytree(FX / "base_eval", d / "run")
            _malform(f, rec, kind)
            e = d / "export"
            r = hf(["push", f, "--repo_id", "a/b", "--export_dir", e], d, log)
            ok, detail = _names_file(r, rec)
            if ok and not is_empty_or_absent(e):
                return verdict(False, f"refused but left an export behind: {detail}")
            return verdict(ok, detail)

        @case(f"7-{_rec.split('.')[0]}-{_kind}-evaluate")
        def _c(d, log, rec=_rec, kind=_kind):
            need("base_eval", "prog")
            f = copytree(FX / "base_eval", d / "run")
            _malform(f, rec, kind)
            before = snapshot(f)
            r = hf(["evaluate", f, *EVAL_FAST], d, log)
            ok, detail = _names_file(r, rec)
            changed = tree_diff(before, snapshot(f))
            if r.rc != 0 and changed:
                return verdict(False, f"failed after writing part of its output: {changed}; {detail}")
            return verdict(ok, detail)

        @case(f"7-{_rec.split('.')[0]}-{_kind}-prog-from")
        def _c(d, log, rec=_rec, kind=_kind):
            need("base_eval", "prog")
            t = copytree(FX / "base_eval", d / "teacher")
            _malform(t, rec, kind)
            out = d / "prog"
            r = prog([*PROG1_ARGS, "--teacher", t, "--output_dir", out], d, log)
            ok, detail = _names_file(r, rec)
            if ok and list(out.glob("steps-*")):
                return verdict(False, f"refused after writing rounds: {detail}")
            return verdict(ok, detail)

        @case(f"7-{_rec.split('.')[0]}-{_kind}-prog-resume")
        def _c(d, log, rec=_rec, kind=_kind):
            need("base_eval", "prog")
            out = copytree(FX / "prog", d / "prog")
            _malform(out / "steps-2", rec, kind)
            before = snapshot(out)
            r = prog(
                [*PROG_ARGS, "--teacher", FX / "base", "--output_dir", out, "--resume_from_checkpoint", "latest"],
                d,
                log,
            )
            ok, detail = _names_file(r, rec)
            changed = tree_diff(before, snapshot(out))
            if r.rc != 0 and changed:
                return verdict(False, f"failed after changing the rounds: {changed}; {detail}")
            return verdict(ok, detail)


# ---- 8. Long work starts only when it can finish ---------------------------------------------------------------


def _refused_before_training(r, out):
    ok, detail = refusal(r)
    ckpts = list(Path(out).glob("checkpoints/checkpoint-*"))
    if ckpts:
        when = "status 0" if r.rc == 0 else f"then failed: {detail}"
        return verdict(False, f"trained to {ckpts[-1].name} first ({when})")
    return verdict(ok, f"refused before training: {detail}" if ok else detail)


@case("8-train-num_inference_steps-above-T")
def _c(d, log):
    out = d / "run"
    r = train([*TINY, "--num_train_timesteps", "100", "--num_inference_steps", "101", "--output_dir", out], d, log)
    return _refused_before_training(r, out)


@case("8-train-eval-fid-without-inception-weights")
def _c(d, log):
    out = d / "run"
    r = train([*TINY, "--eval_every", "2", "--eval_metrics", "fid", "--output_dir", out], d, log)
    return _refused_before_training(r, out)


@case("8-visualize-forward-scale-100000")
def _c(d, log):
    out = d / "forward.png"
    r = hf(
        ["visualize", "forward", "--scale", "100000", "--output", out, "--device", "cpu"],
        d,
        log,
        timeout=180,
        mem_gib=8,
    )
    ok, detail = refusal(r)
    if out.exists():
        return verdict(False, f"wrote a {out.stat().st_size}-byte image (status {r.rc})")
    if ok and r.seconds > 60:
        return verdict(False, f"refused only after {r.seconds:.0f}s of work: {detail}")
    return verdict(ok, detail)


@case("8-sample-batch_size-10000000")
def _c(d, log):
    need("base")
    f = copytree(FX / "base", d / "run")
    out = d / "grid.png"
    r = hf(
        ["sample", f, "--batch_size", "10000000", "--output", out, "--device", "cpu"], d, log, timeout=180, mem_gib=8
    )
    ok, detail = refusal(r)
    if r.rc == 0:
        return verdict(False, "status 0: accepted --batch_size 10000000 (with the default 16 images)")
    return verdict(ok, detail)


for _key, _value in (("clip_sample_range", 0), ("dynamic_thresholding_ratio", 2), ("steps_offset", 5000)):

    @case(f"8-sample-scheduler-config-{_key}")
    def _c(d, log, key=_key, value=_value):
        need("base")
        f = copytree(FX / "base", d / "run")
        p = f / "scheduler" / "scheduler_config.json"
        cfg = json.loads(p.read_text())
        cfg[key] = value
        if key == "dynamic_thresholding_ratio":
            cfg["thresholding"] = True  # the ratio is read only with thresholding on
        p.write_text(json.dumps(cfg, indent=2))
        out = d / "grid.png"
        r = hf(["sample", f, "--num_images", "2", "--output", out, "--device", "cpu"], d, log, timeout=180)
        if r.rc == 0:
            return verdict(False, f"status 0: sampled with {key}={value}")
        ok, detail = refusal(r)
        if out.exists():
            return verdict(False, f"refused after writing the grid: {detail}")
        started = bool(re.search(r"Sampling:\s+[1-9]\d*%", r.err))
        if ok and started:
            return verdict(False, f"refused only after sampling started: {detail}")
        return verdict(ok, detail)


# ----------------------------------------------------------------------------------------------------------------
# main


def run_case(item):
    cid, fn = item
    d = CASES_DIR / cid
    d.mkdir(parents=True, exist_ok=True)
    start = time.time()
    try:
        ok, reason = fn(d, d / "log.txt")
    except FixtureMissing as e:
        ok, reason = False, short(str(e))
    except Exception as e:  # noqa: BLE001
        with open(d / "log.txt", "a") as f:
            f.write(traceback.format_exc())
        ok, reason = False, short(f"harness error {type(e).__name__}: {e}")
    return cid, ok, reason, time.time() - start


def main():
    t0 = time.time()
    (WORK / "torch_home_empty").mkdir(parents=True)
    FX.mkdir(parents=True, exist_ok=True)
    CASES_DIR.mkdir(parents=True)
    print(f"# repo {REPO} (PYTHONPATH={REPO / 'src'}), work {WORK}", flush=True)

    build_fixture("images", fx_images)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(build_fixture, "base", fx_base), pool.submit(build_fixture, "run16", fx_run16)]
        for fu in futures:
            fu.result()
    if "base" in FIXTURE_ERRORS:
        FIXTURE_ERRORS.setdefault("prog", "needs base")
        FIXTURE_ERRORS.setdefault("base_eval", "needs base")
    else:
        with ThreadPoolExecutor(2) as pool:
            futures = [
                pool.submit(build_fixture, "prog", fx_prog),
                pool.submit(build_fixture, "base_eval", fx_base_eval),
            ]
            for fu in futures:
                fu.result()
    for name, err in FIXTURE_ERRORS.items():
        print(f"# fixture {name} FAILED: {err}", flush=True)
    print(f"# fixtures ready in {time.time() - t0:.0f}s (log {FX / 'log.txt'})", flush=True)

    selected = [c for c in CASES if not ARGS.k or any(k in c[0] for k in ARGS.k)]
    results = []
    with ThreadPoolExecutor(max(1, ARGS.jobs)) as pool:
        for cid, ok, reason, secs in pool.map(run_case, selected):
            results.append((cid, ok, secs))
            print(f"{'PASS' if ok else 'FAIL'} {cid} {reason}", flush=True)
    passed = sum(ok for _, ok, _ in results)
    slow = sorted(results, key=lambda x: -x[2])[:5]
    print("# slowest: " + ", ".join(f"{cid} {secs:.0f}s" for cid, _, secs in slow), flush=True)
    print(
        f"# {len(results)} cases: {passed} PASS, {len(results) - passed} FAIL in {time.time() - t0:.0f}s", flush=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
