"""Reference generator throughput on this machine: images/s for 64 images (batch 64), with the split
between GPT sampling and VQ decoding. Not a test; prints figures.

    python bench/bench_generate.py [--n 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from guard.models import load


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    gen = load("reference")
    gen.generate(["a big red disc in the upper left"], n=2, seed=0)  # warm-up
    prompts = ["a big red disc in the upper left", "a small blue star in the lower right",
               "a huge golden box at the top right and a tiny lime wedge in the bottom left",
               "a little violet plus sign in the upper right"]
    t0 = time.perf_counter()
    codes = gen.generate(prompts, n=args.n // len(prompts), seed=1)
    t1 = time.perf_counter()
    gen.tokenizer.decode(codes)
    t2 = time.perf_counter()
    n = len(codes)
    print(f"threads={args.threads} images={n} (batch {gen.batch_size}, cfg 3.0, 256 tokens each)")
    print(f"sampling: {t1 - t0:.2f} s   decode: {t2 - t1:.2f} s   total: {t2 - t0:.2f} s")
    print(f"throughput: {n / (t2 - t0):.2f} images/s  ({(t1 - t0) / 256 * 1000:.1f} ms per token step for the batch)")


if __name__ == "__main__":
    main()
