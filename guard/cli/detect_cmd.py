"""`guard detect folder|image` and `guard calibrate`: detection records and false-positive calibration.

    guard detect folder generated/ --key my.key --recursive --out results.jsonl
    guard detect folder generated/ --key my.key --out results.jsonl --resume        # after an interruption
    guard detect image suspicious.png --key my.key --search --heatmap heat.png --format table
    guard calibrate clean_photos/ --key my.key --out-plot qq.png
    guard detect folder uploads/ --key my.key --engine ray --num-workers 8 --out results.jsonl   # Ray Data
    guard detect manifest uploads.parquet --key my.key --engine ray --address auto --out results.jsonl

Records go to stdout (or --out), one per image, flushed batch by batch; logs and progress go to stderr
(rich progress only on a TTY). Exit codes, independent of --format: 0 some image watermarked; 1 none;
2 usage, config, model or key error; 3 some files could not be read (their error rows are written and
the rest is scanned; 3 takes precedence over 0 and 1). Ctrl-C stops after the current batch: the rows
written stay complete and `--resume` continues where the scan stopped (exit 130).
"""

from __future__ import annotations

import contextlib
import enum
import json
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import ConfigError, ImageError, KeyFileError
from ._common import EXIT_UNREADABLE, app, exit_on_error, info, is_tty_stderr

detect_app = typer.Typer(help="Detect watermarks in image files (a folder, or files).", no_args_is_help=True)
app.add_typer(detect_app, name="detect")

EXIT_INTERRUPTED = 130


class Format(str, enum.Enum):
    jsonl = "jsonl"
    csv = "csv"
    table = "table"


class Test(str, enum.Enum):
    distinct = "distinct"
    tokens = "tokens"


class Engine(str, enum.Enum):
    local = "local"
    ray = "ray"


class ShardFormat(str, enum.Enum):
    jsonl = "jsonl"
    parquet = "parquet"


class CalFormat(str, enum.Enum):
    table = "table"
    json = "json"


KeysOpt = Annotated[list[Path] | None, typer.Option(
    "--key", help="Key file; repeat for several keys (attribution = the key with the smallest p, corrected over "
                  "all). Default: the default key under $XDG_CONFIG_HOME/guard/keys/ if it exists.")]
FormatOpt = Annotated[Format, typer.Option("--format", help="Output format (jsonl and csv are resumable).")]
TrustAnchorsOpt = Annotated[Path | None, typer.Option(
    "--trust-anchors", help="PEM root certificates whose signers count as trusted when reading each file's C2PA "
                            "Content Credentials (c2pa_state 'trusted' instead of 'valid').")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Write records to this file instead of stdout.")]
AlphaOpt = Annotated[float, typer.Option("--alpha", help="Significance level in (0, 1): watermarked when the "
                                                          "corrected p <= alpha.")]
SearchOpt = Annotated[bool, typer.Option("--search", help="Also try flips, 90° turns, ±2°/±5° rotations and "
                                                          "sub-cell crop offsets (corrected over all of them).")]
TestOpt = Annotated[Test, typer.Option("--test", help="'distinct' (exact, default) or 'tokens' (approximate "
                                                      "binomial on tokens; calibrate before trusting it).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Skip files already in --out and append the rest.")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="Image-decoding threads.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per tokenizer call.")]
ModelOpt = Annotated[str, typer.Option("--model", help="Model spec whose tokenizer re-quantizes images "
                                                       "('reference').")]
RecursiveOpt = Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders.")]
EngineOpt = Annotated[Engine, typer.Option("--engine", help="'local' (this process) or 'ray' (Ray Data: decode "
                                                            "tasks + a detection actor pool; needs the 'ray' "
                                                            "extra of ar-guard). Same records either way.")]
AddressOpt = Annotated[str | None, typer.Option("--address", help="Ray cluster to join (e.g. 'auto' or "
                                                                   "'ray://head:10001'); default: start a local "
                                                                   "cluster on this machine's cores. --engine ray.")]
NumWorkersOpt = Annotated[int | None, typer.Option("--num-workers", min=1, help="Detection actors (--engine ray; "
                                                                                 "default: the cluster's CPUs).")]
ShardFormatOpt = Annotated[ShardFormat, typer.Option("--shard-format", help="Format of the per-chunk shards in "
                                                                             "OUT.shards/ (--engine ray).")]


# ---------------------------------------------------------------------------------------------- helpers

def _load_key_files(key_paths: list[Path] | None) -> list:
    from ..keys import WatermarkKey, default_key_path

    if not key_paths:
        default = default_key_path()
        if not default.exists():
            raise KeyFileError(f"no --key given and no default key at {default}; pass --key FILE or create the "
                               f"default with `guard keygen`")
        key_paths = [default]
    keys = []
    for p in key_paths:
        key = WatermarkKey.load(p)
        keys.append(key)
        info(f"key {key.key_id} ({p}, K={key.n_lists}, gamma={key.gamma})")
    return keys


