"""`guard provenance show|test-cert`: read an image's Content Credentials (C2PA); make throwaway test certificates.

    guard provenance show wm/00000.png                                   # a readable table
    guard provenance show wm/00000.png --trust-anchors anchors.pem --format json
    guard provenance test-cert certs/                                    # chain.pem, signer.key, anchors.pem

`show` exit codes: 0 the file carries valid (or trusted) credentials; 1 it carries none, or invalid ones
(the table says why: state and status codes); 2 usage or config error; 3 the file cannot be read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ExitCode, ImageError
from ._common import app, choices, exit_on_error, info, stderr

provenance_app = typer.Typer(help="Content Credentials (C2PA): show a file's manifest; make test certificates.",
                             no_args_is_help=True)
app.add_typer(provenance_app, name="provenance")


ShowFormat = choices("ShowFormat", "table json")


TrustAnchorsOpt = Annotated[Path | None, typer.Option(
    "--trust-anchors", help="PEM file of root certificates to trust (e.g. your signing CA); without it a correct "
                            "signature reads 'valid', never 'trusted'.")]

_STATE_STYLE = {"trusted": "bold green", "valid": "green", "invalid": "bold red"}


def _table(path: Path, s) -> "object":
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"Content Credentials: {path}", show_header=False, title_justify="left", min_width=60)
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    if not s.present:
        t.add_row("manifest", Text("none" if s.present is False else f"not checked ({s.error})", style="yellow"))
        return t
    t.add_row("manifest", "present")
    t.add_row("validation", Text(s.state or "-", style=_STATE_STYLE.get(s.state or "", "")))
    t.add_row("status codes", "\n".join(s.status_codes) or "-")
    if s.error:
        t.add_row("error", s.error)
    t.add_row("signer", f"{s.signer or '-'}" + (f" (issuer: {s.issuer})" if s.issuer and s.issuer != s.signer else ""))
    t.add_row("signed at", s.signed_at or "- (no trusted timestamp)")
    t.add_row("claim generator", s.claim_generator or "-")
    t.add_row("title", s.title or "-")
    t.add_row("actions", ", ".join(s.actions) or "-")
    if s.created:
        t.add_row("source type", (s.digital_source_type or "-").rsplit("/", 1)[-1])
        t.add_row("software agent", s.software_agent or "-")
    t.add_row("soft binding", s.soft_binding_alg or "-")
    t.add_row("watermark key id", s.key_id or "-")
    if s.watermark_params:
        t.add_row("watermark params", ", ".join(f"{k}={v}" for k, v in s.watermark_params.items()))
    if s.ingredients:
        t.add_row("ingredients", ", ".join(s.ingredients))
    return t


@provenance_app.command("show")
def show(
    file: Annotated[Path, typer.Argument(help="Image file (PNG, JPEG, WebP, …).")],
    trust_anchors: TrustAnchorsOpt = None,
    format: Annotated[ShowFormat, typer.Option("--format", help="'table' (readable) or 'json' (the summary).")] =
    ShowFormat.table,
) -> None:
    """Show a file's Content Credentials: validation state, signer, actions, and the watermark key it names."""
    from ..provenance import ManifestReader

    with exit_on_error():
        reader = ManifestReader(trust_anchors)
        try:
            summary = reader.read(file)
        except ImageError as e:
            stderr.print(f"error: {e}", markup=False)
            raise typer.Exit(ExitCode.UNREADABLE) from None
        if format is ShowFormat.json:
            typer.echo(json.dumps({"path": str(file), **summary.to_dict()}, ensure_ascii=False))
        else:
            from rich.console import Console

            Console(highlight=False, soft_wrap=False).print(_table(file, summary))
    raise typer.Exit(ExitCode.OK if summary.present and summary.state in ("valid", "trusted") else ExitCode.NONE)


@provenance_app.command("test-cert")
def test_cert(
    out_dir: Annotated[Path, typer.Argument(help="Folder for chain.pem, signer.key (0600) and anchors.pem.")],
    name: Annotated[str, typer.Option("--name", help="The signer's common name.")] = "guard test signer",
) -> None:
    """Make a throwaway root CA and signer for trying --sign (trusted by nobody; never for real provenance)."""
    from ..provenance.testcerts import make_test_chain

    with exit_on_error():
        try:
            paths = make_test_chain(out_dir, common_name=name)
        except OSError as e:
            from ..errors import ConfigError

            raise ConfigError(f"cannot write test certificates to {out_dir}: {e.strerror}") from None
        for p in (paths.chain, paths.key, paths.anchors):
            typer.echo(str(p))
        info(f"test signer {name!r}: --sign {paths.chain} --sign-key {paths.key}; trust it with --trust-anchors "
             f"{paths.anchors}")
