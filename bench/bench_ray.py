"""Local single-process scan vs Ray Data with 1 and 2 workers on the same images: identity and speed.

    # once: 5,000 reference-domain images (half post-hoc watermarked with a fixed bench key)
    nice -n 10 python bench/bench_ray.py make-images /work/raybench --n 5000
    # then, side by side in one run (writes bench/results/ray_2core.json)
    nice -n 10 python bench/bench_ray.py run /work/raybench --out bench/results/ray_2core.json
    # local 1 thread vs Ray 2 workers alternated on 1,024 images (same load drift for both)
    nice -n 10 python bench/bench_ray.py interleaved /work/raybench --n 1024 --rounds 2

Images: scenes from the reference renderer (`guard.models.reference.shapes`, seeds 0..n-1); the first
half are watermarked post hoc (`guard.watermark.watermark_image`, the `guard watermark posthoc` path)
with a fixed key (one swap round), the second half are left clean. The reference GPT would be the natural source, but
on this 2-core machine it samples ~1 image/s under load, i.e. >80 minutes for 5,000; detection cost does
not depend on where the pixels came from (every image is 64×64 PNG, 256 tokens).

`run` measures, in one process and one sitting:
* local: `guard.detect.scan.scan` (the `--engine local` path) with 1 torch thread, then with the
  machine's default threads; wall time and images/s;
* ray 1 worker, ray 2 workers: `ray_scan` on a fresh local cluster each time; wall time including
  cluster start/stop, and the pipeline time alone;
* identity: every record field but `elapsed_ms` equal to the local scan's, row for row;
* a per-image cost breakdown on the driver (read/decode, encode, stats, write) and per actor.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BENCH_SECRET = bytes(range(7, 39))


def _bench_key(tok):
    from guard.keys import WatermarkKey

    return WatermarkKey._from_secret(BENCH_SECRET, gamma=0.25, n_lists=8, tokenizer_id=tok.id,
                                     vocab_size=tok.vocab_size, created="2026-01-01T00:00:00Z")


def make_images(folder: Path, n: int, batch: int = 64) -> None:
    import numpy as np

    from guard.imageio import from_uint8, save_png
    from guard.models import load_tokenizer
    from guard.models.reference.shapes import render, sample_scene
    from guard.watermark import GreenLists, watermark_image

    torch.set_num_threads(1)
    tok = load_tokenizer("reference")
    key = _bench_key(tok)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "bench.key").exists():
        key.save(folder / "bench.key")
    gl = GreenLists(key, tok)
    n_wm = n // 2
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        idx = list(range(start, min(n, start + batch)))
        imgs = np.stack([render(sample_scene(i)) for i in idx])
        x = from_uint8(imgs)
        wm_rows = [j for j, i in enumerate(idx) if i < n_wm]
        if wm_rows:
            res = watermark_image(x[wm_rows], gl, tok, list_index=[idx[j] % 8 for j in wm_rows], max_iters=1)
            x[wm_rows] = res.images
        for j, i in enumerate(idx):
            save_png(x[j], folder / (f"wm_{i:05d}.png" if i < n_wm else f"clean_{i:05d}.png"))
        print(f"{idx[-1] + 1}/{n} images, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "elapsed_ms"} for r in rows]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(folder: Path, out: Path, work: Path) -> dict:
    from guard.detect import Detector
    from guard.imageio import load_image
    from guard.detect.ray_engine import DetectorSpec, ray_scan
    from guard.detect.scan import JsonlWriter, find_images, open_writer, scan
    from guard.keys import WatermarkKey
    from guard.models import load_tokenizer
    from guard.watermark import GreenLists

    default_threads = torch.get_num_threads()
    tok = load_tokenizer("reference")
    key = _bench_key(tok)                     # the same secret, bound to the tokenizer shipped now
    made_for = WatermarkKey.load(folder / "bench.key").tokenizer_id
    if made_for != tok.id:
        print(f"warning: images were watermarked for tokenizer {made_for}, detection uses {tok.id}; "
              f"re-run make-images", file=sys.stderr)
    paths = find_images(folder)
    n = len(paths)
    work.mkdir(parents=True, exist_ok=True)
    res: dict = dict(n_images=n, images_made_for_tokenizer=made_for, n_watermarked_files=sum("wm_" in os.path.basename(p) for p in paths),
                     batch_size=64, cpu_count=os.cpu_count(), machine=platform.machine(),
                     torch_default_threads=default_threads, tokenizer=tok.id)

    # ---- local single process
    def save() -> None:
        res["command"] = f"nice -n 10 python bench/bench_ray.py run {folder} --out {out}"
        res["note"] = ("2-core machine shared with other jobs (a training run at nice 0 and other sessions' tests); "
                       "run under nice -n 10, Ray workers at the same niceness. Phases run one after the other, "
                       "so the load differs between them; absolute figures move with the machine's load.")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2) + "\n")

    local_rows = {}

    def local(threads: int) -> None:
        torch.set_num_threads(threads)
        det = Detector(GreenLists(key, tok), tok, batch_size=64)
        target = work / f"local_{threads}t.jsonl"
        t0 = time.perf_counter()
        with open(target, "w") as f:
            s = scan(det, paths, open_writer(f, "jsonl"), workers=4)
        wall = time.perf_counter() - t0
        res[f"local_{threads}thread"] = dict(wall_s=wall, images_per_s=n / wall, exit_code=s.exit_code,
                                             n_watermarked=s.n_watermarked, n_errors=s.n_errors)
        local_rows[threads] = _jsonl(target)
        print(f"local {threads} thread(s): {wall:.1f} s, {n / wall:.1f} img/s", file=sys.stderr, flush=True)
        torch.set_num_threads(1)
        save()

    local(1)
    reference = _strip(local_rows[1])

    # ---- ray, 1 and 2 workers (fresh local cluster each)
    spec = DetectorSpec(keys=(key,), batch_size=64)
    for workers in (1, 2):
        target = work / f"ray_{workers}w.jsonl"
        t0 = time.perf_counter()
        r = ray_scan(paths, spec, out=target, num_workers=workers)
        wall = time.perf_counter() - t0
        rows = _jsonl(target)
        same = _strip(rows) == reference
        per_worker = {str(pid): dict(images=w.images, chunks=w.chunks, detect_s=w.detect_s, write_s=w.write_s,
                                     images_per_busy_s=w.images_per_s) for pid, w in r.workers.items()}
        res[f"ray_{workers}worker"] = dict(
            wall_s=wall, images_per_s=n / wall, pipeline_s=r.wall_s, pipeline_images_per_s=n / r.wall_s,
            startup_and_merge_s=wall - r.wall_s, merge_s=r.merge_s, actor_cpus=r.actor_cpus,
            decode_task_s_total=r.decode_s, exit_code=r.summary.exit_code, n_rows=r.summary.n_rows,
            n_watermarked=r.summary.n_watermarked, records_identical_to_local=same,
            decisions_identical=[x["watermarked"] for x in rows] == [x["watermarked"] for x in local_rows[1]],
            p_values_identical=[x["p_value"] for x in rows] == [x["p_value"] for x in local_rows[1]],
            n_shards=len(list((Path(str(target) + ".shards")).iterdir())), workers=per_worker)
        print(f"ray {workers} worker(s): {wall:.1f} s total, pipeline {r.wall_s:.1f} s, identical={same}",
              file=sys.stderr, flush=True)
        save()

    # ---- per-image cost breakdown on the driver (1 thread), first 1,024 images, 64 per batch
    det = Detector(GreenLists(key, tok), tok, batch_size=64)
    sub = paths[:1024]
    t_dec = t_enc = t_stats = t_write = 0.0
    sink = io.StringIO()
    writer = JsonlWriter(sink)
    for i in range(0, len(sub), 64):
        chunk = sub[i:i + 64]
        t0 = time.perf_counter()
        loaded = [load_image(p, det.image_size) for p in chunk]
        t1 = time.perf_counter()
        images = torch.stack([li.tensor for li in loaded])
        codes = det.encode(images)
        t2 = time.perf_counter()
        recs = det.detect_codes(codes, chunk)          # the exact test against all lists + Bonferroni
        t3 = time.perf_counter()
        writer.write(recs)
        t4 = time.perf_counter()
        t_dec, t_enc, t_stats, t_write = t_dec + t1 - t0, t_enc + t2 - t1, t_stats + t3 - t2, t_write + t4 - t3
    m = len(sub)
    res["cost_ms_per_image"] = dict(read_decode=1e3 * t_dec / m, encode=1e3 * t_enc / m, stats=1e3 * t_stats / m,
                                    write_jsonl=1e3 * t_write / m, n_images=m, torch_threads=1)
    res["object_store_bytes_per_image"] = 3 * det.image_size ** 2
    res["record_bytes_per_image_jsonl"] = len(sink.getvalue().encode()) / m
    save()
    if default_threads != 1:
        local(default_threads)
        res["local_threads_identical"] = reference == _strip(local_rows[default_threads])
        save()
    return res


def interleaved(folder: Path, out: Path, work: Path, n: int, rounds: int) -> dict:
    """Local 1-thread scan and Ray with 2 workers on the same first `n` images, alternated `rounds` times.

    The machine's load drifts over minutes; alternating short runs puts both engines under the same
    drift, which the long sequential phases of `run` cannot.
    """
    from guard.detect import Detector
    from guard.detect.ray_engine import DetectorSpec, ray_scan
    from guard.detect.scan import find_images, open_writer, scan
    from guard.models import load_tokenizer
    from guard.watermark import GreenLists

    torch.set_num_threads(1)
    tok = load_tokenizer("reference")
    key = _bench_key(tok)
    paths = find_images(folder)[:n]
    work.mkdir(parents=True, exist_ok=True)
    res: dict = dict(n_images=len(paths), rounds=[], batch_size=64,
                     command=f"nice -n 10 python bench/bench_ray.py interleaved {folder} --n {n} --rounds {rounds} "
                             f"--out {out}")
    for i in range(rounds):
        det = Detector(GreenLists(key, tok), tok, batch_size=64)
        t0 = time.perf_counter()
        with open(work / "il_local.jsonl", "w") as f:
            scan(det, paths, open_writer(f, "jsonl"), workers=4)
        local_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = ray_scan(paths, DetectorSpec(keys=(key,), batch_size=64), out=work / "il_ray.jsonl", num_workers=2)
        ray_s = time.perf_counter() - t0
        same = _strip(_jsonl(work / "il_local.jsonl")) == _strip(_jsonl(work / "il_ray.jsonl"))
        res["rounds"].append(dict(local_1thread_s=local_s, ray_2worker_s=ray_s, ray_2worker_pipeline_s=r.wall_s,
                                  ratio_local_over_ray=local_s / ray_s,
                                  ratio_local_over_ray_pipeline=local_s / r.wall_s, identical=same))
        print(json.dumps(res["rounds"][-1]), file=sys.stderr, flush=True)
        out.write_text(json.dumps(res, indent=2) + "\n")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-images")
    mk.add_argument("folder", type=Path)
    mk.add_argument("--n", type=int, default=5000)
    rn = sub.add_parser("run")
    rn.add_argument("folder", type=Path)
    rn.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ray_2core.json")
    rn.add_argument("--work", type=Path, default=None, help="scratch folder for outputs (default FOLDER/../raybench_out)")
    il = sub.add_parser("interleaved")
    il.add_argument("folder", type=Path)
    il.add_argument("--n", type=int, default=1024)
    il.add_argument("--rounds", type=int, default=2)
    il.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ray_2core_interleaved.json")
    a = ap.parse_args()
    if a.cmd == "interleaved":
        res = interleaved(a.folder, a.out, a.folder.parent / (a.folder.name + "_out"), a.n, a.rounds)
        print(json.dumps(res, indent=2))
    elif a.cmd == "make-images":
        make_images(a.folder, a.n)
    else:
        res = run(a.folder, a.out, a.work or a.folder.parent / (a.folder.name + "_out"))
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
