"""Scale-out detection on Ray Data: the same records as the local scan, from a cluster of workers.

    >>> from guard.detect.ray_engine import DetectorSpec, ray_scan
    >>> spec = DetectorSpec(keys=(WatermarkKey.load("my.key"),))                     # doctest: +SKIP
    >>> result = ray_scan(paths, spec, out="results.jsonl", num_workers=2)             # doctest: +SKIP
    >>> result.summary.exit_code, result.shards_dir                                     # doctest: +SKIP
    (0, PosixPath('results.jsonl.shards'))

Pipeline (one Ray Data dataset, streamed):

1. **Chunks.** The paths still to do are cut into chunks of `batch_size`, exactly as the local scan cuts
   them (`Detector.iter_loaded`), so every image is tokenized in the same batch as on one machine. The
   tokenizer's convolutions are not bit-for-bit batch-invariant on a CPU (one token in ~16k differs
   between batch 1 and batch 64 on noise images), so the same chunks are what makes the records
   identical, field for field, to `guard detect folder --engine local`.
2. **Read/decode** runs as Ray tasks (`Dataset.map`): each chunk's files are read, hashed and decoded by
   the very function the local scan uses; pixels travel as 8-bit bytes (4× less object-store traffic
   than float32) and are turned back into the same float32 tensor on the detector
   (`guard.imageio.to_uint8` / `from_uint8`, exact inverses at 8-bit levels).
3. **Detection** runs in an actor pool (`map_batches` with a callable class, `ActorPoolStrategy`): each
   actor builds the driver's `DetectorSpec` once (the one detector builder, shared with the local scan:
   tokenizer, the keys' green lists, the Content Credentials reader with its trust anchors), then runs
   the local scan's own batch → records code (`Detector._detect_loaded`) on one chunk per call.
4. **Output.** Each actor commits one shard per chunk to `<out>.shards/` (JSONL or Parquet): written to
   a hidden temp file, fsync'd, then atomically renamed to a name fixed by the chunk's content
   (`part-<position>-<sha1 of its paths>`). The driver then merges the shards into one output (the
   local writers: same JSONL/CSV bytes as a local scan but for `elapsed_ms`), dropping any path already
   written.

Exactly-once: a chunk is either committed (its shard exists, complete) or not (at most a hidden temp
file, ignored and cleaned). Ray restarts a killed actor and re-runs its unfinished chunks; a re-run
after a commit rewrites the same shard name with the same rows, and the merge keeps one row per path
anyway. Resume (`resume=True`) skips every path already in the merged output or in a committed shard.

Device: the actors ask Ray for CPUs only (Ray hides the GPUs from such actors), so a `spec.device` other
than the CPU is refused in one line (`check_device`); `device="cpu"` travels in the spec and every actor
loads its tokenizer there. GPU detection is the local engine's (`guard detect ... --device cuda`).

The key's secret reaches the actors inside Ray's object store (pickled `WatermarkKey`), never argv,
logs or results. On a multi-node cluster, enable Ray's TLS if the network between nodes is not trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from .._files import temp_beside
from ..errors import ConfigError, GuardError
from ..imageio import MAX_DECODE_BYTES, LoadedImage, from_uint8, to_uint8
from .detector import RECORD_FIELDS, DetectionRecord, Detector, DetectorSpec, _timed_load
from .scan import (FORMATS, JsonlWriter, ResumeState, ScanSummary, _clean, open_writer, read_resume_state,
                   resolve_path, unique_paths)

__all__ = ["DetectorSpec", "ShardStore", "RayScanResult", "WorkerStats", "ray_scan", "ray_cluster",
           "SHARD_FORMATS", "shards_dir_for", "check_device"]

SHARD_FORMATS = ("jsonl", "parquet")
DECODE_CPUS = 0.5               # logical CPUs one read/decode task asks for

_log = logging.getLogger("guard.ray")


# ---------------------------------------------------------------------------------------------- shards

_PA_TYPES = {"str": "string", "int": "int64", "float": "float64", "bool": "bool_"}


def _arrow_schema():
    import pyarrow as pa

    from dataclasses import fields as dc_fields

    cols = []
    for f in dc_fields(DetectionRecord):
        base = str(f.type).split("|")[0].strip()
        cols.append(pa.field(f.name, getattr(pa, _PA_TYPES[base])(), nullable=True))
    return pa.schema(cols)


def shards_dir_for(out: str | os.PathLike) -> Path:
    """Where the shards of merged output `out` live: `<out>.shards/` beside it."""
    return Path(os.fspath(out) + ".shards")


class ShardStore:
    """A folder of committed shards, one per chunk: `part-<position:012d>-<sha1(paths)[:16]>.<fmt>`.

    A shard is committed by writing a hidden temp file, fsync, atomic `os.replace`, fsync of the folder.
    Readers only see names starting with "part-", so a writer killed mid-write leaves nothing visible.

    Args:
        directory: the shard folder (created if missing; must be visible to every Ray node).
        fmt: "jsonl" or "parquet".
    """

    def __init__(self, directory: str | os.PathLike, fmt: str = "jsonl") -> None:
        if fmt not in SHARD_FORMATS:
            raise ConfigError(f"shard format must be one of {', '.join(SHARD_FORMATS)}, got {fmt!r}")
        self.directory = Path(directory)
        self.fmt = fmt

    @staticmethod
    def name_for(position: int, paths: Sequence[str], fmt: str) -> str:
        digest = hashlib.sha1("\0".join(paths).encode("utf-8", "surrogateescape")).hexdigest()[:16]
        return f"part-{position:012d}-{digest}.{fmt}"

    def commit(self, position: int, records: Sequence[DetectionRecord]) -> Path:
        """Write `records` as the shard of the chunk starting at input `position`; returns its path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = self.name_for(position, [r.path or "" for r in records], self.fmt)
        final = self.directory / name
        tmp = self.directory / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            if self.fmt == "jsonl":
                fmt = JsonlWriter(None)  # type: ignore[arg-type]
                data = "".join(fmt.format(r) for r in records).encode("utf-8", "surrogateescape")
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                import pyarrow as pa
                import pyarrow.parquet as pq

                rows = [{k: _clean(v) for k, v in r.to_dict().items()} for r in records]
                table = pa.Table.from_pylist(rows, schema=_arrow_schema())
                pq.write_table(table, tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()
        with contextlib.suppress(OSError):
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return final

    def shards(self) -> list[Path]:
        """Committed shards in name order (= input order within one run)."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if p.name.startswith("part-")
                      and p.suffix in (".jsonl", ".parquet"))

    @staticmethod
    def read(path: Path, columns: Sequence[str] | None = None) -> list[dict]:
        """The rows of one committed shard (JSONL or Parquet, by suffix)."""
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path, columns=list(columns) if columns else None).to_pylist()
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return [json.loads(line) for line in f if line.strip()]

    def iter_rows(self) -> Iterator[dict]:
        for p in self.shards():
            yield from self.read(p)

    def done_paths(self) -> set[str]:
        return {str(r["path"]) for p in self.shards() for r in self.read(p, columns=["path"])}

    def clear(self) -> int:
        """Delete every shard and temp file guard wrote here (a fresh scan); returns how many."""
        n = 0
        if self.directory.is_dir():
            for p in self.directory.iterdir():
                if (p.name.startswith("part-") or p.name.startswith(".part-")) and p.is_file():
                    p.unlink()
                    n += 1
        return n

    def clean_temp(self) -> int:
        """Remove temp files left by writers that were killed mid-write."""
        n = 0
        if self.directory.is_dir():
            for p in self.directory.iterdir():
                if p.name.startswith(".part-") and p.name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        p.unlink()
                        n += 1
        return n


# ---------------------------------------------------------------------------------------------- ray stages

def _decode_chunk(row: dict, *, image_size: int, max_pixels: int, max_decode_bytes: int = MAX_DECODE_BYTES) -> dict:
    """Ray task: read, hash and decode one chunk of files with the local scan's own loader (one at a time)."""
    paths = json.loads(row["paths"])
    n, s = len(paths), image_size
    pixels = np.zeros((n, 3, s, s), dtype=np.uint8)
    meta = []
    t0 = time.perf_counter()
    for i, p in enumerate(paths):
        img, err, ms = _timed_load(p, s, max_pixels, max_decode_bytes)
        if img is not None:
            pixels[i] = to_uint8(img.tensor, channels_last=False)
            meta.append(dict(ok=True, width=img.width, height=img.height, resize=img.resize, sha256=img.sha256,
                             size_bytes=img.size_bytes, ms=ms))
        else:
            meta.append(dict(ok=False, error=err, ms=ms))
    return {"position": int(row["position"]), "paths": row["paths"], "meta": json.dumps(meta),
            "pixels": pixels.tobytes(), "decode_s": time.perf_counter() - t0, "decode_pid": os.getpid()}


class _ChunkDetector:
    """Ray actor: one Detector (tokenizer + green lists) per process, one chunk per call, one shard per chunk."""

    def __init__(self, spec: DetectorSpec, shards_dir: str, shard_format: str, threads: int = 1) -> None:
        torch.set_num_threads(max(1, int(threads)))
        self.detector = spec.build()
        self.store = ShardStore(shards_dir, shard_format)
        self.size = self.detector.image_size
        self.pid = os.getpid()

    def _results(self, paths: list[str], meta: list[dict], pixels: bytes) -> list:
        s = self.size
        arr = np.frombuffer(pixels, dtype=np.uint8).reshape(len(paths), 3, s, s)
        out = []
        for i, m in enumerate(meta):
            if m["ok"]:
                img = LoadedImage(from_uint8(arr[i], channels_last=False), m["width"], m["height"], m["resize"], m["sha256"],
                                  m["size_bytes"])
                out.append((img, None, m["ms"]))
            else:
                out.append((None, m["error"], m["ms"]))
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in ("position", "n", "n_watermarked", "n_errors", "pid", "decode_s",
                                                "detect_s", "write_s", "shard")}
        for j in range(len(batch["position"])):
            paths = json.loads(batch["paths"][j])
            results = self._results(paths, json.loads(batch["meta"][j]), batch["pixels"][j])
            t0 = time.perf_counter()
            records = self.detector._detect_loaded(paths, results)   # the local scan's batch -> records code
            t1 = time.perf_counter()
            shard = self.store.commit(int(batch["position"][j]), records)
            t2 = time.perf_counter()
            for k, v in (("position", int(batch["position"][j])), ("n", len(records)),
                         ("n_watermarked", sum(r.flagged for r in records)),
                         ("n_errors", sum(r.error is not None for r in records)), ("pid", self.pid),
                         ("decode_s", float(batch["decode_s"][j])), ("detect_s", t1 - t0), ("write_s", t2 - t1),
                         ("shard", shard.name)):
                out[k].append(v)
        return out


