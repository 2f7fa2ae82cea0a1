"""Train a tiny LlamaGen-architecture VQ and c2i GPT on reference scenes (CPU, one thread, a few minutes).

    OMP_NUM_THREADS=1 python bench/train_llamagen_tiny.py --out guard/models/weights/llamagen-tiny \
        --vq-steps 800 --gpt-steps 300 --n-train 400 --crop 32 --batch 4 --freeze-codebook \
        --entropy 0.1 --seed 0

It exists so that generate -> PNG -> detect can be shown through the llamagen adapter's own code path
(`guard.models.llamagen`) with a VQ that re-encodes its own images, which a random VQ does not. The
architecture is LlamaGen's (`VQModel`, `Transformer`, official parameter names) at tiny width: VQ ch 32,
ch_mult [1, 1, 2] (factor 4: 64 px -> 16x16 tokens; the released VQ-16 has 5 levels, factor 16), one
residual block per level, 512 L2-normalised codes of dim 8; GPT dim 64, 2 layers, 4 heads, c2i over the
9 reference backgrounds. Losses: VQ: L1 + MSE reconstruction, codebook and commitment terms (beta 0.25), LlamaGen's entropy loss
(`--entropy`, softmax temperature 0.01) against codebook collapse,
dead codes (unused for 40 steps) restarted on live latents every 20 steps, plus an idempotence term (decode -> 8-bit round -> encode must give back the codes; cross-entropy over
cosine logits) on the codes of scenes with 20% of them replaced at random; GPT: next-code cross-entropy.
Writes `vq_tiny.pt` and `c2i_tiny_64.pt` ({"model": state_dict}, the official layout), `llamagen.json`
and `card.json` (command, seed, steps, wall time, reconstruction PSNR, round-trip agreement).
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
import torch.nn.functional as F


def scenes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from guard.models.reference import shapes

    imgs, labels = [], []
    for i in range(n):
        sc = shapes.sample_scene(seed * 1_000_000 + i, split="any")
        imgs.append(torch.from_numpy(shapes.render(sc)).permute(2, 0, 1))
        labels.append(shapes.BACKGROUNDS.index(sc.background))
    return torch.stack(imgs).float() / 255.0, torch.tensor(labels)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a, b, reduction="none").flatten(1).mean(1)
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--vq-steps", type=int, default=600)
    ap.add_argument("--gpt-steps", type=int, default=300)
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, help="VQ training crop (pixels, a multiple of 4)", default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--fp16-weights", action="store_true", help="store the state dicts in float16")
    ap.add_argument("--entropy", type=float, default=0.0, help="weight of LlamaGen's codebook entropy loss")
    ap.add_argument("--freeze-codebook", action="store_true", help="keep the codebook at random unit vectors")
    ap.add_argument("--scene-cache", type=Path, default=None, help="folder caching the rendered scenes (optional)")
    args = ap.parse_args()

    from guard.models import llamagen as lg

    torch.manual_seed(args.seed)
    t_start = time.time()
    cache = args.scene_cache / f"scenes-{args.n_train}-{args.seed}.pt" if args.scene_cache else None
    if cache is not None and cache.is_file():
        x_train, y_train, x_val = torch.load(cache)
    else:
        x_train, y_train = scenes(args.n_train, args.seed)
        x_val, _ = scenes(128, args.seed + 1)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save((x_train, y_train, x_val), cache)
    t_data = time.time() - t_start
    print(f"rendered {len(x_train)} + {len(x_val)} scenes in {t_data:.0f} s", file=sys.stderr)

    vq = lg.VQModel(lg.VQArgs(codebook_size=512, codebook_embed_dim=8, encoder_ch_mult=[1, 1, 2],
                              decoder_ch_mult=[1, 1, 2], z_channels=32, ch=32, num_res_blocks=1))
    if args.freeze_codebook:                               # a fixed, well-spread codebook cannot collapse
        g = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            vq.quantize.embedding.weight.copy_(F.normalize(torch.randn(512, 8, generator=g), dim=-1))
        vq.quantize.embedding.weight.requires_grad_(False)
    opt = torch.optim.Adam([p for p in vq.parameters() if p.requires_grad], lr=args.lr)
    step, t0 = 0, time.time()
    usage = torch.zeros(512, dtype=torch.long)                # last step each code was chosen
    restarts = 0
    while step < args.vq_steps:
        idx = torch.randint(0, len(x_train), (args.batch,))
        oy, ox = (int(v) * 4 for v in torch.randint(0, (64 - args.crop) // 4 + 1, (2,)))
        x = x_train[idx][:, :, oy:oy + args.crop, ox:ox + args.crop]    # fully convolutional: train on crops
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        z = vq.latents(x * 2 - 1)
        book = vq.quantize.codebook()
        zf = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), dim=-1)
        logits = zf @ book.T
        codes = logits.argmax(1)
        zq = book[codes]
        vq_loss = F.mse_loss(zq, zf.detach()) + 0.25 * F.mse_loss(zf, zq.detach())
        zq_st = (zf + (zq - zf).detach()).view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        rec = (vq.decode_latents(zq_st) + 1) / 2
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + vq_loss
        if args.entropy > 0:     # LlamaGen's entropy loss (entropy_loss_ratio): confident per latent, all codes used
            probs = F.softmax(logits / 0.01, dim=-1)
            avg = probs.mean(0)
            sample_ent = -(probs * F.log_softmax(logits / 0.01, dim=-1)).sum(-1).mean()
            loss = loss + args.entropy * (sample_ent + (avg * torch.log(avg + 1e-5)).sum())
        if step >= args.vq_steps // 3 and step % 2 == 0:  # idempotence once the decoder draws something
            c = codes.view(z.shape[0], z.shape[2], z.shape[3]).detach()
            swap = torch.rand(c.shape) < 0.2
            c = torch.where(swap, torch.randint(0, 512, c.shape), c)
            with torch.no_grad():
                img = ((vq.decode_code(c) + 1) / 2).clamp(0, 1)
                img = torch.round(img * 255) / 255
            z2 = F.normalize(vq.latents(img * 2 - 1).permute(0, 2, 3, 1).reshape(-1, z.shape[1]), dim=-1)
            loss = loss + 0.1 * F.cross_entropy(z2 @ vq.quantize.codebook().T / 0.05, c.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        usage[codes.detach()] = step
        if not args.freeze_codebook and step % 20 == 0 and step <= args.vq_steps - 100:    # restart codes unused for 40 steps on live latents
            dead = (step - usage > 40).nonzero().flatten()
            if len(dead):
                pick = zf.detach()[torch.randint(0, len(zf), (len(dead),))]
                with torch.no_grad():
                    vq.quantize.embedding.weight[dead] = F.normalize(pick + 0.01 * torch.randn_like(pick), dim=-1)
                usage[dead] = step
                restarts += len(dead)
        if step % 50 == 0:
            print(f"vq step {step} loss {loss.item():.4f} ({time.time() - t0:.0f} s)", file=sys.stderr)
    vq_steps, vq_wall = step, time.time() - t0
    vq.eval()
    tok = lg.LlamaGenTokenizer(vq, image_size=64, digest="0" * 64)
    with torch.no_grad():
        codes_val = tok.encode(x_val)
        dec = tok.decode(codes_val)
        val_psnr = psnr(dec, x_val)
        rt = (tok.encode(torch.round(dec * 255) / 255) == codes_val).float().mean().item()
        rand = torch.randint(0, 512, codes_val.shape)
        rt_rand = (tok.encode(torch.round(tok.decode(rand) * 255) / 255) == rand).float().mean().item()
        used = int(torch.unique(codes_val).numel())
        distinct = float(np.median([torch.unique(c).numel() for c in codes_val]))
    print(f"VQ: PSNR {val_psnr:.2f} dB, round trip {rt:.3f} (random maps {rt_rand:.3f}), codes used {used}",
          file=sys.stderr)

    # ---- GPT on the VQ's codes, class = background
    with torch.no_grad():
        codes_train = torch.cat([tok.encode(x_train[i:i + 64]) for i in range(0, len(x_train), 64)]).flatten(1)
    gpt = lg.Transformer(lg.GPTArgs(dim=64, n_layer=2, n_head=4, ffn_hidden=lg.ffn_hidden_size(64, 32),
                                    num_classes=9, vocab_size=512, block_size=256))
    opt = torch.optim.AdamW(gpt.parameters(), lr=3e-3, weight_decay=0.0)
    gstep, t1 = 0, time.time()
    while gstep < args.gpt_steps:
        idx = torch.randint(0, len(codes_train), (args.batch,))
        y = y_train[idx].clone()
        y[torch.rand(len(y)) < 0.1] = 9                     # null class for guidance
        logits = gpt.teacher_logits(y, codes_train[idx])
        loss = F.cross_entropy(logits.reshape(-1, 512), codes_train[idx].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        gstep += 1
        if gstep % 100 == 0:
            print(f"gpt step {gstep} loss {loss.item():.3f} ({time.time() - t1:.0f} s)", file=sys.stderr)
    gpt_wall = time.time() - t1
    gpt.eval()

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for module, name in ((vq, "vq_tiny.pt"), (gpt, "c2i_tiny_64.pt")):
        state = module.state_dict()
        if args.fp16_weights:                # halves the files; loading casts back to float32
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        torch.save({"model": state}, out / name)
    (out / "llamagen.json").write_text(json.dumps({"n_head": 4, "image_size": 64, "cfg": 2.0, "top_k": None},
                                                  indent=2) + "\n")
    card = {
        "what": "tiny LlamaGen-architecture VQ + c2i GPT trained on guard's reference scenes (shapes-v2, 64 px)",
        "command": "OMP_NUM_THREADS=1 python bench/train_llamagen_tiny.py " + " ".join(sys.argv[1:]),
        "seed": args.seed, "n_train_scenes": args.n_train, "batch": args.batch, "crop": args.crop, "lr": args.lr,
        "freeze_codebook": args.freeze_codebook, "entropy": args.entropy,
        "vq": {"steps": vq_steps, "wall_s": round(vq_wall), "codebook": 512, "grid": [16, 16], "code_restarts": restarts,
               "val_psnr_db": round(val_psnr, 2), "round_trip_val": round(rt, 4), "round_trip_random_maps":
               round(rt_rand, 4), "codes_used_val": used, "median_distinct_codes_per_image": distinct},
        "gpt": {"steps": gstep, "wall_s": round(gpt_wall), "final_loss": round(float(loss), 3),
                "classes": "reference backgrounds (0..8), 9 = null"},
        "render_s": round(t_data), "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
