"""Options declared once (`hfddpm.arguments`): a field's type, choices and interval check a value from Python, a
config file and the command line alike, and write the command line's help."""

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

from hfddpm.arguments import add_options, check_options, checked_integer, checked_number, in_interval, option


@dataclasses.dataclass(kw_only=True)
class Options:
    name: str = option(help="a name", positional=True)
    count: int = option(3, "a count", interval="[1, inf)", group="numbers")
    rate: float | None = option(None, "a rate", interval="(0, 1]", group="numbers")
    kind: Literal["a", "b"] = option("a", "a choice")
    sizes: list[Literal[1, 3]] | None = option(None, "choices, several")
    switch: bool = option(False, "off by default")
    on: bool = option(True, "on by default")

    def __post_init__(self):
        check_options(self)


def test_intervals_are_read_as_written():
    assert in_interval(0.0, "[0, 1)") and not in_interval(1.0, "[0, 1)") and not in_interval(0.0, "(0, 1]")
    assert in_interval(1e300, "[1, inf)") and not in_interval(math.inf, "[1, inf)")  # infinities are never in
    assert not in_interval(math.nan, "(-inf, inf)")


def test_one_value_is_refused_in_one_line_naming_it():
    assert checked_integer("steps", np.int64(5), 1, 10) == 5 and checked_integer("steps", torch.tensor(5)) == 5
    with pytest.raises(TypeError, match=r"steps must be an integer, got True \(bool\)"):  # a switch, not a count
        checked_integer("steps", True)
    with pytest.raises(ValueError, match=r"steps must be in \[1, 10\], got 11"):
        checked_integer("steps", 11, 1, 10)
    assert checked_number("eta", np.float32(0.5), "[0, 1]") == 0.5
    with pytest.raises(ValueError, match=r"eta must be a finite number in \[0, 1\] \(0 is DDIM\), got 1.5"):
        checked_number("eta", 1.5, "[0, 1]", "0 is DDIM")


def test_fields_are_checked_and_made_plain_values():
    options = Options(name=Path("x"), count=np.int64(4), rate=np.float32(0.5), sizes=(1, 3))
    assert (options.name, options.count, options.rate, options.sizes) == ("x", 4, 0.5, [1, 3])
    assert [type(options.count), type(options.rate)] == [int, float]


@pytest.mark.parametrize(
    "values, error, words",
    [
        ({"count": 0}, ValueError, r"--count must be in \[1, inf\), got 0"),
        ({"rate": math.nan}, ValueError, r"--rate must be in \(0, 1\], got nan"),
        ({"count": "4"}, TypeError, r"--count must be int, got '4' \(str\)"),
        ({"count": True}, TypeError, r"--count must be int, got True"),
        ({"rate": "x"}, TypeError, r"--rate must be float or None"),
        ({"kind": "c"}, ValueError, r"--kind must be one of \['a', 'b'\], got 'c'"),
        ({"sizes": [2]}, ValueError, r"--sizes must be one of \[1, 3\], got 2"),
        ({"switch": "yes"}, TypeError, r"--switch must be bool, got 'yes'"),
    ],
)
def test_a_value_of_the_wrong_kind_or_out_of_range_is_refused_naming_its_flag(values, error, words):
    with pytest.raises(error, match=words):
        Options(name="x", **values)


def test_the_command_line_is_written_from_the_fields():
    parser = argparse.ArgumentParser()
    add_options(parser, Options)
    given = vars(parser.parse_args(["me", "--count", "5", "--sizes", "1", "3", "--switch", "--no-on"]))
    assert Options(**given) == Options(name="me", count=5, sizes=[1, 3], switch=True, on=False)
    assert vars(parser.parse_args(["me"])) == {"name": "me"}  # flags not given keep the dataclass's default
    help_text = parser.format_help()
    assert "a count; in [1, inf); default 3" in help_text and "numbers:" in help_text  # the group's title
    with pytest.raises(SystemExit):  # argparse refuses a choice that is not one
        parser.parse_args(["me", "--kind", "c"])
