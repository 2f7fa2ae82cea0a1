"""Key-free detection (issue 20) on the reference tokenizer: separation, attacks, FPR, attribution, cost.

    OMP_NUM_THREADS=1 python bench/measure_fingerprint.py --n 1000 --out bench/results/fingerprint.json
    OMP_NUM_THREADS=1 python bench/measure_fingerprint.py --n 200 --n-attack 100 --n-attr 100   # quick

Populations (all from the reference kind's held-out evaluation scenes, `PromptSource.eval_images`, split
'any', disjoint seed blocks):

* calibration: `--n` rendered scenes (seed block 101), never VQ-decoded: the conformal reference set;
* real: `--n` other rendered scenes (block 102): the negatives, and the held-out FPR at alpha;
* decoded: `--n` rendered scenes (block 103) encoded and decoded by the reference VQ, at 8 bits: the
  stand-in for generated images (the reference GPT runs ~1 image/s on this CPU), named "decoded";
* generated: `--n-gen` images the reference GPT samples from eval prompts (block 104), when asked.

Attacks (`guard.eval.attacks`) hit both populations with paired randomness; p-values are against the clean
calibration (the deployed setting: one calibration, attacked uploads). Per attack: AUC and TPR@1%FPR (the
threshold read off the attacked real images, as `guard eval` does), TPR and FPR at alpha = 1e-2 from the
conformal p (no fitted threshold) with a Clopper-Pearson interval on the FPR. JPEG 90/75 use `--n`, the
rest of the grid `--n-attack`.

Attribution: `--n-attr` images decoded by the reference VQ and by the independently trained vq2
(`guard/eval/weights/vq2`), each tokenizer calibrated on the same `--n-attr` calibration scenes; the record's
`fingerprint_tokenizer` must name the decoder that made the image.

Natural photos (the easy case): 64x64 crops of scikit-image's bundled colour photos, half to calibrate,
half as negatives, their decodes as positives (skipped when scikit-image is not installed).

Cost: `Detector.detect_images` with one key alone vs the same key plus the fingerprint, in-memory images,
`--n-cost` images, best of 2; printed side by side with the ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from guard.detect import Detector
from guard.detect.calibrate import clopper_pearson
from guard.detect.fingerprint import FingerprintCalibration, Fingerprinter, code_agreement, fingerprint_scores
from guard.eval.attacks import AttackContext, apply_attack
from guard.eval.metrics import auc, tpr_at_fpr
from guard.eval.regeneration import load_vq2
from guard.imageio import from_uint8, quantize
from guard.keys import WatermarkKey
from guard.models import load, load_tokenizer, prompts_for
from guard.watermark import GreenLists

ALPHA = 1e-2
GRID = [("none", 0), ("jpeg", 90), ("jpeg", 75), ("jpeg", 50), ("webp", 75), ("blur", 3), ("noise", 0.02),
        ("brightness", 1.5), ("contrast", 1.5), ("median", 3), ("resize", 0.75), ("crop", 0.9), ("hflip", 1),
        ("rotate", 5), ("vq2", 1)]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def scenes(n: int, block: int) -> torch.Tensor:
    return from_uint8(prompts_for("reference").eval_images(n, seed=block))


def decoded(tok, x: torch.Tensor, batch: int = 128) -> torch.Tensor:
    return torch.cat([quantize(tok.decode(tok.encode(x[i:i + batch]))) for i in range(0, len(x), batch)])


def separation(neg: np.ndarray, pos: np.ndarray, cal: FingerprintCalibration) -> dict:
    """Small score = decoded: the ROC score is -score."""
    p_neg, p_pos = cal.p_values(neg), cal.p_values(pos)
    k = int((p_neg <= ALPHA).sum())
    lo, hi = clopper_pearson(k, len(neg))
    return {"n_real": len(neg), "n_decoded": len(pos), "auc": auc(-pos, -neg),
            "tpr_at_fpr_0.01": tpr_at_fpr(-pos, -neg, 0.01).tpr, "tpr_at_alpha_0.01": float((p_pos <= ALPHA).mean()),
            "fpr_at_alpha_0.01": k / len(neg), "fpr_at_alpha_0.01_ci95": [lo, hi],
            "median_score_real": float(np.median(neg)), "median_score_decoded": float(np.median(pos))}


def attack_grid(tok, cal, real, dec, n_attack: int, n_jpeg: int, seed: int, rows: list | None = None,
                save=lambda: None, grid=GRID) -> list[dict]:
    rows = [] if rows is None else rows
    ctx = AttackContext()
    for name, param in grid:
        n = n_jpeg if name in ("none", "jpeg") and param in (0, 90, 75) else n_attack
        t0 = time.perf_counter()
        ra = apply_attack(name, real[:n], param, seed=seed, indices=range(n), context=ctx)
        da = apply_attack(name, dec[:n], param, seed=seed, indices=range(n), context=ctx)
        row = {"attack": name, "param": param,
               **separation(fingerprint_scores(tok, ra), fingerprint_scores(tok, da), cal)}
        rows.append(row)
        save()
        log(f"{name} {param}: n={n} AUC {row['auc']:.4f} TPR@1%FPR {row['tpr_at_fpr_0.01']:.3f} "
            f"TPR@a=1e-2 {row['tpr_at_alpha_0.01']:.3f} FPR@a=1e-2 {row['fpr_at_alpha_0.01']:.4f} "
            f"({time.perf_counter() - t0:.0f}s)")
    return rows


def attribution(tok, cal_images, src, n: int) -> dict:
    tok2 = load_vq2()
    cals = [FingerprintCalibration(tokenizer_id=t.id, model=m, image_size=64,
                                   scores=tuple(fingerprint_scores(t, cal_images[:n])))
            for t, m in ((tok, "reference"), (tok2, "reference:guard/eval/weights/vq2"))]
    fp = Fingerprinter(cals, [tok, tok2], alpha=max(ALPHA, 2 * max(c.min_p for c in cals)))
    out = {"n_per_class": n, "tokenizers": [tok.id, tok2.id]}
    for t in (tok, tok2):
        rows = fp.fields(decoded(t, src[:n]))
        out[t.id] = {"correct": float(np.mean([r["fingerprint_tokenizer"] == t.id for r in rows])),
                     "hit_at_alpha_0.01": float(np.mean([r["fingerprint_hit"] for r in rows]))}
    real_rows = fp.fields(src[n:2 * n]) if len(src) >= 2 * n else []
    if real_rows:
        out["real_hit_at_alpha_0.01"] = float(np.mean([r["fingerprint_hit"] for r in real_rows]))
    return out


def natural_photos(tok, seed: int) -> dict | None:
    try:
        import skimage.data as sd
    except ImportError:
        return None
    names = ["astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "motorcycle_right", "hubble_deep_field",
             "immunohistochemistry", "retina", "colorwheel"]
    rng = np.random.default_rng(seed)
    crops, used = [], []
    for nm in names:
        try:
            im = np.asarray(getattr(sd, nm)())
        except Exception:  # noqa: BLE001 - a sample missing from this install
            continue
        if im.ndim != 3 or im.shape[2] < 3:
            continue
        im = im[..., :3].astype(np.uint8)
        used.append(nm)
        for _ in range(24):
            y, x = rng.integers(0, im.shape[0] - 64), rng.integers(0, im.shape[1] - 64)
            crops.append(im[y:y + 64, x:x + 64])
    x = from_uint8(np.stack(crops))
    perm = torch.from_numpy(rng.permutation(len(x)))
    cal_x, test_x = x[perm[: len(x) // 2]], x[perm[len(x) // 2:]]
    cal = FingerprintCalibration(tokenizer_id=tok.id, model="reference", image_size=64,
                                 scores=tuple(fingerprint_scores(tok, cal_x)))
    out = separation(fingerprint_scores(tok, test_x), fingerprint_scores(tok, decoded(tok, test_x)), cal)
    return {"photos": used, "crops_calibration": len(cal_x), **out}


def cost(tok, images: torch.Tensor, cal: FingerprintCalibration) -> dict:
    key = WatermarkKey.create(tok)
    plain = Detector(GreenLists(key, tok), tok, provenance=False)
    both = Detector(GreenLists(key, tok), tok, provenance=False,
                    fingerprints=Fingerprinter([cal], [tok], alpha=ALPHA))
    alone = Detector([], tok, provenance=False, fingerprints=Fingerprinter([cal], [tok], alpha=ALPHA))
    out = {}
    for name, det in (("watermark", plain), ("watermark+fingerprint", both), ("fingerprint alone", alone)):
        best = math.inf
        for _ in range(2):
            t0 = time.perf_counter()
            det.detect_images(images)
            best = min(best, time.perf_counter() - t0)
        out[name] = best / len(images) * 1e3
    out["ratio"] = out["watermark+fingerprint"] / out["watermark"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="calibration, real and decoded images (each)")
    ap.add_argument("--n-attack", type=int, default=200, help="images per class for the attacks other than JPEG 90/75")
    ap.add_argument("--n-attr", type=int, default=500, help="images per tokenizer for attribution")
    ap.add_argument("--n-gen", type=int, default=0, help="GPT-generated images (slow on a CPU, ~1/s)")
    ap.add_argument("--n-cost", type=int, default=256, help="images for the cost comparison")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON (after each section)")
    ap.add_argument("--skip-attacks", action="store_true", help="only the other sections (a quick check)")
    ap.add_argument("--only", default=None, help="attacks to run, e.g. 'jpeg:75,blur:3' (default: the whole GRID)")
    ap.add_argument("--attacks-only", action="store_true", help="stop after the attack grid")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.time()
    tok = load_tokenizer("reference")
    log(f"tokenizer {tok.id}; rendering {3 * args.n} held-out scenes")
    cal_x, real, src = scenes(args.n, 101), scenes(args.n, 102), scenes(args.n, 103)
    dec = decoded(tok, src)
    cal = FingerprintCalibration(tokenizer_id=tok.id, model="reference", image_size=64,
                                 scores=tuple(fingerprint_scores(tok, cal_x)))
    log(f"calibrated on {cal.n} rendered scenes (smallest p {cal.min_p:.2e})")
    res: dict = {"tokenizer": tok.id, "n": args.n, "statistic": cal.statistic, "alpha": ALPHA,
                 "positives": "decoded: reference-VQ decode of the codes of held-out rendered scenes (8-bit)",
                 "command": " ".join(sys.argv)}
    k = min(100, args.n)
    res["code_agreement_median"] = {"real": float(np.median(code_agreement(tok, real[:k]))),
                                    "decoded": float(np.median(code_agreement(tok, dec[:k]))), "n": k}
    save = (lambda: args.out.write_text(json.dumps(res, indent=1) + "\n")) if args.out else (lambda: None)
    res["attacks"] = []
    if not args.skip_attacks:
        grid = GRID if args.only is None else [(a.split(":")[0], type(dict(GRID).get(a.split(":")[0], 0))(
            float(a.split(":")[1]))) for a in args.only.split(",")]
        attack_grid(tok, cal, real, dec, min(args.n_attack, args.n), args.n, args.seed, res["attacks"], save, grid)
    save()
    if args.attacks_only:
        return
    if args.n_gen:
        gen = load("reference")
        prompts = prompts_for("reference").eval_prompts(args.n_gen, seed=104)
        t0 = time.perf_counter()
        codes = gen.generate(prompts, n=1, seed=args.seed, cfg=3.0)
        g = quantize(tok.decode(codes))
        log(f"generated {len(g)} images in {time.perf_counter() - t0:.0f}s")
        res["generated"] = separation(fingerprint_scores(tok, real[:len(g)]), fingerprint_scores(tok, g), cal)
        res["generated"]["note"] = "GPT samples (eval prompts, cfg 3) vs as many real scenes"
    save()
    log("attribution reference vs vq2")
    res["attribution"] = attribution(tok, cal_x, src, min(args.n_attr, args.n // 2))
    save()
    log("natural photos")
    res["natural_photos"] = natural_photos(tok, args.seed)
    save()
    log("cost")
    res["cost_ms_per_image"] = cost(tok, real[: args.n_cost], cal)
    res["wall_s"] = round(time.time() - t_start, 1)

    print(f"\nreference tokenizer {tok.id}, N = {args.n} per class (calibration {cal.n}); positives = decoded")
    print(f"{'attack':<16}{'n':>6}{'AUC':>9}{'TPR@1%FPR':>11}{'TPR@a=1e-2':>12}{'FPR@a=1e-2':>12}  FPR 95% CI")
    for r in res["attacks"]:
        lo, hi = r["fpr_at_alpha_0.01_ci95"]
        print(f"{r['attack'] + ' ' + str(r['param']):<16}{r['n_real']:>6}{r['auc']:>9.4f}{r['tpr_at_fpr_0.01']:>11.3f}"
              f"{r['tpr_at_alpha_0.01']:>12.3f}{r['fpr_at_alpha_0.01']:>12.4f}  [{lo:.4f}, {hi:.4f}]")
    print(f"binomial 95% interval of {ALPHA:g} x {args.n}: counts consistent with alpha lie in "
          f"[{_binom_interval(args.n, ALPHA)[0]}, {_binom_interval(args.n, ALPHA)[1]}] false positives")
    if "generated" in res:
        g = res["generated"]
        print(f"GPT-generated (n={g['n_decoded']}): AUC {g['auc']:.4f} TPR@1%FPR {g['tpr_at_fpr_0.01']:.3f} "
              f"TPR@a=1e-2 {g['tpr_at_alpha_0.01']:.3f}")
    a = res["attribution"]
    print("attribution (n=%d per tokenizer): " % a["n_per_class"] +
          ", ".join(f"{t}: {a[t]['correct']:.3f} correct" for t in a["tokenizers"]))
    ph = res["natural_photos"]
    if ph:
        print(f"natural photo crops ({len(ph['photos'])} photos, {ph['n_real']} test crops): AUC {ph['auc']:.4f} "
              f"TPR@1%FPR {ph['tpr_at_fpr_0.01']:.3f} FPR@a=1e-2 {ph['fpr_at_alpha_0.01']:.3f}")
    else:
        print("natural photos: scikit-image not installed, skipped")
    c = res["cost_ms_per_image"]
    print(f"cost ms/image: watermark {c['watermark']:.2f} | watermark+fingerprint {c['watermark+fingerprint']:.2f} | "
          f"fingerprint alone {c['fingerprint alone']:.2f} | ratio {c['ratio']:.2f}x")
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
        log(f"wrote {args.out}")


def _binom_interval(n: int, p: float) -> tuple[int, int]:
    """The central 95% range of Binomial(n, p) counts."""
    from scipy.stats import binom

    return int(binom.ppf(0.025, n, p)), int(binom.ppf(0.975, n, p))


if __name__ == "__main__":
    main()
