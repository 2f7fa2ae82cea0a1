"""The `factory` model kind: a tokenizer (or generator) made by your own Python callable.

For a hand-written sampling loop (your own model, a LlamaGen or VAR checkout driven by its own scripts),
guard needs only the loop's VQ tokenizer to make keys and to detect. Expose it as a function that takes no
arguments and returns an object with guard's `Tokenizer` attributes (`id`, `vocab_size`, `grid`,
`image_size`, `encode`, `decode`; optionally `alive`, `embeddings`, `scales`), importable on `PYTHONPATH`:

    # mypkg/guard_tok.py
    def make():
        return MyVQTokenizer("/models/vq.pt")

    guard keygen --tokenizer mypkg.guard_tok:make --out my.key          # = --model factory:mypkg.guard_tok:make
    # in your loop: GreenLists(WatermarkKey.load("my.key"), make()) and guard.models.loops.hook_sampler
    guard detect folder out/ --key my.key --tokenizer mypkg.guard_tok:make

If the callable returns a `Generator` (an object with `tokenizer` and `generate`), `guard watermark
generate --model factory:...` runs it too. A missing module, a missing name or an object lacking protocol
attributes is one `ModelError` line.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from ..errors import ConfigError, ModelError
from .registry import ModelKind

__all__ = ["KIND", "call_factory"]

_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def call_factory(target: str) -> Any:
    """Import `package.module:callable`, call it with no arguments and return the result (ModelError on failure)."""
    if not isinstance(target, str) or not _TARGET.match(target.strip()):
        raise ModelError(f"a factory is 'package.module:callable' (importable on PYTHONPATH), got {target!r}")
    mod_name, _, attr = target.strip().partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise ModelError(f"cannot import {mod_name!r} for factory {target!r} (missing module {e.name!r}); is its "
                         f"folder on PYTHONPATH?") from None
    except Exception as e:  # noqa: BLE001 - the user's module may fail in any way on import
        raise ModelError(f"importing {mod_name!r} for factory {target!r} failed: {type(e).__name__}: "
                         f"{' '.join(str(e).split())[:160]}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"{mod_name!r} has no attribute {attr!r} (factory {target!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"factory {target!r} is a {type(obj).__name__}, not a callable")
    try:
        return obj()
    except (ConfigError, ModelError):
        raise
    except Exception as e:  # noqa: BLE001 - one line, whatever the user's factory raised
        raise ModelError(f"factory {target!r} failed: {type(e).__name__}: {' '.join(str(e).split())[:160]}") from None


def _tokenizer_of(made: Any, target: str) -> Any:
    from .base import check_tokenizer_protocol

    tok = made.tokenizer if hasattr(made, "generate") and hasattr(made, "tokenizer") else made
    try:
        check_tokenizer_protocol(tok)
    except ConfigError as e:
        raise ModelError(f"factory {target!r}: {e}") from None
    return tok


def _load(path: str, spec: str) -> Any:
    made = call_factory(path)
    if not (hasattr(made, "generate") and hasattr(made, "tokenizer")):
        raise ModelError(f"factory {path!r} returns a tokenizer, not a generator: use it for keygen, posthoc and "
                         f"detect (--tokenizer {path}); watermark your own loop with guard.models.loops.hook_sampler")
    _tokenizer_of(made, path)
    return made


KIND = ModelKind(
    name="factory", spec="factory:package.module:callable",
    load=_load,
    load_tokenizer=lambda path, spec: _tokenizer_of(call_factory(path), path))
"""The `factory` model kind: your callable's tokenizer (and generator, if it returns one)."""
