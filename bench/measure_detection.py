"""Measure detection on the reference generator: round-trip TPR/FPR, empirical FPR of both tests, bad inputs.

    OMP_NUM_THREADS=2 python bench/measure_detection.py --threads 2 \
        --n-wm 500 --n-clean-gen 1500 --n-natural 1600 --out bench/results/detection.json

Stages (generated codes are cached in --workdir, so a rerun skips generation):

1. Round trip: --n-wm watermarked (soft, delta 2) and the first --n-wm clean generations on the same
   evaluation prompts and seeds (`guard.eval.harness.generate_population`, the harness's own populations,
   cached in chunks), saved as PNG, detected from the files: TPR / FPR at alpha = 1e-4, with 95%
   Clopper–Pearson intervals; again after re-saving every PNG as JPEG quality 75.
2. Empirical FPR on clean images: every clean generation (PNG) plus --n-natural random crops of
   scikit-image's sample photos (`skimage.data`, random size/aspect/position/flip, through the same
   loading policy), at alpha = 1e-3 (and 1e-2, 1e-4): the distinct-code test vs the token-count test,
   for the decision p (corrected over K lists) and for the raw p of list 0 alone; then the spread of
   the distinct test's FPR over --n-keys fresh keys (its guarantee is over the key, see below).
   Crops of the same ~20 photos overlap, so the natural rows are not independent trials.
3. Bad inputs: a folder with every awkward kind (`guard.testfiles.write_bad_inputs`, the test suite's
   fixture) plus two watermarked PNGs, scanned with the CLI: exit code, rows, error rows.

Writes --out (JSON) and a QQ plot beside it. Needs the reference weights (vq + gpt).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ci(k: int, n: int) -> dict:
    from guard.detect.calibrate import clopper_pearson

    lo, hi = clopper_pearson(k, n)
    return {"k": k, "n": n, "rate": k / n, "ci95": [lo, hi]}


def save_pngs(images: np.ndarray, folder: Path, stem: str) -> list[str]:
    """Write uint8 (n, S, S, 3) images as PNGs (existing files are kept); returns their paths."""
    from guard.imageio import from_uint8, save_png

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(images):
        p = folder / f"{stem}_{i:05d}.png"
        if not p.exists():
            save_png(from_uint8(a), p)
        paths.append(str(p))
    return paths


def to_jpeg(paths: list[str], folder: Path, quality: int) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in paths:
        q = folder / (Path(p).stem + ".jpg")
        if not q.exists():
            with Image.open(p) as im:
                im.convert("RGB").save(q, quality=quality)
        out.append(str(q))
    return out


def natural_crops(n: int, size: int, seed: int) -> torch.Tensor:
    """n random crops of skimage's sample photos, through guard's loading policy: (n, 3, size, size)."""
    import skimage.data as data
    from PIL import Image

    from guard.imageio import load_pil

    names = ["astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text", "clock",
             "immunohistochemistry", "hubble_deep_field", "retina", "colorwheel", "grass", "gravel", "brick",
             "cell", "cat", "logo"]
    photos = []
    for nm in names:
        a = np.asarray(getattr(data, nm)())
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255).astype(np.uint8) if a.dtype.kind == "f" else a.astype(np.uint8)
        photos.append(Image.fromarray(a))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = photos[int(rng.integers(len(photos)))]
        W, H = im.size
        side = int(np.exp(rng.uniform(np.log(24), np.log(min(W, H)))))
        aspect = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
        w = max(8, min(W, int(side * aspect)))
        h = max(8, min(H, side))
        x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        crop = im.crop((x, y, x + w, y + h))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(load_pil(crop, size).tensor)
    return torch.stack(out)


def summarize_detection(recs, expect_wm: bool, indices=None) -> dict:
    k = sum(r.watermarked for r in recs)
    d = ci(k, len(recs))
    d["errors"] = sum(r.error is not None for r in recs)
    d["median_log10_p"] = float(np.median([r.log10_p for r in recs if r.log10_p is not None]))
    if indices is not None:
        d["list_index_correct"] = sum(r.list_index == i for r, i in zip(recs, indices)) / len(recs)
    return d


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-wm", type=int, default=500)
    p.add_argument("--n-clean-gen", type=int, default=1500)
    p.add_argument("--n-natural", type=int, default=1600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--n-keys", type=int, default=40, help="fresh keys for the key-to-key FPR spread")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/guard-measure-detection"))
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "detection.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()

    from guard import __version__
    from guard.detect import Detector
    from guard.detect.calibrate import qq_plot
    from guard.keys import WatermarkKey
    from guard.models import load
    from guard.watermark import GreenLists

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    gen = load("reference")
    tok = gen.tokenizer
    secret = hashlib.sha256(b"guard/bench/measure_detection/key-a").digest()
    key = WatermarkKey._from_secret(secret, gamma=0.25, n_lists=8, tokenizer_id=tok.id, vocab_size=tok.vocab_size,
                                    created="2026-01-01T00:00:00Z")
    key_path = work / "key-a.json"
    if key_path.exists() and WatermarkKey.load(key_path).key_id != key.key_id:
        key_path.unlink()  # a key bound to another tokenizer (the reference model was retrained)
    if not key_path.exists():
        key.save(key_path)
    gl = GreenLists(key, tok)
    result: dict = {
        "command": "OMP_NUM_THREADS=%s python bench/measure_detection.py %s" % (
            os.environ.get("OMP_NUM_THREADS", "?"), " ".join(sys.argv[1:] if argv is None else argv)),
        "guard_version": __version__, "tokenizer_id": tok.id, "generator_id": gen.id, "key_id": key.key_id,
        "gamma": key.gamma, "n_lists": key.n_lists, "stratified": gl.stratified, "n_alive": gl.n_alive,
        "python": platform.python_version(), "torch": torch.__version__, "torch_threads": args.threads,
    }

    # ---------------------------------------------------------------- 1. generation + round trip
    log("generating")
    from guard.eval.harness import eval_prompts, generate_population, padded_count

    n_clean_gen = max(args.n_clean_gen, args.n_wm)
    prompts = eval_prompts(padded_count(n_clean_gen, args.batch), 0, gen)
    populations = {}
    for name, lists, n in (("watermarked", gl, args.n_wm), ("clean", None, n_clean_gen)):
        populations[name] = generate_population(
            gen, lists, n, folder=work / "populations" / name, prompts=prompts, delta=2.0 if lists else None,
            hard=False, seed=0, cfg=3.0, batch_size=args.batch,
            on_chunk=lambda k, nm=name: log(f"  generated {k} more ({nm})"))
    wm_codes, wm_idx = populations["watermarked"]["codes"], populations["watermarked"]["list_index"].tolist()
    clean_codes = populations["clean"]["codes"]
    wm_png = save_pngs(populations["watermarked"]["images"], work / "wm_png", "wm")
    clean_png = save_pngs(populations["clean"]["images"], work / "clean_png", "clean")
    result["generation"] = {"n_wm": len(wm_png), "n_clean": len(clean_png), "delta": 2.0, "cfg": 3.0,
                            "wm_green_share_generated": float(np.mean([
                                float(gl.green_share(wm_codes[i:i + 1], wm_idx[i])) for i in range(len(wm_codes))])),
                            "clean_green_share_list0": float(gl.green_share(clean_codes, 0).mean())}
    det = Detector(gl, tok, alpha=1e-4, batch_size=args.batch)
    det_tok = Detector(gl, tok, test="tokens", alpha=1e-4, batch_size=args.batch)
    rt: dict = {"alpha": 1e-4, "test": "distinct (exact)",
                "codes_no_decode": {"tpr": summarize_detection(det.detect_codes(wm_codes), True, wm_idx),
                                    "fpr": summarize_detection(det.detect_codes(clean_codes[:args.n_wm]), False)}}
    log(f"  codes (no decode): TPR {rt['codes_no_decode']['tpr']['rate']:.3f} "
        f"FPR {rt['codes_no_decode']['fpr']['rate']:.4f}")
    from guard.imageio import load_image

    for name, wm_paths, clean_paths in (("png", wm_png, clean_png[:args.n_wm]),
                                        ("jpeg75", to_jpeg(wm_png, work / "wm_jpg", 75),
                                         to_jpeg(clean_png[:args.n_wm], work / "clean_jpg", 75))):
        log(f"round trip {name}")
        t0 = time.time()
        r_wm = det.detect_paths(wm_paths, workers=args.workers)
        r_clean = det.detect_paths(clean_paths, workers=args.workers)
        seconds = time.time() - t0
        # token agreement: generated codes vs codes re-encoded from the file
        re_wm = det.encode(torch.stack([load_image(q, tok.image_size).tensor for q in wm_paths]))
        re_clean = det.encode(torch.stack([load_image(q, tok.image_size).tensor for q in clean_paths]))
        rt[name] = {"tpr": summarize_detection(r_wm, True, wm_idx), "fpr": summarize_detection(r_clean, False),
                    "token_match_wm": float((re_wm == wm_codes).float().mean()),
                    "token_match_clean": float((re_clean == clean_codes[:args.n_wm]).float().mean()),
                    "green_share_wm_after": float(np.mean([float(gl.green_share(re_wm[i:i + 1], wm_idx[i]))
                                                           for i in range(len(re_wm))])),
                    "seconds_distinct_detect": seconds,
                    "tokens_test_for_comparison": {
                        "tpr": summarize_detection(det_tok.detect_codes(re_wm), True, wm_idx),
                        "fpr": summarize_detection(det_tok.detect_codes(re_clean), False)}}
        log(f"  {name}: TPR {rt[name]['tpr']['rate']:.3f} FPR {rt[name]['fpr']['rate']:.4f} "
            f"token match {rt[name]['token_match_wm']:.3f}; tokens test TPR "
            f"{rt[name]['tokens_test_for_comparison']['tpr']['rate']:.3f} FPR "
            f"{rt[name]['tokens_test_for_comparison']['fpr']['rate']:.3f}")
    result["round_trip"] = rt

    # ---------------------------------------------------------------- 2. empirical FPR, both tests
    log("FPR on clean images")
    gen_imgs = torch.stack([load_image(q, tok.image_size).tensor for q in clean_png])
    nat_imgs = natural_crops(args.n_natural, tok.image_size, seed=0)
    sources = {"generated": gen_imgs, "natural": nat_imgs}
    codes = {s: det.encode(x) for s, x in sources.items()}
    fpr: dict = {"n_generated": len(gen_imgs), "n_natural": len(nat_imgs), "alphas": [1e-2, 1e-3, 1e-4]}
    series = {}
    for test in ("distinct", "tokens"):
        d = Detector(gl, tok, test=test, alpha=1e-3)
        per: dict = {}
        all_dec, all_l0 = [], []
        for s, c in codes.items():
            dec = np.array([r.log10_p for r in d.detect_codes(c)])
            l0 = d.test_codes(c)[0].log10_p[:, 0]
            all_dec.append(dec)
            all_l0.append(l0)
            per[s] = {f"decision@{a:g}": ci(int((dec <= math.log10(a)).sum()), len(dec)) for a in fpr["alphas"]}
            per[s].update({f"list0@{a:g}": ci(int((l0 <= math.log10(a)).sum()), len(l0)) for a in fpr["alphas"]})
        dec, l0 = np.concatenate(all_dec), np.concatenate(all_l0)
        per["all"] = {f"decision@{a:g}": ci(int((dec <= math.log10(a)).sum()), len(dec)) for a in fpr["alphas"]}
        per["all"].update({f"list0@{a:g}": ci(int((l0 <= math.log10(a)).sum()), len(l0)) for a in fpr["alphas"]})
        per["all"]["min_log10_p_list0"] = float(l0.min())
        fpr[test] = per
        series[f"{test}: list 0 raw p"] = l0.tolist()
        log(f"  {test}: FPR@1e-3 decision {per['all']['decision@0.001']['rate']:.5f} "
            f"list0 {per['all']['list0@0.001']['rate']:.5f} (N={len(dec)})")
    # The exact test's guarantee is over the key: for ANY fixed image, P(p <= alpha) <= alpha when the key
    # is drawn at random. For one fixed key, the share of a population of images it flags varies from key
    # to key (images share popular codes). Measure that spread over --n-keys fresh keys.
    from guard.detect import stats

    spread: dict = {"n_keys": args.n_keys, "note": "distinct test; per key: share of clean images with "
                    "decision p (corrected over K) <= alpha, and per list: share with raw p <= alpha"}
    all_codes = torch.cat(list(codes.values()))
    per_key = {a: [] for a in fpr["alphas"]}
    per_list = {a: [] for a in fpr["alphas"]}
    for s_ in range(args.n_keys):
        k2 = WatermarkKey._from_secret(hashlib.sha256(f"guard/bench/spread/{s_}".encode()).digest(), gamma=0.25,
                                       n_lists=8, tokenizer_id=tok.id, vocab_size=tok.vocab_size)
        g2 = GreenLists(k2, tok)
        lp = stats.distinct_code_test(all_codes, g2.masks, g2.alive if g2.stratified else None).log10_p
        for a in fpr["alphas"]:
            per_key[a].append(float(((lp.min(1) + math.log10(lp.shape[1])) <= math.log10(a)).mean()))
            per_list[a] += (lp <= math.log10(a)).mean(0).tolist()
    for a in fpr["alphas"]:
        v, w = np.array(per_key[a]), np.array(per_list[a])
        spread[f"alpha={a:g}"] = {
            "decision_fpr_mean_over_keys": float(v.mean()), "decision_fpr_max_over_keys": float(v.max()),
            "decision_fpr_min_over_keys": float(v.min()), "per_list_fpr_mean": float(w.mean()),
            "per_list_fpr_max": float(w.max()), "per_list_fpr_sd": float(w.std())}
        log(f"  spread over {args.n_keys} keys @ {a:g}: decision FPR mean {v.mean():.5f} max {v.max():.5f}; "
            f"per-list mean {w.mean():.5f} max {w.max():.5f}")
    fpr["spread_over_keys"] = spread
    plot = args.out.with_name(args.out.stem + "_qq.png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    qq_plot(series, plot, title=f"list-0 p-values of {len(dec)} clean images (generated + natural crops)")
    fpr["qq_plot"] = os.path.relpath(plot, REPO)
    result["fpr_clean"] = fpr

    # ---------------------------------------------------------------- 3. bad inputs via the CLI
    log("bad-input folder")
    from guard.testfiles import write_bad_inputs

    bad_dir = work / "bad_inputs"
    if bad_dir.exists():
        import shutil

        shutil.rmtree(bad_dir)
    kinds = write_bad_inputs(bad_dir)
    import shutil

    for q in wm_png[:2]:
        shutil.copy(q, bad_dir / Path(q).name)
    rows_path = work / "bad_rows.jsonl"
    cmd = [sys.executable, "-c", "from guard.cli import main; main()", "detect", "folder", str(bad_dir),
           "--recursive", "--key", str(key_path), "--out", str(rows_path)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "XDG_CONFIG_HOME": str(work / "config")})
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    errs = {os.path.relpath(r["path"], bad_dir): r["error"] for r in rows if r["error"]}
    expected = {n for n, b in kinds.items() if b}
    result["bad_inputs"] = {
        "command": "guard detect folder DIR --recursive --key KEY --out rows.jsonl",
        "exit_code": proc.returncode, "seconds": time.time() - t0,
        "n_image_files": len(kinds) + 2, "note": "the awkward kinds + 2 watermarked PNGs; readme.txt beside them "
        "has no image suffix and is not scanned; sub/up is a symlink back to the folder (a cycle)",
        "n_rows": len(rows), "n_error_rows": len(errs), "error_rows_match_unreadable_files": set(errs) == expected,
        "n_watermarked": sum(r["watermarked"] for r in rows),
        "errors": dict(sorted(errs.items())),
        "readable_kinds": sorted(n for n, b in kinds.items() if not b),
    }
    log(f"  exit {proc.returncode}, {len(rows)} rows, {len(errs)} error rows")
    result["seconds_total"] = time.time() - t_start
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
