"""argparse types carrying the range of every number on the command line (issue 26: validation at the
boundary). A value out of range is refused while the line is parsed, in one line naming the option and
the range: `error: clinpeft evaluate: argument --batch-size: 0 is out of range; give an integer of 1 or more`.

The same ranges as the config's types (config.Seed, counts >= 1); stdlib only, so --help stays instant.
tests/test_fault_suite.py walks every option of the parser and fails on a number without one of these.
"""

from __future__ import annotations

import argparse
import math

SEED_MAX = 2**32 - 1  # numpy's seeds are 0 .. 2**32 - 1


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not an integer") from None


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def count(minimum: int = 1):
    """An integer >= minimum (a count: batch size, notes, trials, workers, resamples)."""

    def parse(text: str) -> int:
        value = _integer(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is out of range; give an integer of {minimum} or more")
        return value

    parse.__name__ = f"count>={minimum}"
    parse.range = (minimum, None)  # read by the generated fault suite
    return parse


def seed(text: str) -> int:
    """A seed numpy accepts: 0 .. 2**32 - 1."""
    value = _integer(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{value} is out of range; give a seed from 0 to {SEED_MAX}")
    return value


seed.range = (0, SEED_MAX)


def fraction(text: str) -> float:
    """A probability strictly between 0 and 1 (a threshold, a specificity, a held-out share)."""
    value = _finite(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is out of range; give a number between 0 and 1 (both excluded)")
    return value


fraction.range = (0.0, 1.0)
