"""`guard detect folder|image` and `guard calibrate`: detection records and false-positive calibration.

    guard detect folder generated/ --key my.key --recursive --out results.jsonl
    guard detect folder generated/ --key my.key --out results.jsonl --resume        # after an interruption
    guard detect image suspicious.png --key my.key --search --heatmap heat.png --format table
    guard calibrate clean_photos/ --key my.key --out-plot qq.png
    guard detect folder uploads/ --key my.key --engine ray --num-workers 8 --out results.jsonl   # Ray Data
    guard detect manifest uploads.parquet --key my.key --engine ray --address auto --out results.jsonl
    guard calibrate --fingerprint real_photos/ --out calib.json       # key-free: scores of real images
    guard detect folder uploads/ --fingerprint calib.json --out results.jsonl      # with or without --key
    guard detect folder generated/ --key janus.key --model janus:/models/Janus-Pro-1B --device cuda:1

Records go to stdout (or --out), one per image, flushed batch by batch; logs and progress go to stderr
(rich progress only on a TTY). Exit codes (`guard.errors.ExitCode`), independent of --format: 0 some image
watermarked (or, with --fingerprint, a fingerprint hit); 1 none; 2 usage, config, model or key error; 3 some
files could not be read (their error rows are written and the rest is scanned; 3 takes precedence over 0 and
1); 4 internal error. Ctrl-C stops after the current batch: the rows written stay complete and `--resume`
continues where the scan stopped (exit 130); a second Ctrl-C aborts at once (the unfinished batch is not
written).

`--out` never names an input, a key, the trust anchors or the path list; it is held under an exclusive
lock while the scan runs (a second scan on it exits 2), and its settings go to `<out>.settings.json`,
which `--resume` compares (keys, tokenizer, test, alpha, search, trust anchors, format; exit 2 on a
difference). Resume keys rows on the resolved real path (`guard.detect.scan`).

`--device` (also on `guard calibrate`) is where the tokenizers that re-quantize images run (the key's and
every `--fingerprint` calibration's; `guard.detect.DetectorSpec.device`): images are read on the CPU and
moved per batch, the statistics stay on the CPU, so the records are the same on any device. A bad or
missing device, or a model kind that takes none, exits 2 in one line, as for
`guard keygen`; `--engine ray` accepts only the CPU (its actors ask Ray for CPUs only).

`folder` and `manifest` take the same options (`ScanOptions`, declared once); `image` takes them but the
Ray ones. Every engine builds its detector with `guard.detect.DetectorSpec`, so `--trust-anchors` works
with `--engine ray` too.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import ConfigError, ExitCode, ImageError
from ._common import (DEVICE_HELP, TOKENIZER_HELP, Test, app, choices, exit_on_error, info, is_tty_stderr,
                      model_help, refuse_clobber, resolve_model)

detect_app = typer.Typer(help="Detect watermarks in image files (a folder, or files).", no_args_is_help=True)
app.add_typer(detect_app, name="detect")


Format = choices("Format", "jsonl csv table")
Engine = choices("Engine", "local ray")
ShardFormat = choices("ShardFormat", "jsonl parquet")
CalFormat = choices("CalFormat", "table json")


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
SearchOpt = Annotated[bool, typer.Option("--search", help="Also try flips, 90° turns, rotations of 1° to 10° either "
                                                          "way and sub-cell crop offsets (41 transforms, each corrected).")]
TestOpt = Annotated[Test, typer.Option("--test", help="'distinct' (exact, default) or 'tokens' (approximate "
                                                      "binomial on tokens; calibrate before trusting it).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Skip files already in --out (by real path) and append "
                                                          "the rest; refused if the settings differ.")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="Image-decoding threads.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per tokenizer call.")]
ModelOpt = Annotated[str, typer.Option("--model", help=model_help("Whose tokenizer re-quantizes images (at the "
                                                                  "geometry the key was made for)."))]
TokenizerOpt = Annotated[str | None, typer.Option("--tokenizer", help=TOKENIZER_HELP)]
DeviceOpt = Annotated[str | None, typer.Option("--device", help=DEVICE_HELP)]
RecursiveOpt = Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders.")]
EngineOpt = Annotated[Engine, typer.Option("--engine", help="'local' (this process) or 'ray' (Ray Data: decode "
                                                            "tasks + a detection actor pool; needs the 'ray' "
                                                            "extra of ar-guard). Same records either way.")]
AddressOpt = Annotated[str | None, typer.Option("--address", help="Ray cluster to join (e.g. 'auto' or "
                                                                   "'ray://head:10001'); default: start a local "
                                                                   "cluster on this machine's cores. --engine ray.")]
NumWorkersOpt = Annotated[int | None, typer.Option("--num-workers", min=1, help="Detection actors (--engine ray; "
                                                                                 "default: the cluster's CPUs).")]
FingerprintOpt = Annotated[list[Path] | None, typer.Option(
    "--fingerprint", help="Fingerprint calibration file (from `guard calibrate --fingerprint REAL_DIR --out FILE`): "
                          "key-free detection of images decoded by that tokenizer (fingerprint_* fields). Repeat "
                          "for several tokenizers: the record names the closest, its p corrected for the number "
                          "compared. With or without --key.")]
FingerprintAlphaOpt = Annotated[float, typer.Option(
    "--fingerprint-alpha", help="Fingerprint hit when the corrected fingerprint p <= this (the smallest p is "
                                "m/(n+1) for m calibrations of n real images).")]
ShardFormatOpt = Annotated[ShardFormat, typer.Option("--shard-format", help="Format of the per-chunk shards in "
                                                                             "OUT.shards/ (--engine ray).")]


# ---------------------------------------------------------------------------------------------- options

@dataclass
class ScanOptions:
    """The options every scanning command shares (`folder`, `manifest`; `image` takes all but the Ray ones)."""

    key: list[Path] | None = None
    format: Format = Format.jsonl
    out: Path | None = None
    alpha: float = 1e-4
    search: bool = False
    test: Test = Test.distinct
    resume: bool = False
    workers: int = 4
    batch_size: int = 64
    model: str = "reference"
    tokenizer: str | None = None
    device: str | None = None
    trust_anchors: Path | None = None
    fingerprint: list[Path] | None = None
    fingerprint_alpha: float = 1e-2
    engine: Engine = Engine.local
    address: str | None = None
    num_workers: int | None = None
    shard_format: ShardFormat = ShardFormat.jsonl


_SCAN_OPTION_TYPES = {"key": KeysOpt, "format": FormatOpt, "out": OutOpt, "alpha": AlphaOpt, "search": SearchOpt,
                      "test": TestOpt, "resume": ResumeOpt, "workers": WorkersOpt, "batch_size": BatchOpt,
                      "model": ModelOpt, "tokenizer": TokenizerOpt, "device": DeviceOpt,
                      "trust_anchors": TrustAnchorsOpt,
                      "fingerprint": FingerprintOpt, "fingerprint_alpha": FingerprintAlphaOpt, "engine": EngineOpt,
                      "address": AddressOpt, "num_workers": NumWorkersOpt, "shard_format": ShardFormatOpt}
RAY_OPTIONS = ("engine", "address", "num_workers", "shard_format")


def scan_command(name: str, *, without: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Register `fn(<its own arguments>, opts: ScanOptions)` as `guard detect NAME` with the shared options.

    The command's parameters are fn's own (its source of paths) followed by every `ScanOptions` field but
    those in `without`, each declared once in `_SCAN_OPTION_TYPES`; typer reads them from the signature.
    """
    def register(fn: Callable) -> Callable:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "opts"]
        shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=_SCAN_OPTION_TYPES[f.name],
                                    default=f.default) for f in fields(ScanOptions) if f.name not in without]

        def command(**kwargs: Any) -> None:
            opts = ScanOptions(**{p.name: kwargs.pop(p.name) for p in shared})
            fn(**kwargs, opts=opts)

        command.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in (*own, *shared)}
        command.__name__, command.__qualname__, command.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        detect_app.command(name)(command)
        return fn

    return register


