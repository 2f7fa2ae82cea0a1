"""Shared pieces of the CLI: the root app, the error-to-exit-code mapping (`guard.errors.ExitCode`), stderr console."""

from __future__ import annotations

import contextlib
import enum
import os
import sys
import traceback
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

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

Dtype = choices("Dtype", "float32 bfloat16 float16")
"""Weights dtype of a real model's generator (`--dtype`); tokenizers always run in float32."""

MODEL_SPECS = ("reference[:DIR]", "janus:PATH", "emu3:PATH[@SIZE]", "llamagen:DIR[@SIZE]", "var:PATH[@SCALES]",
               "factory:package.module:callable")
"""Every built-in spec form, for --help (a test checks it against the registry)."""

MODEL_HELP = ("Model spec: " + ", ".join(f"'{escape(s)}'" for s in MODEL_SPECS) + " (or a kind added with "
              "guard.models.register_kind). PATH/DIR is a local checkpoint (never the hub); @SIZE the image size "
              "in pixels (emu3 default 720; llamagen default from the GPT file name, e.g. c2i_L_384.pt).")


def model_help(what: str) -> str:
    """--model help: what the model is used for, then every spec form."""
    return f"{what} {MODEL_HELP}"


DEVICE_HELP = ("Device: 'cpu', 'cuda', 'cuda:N' (default for real models: CUDA when available, else the CPU; the "
               "reference model: the CPU).")
DTYPE_HELP = "Generator weights dtype for real models (default: bfloat16 on CUDA, float32 on the CPU)."
TOKENIZER_HELP = ("Your own tokenizer: 'package.module:callable' returning a guard Tokenizer (importable on "
                  "PYTHONPATH); the same as --model factory:package.module:callable.")


def resolve_model(model: str, tokenizer: str | None, *, default: str = "reference") -> str:
    """The model spec from --model and --tokenizer (which means `factory:TARGET`); both at once is refused."""
    if tokenizer is None:
        return model
    if model != default:
        raise ConfigError(f"--tokenizer and --model are exclusive (--tokenizer {tokenizer} means "
                          f"--model factory:{tokenizer})")
    return f"factory:{tokenizer}"


SAMPLING_FALLBACK = {"cfg": 3.0, "temperature": 1.0, "top_k": None, "top_p": None}
"""Sampling settings of a generator that publishes none (the reference generator's own defaults)."""


def sampling_settings(generator: object, **given: object) -> dict:
    """cfg, temperature, top_k, top_p: each given value, else the generator's `sampling_defaults` (the
    checkpoint's generation config or the model's published defaults), else `SAMPLING_FALLBACK`."""
    published = dict(SAMPLING_FALLBACK)
    published.update(getattr(generator, "sampling_defaults", None) or {})
    return {k: (given[k] if given.get(k) is not None else published.get(k)) for k in SAMPLING_FALLBACK}


def info(msg: str) -> None:
    """A log line on stderr (never data)."""
    stderr.print(msg, markup=False)


def _cli_exceptions() -> tuple[type[BaseException], ...]:
    """The exceptions typer and click use to end a command (exit, abort, usage errors): never "internal"."""
    out: list[type[BaseException]] = [typer.Exit, typer.Abort, getattr(typer, "TyperException", typer.Exit)]
    try:
        import click
    except ImportError:  # typer >= 0.29 vendors its own click
        pass
    else:
        out += [click.exceptions.Exit, click.exceptions.Abort, click.exceptions.ClickException]
    return tuple(out)


CLI_EXCEPTIONS = _cli_exceptions()


def internal_error(e: BaseException) -> int:
    """Report an unexpected exception as one stderr line (the traceback too with GUARD_DEBUG=1); `ExitCode.INTERNAL`."""
    if os.environ.get("GUARD_DEBUG"):
        traceback.print_exception(e, file=sys.stderr)
    msg = " ".join(str(e).split())[:500]
    stderr.print(f"internal error: {type(e).__name__}{': ' + msg if msg else ''} (a bug: please report it; "
                 f"GUARD_DEBUG=1 shows the traceback)", markup=False)
    return ExitCode.INTERNAL


@contextlib.contextmanager
def exit_on_error() -> Iterator[None]:
    """Turn guard's errors into one clear stderr line and `ExitCode.USAGE`; Ctrl-C into `ExitCode.INTERRUPTED`;
    any other exception (a bug) into one line and `ExitCode.INTERNAL` — never 0 or 1."""
    try:
        yield
    except CLI_EXCEPTIONS:
        raise
    except (ConfigError, KeyFileError, ModelError, GuardError) as e:
        stderr.print(f"error: {e}", markup=False)
        raise typer.Exit(ExitCode.USAGE) from None
    except KeyboardInterrupt:
        stderr.print("interrupted", markup=False)
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    except Exception as e:  # noqa: BLE001 - the CLI boundary: a crash must not read as "not watermarked"
        raise typer.Exit(internal_error(e)) from None


def refuse_clobber(option: str, target: Path | None, *, inputs: Iterable[str | os.PathLike] = (),
                   protected: Sequence[tuple[str, str | os.PathLike | None]] = ()) -> None:
    """Raise ConfigError if the file `option` would write (`target`) is an input or a protected file.

    Compared by resolved real path and, for existing files, by device and inode (hard links).

    Args:
        option: the option's name for the message ("--out").
        target: the file to be written (None: nothing to check).
        inputs: the files the command reads.
        protected: (what, path) of other files it must never write, e.g. ("the key file", key).
    """
    if target is None:
        return
    real = os.path.realpath(target)
    ident = _ident(target)
    for what, p in protected:
        if p is not None and (os.path.realpath(p) == real or (ident is not None and _ident(p) == ident)):
            raise ConfigError(f"{option} {target} is {what} ({p}); choose another file")
    for p in inputs:
        if os.path.realpath(p) == real or (ident is not None and _ident(p) == ident):
            raise ConfigError(f"{option} {target} is an input ({os.fsdecode(p)}); choose another file")


def _ident(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def is_tty_stderr() -> bool:
    return sys.stderr.isatty()
