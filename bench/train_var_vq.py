"""Train a tiny VAR VQ-VAE (official architecture, narrow) on reference scenes, so saved-image round trips
can be tested through the `var:` adapter: random VQ weights do not re-encode their own images.

    OMP_NUM_THREADS=1 python bench/train_var_vq.py --minutes 6 --out guard/models/weights/var_tiny

Config (sized for a few CPU-minutes on one heavily shared thread): reference scenes
(guard.models.reference.shapes) area-downsampled to 16 px; ch 32, a single level (ch_mult (1,): no
downsampling instead of the released 16x, so the latent is 16x16 and the pyramid is VAR's own
1,2,3,4,5,6,8,10,13,16 = 680 tokens), one ResnetBlock, no attention blocks, 512 codes of width 16, 4
partially shared Φ. Loss: L2 + L1 reconstruction plus
VAR's multi-scale VQ loss; dead codes are re-seeded from latents every 50 steps. Writes `vae_tiny.pth`
(float16 state dict in the released layout) and `card.json` (command, steps, wall time, metrics).
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

from guard.models.reference.shapes import render, sample_scene
from guard.models.var import OFFICIAL_PATCH_NUMS, VQVAE, VARTokenizer
from guard.models._hf_common import weights_digest

CONFIG = dict(vocab_size=512, z_channels=16, ch=32, ch_mult=(1,), num_res_blocks=1, using_sa=False,
              using_mid_sa=False, v_patch_nums=OFFICIAL_PATCH_NUMS)
SIZE = 16


def scenes(start: int, n: int, split: str = "train") -> torch.Tensor:
    arr = np.stack([render(sample_scene(start + i, split=split)) for i in range(n)])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255
    return F.interpolate(x, size=(SIZE, SIZE), mode="area")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    t0 = time.time()
    data = scenes(0, a.n_train)
    val = scenes(50_000, 64)
    t_data = time.time() - t0
    vq = VQVAE(**CONFIG).train()
    opt = torch.optim.Adam(vq.parameters(), lr=a.lr, betas=(0.9, 0.95))
    book = vq.quantize.embedding.weight
    hits = torch.zeros(book.shape[0])
    step, t1, losses = 0, time.time(), []
    while time.time() - t1 < a.minutes * 60:
        x = data[torch.randint(len(data), (a.batch,))] * 2 - 1
        rec, vq_loss = vq(x)
        loss = F.mse_loss(rec, x) + 0.5 * (rec - x).abs().mean() + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
        with torch.no_grad():
            if step % 10 == 0:
                f = vq.quant_conv(vq.encoder(x))
                for idx in vq.quantize.f_to_idx(f):
                    hits += torch.bincount(idx.flatten(), minlength=book.shape[0]).float()
            if step % 50 == 49:        # re-seed codes unused since the last re-seed from random latents
                dead = (hits == 0).nonzero().flatten()
                if len(dead):
                    f = vq.quant_conv(vq.encoder(x)).permute(0, 2, 3, 1).reshape(-1, book.shape[1])
                    noise = 0.01 * torch.randn(len(dead), book.shape[1])
                    book.data[dead] = f[torch.randint(len(f), (len(dead),))] + noise
                hits.zero_()
        if step % 100 == 0:
            print(f"step {step} loss {np.mean(losses[-100:]):.4f} {time.time() - t1:.0f}s", file=sys.stderr, flush=True)
        step += 1
    train_s = time.time() - t1
    vq.eval()
    a.out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in vq.state_dict().items()}
    torch.save(state, a.out / "vae_tiny.pth")
    # evaluate the saved (float16) weights exactly as the adapter loads them
    vq2 = VQVAE(**CONFIG)
    vq2.load_state_dict(torch.load(a.out / "vae_tiny.pth", weights_only=True), strict=True)
    tok = VARTokenizer(vq2.eval(), digest=weights_digest(vq2))
    with torch.no_grad():
        codes = tok.encode(val)
        rec = tok.decode(codes)
        psnr = float((10 * torch.log10(1 / ((rec - val) ** 2).mean((1, 2, 3)))).mean())
        png = (rec * 255).round() / 255
        again = tok.encode(png)
        per_scale = [float((x == y).float().mean()) for x, y in zip(tok.split(codes), tok.split(again))]
        used = int(torch.unique(codes).numel())
    card = dict(command="OMP_NUM_THREADS=1 python " + " ".join(sys.argv), config={k: list(v) if isinstance(v, tuple)
                else v for k, v in CONFIG.items()}, seed=a.seed, steps=step, batch=a.batch, lr=a.lr,
                n_train=a.n_train, data="guard.models.reference.shapes scenes 0..n_train-1 (train split), "
                "validation: 64 scenes from seed 50000", wall_s=dict(data=round(t_data, 1), train=round(train_s, 1)),
                final_loss=round(float(np.mean(losses[-100:])), 5), val_psnr_db=round(psnr, 2),
                round_trip_agreement_per_scale=[round(v, 3) for v in per_scale],
                round_trip_agreement_all=round(float((codes == again).float().mean()), 3),
                distinct_codes_used_on_val=used, torch=torch.__version__, dtype_on_disk="float16")
    (a.out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