def _load_keys(key_paths: list[Path] | None, tokenizer: Any) -> list:
    from ..watermark import GreenLists

    return [GreenLists(key, tokenizer) for key in _load_key_files(key_paths)]


def _build_detector(keys, model: str, test: Test, alpha: float, search: bool, batch_size: int,
                    trust_anchors: Path | None = None):
    from ..detect import Detector
    from ..models import load_tokenizer
    from ..provenance import ManifestReader

    manifests = ManifestReader(trust_anchors)
    tok = load_tokenizer(model)
    lists = _load_keys(keys, tok)
    det = Detector(lists, tok, test=test.value, alpha=alpha, search=search, batch_size=batch_size,
                   provenance=manifests)
    info(f"{det.n_looks} looks per image ({sum(g.n_lists for g in lists)} lists x {len(det.transforms)} transforms); "
         f"test {test.value}{' (approximate)' if test is Test.tokens else ''}, alpha {alpha:g}")
    return det


class _StopOnSigint:
    """First Ctrl-C: finish the current batch and stop cleanly. Second: interrupt at once."""

    def __init__(self) -> None:
        self.stop = False
        self._old = None

    def _handler(self, signum, frame) -> None:
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True
        info("interrupt: stopping after the current batch (Ctrl-C again to abort now)")

    def __enter__(self) -> "_StopOnSigint":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


