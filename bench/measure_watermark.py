"""Measure the watermark on the reference generator; writes bench/results/watermark.json and prints a table.

    OMP_NUM_THREADS=2 .venv/bin/python bench/measure_watermark.py --threads 2
    OMP_NUM_THREADS=1 .venv/bin/python bench/measure_watermark.py --n-adherence 64 --n-share 64 --n-posthoc 16  # quick

Reports, at gamma=0.25 with K=8 lists (a fixed benchmark key, so runs are comparable):
  * green share of generated tokens (each image against its own list) for unwatermarked, soft delta=2
    and hard generation, on the first --n-share images; also after decode -> PNG levels -> re-encode,
    which is what a detector sees;
  * classifier prompt adherence (guard.models.reference.classifier.prompt_adherence) on --n-adherence
    held-out prompts `shapes.prompt_for(shapes.sample_scene(seed, split="heldout"), seed)`, same seeds
    for every variant;
  * post-hoc marking of --n-posthoc generated unwatermarked images: green share before/after and PSNR,
    at the default 30 dB floor and at a lower one.
Refuses to run while `guard.models.reference.train` is running (CPU contention) unless --force.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from guard.imageio import quantize
from guard.keys import WatermarkKey
from guard.models import load
from guard.models.reference import WEIGHTS_DIR, load_classifier
from guard.models.reference import shapes
from guard.models.reference.classifier import prompt_adherence
from guard.watermark import GreenLists, WatermarkProcessor, watermark_image

OUT = Path(__file__).parent / "results" / "watermark.json"


def stats(x: torch.Tensor) -> dict:
    x = x.float()
    return {"mean": round(float(x.mean()), 4), "std": round(float(x.std()), 4) if len(x) > 1 else 0.0,
            "min": round(float(x.min()), 4), "max": round(float(x.max()), 4), "n": len(x)}


def training_running() -> bool:
    r = subprocess.run(["pgrep", "-f", "reference.train"], capture_output=True, text=True)
    return bool(r.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-adherence", type=int, default=512)
    ap.add_argument("--n-share", type=int, default=256)
    ap.add_argument("--n-posthoc", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--delta", type=float, default=2.0)
    ap.add_argument("--low-floor", type=float, default=25.0, help="second post-hoc PSNR floor (dB)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--force", action="store_true", help="run even while reference training is running")
    args = ap.parse_args()
    if not (WEIGHTS_DIR / "gpt.safetensors").exists():
        sys.exit("reference GPT weights absent; run after training")
    if training_running() and not args.force:
        sys.exit("guard.models.reference.train is running; rerun when it has finished (or pass --force)")
    torch.set_num_threads(args.threads)
    t_start = time.time()
    n = max(args.n_adherence, args.n_share, args.n_posthoc)

    gen = load("reference")
    tok = gen.tokenizer
    clf = load_classifier()
    secret = hashlib.sha256(b"guard/bench/measure_watermark/v1").digest()
    key = WatermarkKey._from_secret(secret, gamma=0.25, n_lists=8, tokenizer_id=tok.id, vocab_size=tok.vocab_size)
    gl = GreenLists(key, tok)
    seeds = [args.seed + i for i in range(n)]
    prompts = [shapes.prompt_for(shapes.sample_scene(s, split="heldout"), s) for s in seeds]

    results: dict = {}
    indices: list[int] | None = None
    images_clean = None
    for variant in ("soft", "hard", "none"):
        t0 = time.time()
        if variant == "none":
            proc = None
            idx = indices  # measure clean images against the lists the watermarked runs used
        else:
            proc = WatermarkProcessor(gl, delta=args.delta, hard=variant == "hard", seed=args.seed)
        codes = gen.generate(prompts, n=1, seed=args.seed, cfg=args.cfg, logits_processor=[proc] if proc else None)
        if proc is not None:
            idx = proc.list_indices
            indices = indices or idx
        images = quantize(tok.decode(codes))
        reenc = tok.encode(images)
        k = args.n_share
        if args.n_adherence > 0:
            adher, per_image = prompt_adherence(clf, images[: args.n_adherence], prompts[: args.n_adherence])
        results[variant] = {
            "green_share_generated": stats(gl.green_share(codes[:k], idx[:k])),
            "green_share_reencoded": stats(gl.green_share(reenc[:k], idx[:k])),
            "roundtrip_token_agreement": round(float((reenc[:k] == codes[:k]).float().mean()), 4),
            "adherence": {"shape": round(adher.shape, 4), "colour": round(adher.colour, 4),
                          "both": round(adher.both, 4), "images_all_correct": round(float(per_image.float().mean()), 4),
                          "n_objects": adher.n_objects, "n_images": len(per_image)} if args.n_adherence > 0 else None,
            "seconds": round(time.time() - t0, 1),
        }
        if variant == "none":
            images_clean = images
        print(f"[{time.time() - t_start:6.0f}s] {variant}: {results[variant]}", file=sys.stderr, flush=True)

    posthoc = {}
    m = args.n_posthoc
    for floor in (30.0, args.low_floor):
        t0 = time.time()
        res = watermark_image(images_clean[:m], gl, tok, list_index=indices[:m], min_psnr=floor)
        kept = res.iterations > 0
        posthoc[f"min_psnr_{floor:g}"] = {
            "green_share_before": stats(res.green_share_before),
            "green_share_after": stats(res.green_share_after),
            "psnr_db_of_marked": stats(res.psnr[kept]) if kept.any() else None,
            "fraction_marked": round(float(kept.float().mean()), 4),
            "iterations": {str(i): int((res.iterations == i).sum()) for i in range(6)},
            "seconds": round(time.time() - t0, 1),
        }
        print(f"[{time.time() - t_start:6.0f}s] posthoc floor {floor}: {posthoc[f'min_psnr_{floor:g}']}",
              file=sys.stderr, flush=True)

    doc = {
        "command": "OMP_NUM_THREADS=%s python bench/measure_watermark.py %s" % (args.threads, " ".join(sys.argv[1:])),
        "config": {"gamma": 0.25, "n_lists": 8, "stratified": gl.stratified, "n_alive": gl.n_alive,
                   "delta": args.delta, "cfg": args.cfg, "temperature": 1.0, "top_k": None, "seed": args.seed,
                   "prompts": "shapes.prompt_for(shapes.sample_scene(seed, split='heldout'), seed), seed = 0..n-1",
                   "key": "fixed benchmark secret sha256(b'guard/bench/measure_watermark/v1')",
                   "model": gen.id, "tokenizer": tok.id, "threads": args.threads},
        "generation": results,
        "posthoc": posthoc,
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()},
        "wall_time_s": round(time.time() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")

    g = results
    print(f"reference generator {gen.id}, gamma=0.25, K=8, cfg={args.cfg}; prompts: held-out scenes")
    print(f"{'variant':<10}{'green gen':>11}{'green re-enc':>14}{'adh shape':>11}{'adh colour':>12}{'adh both':>10}"
          f"{'img ok':>8}")
    for v, name in (("none", "none"), ("soft", f"soft d={args.delta:g}"), ("hard", "hard")):
        r = g[v]
        a = r["adherence"] or {k: float("nan") for k in ("shape", "colour", "both", "images_all_correct")}
        print(f"{name:<10}{r['green_share_generated']['mean']:>11.3f}{r['green_share_reencoded']['mean']:>14.3f}"
              f"{a['shape']:>11.3f}{a['colour']:>12.3f}{a['both']:>10.3f}{a['images_all_correct']:>8.3f}")
    print(f"(green share on {args.n_share} images, adherence on {args.n_adherence} images)")
    for name, p in posthoc.items():
        ps = p["psnr_db_of_marked"]
        print(f"posthoc {name}: green {p['green_share_before']['mean']:.3f} -> {p['green_share_after']['mean']:.3f}, "
              f"marked {p['fraction_marked']:.2f} of {m}, PSNR of marked "
              + (f"{ps['mean']:.2f} dB (min {ps['min']:.2f})" if ps else "n/a"))
    print(f"wrote {args.out} in {doc['wall_time_s']:.0f}s")


if __name__ == "__main__":
    main()
