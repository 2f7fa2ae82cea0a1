"""Quick watermark figures of the reference generator (or a candidate folder via GUARD_REFERENCE_WEIGHTS).

    OMP_NUM_THREADS=1 python bench/measure_v2_quick.py --n 1000 --offset 0 --seed 1234 --modes soft,none --out F.json
    OMP_NUM_THREADS=1 python bench/measure_v2_quick.py --n 200 --offset 0 --seed 1234 --modes none,hard --n-keys 20

Per mode (none / soft delta / hard; gamma 0.25, K = 8, a fixed benchmark key): distinct codes per generated
image, decode -> PNG -> encode agreement, TPR at alpha = 1e-4 (distinct-code test, Bonferroni over the K
lists) on the codes, after PNG and after JPEG 75, classifier adherence (shape / colour / background);
for `none`, the clean false-positive rate after PNG over --n-keys fresh keys. Prompts: `heldout_prompts(n,
offset)` (offset 0 = the reported prompts of `evaluate`; 200000 = validation prompts for choices).
"""
import argparse
import hashlib
import json
import time

import numpy as np
import torch

from guard.keys import WatermarkKey
from guard.models import load
from guard.models.reference import load_classifier
from guard.models.reference.classifier import prompt_adherence
from guard.models.reference.evaluate import heldout_prompts, to_uint8_png
from guard.watermark import GreenLists, WatermarkProcessor
from guard.detect import Detector

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=128)
ap.add_argument("--offset", type=int, default=200000, help="0 = reported prompts; 200000 = validation prompts")
ap.add_argument("--seed", type=int, default=4321)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--delta", type=float, default=2.0)
ap.add_argument("--modes", default="none,soft,hard")
ap.add_argument("--n-keys", type=int, default=20, help="fresh keys for the clean false-positive rate")
ap.add_argument("--out", default=None)
a = ap.parse_args()
torch.set_num_threads(a.threads)
gen = load("reference"); tok = gen.tokenizer; clf = load_classifier()
secret = hashlib.sha256(b"guard/quick_eval/v2").digest()  # fixed benchmark key (public: reproducible figures)
key = WatermarkKey._from_secret(secret, gamma=0.25, n_lists=8, tokenizer_id=tok.id, vocab_size=tok.vocab_size)
gl = GreenLists(key, tok)
det = Detector(gl, tok, alpha=1e-4)
prompts = heldout_prompts(a.n, offset=a.offset)
out = {"tokenizer": tok.id, "gpt": gen.id, "n": a.n, "offset": a.offset}
def jpeg(x, q=75): return to_uint8_png(x, "JPEG", quality=q)
for mode in a.modes.split(","):
    t0 = time.time()
    procs = [] if mode == "none" else [WatermarkProcessor(gl, delta=a.delta) if mode == "soft" else WatermarkProcessor(gl, hard=True)]
    codes = gen.generate(prompts, n=1, seed=a.seed, logits_processor=procs)
    el = time.time() - t0
    png = to_uint8_png(tok.decode(codes))
    distinct = [int(torch.unique(c).numel()) for c in codes]
    agree = float((tok.encode(png) == codes).float().mean())
    r = {"img_per_s": round(a.n / el, 2), "distinct_median": float(np.median(distinct)), "distinct_p10": float(np.percentile(distinct, 10)),
         "roundtrip_png": round(agree, 4)}
    for name, imgs in (("codes", None), ("png", png), ("jpeg75", jpeg(png))):
        recs = det.detect_codes(codes) if imgs is None else det.detect_images(imgs)
        p = np.array([x.p_value for x in recs])
        r[f"tpr_1e-4_{name}"] = round(float((p <= 1e-4).mean()), 4)
        r[f"median_log10p_{name}"] = round(float(np.median(np.log10(np.maximum(p, 1e-300)))), 2)
    adh, _ = prompt_adherence(clf, png, prompts)
    r.update(shape=round(adh.shape, 4), colour=round(adh.colour, 4), background=round(adh.background, 4))
    if mode == "none":
        # Clean false-positive rate over fresh keys (each its own K=8 stratified lists), after PNG.
        clean_codes = tok.encode(png)
        hits = {1e-3: 0, 1e-4: 0}
        for k in range(a.n_keys):
            kk = WatermarkKey.create(tok, gamma=0.25, n_lists=8)
            d = Detector(GreenLists(kk, tok), tok, alpha=1e-4)
            p = np.array([x.p_value for x in d.detect_codes(clean_codes)])
            for al in hits:
                hits[al] += int((p <= al).sum())
        r["fresh_keys"] = a.n_keys
        r["clean_fpr_fresh_keys"] = {str(al): hits[al] / (a.n_keys * a.n) for al in hits}
    out[mode] = r
    print(mode, r, flush=True)
print(json.dumps(out))
if a.out:
    open(a.out, "w").write(json.dumps(out, indent=2) + "\n")
