"""Pick the reference generator's default sampling settings on *training-split* prompts only.

The held-out prompts that `guard.models.reference.evaluate` reports on are never used here, so the
reported adherence is not tuned on its own data.

    python bench/select_sampling.py [--n 64]
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch

from guard.imageio import quantize
from guard.models import judge_for, load
from guard.models.reference.shapes import prompt_for, sample_scene


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--cfg", type=float, nargs="+", default=[3.0, 6.0])
    p.add_argument("--top-k", type=int, nargs="+", default=[0, 100])
    args = p.parse_args()
    gen = load("reference")
    judge = judge_for(gen)
    prompts = [prompt_for(sample_scene(s, split="train"), seed=s) for s in range(20_000_000, 20_000_000 + args.n)]
    rows = []
    for cfg, top_k in itertools.product(args.cfg, args.top_k):
        codes = gen.generate(prompts, seed=0, cfg=cfg, top_k=top_k or None)
        adh, _ = judge.adherence(quantize(gen.tokenizer.decode(codes)), prompts)
        rows.append({"cfg": cfg, "top_k": top_k or None, **adh})
        print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: r["both"])
    print("best on training-split prompts:", json.dumps(best))


if __name__ == "__main__":
    main()