# ---------------------------------------------------------------------------------------------- helpers

def _detector(opts: ScanOptions):
    """(spec, detector) from the one builder every engine uses (`guard.detect.DetectorSpec`)."""
    from ..detect import DetectorSpec
    from ..detect.fingerprint import FingerprintCalibration
    from ..keys import default_key_path, resolve_keys
    from ..provenance import ManifestReader

    cals = tuple(FingerprintCalibration.load(p) for p in opts.fingerprint or ())
    if cals and not opts.key and not default_key_path().exists():
        keys: tuple = ()                  # key-free detection only
    else:
        keys = tuple(resolve_keys(opts.key, log=info))
    spec = DetectorSpec(keys=keys, model=resolve_model(opts.model, opts.tokenizer), test=opts.test.value, alpha=opts.alpha, search=opts.search,
                        batch_size=opts.batch_size, provenance=ManifestReader(opts.trust_anchors),
                        fingerprints=cals, fingerprint_alpha=opts.fingerprint_alpha, device=opts.device)
    det = spec.build()
    info(spec.describe(det) + (f"; engine ray ({opts.address or 'local cluster'})" if opts.engine is Engine.ray
                               else ""))
    return spec, det


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


def _protected(opts: ScanOptions) -> list[tuple[str, Path | None]]:
    """Files a scan reads besides its images, which --out and --heatmap must never overwrite."""
    from ..keys import default_key_path

    return [*(("the key file", k) for k in (opts.key or [default_key_path()])),
            ("the trust anchors file", opts.trust_anchors),
            *(("a fingerprint calibration file", f) for f in (opts.fingerprint or ()))]


