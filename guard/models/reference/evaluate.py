"""Measure the shipped reference weights and record the figures in `card.json` ("evaluation").

    python -m guard.models.reference.evaluate            # all: vq, classifier, generator
    python -m guard.models.reference.evaluate --only vq

Figures: VQ reconstruction PSNR on 1,000 held-out scenes and round-trip token agreement on generated
images (decode -> uint8 PNG -> encode); classifier accuracy on rendered held-out scenes; generator
prompt adherence on 512 samples from held-out prompt combinations and diversity across seeds.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .classifier import prompt_adherence
from .data import HELDOUT_SEED_BASE, render_dataset
from .model import WEIGHTS_DIR, load_classifier, load_reference, load_tokenizer
from .shapes import prompt_for, sample_scene


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def to_uint8_png(images: torch.Tensor, fmt: str = "PNG", **save_kw) -> torch.Tensor:
    """Round-trip each image through an 8-bit PNG file in memory, as saving to disk does."""
    out = []
    for img in images:
        arr = (img.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt, **save_kw)
        buf.seek(0)
        out.append(torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()))
    return torch.stack(out).permute(0, 3, 1, 2).float() / 255.0


def heldout_prompts(n: int, offset: int = 0) -> list[str]:
    """Prompts whose first object is a (shape, colour, position) triple never seen in GPT training."""
    seeds = range(HELDOUT_SEED_BASE + offset, HELDOUT_SEED_BASE + offset + n)
    return [prompt_for(sample_scene(s, split="heldout"), seed=s) for s in seeds]


def eval_vq() -> dict:
    tok = load_tokenizer()
    imgs, _, _ = render_dataset(HELDOUT_SEED_BASE, 1000, "any", workers=1)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    codes = tok.encode(x)
    rec = to_uint8_png(tok.decode(codes))
    mse = (rec - x).pow(2).flatten(1).mean(1)
    psnr = (10 * torch.log10(1 / mse.clamp_min(1e-10)))
    again = tok.encode(rec)
    # Token maps a sampler could make: 30% of positions replaced by uniform random codes.
    g = torch.Generator().manual_seed(0)
    swap = torch.rand(codes.shape, generator=g) < 0.3
    mixed = torch.where(swap, torch.randint(0, tok.vocab_size, codes.shape, generator=g), codes)
    mixed_again = tok.encode(to_uint8_png(tok.decode(mixed)))
    jpeg = {q: round(float((tok.encode(to_uint8_png(tok.decode(codes), "JPEG", quality=q)) == codes).float().mean()), 4)
            for q in (90, 75)}
    return {"psnr_db_heldout_1000": round(float(psnr.mean()), 2),
            "psnr_db_p05": round(float(psnr.quantile(0.05)), 2),
            "roundtrip_agreement_rendered": round(float((again == codes).float().mean()), 4),
            "roundtrip_agreement_30pct_random_codes": round(float((mixed_again == mixed).float().mean()), 4),
            "roundtrip_agreement_jpeg90": jpeg[90], "roundtrip_agreement_jpeg75": jpeg[75],
            "codes_used_heldout": int(torch.unique(codes).numel()),
            "distinct_codes_per_image": round(float(np.mean([torch.unique(c).numel() for c in codes])), 1),
            "distinct_codes_per_image_median": float(np.median([torch.unique(c).numel() for c in codes]))}


def eval_generator(n: int = 512, cfg: float = 3.0, seed: int = 1234) -> dict:
    gen = load_reference()
    tok = gen.tokenizer
    clf = load_classifier()
    prompts = heldout_prompts(n)
    t0 = time.time()
    codes = gen.generate(prompts, n=1, seed=seed, cfg=cfg)
    elapsed = time.time() - t0
    images = to_uint8_png(tok.decode(codes))
    adh, _ = prompt_adherence(clf, images, prompts)
    again = tok.encode(images)
    agreement = float((again == codes).float().mean())
    distinct = np.array([torch.unique(c).numel() for c in codes])
    # Diversity: 8 prompts x 8 seeds; token disagreement and pixel distance between same-prompt samples.
    div_prompts = prompts[:8]
    div = gen.generate(div_prompts, n=8, seed=seed + 1, cfg=cfg).view(8, 8, -1)
    pair_tok, pair_px = [], []
    div_img = tok.decode(div.view(-1, 16, 16)).view(8, 8, 3, 64, 64)
    for p in range(8):
        for i in range(8):
            for j in range(i + 1, 8):
                pair_tok.append(float((div[p, i] != div[p, j]).float().mean()))
                pair_px.append(float((div_img[p, i] - div_img[p, j]).abs().mean()))
    identical = sum(t == 0.0 for t in pair_tok)
    return {"n": n, "cfg": cfg, "adherence_shape": round(adh.shape, 4), "adherence_colour": round(adh.colour, 4),
            "adherence_both": round(adh.both, 4), "n_objects": adh.n_objects,
            "adherence_background": round(adh.background, 4),
            "roundtrip_agreement_generated": round(agreement, 4),
            "distinct_codes_generated_median": float(np.median(distinct)),
            "distinct_codes_generated_p10_p90": [float(np.percentile(distinct, 10)), float(np.percentile(distinct, 90))],
            "same_prompt_token_disagreement_mean": round(float(np.mean(pair_tok)), 4),
            "same_prompt_mean_abs_pixel_diff": round(float(np.mean(pair_px)), 4),
            "identical_same_prompt_pairs": int(identical), "same_prompt_pairs": len(pair_tok),
            "images_per_s_batch64": round(n / elapsed, 2)}


def eval_classifier() -> dict:
    clf = load_classifier()
    imgs, labels, _ = render_dataset(HELDOUT_SEED_BASE + 50_000, 1000, "any", workers=1)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    y = torch.from_numpy(labels)
    pred = clf.predict(x)
    present = y[..., 0] > 0
    return {"shape_acc": round(float((pred[..., 0] == y[..., 0])[present].float().mean()), 4),
            "colour_acc": round(float((pred[..., 1] == y[..., 1])[present].float().mean()), 4),
            "quadrant_acc": round(float((pred[..., 0] == y[..., 0]).float().mean()), 4),
            "background_acc": round(float((pred[:, 0, 3] == y[:, 0, 3]).float().mean()), 4),
            "n_scenes": 1000}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m guard.models.reference.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["vq", "classifier", "generator"], action="append")
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--no-write", action="store_true", help="print only; leave card.json alone")
    args = p.parse_args(argv)
    parts = args.only or ["vq", "classifier", "generator"]
    results = {}
    for part in parts:
        t0 = time.time()
        results[part] = {"vq": eval_vq, "classifier": eval_classifier,
                         "generator": lambda: eval_generator(args.n, args.cfg)}[part]()
        results[part]["wall_time_s"] = round(time.time() - t0, 1)
        log(f"{part}: {results[part]}")
    print(json.dumps(results, indent=2))
    if not args.no_write:
        path = Path(WEIGHTS_DIR) / "card.json"
        card = json.loads(path.read_text())
        card.setdefault("evaluation", {}).update(results)
        card["evaluation"]["command"] = "python -m guard.models.reference.evaluate " + " ".join(argv or sys.argv[1:])
        path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
