"""Probe: do cheap restoration looks (denoise, sharpen, un-brighten, un-crop) recover the mark after
valuemetric/geometric attacks? Reads the first N images of a population bench/measure_robustness.py cached
(seed 0) with its benchmark K8 key; prints TPR at alpha 1e-4 and token match per look. For choices only:
figures are reported from measure_robustness on other seeds (`--seed 1`).

    python bench/probe_restoration_looks.py 128 soft /tmp/guard-robustness
"""
import sys, numpy as np, torch, torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur
from guard.models import load
from guard.keys import resolve_key
from guard.watermark import GreenLists
from guard.detect import Detector
from guard.eval.attacks import apply_attack
torch.set_num_threads(1)
N = int(sys.argv[1]); mode = sys.argv[2]
root = sys.argv[3] if len(sys.argv) > 3 else "/tmp/guard-robustness"
gen = load("reference"); tok = gen.tokenizer
gl = GreenLists(resolve_key(f"{root}/keys/K8.key", tok), tok)
det = Detector(gl, tok)
def pop(name):
    ims, codes = [], []
    for c in range(16):
        d = np.load(f"{root}/{mode if name=='watermarked' else 'soft'}/populations/{name}/chunk_{c:05d}.npz")
        ims.append(d["images"]); codes.append(d["codes"])
        if sum(len(x) for x in ims) >= N: break
    x = torch.from_numpy(np.concatenate(ims)[:N]).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy(np.concatenate(codes)[:N]).long()
wm, wm_codes = pop("watermarked"); cl, _ = pop("clean")
def unsharp(x, a, s=1.0):
    return (x + a * (x - gaussian_blur(x, [5, 5], [s, s]))).clamp(0, 1)
def uncrop(x, s):
    S = x.shape[-1]; m = round(S * s)
    small = F.interpolate(x, size=(m, m), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return F.pad(small, (0, S - m, 0, S - m), mode="replicate")
def median3(x):
    p = F.pad(x, (1, 1, 1, 1), mode="replicate").unfold(2, 3, 1).unfold(3, 3, 1)
    return p.reshape(*p.shape[:4], 9).median(-1).values
R = {"id": lambda x: x,
     "gauss0.7": lambda x: gaussian_blur(x, [3, 3], [0.7, 0.7]),
     "gauss1.0": lambda x: gaussian_blur(x, [5, 5], [1.0, 1.0]),
     "median3": median3,
     "sharp1": lambda x: unsharp(x, 1.0), "sharp2": lambda x: unsharp(x, 2.0), "sharp4": lambda x: unsharp(x, 4.0, 1.5),
     "x0.5": lambda x: x * 0.5, "x0.67": lambda x: x * 0.67,
     "uncrop0.75": lambda x: uncrop(x, 0.75)}
ATT = [("none", 0), ("jpeg", 25), ("blur", 9), ("noise", 0.1), ("brightness", 2), ("crop", 0.75)]
def raw_logp(x):
    codes = det.encode(x)
    r = det.test_codes(codes)[0]
    return r.log10_p.min(1), codes
print(f"mode {mode} N {N}; columns: TPR at alpha 1e-4 with factor K=8 alone | with 8x(1+{len(R)-1}) looks; token match; clean max", flush=True)
for a, prm in ATT:
    xw = apply_attack(a, wm, prm, seed=0, indices=list(range(N)))
    xc = apply_attack(a, cl, prm, seed=1, indices=list(range(N)))
    best_w = np.full(N, 0.0); best_c = np.full(N, 0.0)
    line = []
    for name, fn in R.items():
        lw, cw = raw_logp(fn(xw).clamp(0, 1)); lc, _ = raw_logp(fn(xc).clamp(0, 1))
        tm = (cw == wm_codes).float().mean().item()
        best_w = np.minimum(best_w, lw); best_c = np.minimum(best_c, lc)
        tpr = (lw + np.log10(8) <= -4).mean()
        line.append(f"{name} {tpr:.3f}/{tm:.3f}")
    L = 8 * len(R)
    print(f"{a} {prm}: " + "  ".join(line) + f" || search-all TPR {(best_w + np.log10(L) <= -4).mean():.3f} "
          f"clean FPR@1e-2 {(best_c + np.log10(L) <= -2).mean():.3f}", flush=True)
