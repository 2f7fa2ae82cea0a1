"""guard's exception hierarchy. Catch at the level you care about.

    GuardError
    ├── ConfigError          bad argument or option value (CLI exit 2)
    ├── KeyFileError         missing, unreadable, tampered, too-open or mismatched key (CLI exit 2)
    ├── ModelError           model spec unknown, weights missing or corrupt (CLI exit 2)
    └── ImageError           an image could not be opened or decoded (an error row in scans)
"""

from __future__ import annotations

__all__ = ["GuardError", "ConfigError", "KeyFileError", "ModelError", "ImageError"]


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
