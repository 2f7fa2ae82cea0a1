"""`--engine ray`: a Ray Data cluster gives the local scan's records, exactly once, with resume.

Real clusters throughout (2 logical CPUs, 2 detection actors): a subprocess CLI run that starts and stops
its own local cluster, one that joins an existing cluster with --address, a run during which a
detection actor process is SIGKILLed, and an interrupted run resumed. Every comparison is against the
single-process scan of the same files, field for field but `elapsed_ms`.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

from guard.detect import RECORD_FIELDS, DetectionRecord, Detector  # noqa: E402
from guard.detect.ray_engine import (DetectorSpec, ShardStore, ray_scan,  # noqa: E402
                                     shards_dir_for)
from guard.detect.scan import find_images, open_writer, scan  # noqa: E402
from guard.errors import ConfigError  # noqa: E402
from guard.imageio import from_uint8, to_uint8  # noqa: E402
from test_detector import reference_assets, save_pngs  # noqa: E402
from test_images import write_bad_inputs  # noqa: E402

BATCH = 4


def _stable(rows: list[dict]) -> list[tuple]:
    return [tuple((k, r[k]) for k in RECORD_FIELDS if k != "elapsed_ms") for r in rows]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _guard(*args: str) -> list[str]:
    return [sys.executable, "-c", "from guard.cli import main; main()", *args]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """~3 dozen files: watermarked (hard + soft), clean, and every awkward/unreadable kind; plus the local rows."""
    a = reference_assets()
    d = tmp_path_factory.mktemp("raydata") / "imgs"
    write_bad_inputs(d)
    save_pngs(a.hard_images, d, "hard")
    save_pngs(a.wm_images, d, "wm")
    save_pngs(a.clean_images, d, "clean")
    paths = find_images(d, recursive=True)
    det = Detector(a.lists_a, a.tokenizer, batch_size=BATCH)
    buf = io.StringIO()
    summary = scan(det, paths, open_writer(buf, "jsonl"), workers=2)
    rows = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert summary.exit_code == 3 and len(rows) == len(paths) > 30
    return dict(a=a, dir=d, paths=paths, rows=rows, exit_code=summary.exit_code,
                key=str(a.key_a.save(d.parent / "a.key")))


@pytest.fixture(scope="module")
def cluster():
    """One local cluster shared by the library-level tests (ray_scan reuses an initialised Ray)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _system_config={"worker_niceness": 0})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _spec(folder) -> DetectorSpec:
    return DetectorSpec(keys=(folder["a"].key_a,), batch_size=BATCH)


# ---------------------------------------------------------------------------------------------- no cluster

def test_pixels_cross_the_object_store_as_bytes_without_changing_a_bit():
    levels = torch.arange(256, dtype=torch.uint8).repeat(3, 1).reshape(3, 16, 16)
    as_loaded = levels.float().div_(255.0)                      # what guard.imageio.load_image builds
    back = from_uint8(to_uint8(as_loaded, channels_last=False), channels_last=False)
    assert back.dtype == torch.float32 and torch.equal(back, as_loaded)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_shard_commit_is_atomic_idempotent_and_round_trips(tmp_path, folder, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    recs = [DetectionRecord.from_dict(r) for r in folder["rows"][:6]]
    store = ShardStore(tmp_path / "s", fmt)
    first = store.commit(0, recs)
    again = store.commit(0, recs)                     # a chunk re-run after its commit: same name, same rows
    assert first == again and store.shards() == [first]
    (tmp_path / "s" / f".{first.name}.123.ab.tmp").write_text('{"path": "half a row')   # a killed writer
    assert store.shards() == [first]
    back = ShardStore.read(first)
    assert [tuple((k, r[k]) for k in RECORD_FIELDS) for r in back] == \
        [tuple((k, r[k]) for k in RECORD_FIELDS) for r in folder["rows"][:6]]
    assert store.done_paths() == {r["path"] for r in folder["rows"][:6]}
    assert store.clean_temp() == 1 and store.clear() == 1 and store.shards() == []
    with pytest.raises(ConfigError):
        ShardStore(tmp_path, "csv")


def test_bad_options_are_config_errors(folder, tmp_path):
    spec = _spec(folder)
    with pytest.raises(ConfigError, match="--resume needs --out"):
        ray_scan(folder["paths"], spec, stream=io.StringIO(), resume=True)
    with pytest.raises(ConfigError, match="--address needs --out"):
        ray_scan(folder["paths"], spec, stream=io.StringIO(), address="127.0.0.1:1")
    with pytest.raises(ConfigError, match="num_workers"):
        ray_scan(folder["paths"], spec, out=tmp_path / "o.jsonl", num_workers=0)
    with pytest.raises(ConfigError, match="shard format"):
        ray_scan(folder["paths"], spec, out=tmp_path / "o.jsonl", shard_format="csv")


# ---------------------------------------------------------------------------------------------- clusters

def test_cli_two_worker_local_cluster_equals_the_local_scan(folder, tmp_path):
    out = tmp_path / "ray.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    r = subprocess.run(_guard("detect", "folder", str(folder["dir"]), "--recursive", "--key", folder["key"],
                              "--batch-size", str(BATCH), "--engine", "ray", "--num-workers", "2",
                              "--shard-format", "parquet", "--out", str(out)),
                       env=env, capture_output=True, timeout=600)
    err = r.stderr.decode()
    assert r.returncode == folder["exit_code"], err
    assert _stable(_jsonl(out)) == _stable(folder["rows"])
    shards = sorted(shards_dir_for(out).glob("part-*.parquet"))
    assert len(shards) == -(-len(folder["paths"]) // BATCH)             # one committed shard per chunk
    assert "worker " in err and "images/s" in err                       # per-actor throughput on stderr
    assert not r.stdout.strip()                                         # data went to --out only


def test_join_an_existing_cluster_with_address(folder, tmp_path, cluster):
    out = tmp_path / "joined.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    r = subprocess.run(_guard("detect", "folder", str(folder["dir"]), "--recursive", "--key", folder["key"],
                              "--batch-size", str(BATCH), "--engine", "ray", "--address", cluster,
                              "--num-workers", "2", "--format", "csv", "--out", str(out)),
                       env=env, capture_output=True, timeout=600)
    assert r.returncode == folder["exit_code"], r.stderr.decode()
    local = io.StringIO()                                 # the local rows through the local CSV writer
    open_writer(local, "csv").write([DetectionRecord.from_dict(x) for x in folder["rows"]])

    def drop_elapsed(text: str) -> list[str]:             # elapsed_ms is the next-to-last column
        return [(lambda h, _, v: f"{h},{v}")(*line.rsplit(",", 2)) for line in text.splitlines()]

    assert drop_elapsed(out.read_text()) == drop_elapsed(local.getvalue())      # same CSV bytes otherwise
    assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 2    # the cluster outlived the CLI