@contextlib.contextmanager
def _progress(total: int) -> Iterator:
    if not is_tty_stderr() or total == 0:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ._common import stderr

    with Progress(TextColumn("detect"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=stderr, transient=True) as prog:
        task = prog.add_task("detect", total=total)
        yield lambda n: prog.advance(task, n)


@contextlib.contextmanager
def _output(out: Path | None, fmt: Format, resume: bool) -> Iterator[tuple[Any, Any]]:
    from ..detect.scan import ResumeState, open_writer, read_resume_state

    state = ResumeState()
    if resume:
        if out is None:
            raise ConfigError("--resume needs --out FILE (the file to continue)")
        state = read_resume_state(out, fmt.value)
        if state.dropped_bytes:
            info(f"resume: dropped a partial last line ({state.dropped_bytes} bytes) from {out}")
        if state.n_rows:
            info(f"resume: {state.n_rows} rows already in {out}")
    if out is None:
        yield open_writer(sys.stdout, fmt.value), state
        return
    try:
        f = open(out, "a" if resume else "w", encoding="utf-8", newline="")
    except OSError as e:
        raise ConfigError(f"cannot write --out {out}: {e.strerror}") from None
    with f:
        fresh = not resume or (f.tell() == 0)
        yield open_writer(f, fmt.value, header=fresh), state


def _run_ray_scan(paths: list[str], *, keys, fmt: Format, out: Path | None, alpha: float, search: bool, test: Test,
                  resume: bool, batch_size: int, model: str, address: str | None, num_workers: int | None,
                  shard_format: ShardFormat) -> int:
    from ..detect.ray_engine import DetectorSpec, ray_scan

    spec = DetectorSpec(keys=tuple(_load_key_files(keys)), model=model, test=test.value, alpha=alpha, search=search,
                        batch_size=batch_size)
    det = spec.build()
    info(f"{det.n_looks} looks per image; test {test.value}{' (approximate)' if test is Test.tokens else ''}, "
         f"alpha {alpha:g}; engine ray ({address or 'local cluster'})")
    with _StopOnSigint() as stop, _progress(len(paths)) as adv:
        res = ray_scan(paths, spec, out=out, stream=sys.stdout if out is None else None, fmt=fmt.value,
                       shard_format=shard_format.value, resume=resume, num_workers=num_workers, address=address,
                       should_stop=lambda: stop.stop, on_batch=adv, info=info, detector=det)
    summary = res.summary
    for pid, w in sorted(res.workers.items()):
        info(f"worker {pid}: {w.images} images in {w.chunks} chunks, {w.images_per_s:.1f} images/s busy")
    info(f"{summary.n_rows} rows ({summary.n_new} new, {summary.n_skipped} skipped): {summary.n_watermarked} "
         f"watermarked, {summary.n_errors} unreadable" + (f"; shards in {res.shards_dir}" if res.shards_dir else ""))
    if summary.interrupted:
        info("interrupted: rerun with --resume --out FILE to continue")
        return EXIT_INTERRUPTED
    return summary.exit_code


def _run_scan(paths: list[str], *, keys, fmt: Format, out: Path | None, alpha: float, search: bool, test: Test,
              resume: bool, workers: int, batch_size: int, model: str, engine: Engine = Engine.local,
              address: str | None = None, num_workers: int | None = None,
              shard_format: ShardFormat = ShardFormat.jsonl, trust_anchors: Path | None = None) -> int:
    from ..detect.scan import scan

    if engine is Engine.ray:
        if trust_anchors is not None:
            raise ConfigError("--trust-anchors needs --engine local for now (Ray workers read Content Credentials "
                              "without trust anchors)")
        return _run_ray_scan(paths, keys=keys, fmt=fmt, out=out, alpha=alpha, search=search, test=test,
                             resume=resume, batch_size=batch_size, model=model, address=address,
                             num_workers=num_workers, shard_format=shard_format)
    if address is not None or num_workers is not None:
        raise ConfigError("--address and --num-workers need --engine ray")
    det = _build_detector(keys, model, test, alpha, search, batch_size, trust_anchors)
    with _output(out, fmt, resume) as (writer, state), _StopOnSigint() as stop, _progress(len(paths)) as adv:
        summary = scan(det, paths, writer, workers=workers, resume=state, should_stop=lambda: stop.stop,
                       on_batch=adv)
    info(f"{summary.n_rows} rows ({summary.n_new} new, {summary.n_skipped} skipped): {summary.n_watermarked} "
         f"watermarked, {summary.n_errors} unreadable")
    if summary.interrupted:
        info("interrupted: rerun with --resume --out FILE to continue")
        return EXIT_INTERRUPTED
    return summary.exit_code


# ---------------------------------------------------------------------------------------------- commands

@detect_app.command("folder")
def folder(
    directory: Annotated[Path, typer.Argument(help="Folder of images (files with image suffixes).")],
    key: KeysOpt = None,
    recursive: RecursiveOpt = False,
    format: FormatOpt = Format.jsonl,
    out: OutOpt = None,
    alpha: AlphaOpt = 1e-4,
    search: SearchOpt = False,
    test: TestOpt = Test.distinct,
    resume: ResumeOpt = False,
    workers: WorkersOpt = 4,
    batch_size: BatchOpt = 64,
    model: ModelOpt = "reference",
    engine: EngineOpt = Engine.local,
    address: AddressOpt = None,
    num_workers: NumWorkersOpt = None,
    shard_format: ShardFormatOpt = ShardFormat.jsonl,
    trust_anchors: TrustAnchorsOpt = None,
) -> None:
    """Detect the watermark in every image of a folder; one record per image."""
    from ..detect.scan import find_images

    with exit_on_error():
        paths = find_images(directory, recursive=recursive, on_skip=info)
        info(f"{len(paths)} image files in {directory}")
        code = _run_scan(paths, keys=key, fmt=format, out=out, alpha=alpha, search=search, test=test, resume=resume,
                         workers=workers, batch_size=batch_size, model=model, engine=engine, address=address,
                         num_workers=num_workers, shard_format=shard_format, trust_anchors=trust_anchors)
    raise typer.Exit(code)


@detect_app.command("manifest")
def manifest(
    list_file: Annotated[Path, typer.Argument(metavar="LIST", help="Path list: .txt (one per line), .csv/.tsv "
                                                                   "(header row) or .parquet; relative paths are "
                                                                   "relative to LIST's folder.")],
    column: Annotated[str, typer.Option("--column", help="Column holding the paths (CSV/TSV/Parquet).")] = "path",
    key: KeysOpt = None,
    format: FormatOpt = Format.jsonl,
    out: OutOpt = None,
    alpha: AlphaOpt = 1e-4,
    search: SearchOpt = False,
    test: TestOpt = Test.distinct,
    resume: ResumeOpt = False,
    workers: WorkersOpt = 4,
    batch_size: BatchOpt = 64,
    model: ModelOpt = "reference",
    engine: EngineOpt = Engine.local,
    address: AddressOpt = None,
    num_workers: NumWorkersOpt = None,
    shard_format: ShardFormatOpt = ShardFormat.jsonl,
    trust_anchors: TrustAnchorsOpt = None,
) -> None:
    """Detect the watermark in every file a path list names (any suffix); one record per file, in list order."""
    from ..detect.manifest import read_manifest

    with exit_on_error():
        paths = read_manifest(list_file, column)
        info(f"{len(paths)} paths in {list_file}")
        code = _run_scan(paths, keys=key, fmt=format, out=out, alpha=alpha, search=search, test=test, resume=resume,
                         workers=workers, batch_size=batch_size, model=model, engine=engine, address=address,
                         num_workers=num_workers, shard_format=shard_format, trust_anchors=trust_anchors)
    raise typer.Exit(code)


@detect_app.command("image")
def image(
    files: Annotated[list[Path], typer.Argument(help="Image files (any suffix).")],
    key: KeysOpt = None,
    format: FormatOpt = Format.jsonl,
    out: OutOpt = None,
    alpha: AlphaOpt = 1e-4,
    search: SearchOpt = False,
    test: TestOpt = Test.distinct,
    resume: ResumeOpt = False,
    workers: WorkersOpt = 4,
    batch_size: BatchOpt = 64,
    model: ModelOpt = "reference",
    heatmap: Annotated[Path | None, typer.Option("--heatmap", help="Save the image beside its token grid "
                                                                   "(green/red for the best list) as a PNG; "
                                                                   "needs exactly one FILE.")] = None,
    trust_anchors: TrustAnchorsOpt = None,
) -> None:
    """Detect the watermark in image files; one record per file."""
    with exit_on_error():
        paths = [str(f) for f in files]
        if heatmap is None:
            code = _run_scan(paths, keys=key, fmt=format, out=out, alpha=alpha, search=search, test=test,
                             resume=resume, workers=workers, batch_size=batch_size, model=model,
                             trust_anchors=trust_anchors)
            raise typer.Exit(code)
        if len(paths) != 1:
            raise ConfigError(f"--heatmap takes exactly one FILE, got {len(paths)}")
        if resume:
            raise ConfigError("--heatmap cannot be combined with --resume")
        from ..detect.heatmap import heatmap as make_heatmap

        det = _build_detector(key, model, test, alpha, search, batch_size, trust_anchors)
        with _output(out, format, False) as (writer, _):
            try:
                rec = make_heatmap(det, paths[0], heatmap)
                info(f"heat map written to {heatmap}")
            except ImageError as e:
                rec = det.error_record(paths[0], str(e))
            writer.write([rec])
        code = EXIT_UNREADABLE if rec.error else (0 if rec.watermarked else 1)
    raise typer.Exit(code)


@app.command("calibrate")
def calibrate(
    directory: Annotated[Path, typer.Argument(help="Folder of clean (unwatermarked) images.")],
    key: KeysOpt = None,
    out_plot: Annotated[Path | None, typer.Option("--out-plot", help="Write a QQ plot of the p-values (PNG).")] = None,
    test: TestOpt = Test.distinct,
    recursive: RecursiveOpt = False,
    format: Annotated[CalFormat, typer.Option("--format", help="'table' or 'json' (with every p-value).")] =
    CalFormat.table,
    workers: WorkersOpt = 4,
    batch_size: BatchOpt = 64,
    model: ModelOpt = "reference",
) -> None:
    """Empirical false-positive rate at alpha 1e-1 … 1e-4 (Clopper–Pearson 95% CI) on clean images."""
    from ..detect.calibrate import calibrate_paths, qq_plot
    from ..detect.scan import find_images

    with exit_on_error():
        paths = find_images(directory, recursive=recursive, on_skip=info)
        info(f"{len(paths)} image files in {directory}")
        if not paths:
            raise ConfigError(f"no image files in {directory}")
        det = _build_detector(key, model, test, 1e-4, False, batch_size)
        with _progress(len(paths)) as adv:
            cal = calibrate_paths(det, paths, workers=workers, on_batch=adv)
        for w in cal.warnings:
            info(f"warning: {w}")
        if cal.n_errors:
            info(f"{cal.n_errors} files could not be read (skipped)")
        if out_plot is not None:
            qq_plot({"list 0 (raw p)": cal.log10_p_list0, "decision (corrected p)": cal.log10_p_decision}, out_plot,
                    title=f"QQ plot, {cal.n_images} clean images, test {cal.test}")
            info(f"QQ plot written to {out_plot}")
        if format is CalFormat.json:
            typer.echo(json.dumps(cal.to_dict(with_p=True)))
        else:
            typer.echo(f"{cal.n_images} clean images, test {cal.test}; FPR = share of p <= alpha, 95% Clopper-Pearson CI")
            typer.echo(f"{'alpha':>8} {'p':>10} {'positives':>10} {'FPR':>10} {'95% CI':>24}  note")
            for name, rows in (("decision", cal.decision), ("list 0", cal.list0)):
                for r in rows:
                    ci = f"[{r.ci_low:.2e}, {r.ci_high:.2e}]"
                    note = "" if r.enough else f"N < 3/alpha = {int(3 / r.alpha)}"
                    typer.echo(f"{r.alpha:>8.0e} {name:>10} {r.n_positive:>10} {r.fpr:>10.2e} {ci:>24}  {note}")
        code = EXIT_UNREADABLE if cal.n_errors else 0
    raise typer.Exit(code)
