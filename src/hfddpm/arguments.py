"""The values a user hands to hfddpm, checked where they enter: each refusal is one line naming the argument, what it
must be and the value given.

`checked_integer` and `checked_number` check one value (a scheduler's T, a sampling call's η). `option` declares a
field of an options dataclass — its help, and its choices or interval — from which `check_options` checks an
instance and `add_options` writes the command line: a bound is written once, for Python callers, configuration
files and the command line alike. A bool is neither a count nor a number (`True` would silently be 1), NumPy
numbers are numbers, and NaN and infinities are never in an interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal


def is_integer(value: Any) -> bool:
    """Whether `value` is an integer (NumPy's included) and not a bool, which is a switch, not a count."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether `value` is a real number (NumPy's included) and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def checked_integer(name: str, value: Any, low: int = 1, high: float = math.inf) -> int:
    """`value` as a plain int, refused unless it is an integer (not a bool; a 0-d tensor is its number) in [low,
    high]."""
    value = _scalar(value)
    if not is_integer(value):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {f'{high}]' if high < math.inf else 'inf)'}, got {value}")
    return int(value)


def checked_number(name: str, value: Any, interval: str = "(-inf, inf)", meaning: str = "") -> float:
    """`value` as a plain float, refused unless it is a finite real number in `interval` (written as in
    mathematics, "[0, 1)"); `meaning`, if given, says in the message what the values mean."""
    value = _scalar(value)
    if not is_number(value):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not in_interval(float(value), interval):
        raise ValueError(
            f"{name} must be a finite number in {interval}{f' ({meaning})' if meaning else ''}, got {value}"
        )
    return float(value)


def in_interval(value: float, interval: str) -> bool:
    """Whether `value` is finite and lies in `interval`, e.g. "(0, 1]" or "[1, inf)"."""
    low, high = (float(end) for end in interval[1:-1].split(","))
    above = low <= value if interval[0] == "[" else low < value
    below = value <= high if interval[-1] == "]" else value < high
    return math.isfinite(value) and above and below


def check_fits_in_memory(nbytes: int, what: str) -> None:
    """Refuse, in one line naming the size, to allocate `nbytes` for `what` when the memory available now (Linux's
    MemAvailable, else the physical memory) is smaller: a size that cannot fit fails before the work, not after."""
    try:
        with open("/proc/meminfo") as meminfo:
            available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if nbytes > available:
        raise ValueError(
            f"{what} needs {nbytes / 2**30:.1f} GiB of memory, and {available / 2**30:.1f} GiB are available; ask "
            "for fewer or smaller images"
        )


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message, for a one-line error; its type's name when it has no message."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _scalar(value: Any) -> Any:
    """A 0-d tensor or array as its Python number (diffusers users pass `torch.tensor(0.5)`); anything else as is."""
    return value.item() if getattr(value, "ndim", None) == 0 and hasattr(value, "item") else value


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    interval: str | None = None,
    positional: bool = False,
    group: str | None = None,
    path: Literal["input", "output", "owned"] | None = None,
    defines_run: bool = False,
) -> Any:
    """A field of an options dataclass that is also a command-line argument (`--name`, or `name` if `positional`):
    its `help`, the `interval` its number must lie in, and the help `group` it is listed under. Choices are the
    field's `Literal` type. A `path` is a file or folder the command reads ("input"), writes ("output"), or owns
    ("owned": writes, and may delete what it wrote there): `check_options` keeps them apart. An option that
    `defines_run` may not change when a training run resumes."""
    metadata = {"help": help, "interval": interval, "positional": positional, "group": group, "path": path}
    metadata["defines_run"] = defines_run
    return dataclasses.field(default=default, metadata=metadata)


def check_options(options: Any) -> None:
    """Check every field of the dataclass instance `options` against its type, choices and interval, in place:
    NumPy numbers and paths become plain int, float and str (options are recorded as JSON)."""
    hints = typing.get_type_hints(type(options))
    for field in dataclasses.fields(options):
        value = _conformed(field.name, getattr(options, field.name), hints[field.name])
        interval = field.metadata.get("interval")
        if interval and value is not None and not in_interval(value, interval):
            raise ValueError(f"--{field.name} must be in {interval}, got {value}")
        setattr(options, field.name, value)
    check_inputs_apart(options)


