"""Train a tiny LlamaGen-architecture VQ and c2i GPT on reference scenes (CPU, one thread, a few minutes).

    OMP_NUM_THREADS=1 python bench/train_llamagen_tiny.py --out /tmp/ck1 --vq-steps 600 --crop 32 --batch 4 \
        --freeze-codebook --entropy 0.1 --idem-start 0 --idem-every 1 --idem-weight 1 --idem-sub 0.3 \
        --idem-random 0.5 --idem-decoder --gpt-steps 0 --seed 0 --ckpt-dir /tmp/ck1
    OMP_NUM_THREADS=1 python bench/train_llamagen_tiny.py --out guard/models/weights/llamagen-tiny \
        --init-vq /tmp/ck1/vq_stage1.pt --vq-steps 500 (same stage-1 options) --encoder-ft-steps 400 \
        --encoder-ft-batch 6 --gpt-steps 1500 --fp16-weights --seed 0

(the shipped llamagen:tiny; its card.json has the exact commands). It exists so that generate -> PNG -> detect
can be shown through the llamagen adapter's own code path (`guard.models.llamagen`) with a VQ that re-encodes
its own images, which a random VQ does not. The architecture is LlamaGen's (`VQModel`, `Transformer`, official
parameter names) at tiny width: VQ ch 32, ch_mult [1, 1, 2] (factor 4: 64 px -> 16x16 tokens; the released
VQ-16 has 5 levels, factor 16), one residual block per level, `--codebook` (512) L2-normalised codes of dim 8;
GPT dim 64, 2 layers, 4 heads, c2i over the 9 reference backgrounds.

Stage 1 (VQ): L1 + MSE reconstruction on crops, codebook and commitment terms (beta 0.25), LlamaGen's entropy
loss (`--entropy`, softmax temperature 0.01) against codebook collapse, dead codes restarted on live latents
(unless `--freeze-codebook`), and an idempotence term (decode -> 8-bit round -> encode must give back the codes;
cross-entropy over cosine logits, temperature 0.05) on scene codes with `--idem-sub` of them replaced at random
and `--idem-random` of the maps uniform random; with `--idem-decoder` it trains the decoder too (rounding
straight-through), so that codes decode to pixels the encoder can tell apart.
Stage 2 (`--encoder-ft-steps`): only the encoder and quant_conv learn, decoder / post_quant_conv / codebook
frozen: cross-entropy over cosine logits on 8-bit decodings of full 16x16 maps (scene codes, scene codes with
`--encoder-ft-sub` random, uniform random, and `--encoder-ft-blocky` of blocky maps), so the encoder becomes a
left inverse of the decoder over the code space. GPT: next-code cross-entropy on the final encoder's codes.
`--init-vq` resumes from a VQ file (e.g. `--ckpt-dir`'s vq_stage1.pt / vq_stage2.pt).
Writes `vq_tiny.pt` and `c2i_tiny_64.pt` ({"model": state_dict}, the official layout), `llamagen.json`
and `card.json` (command, seed, steps, wall times, PSNR, round-trip agreement on held-out scenes, scenes with
30% random codes, uniform random maps, and the GPT's own samples).
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


def save_official(module: torch.nn.Module, path: Path, *, fp16: bool) -> None:
    """{"model": state_dict}, the official checkpoint layout (float16 halves the file; loading casts back)."""
    state = module.state_dict()
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, path)


@torch.no_grad()
def evaluate_vq(tok, x_val: torch.Tensor, V: int, seed: int) -> dict:
    """PSNR and round-trip agreement (decode -> 8-bit -> encode) on held-out scenes and uniform random maps."""
    codes_val = tok.encode(x_val)
    dec = tok.decode(codes_val)
    g = torch.Generator().manual_seed(seed + 99)
    rand = torch.randint(0, V, codes_val.shape, generator=g)
    sub = torch.where(torch.rand(codes_val.shape, generator=g) < 0.3,
                      torch.randint(0, V, codes_val.shape, generator=g), codes_val)

    def rt(c: torch.Tensor) -> float:
        return round(float((tok.encode(torch.round(tok.decode(c) * 255) / 255) == c).float().mean()), 4)

    return {"val_psnr_db": round(psnr(dec, x_val), 2), "round_trip_val": rt(codes_val),
            "round_trip_val_30pct_random": rt(sub), "round_trip_random_maps": rt(rand),
            "codes_used_val": int(torch.unique(codes_val).numel()),
            "median_distinct_codes_per_image": float(np.median([torch.unique(c).numel() for c in codes_val]))}


def encoder_finetune(vq, x_train: torch.Tensor, V: int, args) -> tuple[int, float]:
    """Stage 2: only the encoder and quant_conv learn; decoder, post_quant_conv and codebook are frozen.

    Each step draws full 16x16 code maps, a third each: codes of training scenes (the current encoder's), the
    same with --encoder-ft-sub of them replaced by uniform random codes, and uniform random maps; decodes them
    with the frozen decoder, clamps and rounds to 8 bits (a saved PNG), and trains the encoder by
    cross-entropy over cosine logits (codes as classes, temperature --encoder-ft-tau) to read the codes back.
    The decoder, and so every picture any code map makes, is unchanged.
    """
    for m in (vq.decoder, vq.post_quant_conv, vq.quantize):
        m.requires_grad_(False)
    params = list(vq.encoder.parameters()) + list(vq.quant_conv.parameters())
    opt = torch.optim.Adam(params, lr=args.encoder_ft_lr)
    g = torch.Generator().manual_seed(args.seed + 2)
    book = vq.quantize.codebook().detach()
    b = args.encoder_ft_batch
    t0, step, recent = time.time(), 0, []
    vq.train()
    while step < args.encoder_ft_steps:
        lr = args.encoder_ft_lr * 0.5 * (1 + math.cos(math.pi * step / args.encoder_ft_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        n_block = round(b * args.encoder_ft_blocky)
        n_scene = (b - n_block) // 3
        n_sub = (b - n_block) // 3
        n_rand = b - n_block - n_scene - n_sub
        idx = torch.randint(0, len(x_train), (n_scene + n_sub,), generator=g)
        with torch.no_grad():
            x = x_train[idx]
            flip = torch.rand(len(x), generator=g) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            c_scene = vq.quantize.indices(vq.latents(x * 2 - 1))
            swap = torch.rand(c_scene[n_scene:].shape, generator=g) < args.encoder_ft_sub
            c_sub = torch.where(swap, torch.randint(0, V, swap.shape, generator=g), c_scene[n_scene:])
            c_rand = torch.randint(0, V, (n_rand, 16, 16), generator=g)
            blocks = []
            for _ in range(n_block):       # flat regions of any code (what a sampler that repeats a code draws)
                k = [2, 4, 8, 16][int(torch.randint(0, 4, (1,), generator=g))]
                m = torch.randint(0, V, (16 // k, 16 // k), generator=g).repeat_interleave(k, 0).repeat_interleave(k, 1)
                swap_b = torch.rand(m.shape, generator=g) < args.encoder_ft_sub / 2
                blocks.append(torch.where(swap_b, torch.randint(0, V, m.shape, generator=g), m))
            c = torch.cat([c_scene[:n_scene], c_sub, c_rand, *(x[None] for x in blocks)])
            img = ((vq.decode_code(c) + 1) / 2).clamp(0, 1)
            img = torch.round(img * 255) / 255
        z = vq.latents(img * 2 - 1)
        zf = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), dim=-1)
        logits = zf @ book.T / args.encoder_ft_tau
        loss = F.cross_entropy(logits, c.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        with torch.no_grad():
            hit = (logits.argmax(1) == c.flatten()).float().view(b, -1).mean(1)
        e = np.cumsum([0, n_scene, n_sub, n_rand, n_block])
        recent = (recent + [[loss.item()] + [float(hit[e[i]:e[i + 1]].mean()) if e[i + 1] > e[i] else float("nan")
                                             for i in range(4)]])[-25:]
        if step % 25 == 0:
            m = np.mean(recent, 0)
            print(f"encoder-ft step {step} loss {m[0]:.3f} agree scene {m[1]:.3f} sub {m[2]:.3f} random {m[3]:.3f} "
                  f"blocky {m[4]:.3f} lr {lr:.1e} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    vq.eval()
    for m in (vq.decoder, vq.post_quant_conv):
        m.requires_grad_(True)
    return step, time.time() - t0


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
    ap.add_argument("--codebook", type=int, default=512, help="codebook size (codes of dim 8)")
    ap.add_argument("--idem-weight", type=float, default=0.1, help="stage 1 idempotence weight")
    ap.add_argument("--idem-start", type=float, default=1 / 3, help="stage 1 idempotence from this share of steps")
    ap.add_argument("--idem-every", type=int, default=2, help="stage 1 idempotence every N steps")
    ap.add_argument("--idem-sub", type=float, default=0.2, help="stage 1 idempotence: share of codes substituted")
    ap.add_argument("--idem-random", type=float, default=0.0,
                    help="stage 1 idempotence: share of the maps replaced by uniform random code maps")
    ap.add_argument("--idem-decoder", action="store_true",
                    help="stage 1 idempotence trains the decoder too (8-bit rounding straight-through), so that "
                         "codes decode to pixels the encoder can tell apart")
    ap.add_argument("--init-vq", type=Path, default=None,
                    help="start from this official-layout VQ file ({'model': state_dict}) instead of a random VQ")
    ap.add_argument("--ckpt-dir", type=Path, default=None,
                    help="write the VQ after each stage here (vq_stage1.pt, vq_stage2.pt) so a long run can resume "
                         "with --init-vq")
    ap.add_argument("--encoder-ft-steps", type=int, default=0,
                    help="stage 2: steps fine-tuning only the encoder (+ quant_conv), decoder and codebook frozen, "
                         "to read back 8-bit decodings of scene, substituted and uniform random code maps")
    ap.add_argument("--encoder-ft-batch", type=int, default=8, help="stage 2 code maps per step (full 16x16 maps)")
    ap.add_argument("--encoder-ft-lr", type=float, default=1e-3, help="stage 2 learning rate (cosine decay)")
    ap.add_argument("--encoder-ft-sub", type=float, default=0.3,
                    help="stage 2: share of codes replaced at random in the substituted scene maps")
    ap.add_argument("--encoder-ft-blocky", type=float, default=0.0,
                    help="stage 2: share of the maps that are blocky (random codes on a 2/4/8/16-token grid, "
                         "half the --encoder-ft-sub substitutions): flat regions of any code")
    ap.add_argument("--encoder-ft-tau", type=float, default=0.05, help="stage 2: temperature of the cosine logits")
    ap.add_argument("--gpt-lr", type=float, default=3e-3)
    ap.add_argument("--eval-gpt-samples", type=int, default=16,
                    help="GPT samples (c2i, the shipped sampling defaults) whose decode -> 8-bit -> encode "
                         "agreement goes on the card")
    args = ap.parse_args()

    from guard.models import llamagen as lg

    torch.set_num_threads(1)                  # the card's wall times are one-thread figures
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

    V = args.codebook
    vq = lg.VQModel(lg.VQArgs(codebook_size=V, codebook_embed_dim=8, encoder_ch_mult=[1, 1, 2],
                              decoder_ch_mult=[1, 1, 2], z_channels=32, ch=32, num_res_blocks=1))
    if args.init_vq is not None:            # resume: an official-layout VQ file (e.g. a --ckpt-dir stage file)
        state = torch.load(args.init_vq, map_location="cpu", weights_only=True)["model"]
        vq.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        print(f"VQ initialised from {args.init_vq}", file=sys.stderr)
    if args.freeze_codebook:                               # a fixed, well-spread codebook cannot collapse
        g = torch.Generator().manual_seed(args.seed)
        if args.init_vq is None:                           # (a resumed VQ keeps its own codebook)
            with torch.no_grad():
                vq.quantize.embedding.weight.copy_(F.normalize(torch.randn(V, 8, generator=g), dim=-1))
        vq.quantize.embedding.weight.requires_grad_(False)
    opt = torch.optim.Adam([p for p in vq.parameters() if p.requires_grad], lr=args.lr)
    step, t0 = 0, time.time()
    usage = torch.zeros(V, dtype=torch.long)                # last step each code was chosen
    restarts, idem_hits = 0, []
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
        if step >= int(args.vq_steps * args.idem_start) and step % args.idem_every == 0:  # idempotence
            c = codes.view(z.shape[0], z.shape[2], z.shape[3]).detach()
            swap = torch.rand(c.shape) < args.idem_sub
            c = torch.where(swap, torch.randint(0, V, c.shape), c)
            n_rand = round(len(c) * args.idem_random)
            if n_rand:                                     # whole maps of uniform random codes (a weak GPT's)
                c = torch.cat([torch.randint(0, V, (n_rand, *c.shape[1:])), c[n_rand:]])
            with torch.set_grad_enabled(args.idem_decoder):  # --idem-decoder: the decoder learns distinct codes
                img = ((vq.decode_code(c) + 1) / 2).clamp(0, 1)
                img = img + (torch.round(img * 255) / 255 - img).detach()     # 8-bit, straight-through
            z2 = F.normalize(vq.latents(img * 2 - 1).permute(0, 2, 3, 1).reshape(-1, z.shape[1]), dim=-1)
            l2 = z2 @ vq.quantize.codebook().T / 0.05
            loss = loss + args.idem_weight * F.cross_entropy(l2, c.flatten())
            idem_hits = (idem_hits + [float((l2.argmax(1) == c.flatten()).float().mean())])[-50:]
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
            print(f"vq step {step} loss {loss.item():.4f} idem agree {np.mean(idem_hits) if idem_hits else 0:.3f} "
                  f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    vq_steps, vq_wall = step, time.time() - t0
    if args.ckpt_dir is not None and vq_steps:
        save_official(vq, args.ckpt_dir / "vq_stage1.pt", fp16=False)
    vq.eval()
    tok = lg.LlamaGenTokenizer(vq, image_size=64, digest="0" * 64)
    stage1_eval = evaluate_vq(tok, x_val, V, args.seed)
    print(f"VQ stage 1: {stage1_eval}", file=sys.stderr)

    # ---- stage 2: the encoder becomes a left inverse of the (frozen) decoder over the whole code space
    ft_steps, ft_wall = 0, 0.0
    if args.encoder_ft_steps > 0:
        ft_steps, ft_wall = encoder_finetune(vq, x_train, V, args)
        if args.ckpt_dir is not None:
            save_official(vq, args.ckpt_dir / "vq_stage2.pt", fp16=False)
    vq.eval()
    if args.fp16_weights:       # evaluate (and train the GPT on) exactly the weights that are shipped
        with torch.no_grad():
            for t in vq.state_dict().values():
                if t.is_floating_point():
                    t.copy_(t.half().float())
    tok = lg.LlamaGenTokenizer(vq, image_size=64, digest="0" * 64)
    final_eval = evaluate_vq(tok, x_val, V, args.seed)
    print(f"VQ final: {final_eval}", file=sys.stderr)

    # ---- GPT on the VQ's codes, class = background
    with torch.no_grad():
        codes_train = torch.cat([tok.encode(x_train[i:i + 64]) for i in range(0, len(x_train), 64)]).flatten(1)
    gpt = lg.Transformer(lg.GPTArgs(dim=64, n_layer=2, n_head=4, ffn_hidden=lg.ffn_hidden_size(64, 32),
                                    num_classes=9, vocab_size=V, block_size=256))
    opt = torch.optim.AdamW(gpt.parameters(), lr=args.gpt_lr, weight_decay=0.0)
    gstep, t1, recent = 0, time.time(), []
    while gstep < args.gpt_steps:
        idx = torch.randint(0, len(codes_train), (args.batch,))
        y = y_train[idx].clone()
        y[torch.rand(len(y)) < 0.1] = 9                     # null class for guidance
        logits = gpt.teacher_logits(y, codes_train[idx])
        loss = F.cross_entropy(logits.reshape(-1, V), codes_train[idx].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        gstep += 1
        recent = (recent + [loss.item()])[-50:]
        if gstep % 100 == 0:
            print(f"gpt step {gstep} loss {np.mean(recent):.3f} ({time.time() - t1:.0f} s)", file=sys.stderr)
    gpt_wall = time.time() - t1
    gpt.eval()
    sampling = {"n_head": 4, "image_size": 64, "cfg": 2.0, "top_k": None}
    gpt_rt = None
    if args.eval_gpt_samples > 0:      # the maps the GPT actually draws, through decode -> 8-bit -> encode
        gen = lg.LlamaGenGenerator(gpt, tok, "llamagen:train", defaults={**lg.DEFAULTS["c2i"], **sampling})
        with torch.no_grad():
            drawn = gen.generate([str(i % 9) for i in range(args.eval_gpt_samples)], seed=args.seed + 7)
            back = tok.encode(torch.round(tok.decode(drawn) * 255) / 255)
        gpt_rt = round(float((back == drawn).float().mean()), 4)
        print(f"GPT samples: round trip {gpt_rt}, median distinct codes "
              f"{float(np.median([torch.unique(c).numel() for c in drawn]))}", file=sys.stderr)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    save_official(vq, out / "vq_tiny.pt", fp16=args.fp16_weights)
    save_official(gpt, out / "c2i_tiny_64.pt", fp16=args.fp16_weights)
    (out / "llamagen.json").write_text(json.dumps(sampling, indent=2) + "\n")
    card = {
        "what": "tiny LlamaGen-architecture VQ + c2i GPT trained on guard's reference scenes (shapes-v2, 64 px)",
        "command": "OMP_NUM_THREADS=1 python bench/train_llamagen_tiny.py " + " ".join(sys.argv[1:]),
        "seed": args.seed, "n_train_scenes": args.n_train, "batch": args.batch, "crop": args.crop, "lr": args.lr,
        "freeze_codebook": args.freeze_codebook, "entropy": args.entropy, "fp16_weights": args.fp16_weights,
        "init_vq": str(args.init_vq) if args.init_vq else None,
        "vq": {"codebook": V, "grid": [16, 16], "code_dim": 8,
               "stage1": {"steps": vq_steps, "wall_s": round(vq_wall), "code_restarts": restarts, **stage1_eval},
               "stage2_encoder_ft": {"steps": ft_steps, "wall_s": round(ft_wall), "batch": args.encoder_ft_batch,
                                     "lr": args.encoder_ft_lr, "sub": args.encoder_ft_sub, "tau": args.encoder_ft_tau,
                                     "frozen": "decoder, post_quant_conv, codebook"},
               "final": final_eval},
        "gpt": {"steps": gstep, "wall_s": round(gpt_wall), "final_loss_mean50": round(float(np.mean(recent)), 3)
                if recent else None, "lr": args.gpt_lr, "classes": "reference backgrounds (0..8), 9 = null",
                "round_trip_samples": gpt_rt, "n_samples": args.eval_gpt_samples},
        "render_s": round(t_data), "total_wall_s": round(time.time() - t_start), "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
