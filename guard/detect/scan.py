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
  row; a directory reached twice (a directory cycle) is walked once; a subfolder that cannot be listed
  becomes an error row too. FIFOs, sockets and devices are error rows, never opened (`guard.imageio`).
  Paths are sorted, so two scans of the same folder list the same rows in the same order.
* **One row per file.** Paths are keyed on their resolved real path (`resolve_path`): two spellings of
  one file (`a/../a/x.png`, a symlinked folder) give one row, under the first spelling.
* **Paths as written.** A record's `path` is the path as given. A path that is not valid UTF-8 (a
  POSIX file name is bytes) is written losslessly: in JSONL each undecodable byte 0xXY is the JSON
  escape `\\udcXY` (Python's "surrogateescape"; `os.fsencode(row["path"])` gives the bytes back and the
  file stays valid UTF-8); in CSV the bytes are written as they are (read it with
  `errors="surrogateescape"`); the table shows them as `\\xXY`.
* **Streaming.** Rows are written and flushed batch by batch: an interrupted scan leaves complete rows.
* **Output file** (`open_output`). The output is held under an exclusive lock for the whole run (a
  second writer is refused) and its settings (`ScanSettings`: keys, tokenizer, test, alpha, search,
  trust anchors, format) are written beside it (`<out>.settings.json`, with the working directory
  relative paths are relative to).
* **Resume.** `read_resume_state` drops a partial last record (a crash mid-write; for CSV it cuts at
  a record boundary, outside quotes), returns the paths already done and their real paths (`resolved`),
  and the scan skips those real paths:
  interrupted + resumed = one uninterrupted scan, without duplicate rows. Resuming with other settings
  is refused (`check_resume`), from the settings file and from the rows themselves.
* **Exit codes** (`ScanSummary.exit_code`, over every row of the output incl. resumed ones):
  `ExitCode.of_detection`: 3 if any file was unreadable, else 0 if any image is flagged (watermarked, or a
  fingerprint hit with `--fingerprint`), else 1.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from .. import __version__
from .._files import write_text_atomic
from ..errors import ConfigError, ExitCode
from .detector import RECORD_FIELDS, DetectionRecord, Detector
from ..imageio import IMAGE_SUFFIXES

__all__ = ["FORMATS", "ScanSummary", "ResumeState", "ScanSettings", "find_images", "open_writer", "open_output",
           "lock_output", "prepare_output", "read_resume_state", "check_resume", "settings_path", "resolve_path",
           "plan_paths", "scan"]

FORMATS = ("jsonl", "csv", "table")
SETTINGS_SUFFIX = ".settings.json"


def resolve_path(path: str | os.PathLike, base: str | None = None) -> str:
    """The real path a row's `path` names: relative paths joined to `base` (default: the working directory)."""
    p = os.fspath(path)
    return os.path.realpath(os.path.join(base, p) if base else p)


# ---------------------------------------------------------------------------------------------- files