def _settings(opts: ScanOptions, det):
    """What the records of this scan depend on (`ScanSettings`), or None for the table format (not resumable)."""
    from ..detect.scan import ScanSettings

    if opts.format is Format.table:
        return None
    anchors = None
    if opts.trust_anchors is not None:
        try:
            anchors = hashlib.sha256(opts.trust_anchors.read_bytes()).hexdigest()
        except OSError as e:
            raise ConfigError(f"cannot read --trust-anchors {opts.trust_anchors}: {e.strerror}") from None
    return ScanSettings.of(det, opts.format.value, trust_anchors=anchors)


def _stdout_writer(fmt: Format):
    from ..detect.scan import open_writer

    if fmt is Format.csv:                   # CSV writes undecodable path bytes as they are
        with contextlib.suppress(AttributeError, ValueError, OSError):
            sys.stdout.reconfigure(errors="surrogateescape")
    return open_writer(sys.stdout, fmt.value)


def _rebase(paths: list[str], state) -> list[str]:
    """Resuming from another working directory than the output's first run: write absolute paths, so that
    every row's relative path stays relative to the folder recorded in the settings file."""
    if state.base is None or os.path.realpath(state.base) == os.path.realpath(os.getcwd()):
        return paths
    return [p if os.path.isabs(p) else os.path.abspath(p) for p in paths]


def _finish(summary, *, shards: str = "") -> int:
    info(f"{summary.n_rows} rows ({summary.n_new} new, {summary.n_skipped} skipped): {summary.n_watermarked} "
         f"watermarked, {summary.n_errors} unreadable" + shards)
    if summary.n_same_file:
        info(f"{summary.n_same_file} paths named a file listed already (same real path): one row each")
    if summary.interrupted:
        info("interrupted: rerun with --resume --out FILE to continue")
        return ExitCode.INTERRUPTED
    return summary.exit_code