# ---------------------------------------------------------------------------------------------- cluster

def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError("the ray engine needs Ray Data: pip install 'ar-guard[ray]'") from None
    return ray


@contextlib.contextmanager
def ray_cluster(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to Ray: reuse an initialised one, join `address`, or start a local cluster and stop it after.

    Args:
        address: an existing cluster ("ray://host:10001", "host:6379" or "auto"); None starts a local one.
        num_cpus: logical CPUs of a local cluster (default: the machine's cores).
    """
    ray = _import_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            # Workers at the driver's priority (Ray's default renices them by +15, meant for a busy driver;
            # guard's driver only merges, and Ray's own job submission sets 0 too).
            ray.init(num_cpus=int(num_cpus or os.cpu_count() or 1), include_dashboard=False,
                     _system_config={"worker_niceness": 0}, **kwargs)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - connection errors come in many types
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise ConfigError(f"cannot start or join {where}: {' '.join(str(e).split())[:300]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _quiet_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    with contextlib.suppress(AttributeError):
        ctx.enable_operator_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------------- scan

@dataclass
class WorkerStats:
    """What one detection actor process did: images, and seconds in detection and in shard writing."""

    images: int = 0
    chunks: int = 0
    detect_s: float = 0.0
    write_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        busy = self.detect_s + self.write_s
        return self.images / busy if busy > 0 else 0.0


@dataclass
class RayScanResult:
    """Outcome of `ray_scan`.

    Attributes:
        summary: counts and exit code, over the merged output (resumed rows included).
        shards_dir: the committed shards (kept; None when they went to a temp folder, now removed).
        workers: per detection-actor process id: `WorkerStats` of the chunks whose results reached the
            driver (a chunk re-run after a kill counts on the actor that finished it).
        decode_s: summed read/decode task time; wall_s: the Ray stage (start to last chunk) seconds.
        merge_s: seconds to merge shards into the output.
        n_workers: detection actors asked for; actor_cpus: logical CPUs each asked for.
    """

    summary: ScanSummary
    shards_dir: Path | None
    workers: dict[int, WorkerStats] = field(default_factory=dict)
    decode_s: float = 0.0
    wall_s: float = 0.0
    merge_s: float = 0.0
    n_workers: int = 0
    actor_cpus: float = 0.0


def check_device(device: str | None) -> None:
    """Refuse (ConfigError, one line) a tokenizer device the Ray engine cannot honour: anything but the CPU.

    The detection actors ask Ray for CPUs only, and Ray hides the GPUs from such actors; None (each kind's
    default, the CPU inside an actor) and "cpu" / "cpu:N" are accepted.
    """
    if device is None:
        return
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind != "cpu":
        raise ConfigError(f"the ray engine runs its detection actors on CPUs only; device {str(device)!r} needs "
                          f"the local engine (--engine local), or use --device cpu")


def _plan_cpus(total_cpus: float, num_workers: int) -> float:
    """Logical CPUs per detection actor so that one decode task always fits beside the pool."""
    free = max(total_cpus - DECODE_CPUS, 0.1)
    return round(min(1.0, free / num_workers), 3)


def _chunks(todo: Sequence[str], positions: dict[str, int], size: int) -> list[dict]:
    return [{"position": positions[todo[i]], "paths": json.dumps(list(todo[i:i + size]))}
            for i in range(0, len(todo), size)]


def ray_scan(paths: Sequence, spec: DetectorSpec, *, out: str | os.PathLike | None = None,
             stream: IO[str] | None = None, fmt: str = "jsonl", shard_format: str = "jsonl",
             resume: bool = False, num_workers: int | None = None, address: str | None = None,
             should_stop: Callable[[], bool] = lambda: False, on_batch: Callable[[int], None] | None = None,
             on_chunk: Callable[[dict], None] | None = None, info: Callable[[str], None] = lambda s: None,
             detector: Detector | None = None, state: ResumeState | None = None) -> RayScanResult:
    """Detect `paths` on Ray; write shards and one merged output with the local scan's records.

    Args:
        paths: image files in output order (duplicates scanned once).
        spec: how to build the detector (keys, model, test, alpha, search, batch size, device: None or the
            CPU, see `check_device`).
        out: the merged output file; its shards go to `<out>.shards/`. Without `out`, the merged rows go
            to `stream` and the shards to a temp folder (local clusters only).
        stream: where to write the merged output when `out` is None (e.g. sys.stdout).
        fmt: merged output format, one of FORMATS ("jsonl", "csv", "table").
        shard_format: "jsonl" or "parquet".
        resume: skip paths already in `out` or in its committed shards, append the rest to `out`.
        num_workers: detection actors (default: the cluster's CPUs, at least 1).
        address: an existing Ray cluster; None starts a local one with the machine's cores.
        should_stop: polled after each chunk; True stops the scan (committed chunks are merged).
        on_batch: called with the number of paths finished (progress).
        on_chunk: called with each chunk's summary row (position, n, pid, timings...).
        info: log lines (stderr in the CLI).
        detector: the driver's `spec.build()` if already built (saves loading the tokenizer twice).
        state: what `out` already holds, when the caller has read it (`guard.detect.scan.prepare_output`,
            which also locks `out` and checks its settings); default: read here when resuming.

    Paths are keyed on their real path (`guard.detect.scan.resolve_path`), as in the local scan.

    Raises:
        ConfigError: bad options, a device other than the CPU, Ray missing, a cluster that cannot be joined,
            an unresumable output.
    """
    check_device(spec.device)
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if shard_format not in SHARD_FORMATS:
        raise ConfigError(f"shard format must be one of {', '.join(SHARD_FORMATS)}, got {shard_format!r}")
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
        raise ConfigError(f"num_workers must be an int >= 1, got {num_workers!r}")
    if out is None and resume:
        raise ConfigError("--resume needs --out FILE (the file to continue)")
    if out is None and address:
        raise ConfigError("--address needs --out FILE: the shards go to FILE.shards/, which every node must reach")
    if out is None and stream is None:
        raise ConfigError("ray_scan needs out= (a file) or stream= (e.g. sys.stdout)")
    _import_ray()
    if shard_format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError("Parquet shards need pyarrow: pip install 'ar-guard[ray]'") from None

    # Build the detector once here: a key made for another tokenizer fails now, before any cluster starts.
    image_size = (detector or spec.build()).image_size
    if state is None:
        state = read_resume_state(out, fmt) if resume else ResumeState()
        if state.dropped_bytes:
            info(f"resume: dropped a partial last line ({state.dropped_bytes} bytes) from {out}")
    tmp_dir = None if out is not None else tempfile.mkdtemp(prefix="guard-shards-")
    store = ShardStore(shards_dir_for(out) if out is not None else tmp_dir, shard_format)
    if resume:
        store.clean_temp()
        shard_done = {resolve_path(p, state.base) for p in store.done_paths()}
        if shard_done - state.resolved:
            info(f"resume: {len(shard_done - state.resolved)} rows committed in {store.directory} but not yet merged")
    else:
        shard_done = set()
        if store.clear():
            info(f"fresh scan: removed the old shards in {store.directory}")
    done = state.resolved | shard_done

    ordered, n_same = unique_paths(paths)
    positions = {key: i for i, (key, _) in enumerate(ordered)}
    todo = [p for p, real in ordered if real not in done]
    summary = ScanSummary(n_skipped=len(ordered) - len(todo), n_same_file=n_same)
    if on_batch and summary.n_skipped:
        on_batch(summary.n_skipped)
    result = RayScanResult(summary=summary, shards_dir=store.directory if tmp_dir is None else None)

    failure: str | None = None
    try:
        if todo and not should_stop():
            try:
                _run_pipeline(todo, positions, spec, image_size, store, result, num_workers=num_workers,
                              address=address, should_stop=should_stop, on_batch=on_batch, on_chunk=on_chunk)
            except (ConfigError, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - a dead cluster, a Ctrl-C that reached Ray's processes...
                if should_stop():
                    result.summary.interrupted = True
                else:
                    failure = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        elif todo:
            result.summary.interrupted = True
        if not result.summary.interrupted:
            store.clean_temp()          # a writer killed mid-write left it; its chunk was re-run and committed
        t0 = time.perf_counter()
        _merge(store, out, stream, fmt, resume, state, summary)     # committed rows are never lost
        result.merge_s = time.perf_counter() - t0
        if failure:
            raise GuardError(f"the Ray run failed ({failure}); the {summary.n_rows} rows committed so far are in "
                             f"{out if out is not None else 'the output'}; rerun with --resume to continue")
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return result


def _run_pipeline(todo: list[str], positions: dict[str, int], spec: DetectorSpec, image_size: int,
                  store: ShardStore, result: RayScanResult, *, num_workers: int | None, address: str | None,
                  should_stop: Callable[[], bool], on_batch, on_chunk) -> None:
    store.directory.mkdir(parents=True, exist_ok=True)
    chunks = _chunks(todo, positions, spec.batch_size)
    with ray_cluster(address) as ray:
        _quiet_ray_data()
        total_cpus = float(ray.cluster_resources().get("CPU", 1.0))
        n = num_workers or max(1, int(total_cpus))
        actor_cpus = _plan_cpus(total_cpus, n)
        result.n_workers, result.actor_cpus = n, actor_cpus
        ds = ray.data.from_items(chunks, override_num_blocks=max(1, min(len(chunks), 4 * n)))
        ds = ds.map(_decode_chunk, fn_kwargs=dict(image_size=image_size, max_pixels=spec.max_pixels,
                                                  max_decode_bytes=spec.max_decode_bytes),
                    num_cpus=DECODE_CPUS)
        ds = ds.map_batches(
            _ChunkDetector, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=n),
            fn_constructor_kwargs=dict(spec=spec, shards_dir=str(store.directory), shard_format=store.fmt,
                                       threads=max(1, int(actor_cpus))),
            num_cpus=actor_cpus)   # Ray Data's actor pools restart dead actors and re-run their tasks
        t0 = time.perf_counter()
        it = ds.iter_batches(batch_size=None, batch_format="numpy")
        try:
            for batch in it:
                for j in range(len(batch["position"])):
                    row = {k: batch[k][j].item() if hasattr(batch[k][j], "item") else batch[k][j] for k in batch}
                    w = result.workers.setdefault(int(row["pid"]), WorkerStats())
                    w.images += int(row["n"])
                    w.chunks += 1
                    w.detect_s += float(row["detect_s"])
                    w.write_s += float(row["write_s"])
                    result.decode_s += float(row["decode_s"])
                    if on_chunk:
                        on_chunk(row)
                    if on_batch:
                        on_batch(int(row["n"]))
                if should_stop() and sum(w.images for w in result.workers.values()) < len(todo):
                    result.summary.interrupted = True
                    break
        finally:
            with contextlib.suppress(Exception):
                it.close()  # type: ignore[attr-defined]
        result.wall_s = time.perf_counter() - t0


def _merge(store: ShardStore, out, stream, fmt: str, resume: bool, state: ResumeState,
           summary: ScanSummary) -> None:
    """Write the committed shards' rows not yet in the output, once per path, in shard (input) order."""
    seen = set(state.resolved)
    summary.n_rows, summary.n_watermarked, summary.n_errors = state.n_rows, state.n_watermarked, state.n_errors

    def rows() -> Iterator[DetectionRecord]:
        for shard in store.shards():
            batch = []
            for row in ShardStore.read(shard):
                p = resolve_path(str(row["path"]), state.base)
                if p in seen:
                    continue
                seen.add(p)
                batch.append(DetectionRecord.from_dict({k: row.get(k) for k in RECORD_FIELDS}))
            if batch:
                yield batch

    def write_all(writer) -> None:
        for batch in rows():
            writer.write(batch)
            summary.n_rows += len(batch)
            summary.n_new += len(batch)
            summary.n_watermarked += sum(r.flagged for r in batch)
            summary.n_errors += sum(r.error is not None for r in batch)

    if out is None:
        write_all(open_writer(stream, fmt))
        return
    out = Path(out)
    errors = "surrogateescape" if fmt == "csv" else "strict"      # CSV writes undecodable path bytes as they are
    if resume and out.exists():
        try:
            with open(out, "a", encoding="utf-8", newline="", errors=errors) as f:
                write_all(open_writer(f, fmt, header=f.tell() == 0))
        except OSError as e:
            raise ConfigError(f"cannot write --out {out}: {e.strerror}") from None
        return
    try:
        with temp_beside(out) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="", errors=errors) as f:
                write_all(open_writer(f, fmt))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, out)
    except OSError as e:
        raise ConfigError(f"cannot write --out {out}: {e.strerror}") from None
