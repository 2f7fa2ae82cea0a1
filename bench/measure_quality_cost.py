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
from guard.models.reference.shapes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, parse_background, parse_prompt


def population(folder: Path, n: int) -> np.ndarray:
    chunks = sorted(folder.glob("chunk_*.npz"))
    if not chunks:
        raise SystemExit(f"no cached population in {folder}; run bench/measure_robustness.py first")
    ims = np.concatenate([np.load(c)["images"] for c in chunks])
    if len(ims) < n:
        raise SystemExit(f"{folder} holds {len(ims)} images, fewer than --n {n}")
    return ims[:n]


def judge(clf, images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
    """Per-prompt counts (n_objects, shape ok, colour ok, background ok) as arrays of length len(prompts)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    pred = torch.cat([clf.predict(x[i:i + 256]) for i in range(0, len(x), 256)])
    out = {k: np.zeros(len(prompts)) for k in ("objects", "shape", "colour", "backgrounds", "background")}
    for i, p in enumerate(prompts):
        bg = parse_background(p)
        if bg is not None:
            out["backgrounds"][i] = 1
            out["background"][i] = int(pred[i, 0, 3]) == BACKGROUNDS.index(bg)
        for shape, colour, _size, pos in parse_prompt(p):
            q = POSITIONS.index(pos)
            out["objects"][i] += 1
            out["shape"][i] += int(pred[i, q, 0]) == SHAPES.index(shape) + 1
            out["colour"][i] += int(pred[i, q, 1]) == COLOURS.index(colour)
    return out


def rates(c: dict[str, np.ndarray], idx: np.ndarray | slice = slice(None)) -> dict[str, float]:
    return {"shape": c["shape"][idx].sum() / c["objects"][idx].sum(),
            "colour": c["colour"][idx].sum() / c["objects"][idx].sum(),
            "background": c["background"][idx].sum() / max(c["backgrounds"][idx].sum(), 1)}


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
    rng = np.random.default_rng(0)
    boots = [rng.integers(0, args.n, args.n) for _ in range(args.bootstrap)]
    result = {"command": "python bench/measure_quality_cost.py " + " ".join(__import__("sys").argv[1:]),
              "n": args.n, "populations": {k: rates(c) for k, c in counts.items()}, "paired_difference": {}}
    base = counts["clean"]
    for mode in [m for m in counts if m != "clean"]:
        diff = {}
        for what in ("shape", "colour", "background"):
            point = rates(counts[mode])[what] - rates(base)[what]
            bs = np.array([rates(counts[mode], b)[what] - rates(base, b)[what] for b in boots])
            diff[what] = {"points": round(100 * point, 2), "ci95": [round(100 * float(np.percentile(bs, 2.5)), 2),
                                                                   round(100 * float(np.percentile(bs, 97.5)), 2)]}
        result["paired_difference"][mode] = diff
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
