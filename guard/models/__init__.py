"""Model adapters: the `Tokenizer` / `Generator` protocols and `load(spec)`, the one entry point.

    >>> from guard.models import load
    >>> gen = load("reference")          # the embedded shapes generator (default everywhere)
"""

from __future__ import annotations

from .base import Generator, LogitsProcessorLike, Tokenizer

__all__ = ["Generator", "LogitsProcessorLike", "Tokenizer", "load", "load_tokenizer"]

SPEC_HELP = "'reference' (the embedded generator), 'janus:PATH', 'emu3:PATH' or 'emu3:PATH@SIZE' (local checkpoints)"


def load(spec: str = "reference") -> Generator:
    """Return the `Generator` named by `spec`; its `.tokenizer` is its `Tokenizer`.

    Raises `ModelError` for an unknown spec or missing/corrupt weights. `janus:PATH` / `emu3:PATH` load a
    local transformers checkpoint (never the hub); see `guard.models.janus` and `guard.models.emu3`.
    """
    from ..errors import ModelError

    kind, _, path = spec.partition(":")
    if kind == "reference" and not path:
        from .reference import load_reference

        return load_reference()
    if kind == "janus":
        from .janus import load_janus

        return load_janus(path, spec=spec)
    if kind == "emu3":
        from .emu3 import load_emu3

        return load_emu3(path, spec=spec)
    raise ModelError(f"unknown model spec {spec!r}; supported: {SPEC_HELP}")


def load_tokenizer(spec: str = "reference") -> Tokenizer:
    """Only the tokenizer of `spec` (detection needs no generator)."""
    from ..errors import ModelError

    kind, _, path = spec.partition(":")
    if kind == "reference" and not path:
        from .reference import load_tokenizer as _load

        return _load()
    if kind == "janus":
        from .janus import load_janus_tokenizer

        return load_janus_tokenizer(path, spec=spec)
    if kind == "emu3":
        from .emu3 import load_emu3_tokenizer

        return load_emu3_tokenizer(path, spec=spec)
    raise ModelError(f"unknown model spec {spec!r}; supported: {SPEC_HELP}")
