"""Path lists ("manifests") for `guard detect manifest LIST`: text, CSV or Parquet, one image per row.

    >>> from guard.detect.manifest import read_manifest
    >>> read_manifest("uploads.txt")                       # doctest: +SKIP
    ['images/a.png', 'images/b.jpg']

Formats, chosen by the file's suffix:

* **Text** (any suffix but .csv/.tsv/.parquet/.pq): one path per line; blank lines and lines starting
  with `#` are skipped; surrounding whitespace is stripped.
* **CSV / TSV** (.csv, .tsv): a header row; the paths are the column named `column` (default "path").
* **Parquet** (.parquet, .pq): the string column named `column` (default "path"); needs `pyarrow`
  (the `ar-guard[ray]` extra installs it).

Relative paths are taken relative to the manifest's own folder (a manifest can move with its images);
absolute paths are kept. Duplicates are kept once, in first-seen order. Empty cells are an error (a
manifest row that names no file is a broken manifest, not an unreadable image).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..errors import ConfigError

__all__ = ["read_manifest", "DEFAULT_COLUMN"]

DEFAULT_COLUMN = "path"
_CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
_PARQUET_SUFFIXES = (".parquet", ".pq")


def _resolve(base: str, p: str) -> str:
    return p if os.path.isabs(p) else os.path.join(base, p)


def _read_text(path: Path) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            s = line.strip()
            if s and not s.startswith("#"):
                out.append(s)
    return out


def _read_csv(path: Path, column: str, delimiter: str) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if reader.fieldnames is None:
            raise ConfigError(f"manifest {path} is empty; expected a header row with a {column!r} column")
        if column not in reader.fieldnames:
            raise ConfigError(f"manifest {path} has no column {column!r} (columns: {', '.join(reader.fieldnames)}); "
                              f"pass --column NAME")
        out = []
        for i, row in enumerate(reader, 2):
            v = (row.get(column) or "").strip()
            if not v:
                raise ConfigError(f"manifest {path}, line {i}: empty {column!r} cell")
            out.append(v)
    return out


def _read_parquet(path: Path, column: str) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("reading a Parquet manifest needs pyarrow: pip install 'ar-guard[ray]'") from None
    try:
        schema = pq.read_schema(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a file that is not Parquet
        raise ConfigError(f"manifest {path} is not a readable Parquet file: {' '.join(str(e).split())[:200]}") \
            from None
    if column not in schema.names:
        raise ConfigError(f"manifest {path} has no column {column!r} (columns: {', '.join(schema.names)}); "
                          f"pass --column NAME")
    values = pq.read_table(path, columns=[column]).column(column).to_pylist()
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"manifest {path}, row {i}: {column!r} must be a non-empty string, got {v!r}")
        out.append(v.strip())
    return out


def read_manifest(path: str | os.PathLike, column: str = DEFAULT_COLUMN) -> list[str]:
    """The image paths a manifest lists, relative ones joined to the manifest's folder, duplicates dropped.

    Args:
        path: a .txt (or any other suffix: one path per line), .csv, .tsv, .parquet or .pq file.
        column: the column holding paths in CSV/TSV/Parquet manifests (ignored for text).

    Raises:
        ConfigError: the manifest cannot be read, lacks the column, has an empty cell, or lists nothing.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"manifest not found or not a file: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix in _CSV_SUFFIXES:
            raw = _read_csv(p, column, _CSV_SUFFIXES[suffix])
        elif suffix in _PARQUET_SUFFIXES:
            raw = _read_parquet(p, column)
        else:
            raw = _read_text(p)
    except UnicodeDecodeError:
        raise ConfigError(f"manifest {p} is not UTF-8 text; use a .parquet suffix for Parquet files") from None
    except csv.Error as e:
        raise ConfigError(f"manifest {p} is not valid CSV: {e}") from None
    except OSError as e:
        raise ConfigError(f"cannot read manifest {p}: {e.strerror or e}") from None
    if not raw:
        raise ConfigError(f"manifest {p} lists no paths")
    base = os.path.dirname(os.fspath(p))
    seen: set[str] = set()
    out = []
    for r in raw:
        q = _resolve(base, r)
        if q not in seen:
            seen.add(q)
            out.append(q)
    return out
