"""The options every `clinpeft prepare DATASET` builder shares: where it writes, and how loudly."""

from __future__ import annotations

import argparse


def add_out_args(parser: argparse.ArgumentParser, out_help: str, quiet_help: str = "no progress bars",
                 out_type: type = str) -> None:
    """--out (required; `out_help` says what the folder holds), --overwrite and --quiet."""
    parser.add_argument("--out", required=True, type=out_type, help=out_help)
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    parser.add_argument("--quiet", action="store_true", help=quiet_help)