def _run_scan(paths: list[str], opts: ScanOptions, *, protected: list[tuple[str, Path | None]] | None = None) -> int:
    """Detect `paths` with the local or the Ray engine; returns the exit code.

    `protected`: files besides the keys and trust anchors that --out must not name (e.g. the path list).
    """
    from ..detect.scan import ResumeState

    if opts.engine is Engine.local and (opts.address is not None or opts.num_workers is not None):
        raise ConfigError("--address and --num-workers need --engine ray")
    if opts.resume and opts.out is None:
        raise ConfigError("--resume needs --out FILE (the file to continue)")
    refuse_clobber("--out", opts.out, inputs=paths, protected=[*_protected(opts), *(protected or [])])
    if opts.engine is Engine.ray:
        from ..detect.ray_engine import check_device

        check_device(opts.device)           # before any tokenizer is loaded
    spec, det = _detector(opts)
    settings = _settings(opts, det)
    if opts.engine is Engine.ray:
        return _run_ray(paths, opts, spec, det, settings)
    from ..detect.scan import open_output, scan

    with contextlib.ExitStack() as stack:
        if opts.out is None:
            writer, state = _stdout_writer(opts.format), ResumeState()
        else:
            writer, state = stack.enter_context(open_output(opts.out, opts.format.value, resume=opts.resume,
                                                            settings=settings, info=info))
            paths = _rebase(paths, state)
        with _StopOnSigint() as stop, _progress(len(paths)) as adv:
            summary = scan(det, paths, writer, workers=opts.workers, resume=state, should_stop=lambda: stop.stop,
                           on_batch=adv)
    return _finish(summary)


def _run_ray(paths: list[str], opts: ScanOptions, spec, det, settings) -> int:
    """The Ray engine: --out is locked and prepared here as for the local scan; shards and merge in ray_scan."""
    from ..detect.ray_engine import ray_scan
    from ..detect.scan import lock_output, prepare_output

    with contextlib.ExitStack() as stack:
        state = None
        if opts.out is not None:
            fd = stack.enter_context(lock_output(opts.out))
            state = prepare_output(opts.out, opts.format.value, fd, resume=opts.resume, settings=settings, info=info)
            paths = _rebase(paths, state)
        with _StopOnSigint() as stop, _progress(len(paths)) as adv:
            res = ray_scan(paths, spec, out=opts.out, stream=sys.stdout if opts.out is None else None,
                           fmt=opts.format.value, shard_format=opts.shard_format.value, resume=opts.resume,
                           num_workers=opts.num_workers, address=opts.address, should_stop=lambda: stop.stop,
                           on_batch=adv, info=info, detector=det, state=state)
    for pid, w in sorted(res.workers.items()):
        info(f"worker {pid}: {w.images} images in {w.chunks} chunks, {w.images_per_s:.1f} images/s busy")
    return _finish(res.summary, shards=f"; shards in {res.shards_dir}" if res.shards_dir else "")


# ---------------------------------------------------------------------------------------------- commands

@scan_command("folder")
def folder(
    directory: Annotated[Path, typer.Argument(help="Folder of images (files with image suffixes).")],
    recursive: RecursiveOpt = False,
    *,
    opts: ScanOptions,
) -> None:
    """Detect the watermark in every image of a folder; one record per image."""
    from ..detect.scan import find_images

    with exit_on_error():
        paths = find_images(directory, recursive=recursive, on_skip=info)
        info(f"{len(paths)} image files in {directory}")
        code = _run_scan(paths, opts)
    raise typer.Exit(code)


@scan_command("manifest")
def manifest(
    list_file: Annotated[Path, typer.Argument(metavar="LIST", help="Path list: .txt (one per line), .csv/.tsv "
                                                                   "(header row) or .parquet; relative paths are "
                                                                   "relative to LIST's folder.")],
    column: Annotated[str, typer.Option("--column", help="Column holding the paths (CSV/TSV/Parquet).")] = "path",
    *,
    opts: ScanOptions,
) -> None:
    """Detect the watermark in every file a path list names (any suffix); one record per file, in list order."""
    from ..detect.manifest import read_manifest

    with exit_on_error():
        paths = read_manifest(list_file, column)
        info(f"{len(paths)} paths in {list_file}")
        code = _run_scan(paths, opts, protected=[("the path list", list_file)])
    raise typer.Exit(code)


