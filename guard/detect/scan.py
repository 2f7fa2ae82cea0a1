"""Folder scans: find image files safely, stream records to JSONL/CSV/table, resume after a crash.

    >>> from guard.detect.scan import find_images, scan, open_writer
    >>> paths = find_images("generated/", recursive=True)                       # doctest: +SKIP
    >>> with open("out.jsonl", "w") as f:                                        # doctest: +SKIP
    ...     summary = scan(detector, paths, open_writer(f, "jsonl"))
    >>> summary.exit_code                                                        # doctest: +SKIP
    0

Guarantees:

* **Files.** A folder scan takes files whose suffix is a known image suffix (`IMAGE_SUFFIXES`), so
  manifests and result files beside the images are not scanned; `guard detect image FILE…` takes any
  file. Symlinks are followed; a symlink loop or dangling link with an image suffix becomes an error
  row; a directory reached twice (a directory cycle) is walked once. Paths are sorted, so two scans of
  the same folder list the same rows in the same order.
* **Streaming.** Rows are written and flushed batch by batch: an interrupted scan leaves complete rows.
* **Resume.** `read_resume_state` drops a partial last line (a crash mid-write), returns the paths
  already done, and the scan skips them: interrupted + resumed = one uninterrupted scan, without
  duplicate rows.
* **Exit codes** (`ScanSummary.exit_code`, over every row of the output incl. resumed ones):
  `ExitCode.of_detection`: 3 if any file was unreadable, else 0 if any image is watermarked, else 1.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..errors import ConfigError, ExitCode
from .detector import RECORD_FIELDS, DetectionRecord, Detector
from ..imageio import IMAGE_SUFFIXES

__all__ = ["FORMATS", "ScanSummary", "ResumeState", "find_images", "open_writer", "read_resume_state", "scan"]

FORMATS = ("jsonl", "csv", "table")


# ---------------------------------------------------------------------------------------------- files

def find_images(root: str | os.PathLike, *, recursive: bool = False,
                on_skip: Callable[[str], None] | None = None) -> list[str]:
    """Image files under `root` (by suffix), sorted; symlinks followed, directory cycles walked once.

    Args:
        root: a directory.
        recursive: descend into subdirectories (including symlinked ones, each real directory once).
        on_skip: called with a message for each directory skipped (cycle or unreadable).

    Raises:
        ConfigError: `root` is not a readable directory.
    """
    root_s = os.fspath(root)
    try:
        st = os.stat(root_s)
    except OSError as e:
        raise ConfigError(f"cannot open folder {root_s}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{root_s} is not a folder; use `guard detect image FILE` for single files")
    seen_dirs = {(st.st_dev, st.st_ino)}
    found: list[str] = []
    stack = [root_s]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            if d == root_s:
                raise ConfigError(f"cannot list folder {root_s}: {e.strerror}") from None
            if on_skip:
                on_skip(f"skipping unreadable folder {d}: {e.strerror}")
            continue
        for entry in entries:
            try:
                is_dir = entry.is_dir()             # follows symlinks; a loop raises ELOOP
            except OSError:
                is_dir = False                      # a link loop: keep it as a file so it gets an error row
            if is_dir:
                if not recursive:
                    continue
                try:
                    dst = os.stat(entry.path)
                except OSError as e:
                    if on_skip:
                        on_skip(f"skipping folder {entry.path}: {e.strerror}")
                    continue
                ident = (dst.st_dev, dst.st_ino)
                if ident in seen_dirs:
                    if on_skip:
                        on_skip(f"skipping {entry.path}: folder already scanned (symlink cycle)")
                    continue
                seen_dirs.add(ident)
                stack.append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                found.append(entry.path)
    return sorted(found)


# ---------------------------------------------------------------------------------------------- writers

def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class _Writer:
    """Writes records to a text stream and flushes after each batch."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, records: Sequence[DetectionRecord]) -> None:
        if records:
            self.stream.write("".join(self.format(r) for r in records))
        self.stream.flush()

    def format(self, record: DetectionRecord) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def header(self) -> None:
        """Write a header (CSV, table) when starting a fresh output."""


class JsonlWriter(_Writer):
    def format(self, record: DetectionRecord) -> str:
        return json.dumps({k: _clean(v) for k, v in record.to_dict().items()}, ensure_ascii=False) + "\n"


def _csv_value(v) -> str:
    v = _clean(v)
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


class CsvWriter(_Writer):
    def _line(self, values) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        return buf.getvalue()

    def header(self) -> None:
        self.stream.write(self._line(RECORD_FIELDS))
        self.stream.flush()

    def format(self, record: DetectionRecord) -> str:
        d = record.to_dict()
        return self._line([_csv_value(d[k]) for k in RECORD_FIELDS])


class TableWriter(_Writer):
    """Aligned human-readable lines (not resumable, not meant for parsing)."""

    COLUMNS = "{wm:<5} {log10:>9} {p:>10} {key:<16} {lst:>4} {tf:<12} {prov:<16} {path}"

    def header(self) -> None:
        self.stream.write(self.COLUMNS.format(wm="wm", log10="log10_p", p="p_value", key="key_id", lst="list",
                                              tf="transform", prov="provenance", path="path / error") + "\n")
        self.stream.flush()

    def format(self, r: DetectionRecord) -> str:
        if r.error:
            return self.COLUMNS.format(wm="ERR", log10="-", p="-", key="-", lst="-", tf="-", prov="-",
                                       path=f"{r.path}: {r.error}") + "\n"
        return self.COLUMNS.format(wm="yes" if r.watermarked else "no", log10=f"{r.log10_p:.2f}",
                                   p=f"{r.p_value:.3g}", key=r.key_id or "-", lst=str(r.list_index),
                                   tf=r.transform or "-", prov=r.provenance or "-", path=r.path) + "\n"


