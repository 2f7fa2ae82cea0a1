"""guard's command line: a thin typed layer over the library.

Every command module registers itself on `app` (or a sub-app) and maps library errors to exit codes
with `exit_on_error`. Data goes to stdout (or --out); progress and logs go to stderr.

Exit codes (independent of --format) are `guard.errors.ExitCode`: 0 some image watermarked / success;
1 none watermarked; 2 usage, config, model or key error; 3 some files could not be read (their error
rows are written); 4 internal error (an unexpected exception: one line, never 0 or 1); 130 interrupted.
"""

from __future__ import annotations

import os
import sys
import threading

import typer

from ..errors import ExitCode
from ._common import CLI_EXCEPTIONS, app, internal_error, stderr

# Command modules register on import.
from . import keygen_cmd, watermark_cmd, detect_cmd, erase_cmd  # noqa: E402,F401
from . import eval_cmd  # noqa: E402,F401
from . import provenance_cmd  # noqa: E402,F401


def main() -> None:
    """The `guard` console script: run the app and map every way out to an `ExitCode`.

    Click's own handling would exit 1 ("no image watermarked") on a Ctrl-C outside a command's error
    mapping and print a traceback for a bug; here a Ctrl-C is 130, a usage error 2 and a bug 4. When a
    decoding thread is still blocked in a read after an abort (second Ctrl-C), the process exits at once
    instead of waiting for it.
    """
    code: int = ExitCode.INTERNAL
    try:
        rv = app(standalone_mode=False)
        code = rv if isinstance(rv, int) else ExitCode.OK
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (ExitCode.OK if e.code is None else ExitCode.USAGE)
    except KeyboardInterrupt:
        stderr.print("interrupted", markup=False)
        code = ExitCode.INTERRUPTED
    except CLI_EXCEPTIONS as e:
        if type(e).__name__ == "Abort":                     # click/typer's wrapper of a Ctrl-C
            stderr.print("interrupted", markup=False)
            code = ExitCode.INTERRUPTED
        elif type(e).__name__ == "Exit":
            code = int(getattr(e, "exit_code", ExitCode.OK))
        else:                                               # usage errors (bad option, missing argument)
            show = getattr(e, "show", None)
            if show is not None:
                show()
            else:
                stderr.print(f"error: {e}", markup=False)
            code = ExitCode.USAGE
    except Exception as e:  # noqa: BLE001 - the CLI boundary
        code = internal_error(e)
    if any(t.name.startswith("guard-decode") and t.is_alive() for t in threading.enumerate()):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(int(code))
    sys.exit(int(code))


__all__ = ["app", "main"]
