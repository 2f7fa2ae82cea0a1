"""Which VAR scales should detection count? Power of the exact distinct-code test per choice of scales.

    OMP_NUM_THREADS=1 python bench/measure_var_scales.py --n 128 --out bench/results/var_scales.json
    OMP_NUM_THREADS=1 python bench/measure_var_scales.py --ckpt /models/var --n 64 --path pixels   # real weights

A VAR image is a pyramid of code maps (1,2,3,4,5,6,8,10,13,16 at 256 px). Generation watermarks every
scale; detection re-quantises the image into a pyramid and may count all scales or only some. Which
choice has the most power depends on how well each scale survives the round trip, so it is measured:

1. Generate N pyramids with the watermark (soft delta 2, and hard; K = 8 lists, gamma 0.25, one list per
   image) and N clean ones (same class prompts and seeds).
2. Re-quantise them along one of three paths:
   * `codes`: no round trip (the generated codes themselves; the ceiling);
   * `ideal`: a perfect autoencoder — the pyramid's f̂ (what the decoder would get) is re-quantised by the
     multi-scale residual quantiser (`f_to_idx`). What survives here is what the *quantiser* keeps: a
     generated pyramid is not the canonical residual decomposition of its own f̂;
   * `pixels`: decode, round to 8 bits (the PNG), encode — the real path (needs trained weights).
3. For every choice — all scales, the N largest ("lastN"), each single scale — run the exact test against
   all K lists (Bonferroni over K) and report TPR at alpha (1e-4), the median log10 p, the clean FPR and the
   per-scale agreement of re-quantised with generated codes.

Models (--model):
* `random`: a random tiny VAR of the released geometry (4096 codes of width 32, the 10 scales above,
  16x16 latent; transformer d2 x 64, 10 classes). Its logits are near uniform, so its pyramids are far
  from the canonical decompositions a trained VAR learns to produce — the pessimistic extreme.
* `oracle`: the same quantiser driven by a stand-in for a *trained* VAR: each image has a smooth random
  latent f; at scale k the logits are −‖r_k − e_v‖² / (T·std) for the residual r_k of f left by the codes
  sampled so far (area-downsampled), i.e. the model prefers the canonical next-scale code and samples
  near it (T = --oracle-temp sets the entropy). Processors act through the same hooked sampler.
* `--ckpt DIR`: a real VAR checkpoint (then use --path pixels).
Random VQ weights make `pixels` meaningless (agreement ~ 1/V), hence `ideal` by default.
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
from guard.models.var import (OFFICIAL_PATCH_NUMS, VARGenerator, VARTokenizer, build_tiny_var, load_var)
from guard.models._hf_common import weights_digest
from guard.watermark import GreenLists, WatermarkProcessor


def choices(n_scales: int) -> dict[str, list[int]]:
    out = {"all": list(range(n_scales))}
    for k in range(1, n_scales):
        out[f"last{k}"] = list(range(n_scales - k, n_scales))
    for s in range(n_scales - 1):
        out[f"scale{s}"] = [s]
    return out


def evaluate(codes: torch.Tensor, tok: VARTokenizer, lists: GreenLists, alpha: float) -> dict:
    """codes (B, 1, L) -> per choice: share detected (corrected p <= alpha), median log10 p, median distinct codes."""
    flat = codes[:, 0]
    res = {}
    for name, scales in choices(len(tok.scales)).items():
        sel = torch.cat([flat[:, slice(*tok.slices[s])] for s in scales], 1)
        r = stats.distinct_code_test(sel, lists.masks, None)
        corrected = stats.bonferroni_log10(r.log10_p.min(1), lists.n_lists)
        res[name] = dict(detected=round(float((corrected <= np.log10(alpha)).mean()), 4),
                         median_log10_p=round(float(np.median(corrected)), 2),
                         median_distinct=float(np.median(r.n_distinct)))
    return res


@torch.inference_mode()
def requantise(codes: torch.Tensor, tok: VARTokenizer, path: str) -> torch.Tensor:
    if path == "codes":
        return codes
    if path == "ideal":
        q = tok.vq.quantize
        out = []
        for i in range(0, len(codes), 32):
            ms = [m.reshape(m.shape[0], -1) for m in tok.split(codes[i:i + 32])]
            out.append(torch.cat(q.f_to_idx(q.idx_to_fhat(ms)), 1))
        return torch.cat(out)[:, None, :]
    png = (tok.decode(codes) * 255).round() / 255
    return tok.encode_pyramid(png)


def train_var(tok: VARTokenizer, minutes: float, n_train: int, seed: int):
    """A tiny VAR (d2 x 64, 10 classes = reference backgrounds, clipped) trained teacher-forced on the VQ's
    pyramids of 16 px reference scenes, 10% null-class dropout; returns (VAR, info)."""
    from guard.models.reference.shapes import BACKGROUNDS, render, sample_scene
    from guard.models.var import VAR

    torch.manual_seed(seed)
    scenes = [sample_scene(i) for i in range(n_train)]
    x = torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(tok.image_size, tok.image_size), mode="area")
    labels = torch.tensor([BACKGROUNDS.index(s.background) % 10 for s in scenes])
    codes = tok.encode_pyramid(x)[:, 0]
    maps = [codes[:, a:b] for a, b in tok.slices]
    var = VAR(Cvae=tok.vq.Cvae, vocab_size=tok.vocab_size, num_classes=10, depth=2, embed_dim=64, num_heads=2,
              patch_nums=tok.scales).train()
    opt = torch.optim.AdamW(var.parameters(), lr=2e-3, weight_decay=0.01)
    t0, step, losses = time.time(), 0, []
    while time.time() - t0 < minutes * 60:
        i = torch.randint(len(codes), (8,))
        lab = torch.where(torch.rand(8) < 0.1, 10, labels[i])
        with torch.no_grad():
            inp = tok.vq.quantize.idx_to_var_input([m[i] for m in maps])
        logits = var(lab, inp)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes[i].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
    return var.eval(), {"steps": step, "minutes": minutes, "n_train": n_train,
                        "final_loss": round(float(np.mean(losses[-50:])), 4)}


class OracleVAR:
    """Samples pyramids near the canonical residual decomposition of a smooth random latent (see --model oracle)."""

    model_kind = "var"

    def __init__(self, tok: VARTokenizer, temp: float, seed: int) -> None:
        self.tok, self.temp, self.seed = tok, temp, seed
        self.entropy: list[float] = []

    def latents(self, b: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        q = self.tok.vq.quantize
        H = q.v_patch_nums[-1]
        f = torch.zeros(b, q.Cvae, H, H)
        for size, amp in ((2, 1.0), (4, 0.7), (8, 0.5), (16, 0.35)):
            f += amp * F.interpolate(torch.randn(b, q.Cvae, size, size, generator=g), size=(H, H), mode="bicubic")
        return f * q.embedding.weight.std()

    @torch.inference_mode()
    def generate(self, prompts, *, seed=0, cfg=1.0, logits_processor=None, **_):
        from guard.models import var as var_module
        from guard.models.loops import hook_sampler

        q = self.tok.vq.quantize
        pns, n = q.v_patch_nums, len(q.v_patch_nums)
        H = pns[-1]
        f = self.latents(len(prompts), seed)
        f_hat, out = torch.zeros_like(f), []
        book = q.embedding.weight
        torch.manual_seed(seed)
        with hook_sampler("guard.models.var.sample_with_top_k_top_p_", list(logits_processor or []),
                          convention="scale"):
            for si, pn in enumerate(pns):
                rest = f - f_hat
                z = rest if si == n - 1 else F.interpolate(rest, size=(pn, pn), mode="area")
                zf = z.permute(0, 2, 3, 1).reshape(len(f), pn * pn, -1)
                d = zf.square().sum(-1, keepdim=True) + book.square().sum(1) - 2 * zf @ book.T     # (B, l, V)
                logits = -(d - d.amin(-1, keepdim=True)) / (self.temp * d.std(-1, keepdim=True))
                p = logits.softmax(-1)
                self.entropy.append(float(-(p * p.clamp_min(1e-30).log()).sum(-1).mean()))
                idx = var_module.sample_with_top_k_top_p_(logits, num_samples=1)[:, :, 0]
                out.append(idx)
                h = q.embedding(idx).transpose(1, 2).reshape(len(f), q.Cvae, pn, pn)
                f_hat, _ = q.next_input(si, f_hat, h)
        return torch.cat(out, 1)[:, None, :]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=None, help="a VAR checkpoint folder (default: --model)")
    ap.add_argument("--vq", default=None, help="a folder with a VAR VQ-VAE only (e.g. guard/models/weights/var_tiny): "
                                              "--model drives it")
    ap.add_argument("--model", choices=["random", "oracle", "trained"], default="random")
    ap.add_argument("--train-minutes", type=float, default=8.0, help="--model trained (with --vq)")
    ap.add_argument("--oracle-temp", type=float, default=0.05)
    ap.add_argument("--path", choices=["ideal", "pixels"], default="ideal")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--cfg", type=float, default=2.5)
    ap.add_argument("--alpha", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.time()
    if a.ckpt:
        gen = load_var(a.ckpt, device="cpu")
        tok = gen.tokenizer
        model = gen.id
    else:
        vq, var = build_tiny_var(vocab_size=4096, patch_nums=OFFICIAL_PATCH_NUMS, ch=32, ch_mult=(1,),
                                 num_res_blocks=1, z_channels=32, depth=2, embed_dim=64, num_heads=2,
                                 num_classes=10, seed=a.seed)
        tok = VARTokenizer(vq, digest=weights_digest(vq))
        if a.vq:
            from guard.models.var import load_var_tokenizer

            tok = load_var_tokenizer(a.vq, device="cpu")
            vq, var = build_tiny_var(vocab_size=tok.vocab_size, patch_nums=tok.scales, z_channels=tok.vq.Cvae,
                                     depth=2, embed_dim=64, num_heads=2, num_classes=10, seed=a.seed)
        if a.model == "trained":
            if not a.vq:
                raise SystemExit("--model trained needs --vq")
            var, info = train_var(tok, a.train_minutes, 600, a.seed)
            gen = VARGenerator(var, tok, "var-tiny-trained", batch_size=32)
            model = f"tiny VAR d2 x 64 trained teacher-forced on {a.vq}'s pyramids of reference scenes: {info}"
        elif a.model == "random":
            gen = VARGenerator(var, tok, "var-tiny-random", batch_size=32)
            model = "random tiny VAR (released geometry: V=4096, Cvae=32, scales 1..16; d2 x 64, 10 classes)"
        else:
            gen = OracleVAR(tok, a.oracle_temp, a.seed)
            model = (f"oracle VAR (samples near the canonical decomposition of smooth random latents, temp "
                     f"{a.oracle_temp}) over " + (f"the VQ-VAE in {a.vq}" if a.vq else
                                                  "a random VQ quantiser of the released geometry"))
    key = WatermarkKey.create(tok, gamma=0.25, n_lists=8)
    lists = GreenLists(key, tok)
    prompts = [str(i % 10) for i in range(a.n)]
    report = dict(command="OMP_NUM_THREADS=1 python " + " ".join(sys.argv), model=model, path=a.path, n=a.n,
                  alpha=a.alpha, gamma=0.25, n_lists=8, cfg=a.cfg, scales=list(tok.scales), settings={})
    for name, kw in {"clean": None, "delta2": dict(delta=2.0), "hard": dict(hard=True)}.items():
        t0 = time.time()
        procs = [] if kw is None else [WatermarkProcessor(lists, seed=a.seed + 1, **kw)]
        codes = gen.generate(prompts, seed=a.seed + 7, cfg=a.cfg, logits_processor=procs)
        again = requantise(codes, tok, a.path)
        agree = [round(float((x == y).float().mean()), 4) for x, y in zip(tok.split(codes), tok.split(again))]
        row = dict(agreement_per_scale=agree, requantised=evaluate(again, tok, lists, a.alpha),
                   generated_codes=evaluate(codes, tok, lists, a.alpha), seconds=round(time.time() - t0, 1))
        report["settings"][name] = row
        best = max(row["requantised"].items(), key=lambda kv: (kv[1]["detected"], -kv[1]["median_log10_p"]))
        print(f"{name}: agreement per scale {agree}; best after {a.path}: {best[0]} {best[1]}", file=sys.stderr,
              flush=True)
    if isinstance(gen, OracleVAR):
        report["oracle_mean_entropy_nats_per_scale"] = [round(float(np.mean(gen.entropy[i::len(tok.scales)])), 3)
                                                        for i in range(len(tok.scales))]
    report["seconds"] = round(time.time() - t_start, 1)
    text = json.dumps(report, indent=1)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