def open_writer(stream: IO[str], fmt: str, *, header: bool = True) -> _Writer:
    """A record writer for `fmt` in FORMATS; writes the header now unless `header` is False (resuming)."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    writer = {"jsonl": JsonlWriter, "csv": CsvWriter, "table": TableWriter}[fmt](stream)
    if header:
        writer.header()
    return writer


# ---------------------------------------------------------------------------------------------- resume

@dataclass
class ResumeState:
    """What an existing output already holds.

    Attributes:
        done: paths with a row already.
        n_rows, n_watermarked, n_errors: counts over those rows.
        has_header: the file already starts with a CSV header.
        dropped_bytes: bytes of a partial last line removed (a crash mid-write).
    """

    done: set[str] = field(default_factory=set)
    n_rows: int = 0
    n_watermarked: int = 0
    n_errors: int = 0
    has_header: bool = False
    dropped_bytes: int = 0


def _truthy(v) -> bool:
    return v is True or (isinstance(v, str) and v.strip().lower() in ("true", "1", "yes"))


def read_resume_state(path: str | os.PathLike, fmt: str) -> ResumeState:
    """Read an output file to resume into, truncating a partial last line in place.

    Raises ConfigError for the table format (not resumable) or a file that is not guard's output.
    """
    if fmt == "table":
        raise ConfigError("--resume needs --format jsonl or csv (the table format cannot be read back)")
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = Path(path)
    state = ResumeState()
    if not path.exists():
        return state
    with open(path, "rb+") as f:
        data = f.read()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            f.truncate(keep)
            state.dropped_bytes = len(data) - keep
            data = data[:keep]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"cannot resume: {path} is not a UTF-8 {fmt} file written by guard") from None
    if fmt == "jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"cannot resume: line {i} of {path} is not JSON; is it guard's jsonl output?") \
                    from None
            if not isinstance(row, dict) or "path" not in row:
                raise ConfigError(f"cannot resume: line {i} of {path} is not a detection record")
            rows.append(row)
    else:
        reader = list(csv.reader(io.StringIO(text)))
        if reader:
            if tuple(reader[0]) != RECORD_FIELDS:
                raise ConfigError(f"cannot resume: {path} does not start with guard's CSV header")
            state.has_header = True
        rows = [dict(zip(RECORD_FIELDS, r)) for r in reader[1:] if r]
    for row in rows:
        state.done.add(str(row.get("path")))
        state.n_rows += 1
        state.n_watermarked += _truthy(row.get("watermarked"))
        state.n_errors += bool(row.get("error"))
    return state


# ---------------------------------------------------------------------------------------------- scan

@dataclass
class ScanSummary:
    """Counts over a scan (resumed rows included).

    Attributes:
        n_rows: rows in the output; n_new: rows written by this run; n_skipped: paths skipped (resume).
        n_watermarked, n_errors: rows flagged watermarked / unreadable.
        interrupted: the scan stopped early at a batch boundary (`should_stop`).
    """

    n_rows: int = 0
    n_new: int = 0
    n_skipped: int = 0
    n_watermarked: int = 0
    n_errors: int = 0
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        """3 if some file was unreadable, else 0 if some image is watermarked, else 1 (`ExitCode.of_detection`)."""
        return int(ExitCode.of_detection(self.n_watermarked, self.n_errors))


def scan(detector: Detector, paths: Iterable, writer: _Writer, *, workers: int = 4,
         resume: ResumeState | None = None, should_stop: Callable[[], bool] = lambda: False,
         on_batch: Callable[[int], None] | None = None) -> ScanSummary:
    """Detect `paths` batch by batch and write every record as soon as its batch is done.

    Args:
        detector: the configured `Detector`.
        paths: files, in output order; duplicates are scanned once.
        writer: from `open_writer`.
        workers: decoding threads.
        resume: skip the paths in `resume.done` and count its rows in the summary.
        should_stop: polled after each batch; True ends the scan cleanly (rows written stay complete).
        on_batch: called with the number of paths finished (progress).
    """
    resume = resume or ResumeState()
    summary = ScanSummary(n_rows=resume.n_rows, n_watermarked=resume.n_watermarked, n_errors=resume.n_errors)
    todo, seen = [], set()
    for p in paths:
        key = os.fspath(p)
        if key in seen:
            continue
        seen.add(key)
        if key in resume.done:
            summary.n_skipped += 1
        else:
            todo.append(key)
    if on_batch and summary.n_skipped:
        on_batch(summary.n_skipped)
    if should_stop():
        summary.interrupted = True
        return summary
    batches = detector.iter_batches(todo, workers=workers)
    try:
        for records in batches:
            writer.write(records)
            summary.n_rows += len(records)
            summary.n_new += len(records)
            summary.n_watermarked += sum(r.watermarked for r in records)
            summary.n_errors += sum(r.error is not None for r in records)
            if on_batch:
                on_batch(len(records))
            if should_stop() and summary.n_new < len(todo):
                summary.interrupted = True
                break
    finally:
        batches.close()
    return summary
