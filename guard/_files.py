"""Writing files atomically: a hidden temp file beside the target, renamed over it, removed on any failure.

    >>> from guard._files import temp_beside
    >>> with temp_beside(out) as tmp:                   # doctest: +SKIP
    ...     tmp.write_text(data)
    ...     os.replace(tmp, out)                         # readers see the old file or the new one, never half
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["temp_beside", "write_text_atomic"]


@contextlib.contextmanager
def temp_beside(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A fresh hidden path in `path`'s folder (same filesystem, so `os.replace` onto `path` is atomic).

    Whatever is left at the temp path on the way out (an error, or a caller that did not rename it) is
    removed.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
    try:
        yield tmp
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` through a temp file beside it and `os.replace`: readers see the old file or the
    new one, never a part. OSError propagates (callers turn it into their one-line error)."""
    with temp_beside(path) as tmp:
        tmp.write_text(text, encoding=encoding)
        os.replace(tmp, path)