def test_killing_a_detection_actor_loses_and_duplicates_no_row(folder, tmp_path, cluster):
    killed: list[int] = []

    def kill_first_worker(row: dict) -> None:
        if not killed:                                   # the actor has more chunks queued: they must be re-run
            os.kill(int(row["pid"]), signal.SIGKILL)
            killed.append(int(row["pid"]))

    out = tmp_path / "killed.jsonl"
    res = ray_scan(folder["paths"], _spec(folder), out=out, num_workers=2, on_chunk=kill_first_worker)
    assert killed and not _alive(killed[0])
    rows = _jsonl(out)
    assert len({r["path"] for r in rows}) == len(rows) == len(folder["paths"])
    assert _stable(rows) == _stable(folder["rows"])
    assert res.summary.exit_code == folder["exit_code"] and res.summary.n_new == len(rows)
    assert sum(w.images for w in res.workers.values()) == len(rows)
    assert not list(shards_dir_for(out).glob(".part-*"))                  # no temp file left behind


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie (killed, not yet reaped) is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_interrupted_scan_resumes_to_the_rows_of_one_scan(folder, tmp_path, cluster):
    out = tmp_path / "resumed.jsonl"
    spec = _spec(folder)
    seen: list[int] = []
    first = ray_scan(folder["paths"], spec, out=out, num_workers=2, on_chunk=lambda r: seen.append(r["n"]),
                     should_stop=lambda: len(seen) >= 2)
    assert first.summary.interrupted
    partial = _jsonl(out)
    assert 0 < len(partial) < len(folder["paths"])
    local = {r["path"]: r for r in folder["rows"]}
    assert _stable(partial) == _stable([local[r["path"]] for r in partial])   # committed chunks only
    # A crash while the merged output was written: one row kept, a torn line after it. Rows of committed
    # shards that never reached the output must come back from the shards, not be re-detected twice.
    text = out.read_text().splitlines(keepends=True)
    out.write_text(text[0] + '{"path": "torn')
    second = ray_scan(folder["paths"], spec, out=out, num_workers=2, resume=True)
    assert not second.summary.interrupted
    rows = _jsonl(out)
    assert _stable(rows) == _stable(folder["rows"])
    assert second.summary.n_rows == len(rows) and second.summary.exit_code == folder["exit_code"]
    assert second.summary.n_skipped >= len(partial)
    assert sum(w.images for w in second.workers.values()) == len(folder["paths"]) - second.summary.n_skipped
    third = ray_scan(folder["paths"], spec, out=out, num_workers=2, resume=True)   # nothing left to do
    assert third.summary.n_new == 0 and third.workers == {} and _stable(_jsonl(out)) == _stable(folder["rows"])


def test_parquet_manifest_on_the_cluster_gives_the_same_rows(folder, tmp_path, cluster):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from guard.detect.manifest import read_manifest

    rel = [os.path.relpath(p, tmp_path) for p in folder["paths"]]
    pq.write_table(pa.table({"path": rel, "source": ["upload"] * len(rel)}), tmp_path / "list.parquet")
    paths = read_manifest(tmp_path / "list.parquet")
    assert [os.path.normpath(p) for p in paths] == [os.path.normpath(p) for p in folder["paths"]]
    buf = io.StringIO()
    res = ray_scan(paths, _spec(folder), stream=buf, num_workers=1)
    rows = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert res.shards_dir is None                                       # temp shards, removed
    assert [r["path"] for r in rows] == paths
    assert [r[1:] for r in _stable(rows)] == [r[1:] for r in _stable(folder["rows"])]
    assert res.summary.exit_code == folder["exit_code"] and list(res.workers)
