"""Path lists for `guard detect manifest LIST`: text, CSV/TSV and Parquet; relative paths; bad manifests."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guard.cli import app
from guard.detect import RECORD_FIELDS
from guard.detect.manifest import read_manifest
from guard.errors import ConfigError
from test_detector import reference_assets, save_pngs

runner = CliRunner()


def test_text_manifest_skips_comments_blanks_and_duplicates_and_resolves_relative_paths(tmp_path):
    d = tmp_path / "lists"
    d.mkdir()
    (d / "paths.txt").write_text("# uploads of 2026-11-24\nimgs/a.png\n\n  imgs/b.jpg  \n/abs/c.png\nimgs/a.png\n")
    assert read_manifest(d / "paths.txt") == [str(d / "imgs" / "a.png"), str(d / "imgs" / "b.jpg"), "/abs/c.png"]


def test_csv_and_tsv_use_the_named_column(tmp_path):
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "file"])
        w.writerow([1, "x, with comma.png"])
        w.writerow([2, "/abs/y.png"])
    assert read_manifest(tmp_path / "m.csv", "file") == [str(tmp_path / "x, with comma.png"), "/abs/y.png"]
    with pytest.raises(ConfigError, match="no column 'path'.*--column"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.tsv").write_text("path\tlabel\na.png\tcat\n")
    assert read_manifest(tmp_path / "m.tsv") == [str(tmp_path / "a.png")]
    (tmp_path / "hole.csv").write_text("path\na.png\n\"\"\n")
    with pytest.raises(ConfigError, match="line 3: empty"):
        read_manifest(tmp_path / "hole.csv")


def test_parquet_manifest(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": ["a.png", "/abs/b.png"], "n": [1, 2]}), tmp_path / "m.parquet")
    assert read_manifest(tmp_path / "m.parquet") == [str(tmp_path / "a.png"), "/abs/b.png"]
    with pytest.raises(ConfigError, match="no column 'uri'"):
        read_manifest(tmp_path / "m.parquet", "uri")
    pq.write_table(pa.table({"path": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(ConfigError, match="non-empty string"):
        read_manifest(tmp_path / "ints.parquet")
    (tmp_path / "fake.parquet").write_text("path\na.png\n")
    with pytest.raises(ConfigError, match="not a readable Parquet file"):
        read_manifest(tmp_path / "fake.parquet")


def test_bad_manifests_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_manifest(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="lists no paths"):
        read_manifest(tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_manifest(tmp_path / "bin.txt")


def test_cli_manifest_scans_in_list_order_with_error_rows(tmp_path, monkeypatch):
    a = reference_assets()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    key = a.key_a.save(tmp_path / "a.key")
    imgs = save_pngs(a.hard_images[:2], tmp_path / "imgs", "hard") + save_pngs(a.clean_images[:2], tmp_path / "imgs",
                                                                                "clean")
    listed = [os.path.relpath(p, tmp_path) for p in reversed(imgs)] + ["imgs/missing.png"]
    (tmp_path / "list.txt").write_text("\n".join(listed) + "\n")
    r = runner.invoke(app, ["detect", "manifest", str(tmp_path / "list.txt"), "--key", str(key)])
    assert r.exit_code == 3, r.output                        # the missing file: an error row, exit 3
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert [Path(x["path"]) for x in rows] == [tmp_path / p for p in listed]
    assert list(rows[0]) == list(RECORD_FIELDS)
    assert rows[-1]["error"] and not any(x["error"] for x in rows[:-1])
    r = runner.invoke(app, ["detect", "manifest", str(tmp_path / "nope.csv"), "--key", str(key)])
    assert r.exit_code == 2 and "manifest not found" in " ".join(r.stderr.split())
    r = runner.invoke(app, ["detect", "manifest", str(tmp_path / "list.txt"), "--key", str(key), "--num-workers", "2"])
    assert r.exit_code == 2 and "--engine ray" in " ".join(r.stderr.split())
