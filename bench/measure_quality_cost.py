"""Quality cost of the watermark on the reference generator, paired, with a bootstrap interval.

Reads the populations `bench/measure_robustness.py` cached (the same prompts and sampling seeds with and
without the mark), judges every object of every image with the reference classifier, and reports shape /
colour / background adherence per population and the paired difference (marked − clean) with a 95%
bootstrap interval over prompts (images resampled together, so the per-prompt pairing is kept).

    python bench/measure_quality_cost.py --workdir /work/train/v2/r3/rob --n 1000 --out bench/results/v2/quality_cost.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from guard.eval.harness import eval_prompts, padded_count
from guard.models.reference import load_classifier
from guard.models.reference.classifier import adherence_counts, adherence_from_counts


def population(folder: Path, n: int) -> np.ndarray:
    chunks = sorted(folder.glob("chunk_*.npz"))
    if not chunks:
        raise SystemExit(f"no cached population in {folder}; run bench/measure_robustness.py first")
    ims = np.concatenate([np.load(c)["images"] for c in chunks])
    if len(ims) < n:
        raise SystemExit(f"{folder} holds {len(ims)} images, fewer than --n {n}")
    return ims[:n]


def judge(clf, images: np.ndarray, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Per-prompt adherence counts of uint8 (B, H, W, 3) images (`classifier.adherence_counts`)."""
    return adherence_counts(clf, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, prompts)


FIELDS = ("shape", "colour", "background")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="the populations' seed (measure_robustness --seed)")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    prompts = eval_prompts(padded_count(args.n, 64), args.seed, "reference")[:args.n]
    clf = load_classifier()
    counts = {"clean": judge(clf, population(args.workdir / "soft/populations/clean", args.n), prompts)}
    for mode in ("soft", "hard"):
        folder = args.workdir / mode / "populations" / "watermarked"
        if folder.exists():
            counts[mode] = judge(clf, population(folder, args.n), prompts)
    rates = {k: adherence_from_counts(c) for k, c in counts.items()}
    rng = np.random.default_rng(0)
    boots = [torch.from_numpy(rng.integers(0, args.n, args.n)) for _ in range(args.bootstrap)]
    result = {"command": "python bench/measure_quality_cost.py " + " ".join(__import__("sys").argv[1:]),
              "n": args.n, "populations": {k: {f: getattr(a, f) for f in FIELDS} for k, a in rates.items()},
              "paired_difference": {}}
    base = counts["clean"]
    for mode in [m for m in counts if m != "clean"]:
        diff = {}
        pairs = [(adherence_from_counts(counts[mode], b), adherence_from_counts(base, b)) for b in boots]
        for what in FIELDS:
            point = getattr(rates[mode], what) - getattr(rates["clean"], what)
            bs = np.array([getattr(m, what) - getattr(c, what) for m, c in pairs])
            diff[what] = {"points": round(100 * point, 2), "ci95": [round(100 * float(np.percentile(bs, 2.5)), 2),
                                                                   round(100 * float(np.percentile(bs, 97.5)), 2)]}
        result["paired_difference"][mode] = diff
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
