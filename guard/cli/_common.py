"""Shared pieces of the CLI: the root app, the error-to-exit-code mapping (`guard.errors.ExitCode`), stderr console."""

from __future__ import annotations

import contextlib
import enum
import sys
from collections.abc import Iterator

import typer
from rich.console import Console

from ..errors import ConfigError, ExitCode, GuardError, KeyFileError, ModelError

app = typer.Typer(
    name="guard",
    help="Watermark, detect and erase concepts in autoregressive image generators.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def choices(name: str, values: str) -> type[enum.Enum]:
    """A fixed set of option values as typer wants it: a str Enum whose members are named by their values.

    >>> Format = choices("Format", "jsonl csv table")
    >>> Format.csv.value
    'csv'
    """
    return enum.Enum(name, {v: v for v in values.split()}, type=str, module=__name__)


Test = choices("Test", "distinct tokens")
"""The detection test: 'distinct' (exact) or 'tokens' (approximate); `guard detect`, `calibrate` and `eval`."""


def info(msg: str) -> None:
    """A log line on stderr (never data)."""
    stderr.print(msg, markup=False)


@contextlib.contextmanager
def exit_on_error() -> Iterator[None]:
    """Turn guard's errors into one clear stderr line and `ExitCode.USAGE`; Ctrl-C into `ExitCode.INTERRUPTED`."""
    try:
        yield
    except (ConfigError, KeyFileError, ModelError, GuardError) as e:
        stderr.print(f"error: {e}", markup=False)
        raise typer.Exit(ExitCode.USAGE) from None
    except KeyboardInterrupt:
        stderr.print("interrupted", markup=False)
        raise typer.Exit(ExitCode.INTERRUPTED) from None


def is_tty_stderr() -> bool:
    return sys.stderr.isatty()
