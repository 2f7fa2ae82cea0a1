"""Which VAR scales should detection count? Power of the exact distinct-code test per scale choice, on the
tiny trained VAR (bench/train_var_vq.py's VQ + a tiny transformer trained here on its pyramids).

    OMP_NUM_THREADS=1 python bench/measure_var_scales.py --vq guard/models/weights/var_tiny --n 96 \\
        --train-minutes 6 --out bench/results/var_scales.json

1. Train (or load from --var-cache) a tiny VAR transformer (depth 2, width 128, 9 classes = the reference
   scenes' backgrounds) on the VQ's pyramids of reference scenes, teacher-forced, 10% null-class dropout.
2. Generate N watermarked pyramids (soft delta 2 and hard; one random list of K=8 per image, gamma 0.25) and
   N clean ones, decode, round to 8 bits (the PNG), re-quantise into the pyramid.
3. For every choice of counted scales — all, last N (the N largest), and each single scale — run the exact
   distinct-code test against all K lists (Bonferroni over K) and report TPR at alpha 1e-4, the median
   log10 p, the clean FPR, and the per-scale re-encode agreement with the generated codes.
Also reported: the same on the generated codes themselves (no decode), the ceiling.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from guard.detect import stats
from guard.keys import WatermarkKey
from guard.models.reference.shapes import BACKGROUNDS, render, sample_scene
from guard.models.var import VAR, VARGenerator, load_var_tokenizer
from guard.watermark import GreenLists, WatermarkProcessor


def scenes(start: int, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ss = [sample_scene(start + i) for i in range(n)]
    x = torch.from_numpy(np.stack([render(s) for s in ss])).permute(0, 3, 1, 2).float() / 255
    labels = torch.tensor([BACKGROUNDS.index(s.background) for s in ss])
    return F.interpolate(x, size=(size, size), mode="area"), labels


def train_var(tok, minutes: float, n_train: int, seed: int) -> VAR:
    torch.manual_seed(seed)
    x, labels = scenes(0, n_train, tok.image_size)
    codes = torch.cat([tok.encode_pyramid(x[i:i + 64]) for i in range(0, len(x), 64)])[:, 0]
    maps = [codes[:, a:b] for a, b in tok.slices]
    var = VAR(Cvae=tok.vq.Cvae, vocab_size=tok.vocab_size, num_classes=len(BACKGROUNDS), depth=2, embed_dim=128,
              num_heads=4, patch_nums=tok.scales).train()
    opt = torch.optim.AdamW(var.parameters(), lr=1e-3, weight_decay=0.01)
    quant = tok.vq.quantize
    t0, step, losses = time.time(), 0, []
    while time.time() - t0 < minutes * 60:
        i = torch.randint(len(codes), (16,))
        lab = torch.where(torch.rand(16) < 0.1, len(BACKGROUNDS), labels[i])
        with torch.no_grad():
            inp = quant.idx_to_var_input([m[i] for m in maps])
        logits = var(lab, inp)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes[i].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
        if step % 100 == 0:
            print(f"var step {step} loss {np.mean(losses[-100:]):.3f} {time.time() - t0:.0f}s", file=sys.stderr,
                  flush=True)
        step += 1
    var.train_info = dict(steps=step, final_loss=round(float(np.mean(losses[-100:])), 4), n_train=n_train,
                          minutes=minutes)
    return var.eval()


def choices(n_scales: int) -> dict[str, list[int]]:
    out = {"all": list(range(n_scales))}
    for k in range(1, n_scales):
        out[f"last{k}"] = list(range(n_scales - k, n_scales))
    for s in range(n_scales - 1):
        out[f"scale{s}"] = [s]
    return out


def evaluate(codes: torch.Tensor, tok, lists: GreenLists, idx: list[int] | None, alpha: float) -> dict:
    """codes (B, 1, L) -> per choice: TPR (corrected p <= alpha), median log10 p, median distinct, median green share."""
    flat = codes[:, 0]
    res = {}
    for name, scales in choices(len(tok.scales)).items():
        sel = torch.cat([flat[:, slice(*tok.slices[s])] for s in scales], 1)
        r = stats.distinct_code_test(sel, lists.masks, None)
        best = r.log10_p.min(1)
        corrected = np.array([stats.bonferroni_log10(float(v), lists.n_lists) for v in best])
        res[name] = dict(tpr=float((corrected <= np.log10(alpha)).mean()),
                         median_log10_p=round(float(np.median(corrected)), 2),
                         median_distinct=float(np.median(r.n_distinct)))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vq", type=Path, required=True, help="folder with the tiny vae_*.pth (train_var_vq.py)")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--train-minutes", type=float, default=6.0)
    ap.add_argument("--n-train", type=int, default=1500)
    ap.add_argument("--var-cache", type=Path, default=None, help="save/load the trained transformer here")
    ap.add_argument("--alpha", type=float, default=1e-4)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    tok = load_var_tokenizer(a.vq)
    if a.var_cache is not None and a.var_cache.is_file():
        state = torch.load(a.var_cache, weights_only=True)
        var = VAR(Cvae=tok.vq.Cvae, vocab_size=tok.vocab_size, num_classes=len(BACKGROUNDS), depth=2,
                  embed_dim=128, num_heads=4, patch_nums=tok.scales)
        var.load_state_dict(state, strict=True)
        var.train_info = {"loaded": str(a.var_cache)}
        var.eval()
    else:
        var = train_var(tok, a.train_minutes, a.n_train, seed=0)
        if a.var_cache is not None:
            torch.save(var.state_dict(), a.var_cache)
    gen = VARGenerator(var, tok, "var-tiny-trained", batch_size=32)
    key = WatermarkKey.create(tok, gamma=0.25, n_lists=8)
    lists = GreenLists(key, tok)
    prompts = [str(i % len(BACKGROUNDS)) for i in range(a.n)]
    report = dict(n=a.n, alpha=a.alpha, gamma=0.25, n_lists=8, var_train=var.train_info, tokenizer=tok.id,
                  scales=list(tok.scales), settings={})
    for name, kw in {"clean": None, "delta2": dict(delta=2.0), "hard": dict(hard=True)}.items():
        t0 = time.time()
        procs = [] if kw is None else [WatermarkProcessor(lists, seed=1, **kw)]
        codes = gen.generate(prompts, seed=7, cfg=2.5, top_k=None, top_p=None, logits_processor=procs)
        images = tok.decode(codes)
        png = (images * 255).round() / 255
        again = tok.encode_pyramid(png)
        agree = [round(float((x == y).float().mean()), 3) for x, y in zip(tok.split(codes), tok.split(again))]
        row = dict(agreement_per_scale=agree, requantised=evaluate(again, tok, lists, None, a.alpha),
                   generated_codes=evaluate(codes, tok, lists, None, a.alpha), seconds=round(time.time() - t0, 1))
        report["settings"][name] = row
        best = max(row["requantised"].items(), key=lambda kv: (kv[1]["tpr"], -kv[1]["median_log10_p"]))
        print(f"{name}: agreement per scale {agree}; best after PNG: {best[0]} {best[1]}", file=sys.stderr,
              flush=True)
    text = json.dumps(report, indent=1)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