def check_inputs_apart(options: Any) -> None:
    """Refuse options whose output is, or lies in, a file or folder they read — and whose owned folder holds one:
    a command never writes into, replaces or deletes its own input (a teacher, a dataset, the checkpoint it
    exports)."""
    paths: dict[str, list[tuple[str, Path]]] = {"input": [], "output": [], "owned": []}
    for field in dataclasses.fields(options):
        if (role := field.metadata.get("path")) and isinstance(value := getattr(options, field.name), str):
            name = field.name if field.metadata["positional"] else f"--{field.name}"
            paths[role].append((f"{name} {value}", Path(value).expanduser().resolve()))
    for read, source in paths["input"]:
        if not source.exists():  # a Hub name, or absent: nothing local to overwrite
            continue
        for written, target in paths["output"] + paths["owned"]:
            if target == source or source in target.parents:
                where = "is" if target == source else "lies in"
                raise ValueError(f"{written} {where} {read}, which it reads; write it somewhere else")
        for written, target in paths["owned"]:
            if target in source.parents:
                raise ValueError(f"{written} holds {read}, which it reads and may replace; keep them apart")


def _kinds(hint: Any) -> tuple:
    """The types a hint admits: `int | None` → (int, NoneType)."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _conformed(name: str, value: Any, hint: Any) -> Any:
    """`value` in the plain form of one of the types `hint` admits, or a one-line refusal."""
    kinds = _kinds(hint)
    for kind in kinds:
        if kind is type(None) and value is None or kind is bool and isinstance(value, bool):
            return value
        if kind is int and is_integer(value):
            return int(value)
        if kind is float and is_number(value):
            return float(value)
        if kind is str and isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        if typing.get_origin(kind) is list and isinstance(value, (list, tuple)):
            return [_conformed(name, item, typing.get_args(kind)[0]) for item in value]
        if typing.get_origin(kind) is Literal and value in typing.get_args(kind):
            return value
    choices = [choice for kind in kinds if typing.get_origin(kind) is Literal for choice in typing.get_args(kind)]
    if choices:
        raise ValueError(f"--{name} must be one of {choices}, got {value!r}")
    expected = " or ".join(getattr(kind, "__name__", str(kind)) for kind in kinds).replace("NoneType", "None")
    raise TypeError(f"--{name} must be {expected}, got {value!r} ({type(value).__name__})")


def add_options(parser: argparse.ArgumentParser, options_class: type) -> None:
    """Add every field of `options_class` to `parser`, typed from its annotation, with its choices, its interval
    and its default in the help. Flags given nowhere keep the dataclass's default (the one place it is written)."""
    hints = typing.get_type_hints(options_class)
    groups: dict[str | None, Any] = {None: parser}
    for field in dataclasses.fields(options_class):
        metadata, kind = field.metadata, next(k for k in _kinds(hints[field.name]) if k is not type(None))
        group = groups.get(metadata.get("group")) or groups.setdefault(
            metadata["group"], parser.add_argument_group(metadata["group"])
        )
        kwargs: dict[str, Any] = {"help": _help(field, kind)}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if field.default is True else "store_true"
        elif typing.get_origin(kind) is Literal:
            kwargs.update(choices=typing.get_args(kind), type=type(typing.get_args(kind)[0]))
        elif typing.get_origin(kind) is list:
            item = typing.get_args(kind)[0]
            choices = typing.get_args(item) if typing.get_origin(item) is Literal else None
            kwargs.update(nargs="+", type=type(choices[0]) if choices else item, choices=choices)
        else:
            kwargs["type"] = kind
        required = field.default is dataclasses.MISSING
        if metadata.get("positional"):
            group.add_argument(field.name, **kwargs, **({} if required else {"nargs": "?"}), default=argparse.SUPPRESS)
        else:
            group.add_argument(f"--{field.name}", **kwargs, required=required, default=argparse.SUPPRESS)


def _help(field: dataclasses.Field, kind: Any) -> str:
    parts = [field.metadata.get("help") or ""]
    if field.metadata.get("interval"):
        parts.append(f"in {field.metadata['interval']}")
    if field.default not in (dataclasses.MISSING, None, False) and kind is not bool:
        parts.append(f"default {field.default}")
    return "; ".join(part for part in parts if part) or None


def parse_options(options_class: type, argv: list[str] | None = None, description: str | None = None) -> Any:
    """The command line `argv` as a checked `options_class` instance (argparse exits on an unknown flag)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser, options_class)
    return options_class(**vars(parser.parse_args(argv)))