@scan_command("image", without=RAY_OPTIONS)
def image(
    files: Annotated[list[Path], typer.Argument(help="Image files (any suffix).")],
    heatmap: Annotated[Path | None, typer.Option("--heatmap", help="Save the image beside its token grid "
                                                                   "(green/red for the best list) as a PNG; "
                                                                   "needs exactly one FILE.")] = None,
    *,
    opts: ScanOptions,
) -> None:
    """Detect the watermark in image files; one record per file."""
    with exit_on_error():
        paths = [str(f) for f in files]
        if heatmap is None:
            raise typer.Exit(_run_scan(paths, opts))
        if len(paths) != 1:
            raise ConfigError(f"--heatmap takes exactly one FILE, got {len(paths)}")
        if opts.resume:
            raise ConfigError("--heatmap cannot be combined with --resume")
        from ..detect.heatmap import heatmap as make_heatmap
        from ..detect.scan import open_output

        refuse_clobber("--heatmap", heatmap, inputs=paths,
                       protected=[*_protected(opts), ("the --out file", opts.out)])
        refuse_clobber("--out", opts.out, inputs=paths, protected=_protected(opts))
        _, det = _detector(opts)
        if not det.green_lists:
            raise ConfigError("--heatmap draws the watermark's green/red tokens and needs a --key")
        with contextlib.ExitStack() as stack:
            if opts.out is None:
                writer = _stdout_writer(opts.format)
            else:
                writer, _ = stack.enter_context(open_output(opts.out, opts.format.value,
                                                            settings=_settings(opts, det), info=info))
            try:
                rec = make_heatmap(det, paths[0], heatmap)
                info(f"heat map written to {heatmap}")
            except ImageError as e:
                rec = det.error_record(paths[0], str(e))
            writer.write([rec])
        code = ExitCode.of_detection(int(rec.watermarked), int(rec.error is not None))
    raise typer.Exit(code)


@app.command("calibrate")
def calibrate(
    directory: Annotated[Path | None, typer.Argument(help="Folder of clean (unwatermarked) images.")] = None,
    fingerprint: Annotated[Path | None, typer.Option(
        "--fingerprint", help="Instead: folder of real images that never went through the tokenizer's decoder; "
                              "writes their fingerprint scores to --out for key-free detection "
                              "(`guard detect ... --fingerprint FILE`).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="The fingerprint calibration file to write "
                                                           "(--fingerprint).")] = None,
    key: KeysOpt = None,
    out_plot: Annotated[Path | None, typer.Option("--out-plot", help="Write a QQ plot of the p-values (PNG).")] = None,
    test: TestOpt = Test.distinct,
    recursive: RecursiveOpt = False,
    format: Annotated[CalFormat, typer.Option("--format", help="'table' or 'json' (with every p-value).")] =
    CalFormat.table,
    workers: WorkersOpt = 4,
    batch_size: BatchOpt = 64,
    model: ModelOpt = "reference",
    device: DeviceOpt = None,
) -> None:
    """Empirical false-positive rate at alpha 1e-1 … 1e-4 (Clopper–Pearson 95% CI) on clean images; or, with
    --fingerprint REAL_DIR --out FILE, the calibration of key-free detection."""
    from ..detect.calibrate import calibrate_paths, qq_plot
    from ..detect.scan import find_images

    with exit_on_error():
        if fingerprint is not None:
            if directory is not None or key or out_plot is not None:
                raise ConfigError("--fingerprint REAL_DIR calibrates key-free detection and takes no DIR, --key or "
                                  "--out-plot; run the watermark calibration separately")
            raise typer.Exit(_calibrate_fingerprint(fingerprint, out, recursive=recursive, batch_size=batch_size,
                                                    model=model, fmt=format, device=device))
        if directory is None:
            raise ConfigError("give DIR (clean images, watermark calibration) or --fingerprint REAL_DIR --out FILE")
        if out is not None:
            raise ConfigError("--out names the fingerprint calibration file (with --fingerprint); the watermark "
                              "calibration prints its table (--format json for every p-value)")
        if out_plot is not None:
            _check_plot(out_plot)
        paths = find_images(directory, recursive=recursive, on_skip=info)
        info(f"{len(paths)} image files in {directory}")
        if not paths:
            raise ConfigError(f"no image files in {directory}")
        refuse_clobber("--out-plot", out_plot, inputs=paths, protected=_protected(ScanOptions(key=key)))
        _, det = _detector(ScanOptions(key=key, test=test, batch_size=batch_size, model=model, device=device))
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
        code = ExitCode.UNREADABLE if cal.n_errors else ExitCode.OK
    raise typer.Exit(code)


