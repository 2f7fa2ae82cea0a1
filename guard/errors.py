"""guard's exception hierarchy. Catch at the level you care about.

    GuardError
    ├── ConfigError          bad argument or option value (CLI exit 2)
    ├── KeyFileError         missing, unreadable, tampered, too-open or mismatched key (CLI exit 2)
    ├── ModelError           model spec unknown, weights missing or corrupt (CLI exit 2)
    └── ImageError           an image could not be opened or decoded (an error row in scans)

`ExitCode` is the one table of the CLI's exit codes (DESIGN §7), independent of --format. Anything else
that escapes a command (a bug, not a bad input) is `ExitCode.INTERNAL`, never 0 or 1.
"""

from __future__ import annotations

import enum

__all__ = ["GuardError", "ConfigError", "KeyFileError", "ModelError", "ImageError", "ExitCode"]


class GuardError(Exception):
    """Base class of every error guard raises on purpose."""


class ConfigError(GuardError, ValueError):
    """An argument or option value is invalid."""


class KeyFileError(GuardError):
    """A watermark key file is missing, unreadable, tampered with, too open, or for another tokenizer."""


class ModelError(GuardError):
    """A model spec is unknown, or its weights are missing or corrupt."""


class ImageError(GuardError):
    """An image could not be opened or decoded."""


class ExitCode(enum.IntEnum):
    """What a `guard` command's exit status means; the only place these numbers are written.

    WATERMARKED (0): some image is watermarked (detection), or the command succeeded.
    NONE (1): no image is watermarked (detection), or a check found nothing valid.
    USAGE (2): usage, config, model or key error (`ConfigError`, `KeyFileError`, `ModelError`, `GuardError`).
    UNREADABLE (3): some files could not be read; their error rows are written, the rest is processed.
    INTERNAL (4): an unexpected error (a bug in guard or its dependencies): one line on stderr, the
        traceback with GUARD_DEBUG=1. Never 0 or 1, so a pipeline cannot read a crash as "not watermarked".
    INTERRUPTED (130): Ctrl-C; rows written so far are complete and `--resume` continues.
    """

    WATERMARKED = 0
    NONE = 1
    USAGE = 2
    UNREADABLE = 3
    INTERNAL = 4
    INTERRUPTED = 130

    OK = 0

    @classmethod
    def of_detection(cls, n_watermarked: int, n_errors: int) -> "ExitCode":
        """UNREADABLE if any file was unreadable, else WATERMARKED if any image is watermarked, else NONE."""
        if n_errors:
            return cls.UNREADABLE
        return cls.WATERMARKED if n_watermarked else cls.NONE