def find_images(root: str | os.PathLike, *, recursive: bool = False,
                on_skip: Callable[[str], None] | None = None) -> list[str]:
    """Image files under `root` (by suffix), sorted; symlinks followed, directory cycles walked once.

    Args:
        root: a directory.
        recursive: descend into subdirectories (including symlinked ones, each real directory once). A
            subdirectory that cannot be listed is returned among the files, so that a scan gives it an
            error row ("cannot list folder: ...") instead of silently scanning less.
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
                on_skip(f"unreadable folder {d}: {e.strerror} (an error row)")
            found.append(d)
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
                        on_skip(f"unreadable folder {entry.path}: {e.strerror} (an error row)")
                    found.append(entry.path)
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


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogates(text: str) -> str:
    """Lone surrogates (undecodable path bytes, Python's surrogateescape) as JSON \\uXXXX escapes."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _printable(text: str) -> str:
    """Undecodable path bytes as \\xXY, for display."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class JsonlWriter(_Writer):
    def format(self, record: DetectionRecord) -> str:
        line = json.dumps({k: _clean(v) for k, v in record.to_dict().items()}, ensure_ascii=False)
        return (_escape_surrogates(line) if _SURROGATE.search(line) else line) + "\n"


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

    COLUMNS = "{wm:<5} {log10:>9} {p:>10} {key:<16} {lst:>4} {tf:<12} {prov:<16} {fp:>10} {path}"

    def header(self) -> None:
        self.stream.write(self.COLUMNS.format(wm="wm", log10="log10_p", p="p_value", key="key_id", lst="list",
                                              tf="transform", prov="provenance", fp="fp_p",
                                              path="path / error") + "\n")
        self.stream.flush()

    def format(self, r: DetectionRecord) -> str:
        path = _printable(r.path) if r.path is not None else r.path
        if r.error:
            return self.COLUMNS.format(wm="ERR", log10="-", p="-", key="-", lst="-", tf="-", prov="-", fp="-",
                                       path=f"{path}: {_printable(r.error)}") + "\n"
        wm = "-" if r.log10_p is None else "yes" if r.watermarked else "no"
        fp = "-" if r.fingerprint_p is None else f"{r.fingerprint_p:.3g}{'*' if r.fingerprint_hit else ''}"
        return self.COLUMNS.format(wm=wm, log10="-" if r.log10_p is None else f"{r.log10_p:.2f}",
                                   p="-" if r.p_value is None else f"{r.p_value:.3g}", key=r.key_id or "-",
                                   lst="-" if r.list_index is None else str(r.list_index), tf=r.transform or "-",
                                   prov=r.provenance or "-", fp=fp, path=path) + "\n"


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
        done: the paths with a row already, as the rows hold them.
        resolved: their real paths (`resolve_path` of each row's path against `base`): what a scan skips.
        n_rows, n_watermarked, n_errors: counts over those rows (n_watermarked counts flagged rows:
            watermarked or a fingerprint hit).
        has_header: the file already starts with a CSV header.
        dropped_bytes: bytes of a partial last record removed (a crash mid-write).
        base: the folder the rows' relative paths are relative to (None: the working directory).
        alphas, tests, tokenizer_ids, key_ids: the values the rows hold (key ids of non-error rows).
        searched: some row's transform is not "identity" (the rows were made with --search).
    """

    done: set[str] = field(default_factory=set)
    resolved: set[str] = field(default_factory=set)
    n_rows: int = 0
    n_watermarked: int = 0
    n_errors: int = 0
    has_header: bool = False
    dropped_bytes: int = 0
    base: str | None = None
    alphas: set[float] = field(default_factory=set)
    tests: set[str] = field(default_factory=set)
    tokenizer_ids: set[str] = field(default_factory=set)
    key_ids: set[str] = field(default_factory=set)
    searched: bool = False


def _truthy(v) -> bool:
    return v is True or (isinstance(v, str) and v.strip().lower() in ("true", "1", "yes"))


def _csv_complete(data: bytes) -> int:
    """Length of the longest prefix of CSV `data` made of whole records: up to a newline outside quotes.

    In guard's CSV (minimal quoting, quotes doubled inside quoted fields) a newline ends a record exactly
    when an even number of quote characters precede it.
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(arr == ord("\n"))
    if not newlines.size:
        return 0
    quotes = np.flatnonzero(arr == ord('"'))
    ends = newlines[np.searchsorted(quotes, newlines) % 2 == 0]
    return int(ends[-1]) + 1 if ends.size else 0


def read_resume_state(path: str | os.PathLike, fmt: str, *, base: str | None = None) -> ResumeState:
    """Read an output file to resume into, truncating a partial last record in place.

    Args:
        path: the output (a missing file is an empty state).
        fmt: "jsonl" or "csv".
        base: the folder the rows' relative paths are relative to (default: the working directory).

    Raises ConfigError for the table format (not resumable) or a file that is not guard's output.
    """
    if fmt == "table":
        raise ConfigError("--resume needs --format jsonl or csv (the table format cannot be read back)")
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = Path(path)
    state = ResumeState(base=base)
    if not path.exists():
        return state
    with open(path, "rb+") as f:
        data = f.read()
        keep = _csv_complete(data) if fmt == "csv" else data.rfind(b"\n") + 1
        if keep < len(data):
            f.truncate(keep)
            state.dropped_bytes = len(data) - keep
            data = data[:keep]
    try:
        text = data.decode("utf-8", "surrogateescape" if fmt == "csv" else "strict")
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
        reader = list(csv.reader(io.StringIO(text, newline="")))
        if reader:
            if tuple(reader[0]) != RECORD_FIELDS:
                raise ConfigError(f"cannot resume: {path} does not start with guard's CSV header")
            state.has_header = True
        rows = []
        for i, r in enumerate(reader[1:], 2):
            if not r:
                continue
            if len(r) != len(RECORD_FIELDS):
                raise ConfigError(f"cannot resume: record {i} of {path} has {len(r)} fields, not {len(RECORD_FIELDS)}")
            rows.append(dict(zip(RECORD_FIELDS, r)))
    for row in rows:
        p = row.get("path")
        if p not in (None, ""):
            state.done.add(str(p))
            state.resolved.add(resolve_path(str(p), base))
        state.n_rows += 1
        state.n_watermarked += _truthy(row.get("watermarked")) or _truthy(row.get("fingerprint_hit"))
        state.n_errors += bool(row.get("error"))
        _note_settings(state, row)
    return state


def _note_settings(state: ResumeState, row: dict) -> None:
    alpha = row.get("alpha")
    if alpha not in (None, ""):
        try:
            state.alphas.add(float(alpha))
        except (TypeError, ValueError):
            pass
    for attr, name in (("tests", "test"), ("tokenizer_ids", "tokenizer_id"), ("key_ids", "key_id")):
        v = row.get(name)
        if v not in (None, ""):
            getattr(state, attr).add(str(v))
    if row.get("transform") not in (None, "", "identity"):
        state.searched = True


# ---------------------------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class ScanSettings:
    """What a scan's records depend on; written beside the output and compared when resuming.

    Attributes:
        format: "jsonl", "csv" or "table".
        key_ids: the keys tested (sorted).
        tokenizer_id: the tokenizer that re-quantizes images.
        test, alpha, search: as for `Detector`.
        trust_anchors: SHA-256 of the trust-anchor PEM file (None without one).
        fingerprints: digests of the fingerprint calibrations (sorted; empty without --fingerprint).
        fingerprint_alpha: the fingerprint hit level (None without --fingerprint).
    """

    format: str
    key_ids: tuple[str, ...]
    tokenizer_id: str
    test: str
    alpha: float
    search: bool
    trust_anchors: str | None = None
    fingerprints: tuple[str, ...] = ()
    fingerprint_alpha: float | None = None

    @classmethod
    def of(cls, detector: Detector, fmt: str, *, trust_anchors: str | None = None) -> "ScanSettings":
        """The settings of a scan with `detector`, written as `fmt`."""
        fp = detector.fingerprints
        return cls(format=fmt, key_ids=tuple(sorted(g.key_id for g in detector.green_lists)),
                   tokenizer_id=detector.tokenizer.id, test=detector.test, alpha=detector.alpha,
                   search=detector.search, trust_anchors=trust_anchors,
                   fingerprints=tuple(sorted(c.digest for c in fp.calibrations)) if fp is not None else (),
                   fingerprint_alpha=fp.alpha if fp is not None else None)

    def differences(self, stored: dict) -> list[str]:
        """What differs from the settings an output was written with, one phrase each."""
        out = []
        for name in ("format", "key_ids", "tokenizer_id", "test", "alpha", "search", "trust_anchors", "fingerprints",
                     "fingerprint_alpha"):
            mine, theirs = getattr(self, name), stored.get(name)
            if name in ("key_ids", "fingerprints"):
                theirs = tuple(sorted(theirs or ()))
            if mine != theirs:
                out.append(f"{_LABELS[name]} {_show(theirs)} (this run: {_show(mine)})")
        return out

    def row_differences(self, state: ResumeState) -> list[str]:
        """What the rows already written contradict (outputs without a settings file are checked this way)."""
        out = []
        if state.alphas - {self.alpha}:
            out.append(f"alpha {_show(sorted(state.alphas))} (this run: {_show(self.alpha)})")
        if state.tests - {self.test}:
            out.append(f"test {_show(sorted(state.tests))} (this run: {self.test})")
        if state.tokenizer_ids - {self.tokenizer_id}:
            out.append(f"tokenizer {_show(sorted(state.tokenizer_ids))} (this run: {self.tokenizer_id})")
        if state.key_ids - set(self.key_ids):
            out.append(f"keys {_show(sorted(state.key_ids - set(self.key_ids)))} in its rows (this run: "
                       f"{_show(self.key_ids)})")
        if state.searched and not self.search:
            out.append("search (rows with search transforms; this run: no --search)")
        return out


_LABELS = {"format": "format", "key_ids": "keys", "tokenizer_id": "tokenizer", "test": "test", "alpha": "alpha",
           "search": "search", "trust_anchors": "trust anchors (sha256)",
           "fingerprints": "fingerprint calibrations (sha256)", "fingerprint_alpha": "fingerprint alpha"}


def _show(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(_show(x) for x in v) or "none"
    if isinstance(v, bool):
        return "on" if v else "off"
    if v is None:
        return "none"
    return f"{v:g}" if isinstance(v, float) else str(v)


def settings_path(out: str | os.PathLike) -> Path:
    """Where the settings of output `out` are kept: `<out>.settings.json` beside it."""
    return Path(os.fspath(out) + SETTINGS_SUFFIX)


def _read_settings(out: Path) -> dict | None:
    side = settings_path(out)
    try:
        raw = side.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot resume {out}: cannot read {side}: {e.strerror}") from None
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict) or doc.get("guard_scan_settings") != 1:
        raise ConfigError(f"cannot resume {out}: {side} is not a guard scan settings file; remove it to resume "
                          f"with the rows' own checks")
    return doc


def _write_settings(out: Path, settings: ScanSettings | None) -> None:
    side = settings_path(out)
    if settings is None:
        with contextlib.suppress(FileNotFoundError):
            side.unlink()
        return
    doc = {"guard_scan_settings": 1, **asdict(settings), "key_ids": list(settings.key_ids),
           "fingerprints": list(settings.fingerprints), "cwd": os.getcwd(),
           "guard_version": __version__}
    text = json.dumps(doc, indent=2, ensure_ascii=True) + "\n"
    try:
        write_text_atomic(side, text, encoding="ascii")
    except OSError as e:
        raise ConfigError(f"cannot write {side}: {e.strerror}") from None


def check_resume(out: str | os.PathLike, settings: ScanSettings, state: ResumeState,
                 stored: dict | None = None) -> None:
    """Refuse (ConfigError, one line) to resume `out` with settings other than those it was written with."""
    diffs = settings.differences(stored) if stored is not None else []
    for d in settings.row_differences(state):
        if d.split(" ", 1)[0] not in {x.split(" ", 1)[0] for x in diffs}:
            diffs.append(d)
    if diffs:
        raise ConfigError(f"cannot resume {out}: it was written with {'; '.join(diffs)}; resume with the same "
                          f"settings, or start a fresh scan without --resume")


# ---------------------------------------------------------------------------------------------- output file

@contextlib.contextmanager
def lock_output(out: str | os.PathLike) -> Iterator[int]:
    """Open `out` for appending (created if missing, never truncated here) under an exclusive lock.

    Yields the file descriptor; the lock is held until the block ends. Raises ConfigError (one line) when
    `out` is not a regular file or another process holds the lock (a second scan writing the same file).
    """
    out = os.fspath(out)
    try:
        st = os.stat(out)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise ConfigError(f"cannot write --out {out}: {e.strerror}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"--out {out} is not a regular file; omit --out to write to stdout")
    try:
        fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise ConfigError(f"cannot write --out {out}: {e.strerror}") from None
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"another guard scan is writing {out} (it holds the file's lock); wait for it "
                                  f"to finish or choose another --out") from None
            except OSError:
                pass             # a filesystem without locks: go on unlocked
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"--out {out} is not a regular file; omit --out to write to stdout")
        yield fd
    finally:
        os.close(fd)


def prepare_output(out: str | os.PathLike, fmt: str, fd: int, *, resume: bool, settings: ScanSettings | None,
                   info: Callable[[str], None] = lambda s: None) -> ResumeState:
    """Make a locked output (`lock_output`) ready: empty it (fresh) or read and check it (resume).

    Fresh: `out` is emptied and `settings` written beside it. Resume: the settings file (or, without
    one, the rows) must agree with `settings` (`check_resume`); a partial last record is dropped; the
    returned state's `base` is the working directory the rows' relative paths are relative to.
    """
    out = Path(out)
    if not resume:
        os.ftruncate(fd, 0)
        _write_settings(out, settings)
        return ResumeState()
    stored = _read_settings(out)
    if stored is not None and settings is not None:
        check_resume(out, settings, ResumeState(), stored)
    base = stored.get("cwd") if stored is not None and isinstance(stored.get("cwd"), str) else None
    state = read_resume_state(out, fmt, base=base)
    if state.dropped_bytes:
        info(f"resume: dropped a partial last record ({state.dropped_bytes} bytes) from {out}")
    if state.n_rows:
        info(f"resume: {state.n_rows} rows already in {out}")
    if settings is not None:
        check_resume(out, settings, state, stored)
        if stored is None:
            _write_settings(out, settings)
    return state


@contextlib.contextmanager
def open_output(out: str | os.PathLike, fmt: str, *, resume: bool = False, settings: ScanSettings | None = None,
                info: Callable[[str], None] = lambda s: None) -> Iterator[tuple["_Writer", ResumeState]]:
    """A record writer on file `out`, held under an exclusive lock, and what it already holds (resume).

    See `lock_output` and `prepare_output`. Rows are appended and flushed batch by batch; CSV writes
    undecodable path bytes as they are, JSONL escapes them (see the module docstring).

    Example:
        >>> with open_output("out.jsonl", "jsonl", resume=True) as (writer, state):      # doctest: +SKIP
        ...     scan(detector, paths, writer, resume=state)
    """
    with lock_output(out) as fd:
        state = prepare_output(out, fmt, fd, resume=resume, settings=settings, info=info)
        empty = os.fstat(fd).st_size == 0
        stream = open(fd, "a", encoding="utf-8", errors="surrogateescape" if fmt == "csv" else "strict",
                      newline="", closefd=False)
        with stream:
            yield open_writer(stream, fmt, header=empty), state


# ---------------------------------------------------------------------------------------------- scan

@dataclass
class ScanSummary:
    """Counts over a scan (resumed rows included).

    Attributes:
        n_rows: rows in the output; n_new: rows written by this run; n_skipped: paths skipped (resume).
        n_watermarked, n_errors: rows flagged (watermarked, or a fingerprint hit) / unreadable.
        interrupted: the scan stopped early at a batch boundary (`should_stop`).
        n_same_file: paths dropped because an earlier path names the same file (same real path).
    """

    n_rows: int = 0
    n_new: int = 0
    n_skipped: int = 0
    n_watermarked: int = 0
    n_errors: int = 0
    interrupted: bool = False
    n_same_file: int = 0

    @property
    def exit_code(self) -> int:
        """3 if some file was unreadable, else 0 if some image is watermarked, else 1 (`ExitCode.of_detection`)."""
        return int(ExitCode.of_detection(self.n_watermarked, self.n_errors))


def unique_paths(paths: Iterable) -> tuple[list[tuple[str, str]], int]:
    """((path, real path) for the first path naming each file, in order; paths dropped as naming a file already
    listed). Shared by the local and the Ray scan."""
    ordered, seen, same = [], set(), 0
    for p in paths:
        key = os.fspath(p)
        real = resolve_path(key)
        if real in seen:
            same += 1
            continue
        seen.add(real)
        ordered.append((key, real))
    return ordered, same


def plan_paths(paths: Iterable, resume: ResumeState | None = None) -> tuple[list[str], list[str], int, int]:
    """(paths to scan, their real paths, paths skipped as done, paths dropped as naming a file already listed)."""
    done = resume.resolved if resume is not None else set()
    ordered, same = unique_paths(paths)
    todo = [(key, real) for key, real in ordered if real not in done]
    return [k for k, _ in todo], [r for _, r in todo], len(ordered) - len(todo), same


def scan(detector: Detector, paths: Iterable, writer: _Writer, *, workers: int = 4,
         resume: ResumeState | None = None, should_stop: Callable[[], bool] = lambda: False,
         on_batch: Callable[[int], None] | None = None) -> ScanSummary:
    """Detect `paths` batch by batch and write every record as soon as its batch is done.

    Args:
        detector: the configured `Detector`.
        paths: files, in output order; two paths naming the same file (same real path) are scanned once,
            under the first.
        writer: from `open_writer`.
        workers: decoding threads.
        resume: skip the paths whose real path is in `resume.resolved` and count its rows in the summary.
        should_stop: polled after each batch; True ends the scan cleanly (rows written stay complete).
        on_batch: called with the number of paths finished (progress).
    """
    resume = resume or ResumeState()
    summary = ScanSummary(n_rows=resume.n_rows, n_watermarked=resume.n_watermarked, n_errors=resume.n_errors)
    todo, _, summary.n_skipped, summary.n_same_file = plan_paths(paths, resume)
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
            summary.n_watermarked += sum(r.flagged for r in records)
            summary.n_errors += sum(r.error is not None for r in records)
            if on_batch:
                on_batch(len(records))
            if should_stop() and summary.n_new < len(todo):
                summary.interrupted = True
                break
    finally:
        batches.close()
    return summary