def _absolute_spec(spec: str) -> str:
    """A model spec whose path part names an existing file or folder, made absolute (the calibration file
    then loads the same tokenizer from any working directory)."""
    name, sep, rest = spec.partition(":")
    if not rest:
        return spec
    head, at, tail = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if not os.path.exists(head):
        head, at, tail = rest, "", ""
    return f"{name}:{os.path.abspath(head)}{at}{tail}" if os.path.exists(head) else spec


def _calibrate_fingerprint(real_dir: Path, out: Path | None, *, recursive: bool, batch_size: int, model: str,
                           fmt, device: str | None = None) -> int:
    """`guard calibrate --fingerprint REAL_DIR --out FILE`; returns the exit code."""
    import numpy as np

    from ..detect.fingerprint import calibrate_fingerprint
    from ..detect.scan import find_images
    from ..models import load_tokenizer

    if out is None:
        raise ConfigError("--fingerprint needs --out FILE (the calibration file to write)")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name the calibration file (e.g. calib.json)")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist")
    paths = find_images(real_dir, recursive=recursive, on_skip=info)
    info(f"{len(paths)} image files in {real_dir}")
    if not paths:
        raise ConfigError(f"no image files in {real_dir}")
    refuse_clobber("--out", out, inputs=paths)
    spec = _absolute_spec(model)
    tok = load_tokenizer(spec, device=device)
    with _progress(len(paths)) as adv:
        cal = calibrate_fingerprint(tok, paths, model=spec, batch_size=batch_size, source=str(real_dir), on_batch=adv)
    cal.save(out)
    if cal.n_errors:
        info(f"{cal.n_errors} files could not be read (skipped)")
    if cal.n < 99:
        info(f"warning: {cal.n} images: the smallest p-value is 1/(n+1) = {cal.min_p:.3g}, above 0.01; calibrate "
             f"on at least 99 (better 1000+) real images")
    q = np.quantile(np.asarray(cal.scores), [0.0, 0.01, 0.5, 0.99])
    summary = {"out": str(out), "tokenizer_id": cal.tokenizer_id, "model": cal.model, "statistic": cal.statistic,
               "n": cal.n, "n_errors": cal.n_errors, "min_p": cal.min_p, "score_min": q[0], "score_q01": q[1],
               "score_median": q[2], "score_q99": q[3], "agreement_median": cal.agreement_median,
               "resize_counts": cal.image_policy.get("resize_counts")}
    if fmt is CalFormat.json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"fingerprint calibration of {cal.tokenizer_id} ({cal.statistic}) on {cal.n} real images -> {out}")
        typer.echo(f"score min {q[0]:.3g}, 1% {q[1]:.3g}, median {q[2]:.3g}, 99% {q[3]:.3g}; smallest p 1/(n+1) = "
                   f"{cal.min_p:.3g}; median code agreement {cal.agreement_median:.3f}")
    return ExitCode.UNREADABLE if cal.n_errors else ExitCode.OK


def _check_plot(out_plot: Path) -> None:
    """Refuse an --out-plot that cannot be written, before any computation."""
    if out_plot.is_dir():
        raise ConfigError(f"--out-plot {out_plot} is a folder; name a PNG file")
    parent = out_plot.parent
    if not parent.is_dir():
        raise ConfigError(f"--out-plot {out_plot}: folder {parent} does not exist")
    if out_plot.exists() and not out_plot.is_file():
        raise ConfigError(f"--out-plot {out_plot} is not a regular file")
