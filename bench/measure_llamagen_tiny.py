"""Saved images end to end through the llamagen adapter: generate -> PNG -> detect with `llamagen:tiny`.

    OMP_NUM_THREADS=1 python bench/measure_llamagen_tiny.py --n 16 --out /tmp/llamagen-tiny-measure \
        --json bench/results/llamagen_tiny.json

For each mode (clean, soft delta 2 and 4, hard) it generates N images with the shipped tiny LlamaGen
(guard.models.load("llamagen:tiny"), c2i over the reference backgrounds), writes them as PNGs, detects
them from the files (guard.detect.Detector.detect_paths, exact distinct-code test, alpha 1e-4), and
prints one JSON line per mode: share detected, median log10 p, median distinct codes, and the round-trip
agreement of the generated codes after decode -> PNG -> encode. Everything goes through the package.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="llamagen:tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write all rows (and the model card) to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.time()

    from guard.detect import Detector
    from guard.imageio import load_image, save_png
    from guard.keys import WatermarkKey
    from guard.models import load
    from guard.watermark import GreenLists, WatermarkProcessor

    gen = load(args.model)
    tok = gen.tokenizer
    key = WatermarkKey._from_secret(bytes(range(32)), gamma=0.25, n_lists=8, tokenizer_id=tok.id,
                                    vocab_size=tok.vocab_size, geometry=WatermarkKey.create(tok).geometry)
    gl = GreenLists(key, tok)
    det = Detector(gl, tok, provenance=False)
    prompts = [str(i % gen.gpt.num_classes) for i in range(args.n)]
    rows = []
    for mode in ("clean", "delta2", "delta4", "hard"):
        procs = [] if mode == "clean" else [WatermarkProcessor(gl, hard=mode == "hard",
                                                               delta=4.0 if mode == "delta4" else 2.0,
                                                               seed=args.seed)]
        codes = gen.generate(prompts, n=1, seed=args.seed, logits_processor=procs)
        folder = args.out / mode
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, img in enumerate(tok.decode(codes)):
            save_png(img, folder / f"{i:04d}.png")
            paths.append(folder / f"{i:04d}.png")
        back = tok.encode(torch.stack([load_image(p, tok.image_size).tensor for p in paths]))
        recs = det.detect_paths(paths)
        row = {"mode": mode, "n": len(recs), "detected": float(np.mean([r.watermarked for r in recs])),
               "n_detected": int(sum(r.watermarked for r in recs)), "alpha": det.alpha,
               "median_log10_p": float(np.median([r.log10_p for r in recs])),
               "max_log10_p": float(np.max([r.log10_p for r in recs])),
               "min_log10_p": float(np.min([r.log10_p for r in recs])),
               "median_distinct": float(np.median([r.n_distinct for r in recs])),
               "round_trip": round(float((back == codes).float().mean()), 4), "model": gen.id}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json is not None:
        from guard.models import llamagen as lg

        where = args.model.split(":", 1)[1]
        card_file = (lg.SHIPPED if where == "tiny" else Path(where)) / "card.json"
        card = json.loads(card_file.read_text()) if card_file.is_file() else None
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": "OMP_NUM_THREADS=1 python bench/measure_llamagen_tiny.py "
                                         + " ".join(sys.argv[1:]), "n_per_mode": args.n, "seed": args.seed,
                                         "key": "WatermarkKey._from_secret(bytes(range(32)), gamma 0.25, 8 lists)",
                                         "prompts": "class ids i % num_classes", "wall_s": round(time.time() - t_start),
                                         "torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "rows": rows, "card": card}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
