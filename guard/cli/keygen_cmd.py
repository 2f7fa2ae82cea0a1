"""`guard keygen`: create a watermark key file (mode 0600) and print its key id."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from ..keys import MAX_LISTS, MIN_CODES_PER_SIDE, WatermarkKey, default_key_path
from ._common import DEVICE_HELP, TOKENIZER_HELP, app, exit_on_error, info, model_help, resolve_model


@app.command("keygen")
def keygen(
    out: Annotated[Path | None, typer.Option("--out", help="Key file to write (default: the default key, "
                                              "$XDG_CONFIG_HOME/guard/keys/default.json).")] = None,
    lists: Annotated[int, typer.Option("--lists", help=f"Number of green lists K in the key's pool (1 to "
                                                         f"{MAX_LISTS}).")] = 8,
    gamma: Annotated[float, typer.Option("--gamma", help=f"Green-list fraction, strictly between 0 and 1, leaving at "
                                                         f"least {MIN_CODES_PER_SIDE} green and red codes per list."
                                         )] = 0.25,
    model: Annotated[str, typer.Option("--model", help=model_help("Whose tokenizer the key is bound to (its id and "
                                                                  "geometry)."))] = "reference",
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", help=TOKENIZER_HELP)] = None,
    device: Annotated[str | None, typer.Option("--device", help=DEVICE_HELP)] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing key file.")] = False,
) -> None:
    """Create a watermark key for a model's tokenizer; prints the key id (never the secret) on stdout.

    The key binds the tokenizer's id and geometry (image size, token grid, codebook size, scales): detection
    with another geometry is refused. For a hand-written loop, `--tokenizer package.module:callable` makes the
    key for your own tokenizer object; detect with the same option.
    """
    from ..models import load_tokenizer

    with exit_on_error():
        if not 1 <= lists <= MAX_LISTS:
            raise ConfigError(f"--lists must be between 1 and {MAX_LISTS}, got {lists}")
        tok = load_tokenizer(resolve_model(model, tokenizer), device=device)
        key = WatermarkKey.create(tok, gamma=gamma, n_lists=lists)
        path = key.save(out if out is not None else default_key_path(), overwrite=force)
        info(f"wrote key {key.key_id} (K={key.n_lists}, gamma={key.gamma}, tokenizer {key.tokenizer_id}, "
             f"{key.geometry}) to {path} with mode 0600")
    typer.echo(key.key_id)
