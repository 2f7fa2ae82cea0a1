"""Detection throughput against the cost of the tokenizer alone.

    OMP_NUM_THREADS=1 python bench/bench_detect.py --threads 1 --n 512 --batch-size 64

Prints, side by side:
  * in-memory: `Detector.detect_images` time per image ÷ `tokenizer.encode` time per image (goal <= 1.05);
  * files: `Detector.detect_paths` on PNGs (read + hash + decode + encode + test) ÷ encode alone, and the
    `scan` rate in images/s with the JSONL writer;
  * fingerprint: the same in-memory detection and PNG scan with `--fingerprint` too (one extra decode per
    image, codes shared), as ratios to the watermark detector alone (issue 20: goal <= 2x);
  * stats: p-values per second of `stats.distinct_code_test` / `token_count_test` (B maps × K lists).
Images are decoded random alive codes of the shipped reference tokenizer (content does not change the
cost of a conv encoder). No assertions; numbers only.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def _best(fn, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=512, help="images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--workers", type=int, default=2, help="decoding threads for file scans")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from guard.detect import Detector, stats
    from guard.detect.fingerprint import FingerprintCalibration, Fingerprinter, fingerprint_scores
    from guard.imageio import quantize, save_png
    from guard.detect.scan import open_writer, scan
    from guard.keys import WatermarkKey
    from guard.models import load_tokenizer
    from guard.watermark import GreenLists

    tok = load_tokenizer("reference")
    key = WatermarkKey._from_secret(bytes(32), gamma=0.25, n_lists=8, tokenizer_id=tok.id, vocab_size=tok.vocab_size)
    gl = GreenLists(key, tok)
    g = torch.Generator().manual_seed(0)
    pool = gl.alive.nonzero().flatten() if gl.alive is not None else torch.arange(tok.vocab_size)
    codes = pool[torch.randint(0, len(pool), (args.n, *tok.grid), generator=g)]
    images = quantize(tok.decode(codes)).contiguous()
    det = Detector(gl, tok, batch_size=args.batch_size)
    # The same scan with the key-free fingerprint too (one extra decode per image, codes shared). The
    # calibration's content does not change the cost: scores of 199 of these images.
    cal = FingerprintCalibration(tokenizer_id=tok.id, model="reference", image_size=int(tok.image_size),
                                 scores=tuple(float(s) for s in fingerprint_scores(tok, images[:199])))
    det_fp = Detector(gl, tok, batch_size=args.batch_size, fingerprints=Fingerprinter([cal], [tok], alpha=1e-2))

    def encode_only():
        for i in range(0, args.n, args.batch_size):
            tok.encode(images[i:i + args.batch_size])

    def detect_mem(d=det):
        for i in range(0, args.n, args.batch_size):
            d.detect_images(images[i:i + args.batch_size])

    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i in range(args.n):
            paths.append(f"{d}/img_{i:05d}.png")
            save_png(images[i], paths[-1])
        runs = {
            "encode": encode_only,
            "detect_images": detect_mem,
            "detect_paths": lambda: det.detect_paths(paths, workers=args.workers),
            "scan": lambda: scan(det, paths, open_writer(io.StringIO(), "jsonl"), workers=args.workers),
            "detect_images_fingerprint": lambda: detect_mem(det_fp),
            "scan_fingerprint": lambda: scan(det_fp, paths, open_writer(io.StringIO(), "jsonl"), workers=args.workers),
        }
        for fn in runs.values():                                  # warm caches (p-value tables, allocator)
            fn()
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeat):                              # interleaved, so drift hits all alike
            for k, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    enc_best, enc_med = min(times["encode"]), statistics.median(times["encode"])
    det_best, det_med = min(times["detect_images"]), statistics.median(times["detect_images"])
    files_best, files_med = min(times["detect_paths"]), statistics.median(times["detect_paths"])
    scan_best = min(times["scan"])
    fp_mem_best, fp_scan_best = min(times["detect_images_fingerprint"]), min(times["scan_fingerprint"])
    fp_mem_ratios = [a / b for a, b in zip(times["detect_images_fingerprint"], times["detect_images"])]
    fp_scan_ratios = [a / b for a, b in zip(times["scan_fingerprint"], times["scan"])]

    B, K = 1024, 8
    big = pool[torch.randint(0, len(pool), (B, tok.grid[0] * tok.grid[1]), generator=g)]
    stats.distinct_code_test(big, gl.masks, gl.alive)
    t_dist, _ = _best(lambda: stats.distinct_code_test(big, gl.masks, gl.alive), args.repeat)
    stats.token_count_test(big, gl.masks, gl.alive)
    t_tok, _ = _best(lambda: stats.token_count_test(big, gl.masks, gl.alive), args.repeat)

    n = args.n
    out = {
        "tokenizer": tok.id, "n_images": n, "batch_size": args.batch_size, "torch_threads": args.threads,
        "decode_workers": args.workers,
        "encode_ms_per_image": 1e3 * enc_best / n,
        "detect_images_ms_per_image": 1e3 * det_best / n,
        "ratio_detect_images_over_encode": det_best / enc_best,
        "ratio_detect_images_over_encode_median": det_med / enc_med,
        "detect_paths_ms_per_image": 1e3 * files_best / n,
        "ratio_detect_paths_over_encode": files_best / enc_best,
        "ratio_detect_paths_over_encode_median": files_med / enc_med,
        "scan_images_per_s": n / scan_best,
        "fingerprint_detect_images_ms_per_image": 1e3 * fp_mem_best / n,
        "ratio_fingerprint_over_watermark_detect_images": fp_mem_best / det_best,
        "ratio_fingerprint_over_watermark_detect_images_median_paired": statistics.median(fp_mem_ratios),
        "scan_fingerprint_images_per_s": n / fp_scan_best,
        "ratio_fingerprint_over_watermark_scan": fp_scan_best / scan_best,
        "ratio_fingerprint_over_watermark_scan_median_paired": statistics.median(fp_scan_ratios),
        "stats_distinct_pvalues_per_s": B * K / t_dist,
        "stats_tokens_pvalues_per_s": B * K / t_tok,
    }
    print(f"tokenizer {tok.id}; {n} images of {tok.image_size}px, batch {args.batch_size}, "
          f"{args.threads} torch thread(s), {args.workers} decode workers (best of {args.repeat}, interleaved)")
    print(f"  encode alone            {out['encode_ms_per_image']:8.3f} ms/image")
    print(f"  detect_images           {out['detect_images_ms_per_image']:8.3f} ms/image   "
          f"ratio {out['ratio_detect_images_over_encode']:.3f} (median {out['ratio_detect_images_over_encode_median']:.3f})")
    print(f"  detect_paths (PNG)      {out['detect_paths_ms_per_image']:8.3f} ms/image   "
          f"ratio {out['ratio_detect_paths_over_encode']:.3f} (median {out['ratio_detect_paths_over_encode_median']:.3f})")
    print(f"  scan (PNG -> JSONL)     {out['scan_images_per_s']:8.1f} images/s")
    print(f"  + fingerprint, in memory {out['fingerprint_detect_images_ms_per_image']:8.3f} ms/image   ratio to "
          f"detect_images {out['ratio_fingerprint_over_watermark_detect_images']:.3f} "
          f"(median of paired runs {out['ratio_fingerprint_over_watermark_detect_images_median_paired']:.3f})")
    print(f"  + fingerprint, scan     {out['scan_fingerprint_images_per_s']:8.1f} images/s   ratio of time to scan "
          f"{out['ratio_fingerprint_over_watermark_scan']:.3f} "
          f"(median of paired runs {out['ratio_fingerprint_over_watermark_scan_median_paired']:.3f})")
    print(f"  stats distinct          {out['stats_distinct_pvalues_per_s']:10.0f} p-values/s ({B} maps x {K} lists)")
    print(f"  stats tokens            {out['stats_tokens_pvalues_per_s']:10.0f} p-values/s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
