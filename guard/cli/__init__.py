"""guard's command line: a thin typed layer over the library.

Every command module registers itself on `app` (or a sub-app) and maps library errors to exit codes
with `exit_on_error`. Data goes to stdout (or --out); progress and logs go to stderr.

Exit codes (independent of --format) are `guard.errors.ExitCode`: 0 some image watermarked / success;
1 none watermarked; 2 usage, config, model or key error; 3 some files could not be read (their error
rows are written); 130 interrupted.
"""

from __future__ import annotations

import typer

from ._common import app

# Command modules register on import.
from . import keygen_cmd, watermark_cmd, detect_cmd, erase_cmd  # noqa: E402,F401
from . import eval_cmd  # noqa: E402,F401
from . import provenance_cmd  # noqa: E402,F401


def main() -> None:
    app()


__all__ = ["app", "main"]
