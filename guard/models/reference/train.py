"""Train the reference generator's components on CPU, seeded and logged.

    python -m guard.models.reference.train vq --steps 3000 --out guard/models/reference/weights
    python -m guard.models.reference.train classifier --steps 1500
    python -m guard.models.reference.train gpt --steps 3000
    python -m guard.models.reference.train encoder      # stage 2: the VQ's encoder, decoder frozen (wmar)
    python -m guard.models.reference.train all          # vq, classifier, tokens, gpt, encoder

Each component writes `<name>.safetensors` plus its section of `card.json` (command, seed, data
version, metrics, wall time) into `--out`; checkpoints go to `--workdir` every `--ckpt-every` steps.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .data import HELDOUT_SEED_BASE, cached_dataset
from .shapes import DATA_VERSION

DEFAULT_OUT = Path(__file__).parent / "weights"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def to_float(imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(255.0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0,1]."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def lr_at(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def update_card(out: Path, name: str, section: dict) -> None:
    path = out / "card.json"
    card = json.loads(path.read_text()) if path.exists() else {"data_version": DATA_VERSION, "components": {}}
    card["components"][name] = section
    card["files"] = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(out.glob("*.safetensors"))}
    path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------- VQ
def vq_config_from_card(out: Path):
    """The VQ config recorded in `out/card.json` (the default cosine config for cards without one)."""
    from .vq import VQConfig

    path = Path(out) / "card.json"
    cfg = json.loads(path.read_text()).get("components", {}).get("vq", {}).get("config") if path.exists() else None
    return VQConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}) if cfg else VQConfig()


def load_trained_vq(out: Path):
    from .vq import VQModel

    vq = VQModel(vq_config_from_card(out))
    vq.load_state_dict(load_file(str(Path(out) / "vq.safetensors")))
    return vq.eval()


def uint8_roundtrip(x: torch.Tensor) -> torch.Tensor:
    """Straight-through rounding to 8-bit levels, as saving a PNG does."""
    return x + ((x.clamp(0, 1) * 255).round() / 255 - x).detach()


@torch.no_grad()
def eval_vq(model, imgs: torch.Tensor, batch: int = 250) -> dict:
    model.eval()
    ps, agree, sub, used = [], [], [], torch.zeros(model.cfg.codebook_size, dtype=torch.bool)
    for i in range(0, len(imgs), batch):
        x = imgs[i:i + batch]
        idx = model.encode(x)
        rec = model.decode(idx)
        ps.append(psnr((rec * 255).round() / 255, x))
        idx2 = model.encode((rec * 255).round() / 255)
        agree.append((idx2 == idx).float().flatten(1).mean(1))
        used[idx.flatten()] = True
        # Off-distribution maps like a sampler makes: 30% of positions replaced by uniform random codes.
        g = torch.Generator().manual_seed(i)
        swap = torch.rand(idx.shape, generator=g) < 0.3
        mixed = torch.where(swap, torch.randint(0, model.cfg.codebook_size, idx.shape, generator=g), idx)
        again = model.encode((model.decode(mixed) * 255).round() / 255)
        sub.append((again == mixed).float().flatten(1).mean(1))
    model.train()
    return {"psnr_db": float(torch.cat(ps).mean()), "roundtrip_agreement": float(torch.cat(agree).mean()),
            "roundtrip_agreement_30pct_random": float(torch.cat(sub).mean()), "codes_used": int(used.sum())}


def train_vq(args) -> None:
    from .vq import VQConfig, VQModel

    torch.manual_seed(args.seed)
    t0 = time.time()
    imgs, _, _ = cached_dataset(args.workdir, 0, args.n_train, "train")
    test, _, _ = cached_dataset(args.workdir, HELDOUT_SEED_BASE, 1000, "any")
    x_all, x_test = torch.from_numpy(imgs), to_float(test)
    log(f"vq: data {len(imgs)} train / {len(test)} held-out rendered in {time.time() - t0:.0f}s")
    channels = tuple(int(c) for c in args.channels.split(","))
    model = VQModel(VQConfig.fsq(tuple(int(v) for v in args.levels.split(",")), channels=channels)
                    if args.quantizer == "fsq" else VQConfig(channels=channels))
    if args.init:
        state, own = load_file(str(args.init)), model.state_dict()
        keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(keep, strict=False)
        log(f"vq: initialised {len(keep)}/{len(own)} tensors from {args.init} (shape mismatches re-initialised)")
    if args.freeze_encoder:
        if not (args.init and model.is_fsq):
            raise SystemExit("--freeze-encoder fine-tunes the decoder of a trained FSQ VQ: give --init and --quantizer fsq")
        # The encoder (and so every code of every scene, and the GPT's training tokens) stays exactly as it
        # is; the decoder learns sharper pictures and pictures the frozen encoder reads back after saving.
        model.encoder.requires_grad_(False)
        log("vq: encoder frozen (decoder fine-tuning; codes of every image unchanged)")
    if args.freeze_decoder:
        if not (args.init and model.is_fsq) or args.freeze_encoder:
            raise SystemExit("--freeze-decoder fine-tunes the encoder of a trained FSQ VQ: give --init and --quantizer "
                             "fsq, without --freeze-encoder")
        # wmar's recipe: the decoder (and so every picture a GPT trained on its codes makes) stays exactly as it
        # is; the encoder learns to read those pictures back after saving and editing.
        model.decoder.requires_grad_(False)
        log("vq: decoder frozen (encoder fine-tuning; every generated picture unchanged)")
    if model.is_fsq:
        return _train_vq_fsq(args, model, x_all, x_test, t0)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(args.seed)
    usage = torch.zeros(model.cfg.codebook_size)
    idem_start = int(args.steps * (1 - args.idem_frac))
    last = min(args.steps, args.stop_after or args.steps)
    for step in range(last):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr)
        if step == idem_start:
            # Phase 2: idempotence with a frozen assignment. A frozen copy of the encoder fixes which
            # code each real patch gets (so the code assignment cannot collapse: training the encoder
            # freely raised agreement but cut the codes in use 977 -> 159); the trainable encoder must
            # reproduce it on real images and recover it from decoded images; the codebook is frozen.
            import copy

            frozen_encoder = copy.deepcopy(model.encoder).eval().requires_grad_(False)
            model.codebook.requires_grad_(False)
            opt = torch.optim.Adam(list(model.encoder.parameters()) + list(model.decoder.parameters()),
                                   lr=args.lr, betas=(0.9, 0.99))
            log(f"vq step {step}: phase 2 (idempotence, assignment frozen)")
        sel = torch.randint(0, len(x_all), (args.batch,), generator=gen)
        x = x_all[sel].permute(0, 3, 1, 2).float().div(255.0)
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(3)
        idem = torch.zeros(())
        if step < idem_start:
            rec, idx, vq_loss, z = model(x)
            loss = F.mse_loss(rec, x) + 0.2 * (rec - x).abs().mean() + vq_loss
        else:
            codebook = model.normalized_codebook().detach()
            with torch.no_grad():
                z = F.normalize(frozen_encoder(x), dim=1)
                idx = torch.einsum("bdhw,vd->bhwv", z, codebook).argmax(-1)
                zq = codebook[idx].permute(0, 3, 1, 2)
            rec = model.decoder(zq)
            z1 = model.encode_latent(x)
            z2 = model.encode_latent(uint8_roundtrip(rec))
            target = idx.reshape(-1)
            ce_real = F.cross_entropy(torch.einsum("bdhw,vd->bhwv", z1, codebook).reshape(-1, len(codebook)) / args.tau, target)
            ce_round = F.cross_entropy(torch.einsum("bdhw,vd->bhwv", z2, codebook).reshape(-1, len(codebook)) / args.tau, target)
            idem = ce_real + ce_round + 10 * F.mse_loss(z2, zq)
            loss = F.mse_loss(rec, x) + 0.2 * (rec - x).abs().mean() + args.idem_weight * idem
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            usage.mul_(0.99).add_(torch.bincount(idx.flatten(), minlength=model.cfg.codebook_size).float())
            if step % args.restart_every == 0 and 0 < step < idem_start:
                dead = (usage < 0.03).nonzero().flatten()
                if len(dead):
                    zf = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                    pick = zf[torch.randint(0, len(zf), (len(dead),), generator=gen)]
                    model.codebook.data[dead] = F.normalize(pick + 0.01 * torch.randn_like(pick), dim=-1)
                    usage[dead] = 1.0
                    log(f"vq step {step}: restarted {len(dead)} dead codes")
        if step % args.log_every == 0 or step == last - 1:
            with torch.no_grad():
                p = psnr(rec.clamp(0, 1), x).mean()
            log(f"vq step {step}/{args.steps} loss {loss.item():.4f} psnr {p:.2f} idem {idem.item():.3f} "
                f"alive {(usage > 0.03).sum().item()} lr {opt.param_groups[0]['lr']:.2e} {time.time() - t0:.0f}s")
        _vq_checkpoint(args, model, x_test, step)
    _finish_vq(args, model, x_test, t0, {})


def _vq_checkpoint(args, model, x_test: torch.Tensor, step: int) -> None:
    if (step + 1) % args.ckpt_every == 0:
        save_file(model.state_dict(), str(Path(args.workdir) / f"vq.step{step + 1}.safetensors"))
        log(f"vq eval step {step + 1}: {eval_vq(model, x_test[:300])}")


def _finish_vq(args, model, x_test: torch.Tensor, t0: float, extra: dict) -> None:
    """Final held-out evaluation, the shipped weights and the card section (both quantisers)."""
    metrics = eval_vq(model, x_test)
    log(f"vq final held-out: {metrics}")
    save_file(model.state_dict(), str(Path(args.out) / "vq.safetensors"))
    update_card(Path(args.out), "vq", {
        "command": " ".join(["python -m guard.models.reference.train"] + sys.argv[1:]),
        "seed": args.seed, "config": model.cfg.to_dict(), "steps": args.steps, "stop_after": args.stop_after,
        "batch": args.batch, "n_train": args.n_train, "lr": args.lr, "init": str(args.init) if args.init else None,
        **extra, "metrics_heldout_1000": metrics, "wall_time_s": round(time.time() - t0, 1),
    })


def _jpeg_ste(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Real JPEG (PIL) in the forward pass, identity gradient (straight-through)."""
    import io

    from PIL import Image

    out = []
    for img, q in zip(x.detach().clamp(0, 1), quality.tolist()):
        buf = io.BytesIO()
        Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).save(buf, format="JPEG", quality=int(q))
        buf.seek(0)
        out.append(torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()))
    y = torch.stack(out).permute(0, 3, 1, 2).float() / 255.0
    return x + (y - x).detach()


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with a per-image sigma (pixels), 9x9 kernel, replicate padding."""
    t = torch.arange(-4, 5, dtype=x.dtype)
    k = torch.exp(-t[None, :] ** 2 / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # (B, 9)
    b, c, h, w = x.shape
    y = F.pad(x, (4, 4, 4, 4), mode="replicate").reshape(1, b * c, h + 8, w + 8)
    kh = k.repeat_interleave(c, 0)
    y = F.conv2d(y, kh.view(b * c, 1, 1, 9), groups=b * c)
    y = F.conv2d(y, kh.view(b * c, 1, 9, 1), groups=b * c)
    return y.view(b, c, h, w)


@dataclass(frozen=True)
class AugmentMix:
    """Per image one of clean / noise / JPEG / blur / brightness / contrast / down-up resize, drawn with these
    integer weights, at uniformly drawn strengths in these ranges; optionally a second JPEG save."""
    weights: tuple[int, int, int, int, int, int, int]  # clean, noise, jpeg, blur, brightness, contrast, resize
    noise: tuple[float, float]
    jpeg: tuple[int, int]  # quality, high end exclusive
    blur: tuple[float, float]
    brightness: tuple[float, float]
    contrast: tuple[float, float]
    resize: tuple[int, int]  # px, high end exclusive
    rejpeg: float = 0.0  # share of noise/JPEG(…)/blur/… images saved once more as JPEG quality 50-95


# What happens to a saved and shared image (stage 1's idempotence, stage 2's --aug mild): clean 40%, noise
# sigma 0.005-0.08, JPEG 25-95, blur sigma 0.3-1.5, brightness x0.6-1.6 (clipped), resize to 40-60 px and back.
MILD = AugmentMix((4, 1, 2, 1, 1, 0, 1), (0.005, 0.08), (25, 96), (0.3, 1.5), (0.6, 1.6), (1.0, 1.0), (40, 61))
# The evaluation's attacks at and past their reported strengths (wmar "FT+Augs", --aug attacks): clean 25%,
# noise up to 0.13, JPEG >= 20, blur sigma up to 2.0 (torchvision's default for kernel 9 is 1.7), brightness
# x0.5-2.2, contrast x0.5-1.8, resize to 32-60 px; half of the noise/blur/brightness/contrast/resize images
# are saved once more as JPEG.
ATTACKS = AugmentMix((5, 3, 4, 3, 2, 1, 2), (0.01, 0.13), (20, 96), (0.4, 2.0), (0.5, 2.2), (0.5, 1.8), (32, 61),
                     rejpeg=0.5)


def _mixed_augment(x: torch.Tensor, gen: torch.Generator, mix: AugmentMix) -> torch.Tensor:
    """Always 8-bit rounding, then one attack of `mix` per image (see `AugmentMix`), then 8-bit rounding."""
    x = uint8_roundtrip(x)
    b = len(x)
    edges = torch.tensor(mix.weights).cumsum(0)
    kind = torch.randint(0, int(edges[-1]), (b,), generator=gen)
    u = lambda lo, hi: torch.empty(b, 1, 1, 1).uniform_(lo, hi, generator=gen)  # noqa: E731
    noise = x + torch.randn(x.shape, generator=gen) * u(*mix.noise)
    blur = _blur(x, u(*mix.blur).flatten())
    bright = x * u(*mix.brightness)
    if mix.weights[5]:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        contrast = mean + (x - mean) * u(*mix.contrast)
    else:
        contrast = x
    jpeg = _jpeg_ste(x, torch.randint(*mix.jpeg, (b,), generator=gen))
    size = int(torch.randint(*mix.resize, (), generator=gen))
    small = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    resized = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    lo = [0] + edges.tolist()[:-1]
    pick = lambda i: ((kind >= lo[i]) & (kind < int(edges[i]))).view(b, 1, 1, 1).float()  # noqa: E731
    out = sum(img * pick(i) for i, img in enumerate((x, noise, jpeg, blur, bright, contrast, resized)))
    out = uint8_roundtrip(out.clamp(0, 1))
    if mix.rejpeg:
        jpeg_kind = (kind >= lo[2]) & (kind < int(edges[2]))
        again = (torch.rand(b, generator=gen) < mix.rejpeg) & (kind >= lo[1]) & ~jpeg_kind
        if again.any():
            out = torch.where(again.view(b, 1, 1, 1), _jpeg_ste(out, torch.randint(50, 96, (b,), generator=gen)), out)
    return out


def _train_vq_fsq(args, model, x_all, x_test, t0) -> None:
    """FSQ VQ: reconstruction first, then reconstruction + idempotence.

    Idempotence phase (from step (1 - idem_frac) * steps): the targets are the encoder's own levels on
    real images with a fraction of positions (--sub-frac) replaced by uniform random codes, so that
    every code, in any context, must decode to pixels the encoder reads back (a sampler's token maps
    are not the encoder's); the decoded image goes through 8-bit rounding and mild saving noise
    (JPEG, noise, blur, brightness) and the encoder must land within --margin of the target level in
    every channel (squared hinge). Real encodings get the same margin so small pixel changes do not
    flip them. The codebook is the fixed FSQ grid: nothing can collapse onto a few codes.
    """
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=args.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(args.seed)
    anchor = None
    if args.anchor_encoder:
        if not args.init:
            raise SystemExit("--anchor-encoder fine-tunes a trained VQ: give --init")
        import copy

        # The codes of real images stay those of the --init encoder (the GPT's training tokens stay valid):
        # the trainable encoder is pulled to within --margin of the frozen copy's levels, with --anchor-weight.
        anchor = copy.deepcopy(model).eval().requires_grad_(False)
        log(f"vq: encoder anchored to the --init encoder's codes (weight {args.anchor_weight})")
    idem_start = int(args.steps * (1 - args.idem_frac))
    last = min(args.steps, args.stop_after or args.steps)
    usage = torch.zeros(model.cfg.codebook_size)
    lv = model.levels.view(1, -1, 1, 1)
    for step in range(last):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr)
        sel = torch.randint(0, len(x_all), (args.batch,), generator=gen)
        x = x_all[sel].permute(0, 3, 1, 2).float().div(255.0)
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(3)
        if args.crop:
            # Token-aligned random crops: the nets are convolutional, the losses local; 4x cheaper steps.
            oy, ox = (torch.randint(0, (64 - args.crop) // 4 + 1, (2,), generator=gen) * 4).tolist()
            x = x[:, :, oy:oy + args.crop, ox:ox + args.crop]
        q_anchor = None
        if args.rec_weight > 0 or not args.freeze_decoder:
            rec, idx, _, zb = model(x)
            rec_loss = args.rec_weight * (F.mse_loss(rec, x) + 0.2 * (rec - x).abs().mean())
        else:
            # Encoder fine-tuning without a reconstruction term: the real images only give targets (and the
            # anchor term); no backward pass through the frozen decoder.
            zb = model.bounded(x) if anchor is None or args.anchor_weight > 0 else None
            with torch.no_grad():
                if zb is None:
                    q_anchor = anchor.round_levels(anchor.bounded(x))
                idx = model.ids_of(model.round_levels(zb) if zb is not None else q_anchor)
                rec = model.decode(idx) if step % args.log_every == 0 or step == last - 1 else x
            rec_loss = torch.zeros(())
        idem = torch.zeros(())
        loss = rec_loss
        if step >= idem_start:
            if anchor is None:
                q_real = model.round_levels(zb).detach()
                commit = F.relu((zb - q_real).abs() - args.margin).pow(2).mean()
            else:
                with torch.no_grad():
                    q_real = q_anchor if q_anchor is not None else anchor.round_levels(anchor.bounded(x))
                commit = (args.anchor_weight * F.relu((zb - q_real).abs() - args.margin).pow(2).mean()
                          if zb is not None else torch.zeros(()))
            swap = torch.rand(q_real[:, :1].shape, generator=gen) < args.sub_frac
            rand_q = torch.floor(torch.rand(q_real.shape, generator=gen) * lv)
            q_t = torch.where(swap, rand_q, q_real)
            if args.nbr_frac:
                # One-step neighbours: one channel moved by one level, as a hard-mode sampler denied the
                # natural (red) code picks its green twin (DESIGN §8); the encoder must read it back.
                nb = (torch.rand(q_t[:, :1].shape, generator=gen) < args.nbr_frac) & ~swap
                ch = torch.randint(0, q_t.shape[1], nb.shape, generator=gen)
                step_ = torch.where(torch.rand(nb.shape, generator=gen) < 0.5, -1.0, 1.0)
                moved = q_t.gather(1, ch) + step_
                top = lv.expand_as(q_t).gather(1, ch) - 1
                moved = torch.where((moved < 0) | (moved > top), q_t.gather(1, ch) - step_, moved)
                q_t = torch.where(nb & (torch.arange(q_t.shape[1]).view(1, -1, 1, 1) == ch), moved.expand_as(q_t), q_t)
            with torch.set_grad_enabled(not args.freeze_decoder):
                decoded = model.decoder(model.levels_to_latent(q_t))
            img = _mixed_augment(decoded, gen, ATTACKS if args.aug == "attacks" else MILD)
            zb2 = model.bounded(img)
            dist = (zb2 - q_t).abs()
            hinge = F.relu(dist - args.margin).pow(2)
            if args.idem_clip:
                # Positions read more than --idem-clip levels off (an attack that erased them) pull nothing: a
                # squared loss on them would teach the encoder to hedge toward middle levels on every input.
                hinge = hinge * (dist < args.idem_clip).float()
            idem = hinge.mean()
            loss = rec_loss + args.idem_weight * (idem + commit)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            usage.mul_(0.99).add_(torch.bincount(idx.flatten(), minlength=model.cfg.codebook_size).float())
        if step % args.log_every == 0 or step == last - 1:
            with torch.no_grad():
                p = psnr(rec.clamp(0, 1), x).mean()
            log(f"vq step {step}/{args.steps} loss {loss.item():.4f} psnr {p:.2f} idem {idem.item():.4f} "
                f"in-use {(usage > 0.03).sum().item()} lr {opt.param_groups[0]['lr']:.2e} {time.time() - t0:.0f}s")
        _vq_checkpoint(args, model, x_test, step)
    _finish_vq(args, model, x_test, t0, {"crop": args.crop, "idem_frac": args.idem_frac, "idem_weight": args.idem_weight,
                                         "margin": args.margin, "sub_frac": args.sub_frac,
                                         "nbr_frac": args.nbr_frac, "freeze_encoder": args.freeze_encoder,
                                         "anchor_encoder": args.anchor_encoder, "anchor_weight": args.anchor_weight,
                                         "freeze_decoder": args.freeze_decoder, "aug": args.aug, "idem_clip": args.idem_clip,
                                         "rec_weight": args.rec_weight})


# ---------------------------------------------------------------------------------------- classifier
def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur and noise so the classifier also reads VQ-decoded (slightly soft) images."""
    b = len(x)
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    w = torch.rand(b, 1, 1, 1, generator=gen)
    x = x * (1 - w) + blurred * w
    x = x + torch.randn(x.shape, generator=gen) * 0.02 * torch.rand(b, 1, 1, 1, generator=gen)
    return x.clamp(0, 1)


def train_classifier(args) -> None:
    from .classifier import SceneClassifier
    from .vq import VQModel

    torch.manual_seed(args.seed)
    t0 = time.time()
    # The GPT's training scenes (one rendering for every component); held-out triples and pairs are judged
    # per quadrant from shape and colour alone, and the held-out evaluation below includes them.
    imgs, labels, _ = cached_dataset(args.workdir, 0, args.n_train, "train")
    test, test_labels, _ = cached_dataset(args.workdir, HELDOUT_SEED_BASE, 1000, "any")
    vq = None
    vq_path = Path(args.out) / "vq.safetensors"
    if vq_path.exists():
        vq = load_trained_vq(Path(args.out))
        log(f"classifier: one batch in {args.vq_every} goes through the VQ round trip")
    x_all, y_all = torch.from_numpy(imgs), torch.from_numpy(labels)
    model = SceneClassifier()
    if args.init:
        model.load_state_dict(load_file(str(args.init)))
        log(f"classifier: initialised from {args.init}")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr)
        sel = torch.randint(0, len(x_all), (args.batch,), generator=gen)
        x = x_all[sel].permute(0, 3, 1, 2).float().div(255.0)
        if vq is not None and step % args.vq_every == args.vq_every - 1:
            x = vq.decode(vq.encode(x))
        x = _augment(x, gen)
        loss = model.loss(x, y_all[sel])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            log(f"classifier step {step}/{args.steps} loss {loss.item():.4f} {time.time() - t0:.0f}s")
    model.eval()
    metrics = eval_classifier(model, to_float(test), torch.from_numpy(test_labels), vq)
    log(f"classifier held-out: {metrics}")
    save_file(model.state_dict(), str(Path(args.out) / "classifier.safetensors"))
    update_card(Path(args.out), "classifier", {
        "command": " ".join(["python -m guard.models.reference.train"] + sys.argv[1:]),
        "seed": args.seed, "steps": args.steps, "batch": args.batch, "n_train": args.n_train,
        "lr": args.lr, "init": str(args.init) if args.init else None, "metrics_heldout_1000": metrics, "wall_time_s": round(time.time() - t0, 1),
    })


@torch.no_grad()
def eval_classifier(model, x: torch.Tensor, labels: torch.Tensor, vq=None) -> dict:
    """Per-object accuracy of shape/colour/size and exact-scene accuracy on rendered (and VQ-decoded) scenes."""
    def score(imgs: torch.Tensor) -> dict:
        pred = torch.cat([model.predict(imgs[i:i + 250]) for i in range(0, len(imgs), 250)])
        present = labels[..., 0] > 0
        return {
            "shape_acc": float((pred[..., 0] == labels[..., 0])[present].float().mean()),
            "colour_acc": float((pred[..., 1] == labels[..., 1])[present].float().mean()),
            "size_acc": float((pred[..., 2] == labels[..., 2])[present].float().mean()),
            "empty_acc": float((pred[..., 0] == 0)[~present].float().mean()),
            "background_acc": float((pred[:, 0, 3] == labels[:, 0, 3]).float().mean()),
            "scene_exact": float(((pred[..., 0] == labels[..., 0]) & ((pred[..., 1] == labels[..., 1]) | ~present)).all(1).float().mean()),
        }
    out = {"rendered": score(x)}
    if vq is not None:
        out["vq_decoded"] = score(torch.cat([vq.decode(vq.encode(x[i:i + 250])) for i in range(0, len(x), 250)]))
    return out


# ----------------------------------------------------------------------------------------------- GPT
def make_tokens(args) -> None:
    """Encode the GPT's training scenes (held-out triples excluded) with the shipped VQ."""
    from .vq import VQModel

    t0 = time.time()
    imgs, labels, prompts = cached_dataset(args.workdir, 0, args.n_train, "train")
    if args.n_encode:
        imgs, labels, prompts = imgs[:args.n_encode], labels[:args.n_encode], prompts[:args.n_encode]
    vq = load_trained_vq(Path(args.out))
    parts = []
    for i in range(0, len(imgs), 500):
        parts.append(vq.encode(to_float(imgs[i:i + 500])))
        if (i // 500) % 10 == 9:
            log(f"tokens: {i + 500} of {len(imgs)} encoded, {time.time() - t0:.0f}s")
    codes = torch.cat(parts)
    path = Path(args.workdir) / "gpt_tokens.npz"
    # Codes, prompts and labels: all the GPT needs (a GPU machine trains from this one ~35 MB file).
    np.savez(path, codes=codes.numpy().astype(np.int16), prompts=np.array(prompts), labels=labels.astype(np.int8))
    # Codes the tokenizer really emits on the data (the stratified green lists split alive/dead codes).
    alive = torch.zeros(vq.cfg.codebook_size, dtype=torch.bool)
    alive[codes.flatten()] = True
    save_file({"alive": alive.to(torch.uint8)}, str(Path(args.out) / "vq_alive.safetensors"))
    update_card(Path(args.out), "vq_alive", {"n_alive": int(alive.sum()), "from": f"{len(codes)} training scenes"})
    log(f"tokens: {int(alive.sum())} of {vq.cfg.codebook_size} codes alive")
    log(f"tokens: {len(codes)} scenes encoded in {time.time() - t0:.0f}s -> {path}")


def object_token_weights(labels: np.ndarray, weight: float) -> torch.Tensor:
    """(N, 256) loss weights: `weight` on the tokens an object can cover, 1 elsewhere.

    From the per-quadrant labels (shape index + 1, colour, size): a disc of the object's radius plus its
    centre jitter and one token of margin around the quadrant's nominal centre. The background textures
    are unpredictable from the prompt and dominate the plain loss; this puts the gradient on the objects.
    """
    from .shapes import CENTRES, JITTER, POSITIONS, RADII, SIZES

    grid = 16
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) * (64 / grid)
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    masks = torch.zeros(len(POSITIONS), len(SIZES), grid, grid, dtype=torch.bool)
    for q, pos in enumerate(POSITIONS):
        cx, cy = CENTRES[pos]
        for s, size in enumerate(SIZES):
            r = RADII[size] + JITTER * 2 ** 0.5 + 4.0
            masks[q, s] = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    lab = torch.from_numpy(np.asarray(labels)).long()  # (N, 4, 3)
    present = lab[..., 0] > 0
    m = (masks[torch.arange(len(POSITIONS))[None, :], lab[..., 2]] & present[..., None, None]).any(dim=1)
    return 1.0 + (weight - 1.0) * m.flatten(1).float()


def batch_indices(gen: torch.Generator, batch: int, n: int, pools: tuple[torch.Tensor, torch.Tensor] | None = None,
                  frac: float | None = None) -> torch.Tensor:
    """Indices of one training batch: uniform over `n`, or `round(frac * batch)` from `pools[0]`, the rest from `pools[1]`."""
    if pools is None:
        return torch.randint(0, n, (batch,), generator=gen)
    k = int(round(batch * frac))
    return torch.cat([pool[torch.randint(0, len(pool), (m,), generator=gen)]
                      for pool, m in zip(pools, (k, batch - k)) if m > 0])


def averaged_steps(steps: int, ckpt_every: int, last: int) -> list[int]:
    """The checkpoint steps (1-based, the final step included) whose weights `--average-last` averages."""
    if steps % ckpt_every:
        raise SystemExit(f"--average-last needs --steps ({steps}) to be a multiple of --ckpt-every ({ckpt_every})")
    if not 1 <= last <= steps // ckpt_every:
        raise SystemExit(f"--average-last must be in [1, steps / ckpt-every = {steps // ckpt_every}], got {last}")
    return [steps - i * ckpt_every for i in range(last - 1, -1, -1)]


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform average of state dicts with the same keys (checkpoint averaging, as in Polyak / SWA)."""
    return {k: torch.stack([s[k].float() for s in states]).mean(0).to(states[0][k].dtype) for k in states[0]}


def transfer_gpt_state(model, old: dict[str, torch.Tensor], old_words: tuple[str, ...], old_text_len: int) -> list[str]:
    """Start a GPT from one trained on another world or tokenizer: copy what still means the same.

    Transformer blocks, final norm and begin-of-image slot are copied as they are; text embeddings row by
    row for the words both vocabularies share; position embeddings segment by segment (text positions
    that exist in both, then the image positions). Image-code embeddings and the output head (another
    codebook) stay freshly initialised. Returns the names of the tensors copied in full or in part.
    """
    from .gpt import TEXT_VOCAB

    own = model.state_dict()
    done = []
    with torch.no_grad():
        for k, v in old.items():
            if k.startswith(("blocks.", "ln_f.", "boi")) and k in own and own[k].shape == v.shape:
                own[k].copy_(v)
                done.append(k)
        if "text_emb.weight" in old:
            index = {w: i for i, w in enumerate(old_words)}
            for i, w in enumerate(TEXT_VOCAB):
                if w in index:
                    own["text_emb.weight"][i].copy_(old["text_emb.weight"][index[w]])
            done.append("text_emb.weight (shared words)")
        if "pos" in old:
            n_text = min(old_text_len, model.cfg.text_len)
            own["pos"][:, :n_text].copy_(old["pos"][:, :n_text])
            own["pos"][:, model.cfg.text_len:].copy_(old["pos"][:, old_text_len:])
            done.append("pos (text and image segments)")
    model.load_state_dict(own)
    return done


def _gpt_precision(args, device: torch.device) -> str:
    """bf16 autocast where the hardware has it (CUDA); fp32 elsewhere (AVX2-only CPUs emulate bf16, ~30x slower)."""
    if args.precision != "auto":
        return args.precision
    return "bf16" if device.type == "cuda" else "fp32"


def save_gpt_checkpoint(path: Path, model, opt, step: int, gen: torch.Generator, kept: list) -> None:
    """Everything a run needs to go on exactly where it stopped: weights, optimizer, step, batch RNG, averaging window."""
    tmp = Path(str(path) + ".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "rng": gen.get_state(),
                "kept": kept, "cfg": model.cfg.to_dict()}, tmp)
    tmp.replace(path)


def _follow_thread_file(path: Path) -> None:
    """Long CPU runs share the machine: `echo 2 > <workdir>/threads` changes the intra-op threads mid-run."""
    try:
        n = int(path.read_text().strip())
    except (OSError, ValueError):
        return
    if n >= 1 and n != torch.get_num_threads():
        torch.set_num_threads(n)
        log(f"gpt: now {n} threads ({path})")


def train_gpt(args) -> None:
    from .gpt import GPTConfig, ShapesGPT, null_prompt, tokenize_prompts

    if args.multi_object_frac is not None and not 0.0 <= args.multi_object_frac <= 1.0:
        raise SystemExit(f"--multi-object-frac must be in [0, 1], got {args.multi_object_frac}")
    average_at = set(averaged_steps(args.steps, args.ckpt_every, args.average_last)) if args.average_last is not None else set()
    device = torch.device(args.device)
    precision = _gpt_precision(args, device)
    torch.manual_seed(args.seed)
    t0 = time.time()
    d = np.load(Path(args.workdir) / "gpt_tokens.npz")
    codes = torch.from_numpy(d["codes"].astype(np.int64)).flatten(1)
    text = tokenize_prompts([str(p) for p in d["prompts"]])
    log(f"gpt: {len(codes)} sequences, {device}, {precision}")
    weights = None
    multi = None
    if args.object_weight != 1.0 or args.multi_object_frac is not None:
        labels = d["labels"].astype(np.int64) if "labels" in d else cached_dataset(args.workdir, 0, len(codes), "train")[1]
        if args.object_weight != 1.0:
            weights = object_token_weights(labels, args.object_weight).to(device)
            log(f"gpt: object tokens weighted x{args.object_weight} ({float((weights > 1).float().mean()):.3f} of tokens)")
        if args.multi_object_frac is not None:
            is_multi = torch.from_numpy((np.asarray(labels)[..., 0] > 0).sum(1) > 1)
            multi = (torch.nonzero(is_multi).flatten(), torch.nonzero(~is_multi).flatten())
            log(f"gpt: batches {args.multi_object_frac:.2f} multi-object scenes "
                f"(data: {float(is_multi.float().mean()):.2f})")
    codes, text = codes.to(device), text.to(device)
    vq_cfg = vq_config_from_card(Path(args.out))
    cfg = GPTConfig(vocab_size=vq_cfg.codebook_size, code_levels=vq_cfg.levels if vq_cfg.quantizer == "fsq" else (),
                    **({"d_model": args.d_model} if args.d_model else {}),
                    **({"n_layer": args.n_layer} if args.n_layer else {}),
                    **({"n_head": args.n_head} if args.n_head else {}))
    model = ShapesGPT(cfg)
    if args.init:
        model.load_state_dict(load_file(str(args.init)))
        log(f"gpt: initialised from {args.init}")
    if args.transfer_from:
        old_card = json.loads((Path(args.transfer_from) / "card.json").read_text())["components"]["gpt"]["config"]
        old_words = tuple(args.transfer_words.split(",")) if args.transfer_words else ()
        if old_words and len(old_words) != old_card["text_vocab"]:
            raise SystemExit(f"--transfer-words lists {len(old_words)} words, the old GPT has {old_card['text_vocab']}")
        copied = transfer_gpt_state(model, load_file(str(Path(args.transfer_from) / "gpt.safetensors")), old_words,
                                    old_card["text_len"])
        log(f"gpt: transferred {len(copied)} tensors from {args.transfer_from}")
    model.to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "pos" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "pos" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)
    kept: list[dict[str, torch.Tensor]] = []
    first = 0
    ckpt_path = Path(args.workdir) / "gpt.resume.pt"
    if args.resume:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state["cfg"] != model.cfg.to_dict():
            raise SystemExit(f"--resume: {ckpt_path} holds another GPT config ({state['cfg']})")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["rng"])
        kept, first = state["kept"], state["step"]
        log(f"gpt: resumed from {ckpt_path} at step {first}")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    loss = torch.zeros(())
    for step in range(first, args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr)
        sel = batch_indices(gen, args.batch, len(codes), multi, args.multi_object_frac)
        c, t = codes[sel.to(device)], text[sel.to(device)].clone()
        drop = (torch.rand(args.batch, generator=gen) < 0.1).to(device)
        t[drop] = null_prompt(int(drop.sum())).to(device)
        with autocast:
            logits = model(t, c)
        per_token = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), c.reshape(-1), reduction="none")
        if weights is None:
            loss = per_token.mean()
        else:
            w = weights[sel.to(device)].reshape(-1)
            loss = (per_token * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            log(f"gpt step {step}/{args.steps} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{time.time() - t0:.0f}s")
            _follow_thread_file(Path(args.workdir) / "threads")
        if step + 1 in average_at:
            kept.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            cpu_state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            save_file(cpu_state, str(Path(args.workdir) / f"gpt.step{step + 1}.safetensors"))
            save_gpt_checkpoint(ckpt_path, model, opt, step + 1, gen, kept)
        if args.stop_after and step + 1 >= args.stop_after:
            log(f"gpt: stopped after step {step + 1} (--stop-after); go on with --resume")
            return
    if kept:
        log(f"gpt: shipping the average of the checkpoints at steps {sorted(average_at)}")
    final = average_states(kept) if kept else {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(final, str(Path(args.out) / "gpt.safetensors"))
    update_card(Path(args.out), "gpt", {
        "command": " ".join(["python -m guard.models.reference.train"] + sys.argv[1:]),
        "seed": args.seed, "config": model.cfg.to_dict(), "steps": args.steps, "batch": args.batch,
        "n_train": len(codes), "final_train_loss": round(loss.item(), 4), "precision": precision,
        "device": str(device), "object_weight": args.object_weight, "multi_object_frac": args.multi_object_frac,
        **({"weights": f"average of the checkpoints at steps {sorted(average_at)}"} if kept else {}),
        "wall_time_s": round(time.time() - t0, 1),
    })


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m guard.models.reference.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("component", choices=["vq", "classifier", "gpt", "tokens", "encoder", "all"],
                   help="encoder = the tokenizer's stage 2 (`vq` of <out>/vq.safetensors with the decoder frozen and "
                        "the shipped stage-2 settings), run after tokens so the GPT keeps the stage-1 codes")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "guard" / "train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--init", type=Path, default=None, help="start from this safetensors state (fine-tuning)")
    # VQ
    p.add_argument("--quantizer", choices=["fsq", "cosine"], default="fsq")
    p.add_argument("--idem-frac", type=float, default=None,
                   help="final fraction of VQ steps with the idempotence loss (fsq default 0.8; the cosine "
                        "quantiser collapsed under it, see card.json 'experiments')")
    p.add_argument("--crop", type=int, default=32, help="fsq: train on token-aligned random crops of this size (0 = full)")
    p.add_argument("--margin", type=float, default=0.15, help="fsq: idempotence margin in levels")
    p.add_argument("--sub-frac", type=float, default=0.3, help="fsq: share of random codes in idempotence targets")
    p.add_argument("--nbr-frac", type=float, default=0.3,
                   help="fsq: share of one-step neighbour codes (one channel +-1 level) in idempotence targets")
    p.add_argument("--levels", default="4,4,4,4,4,4", help="fsq: levels per latent channel (product = codebook size)")
    p.add_argument("--channels", default="48,96,192", help="VQ encoder/decoder widths at 64, 32 and 16 px")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many steps, the LR schedule still spanning --steps")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="fsq: fine-tune only the decoder of --init (codes of every image, and so the GPT's tokens, "
                        "stay the same)")
    p.add_argument("--anchor-encoder", action="store_true",
                   help="fsq: fine-tune encoder and decoder of --init, the encoder held (--anchor-weight) to the codes "
                        "the --init encoder gives real images, so a GPT trained on those codes stays valid")
    p.add_argument("--anchor-weight", type=float, default=5.0)
    p.add_argument("--freeze-decoder", action="store_true",
                   help="fsq: fine-tune only the encoder of --init (wmar): generated pictures stay the same, the encoder "
                        "learns to read them back after --aug; real images may get other codes")
    p.add_argument("--aug", choices=["mild", "attacks"], default="mild",
                   help="fsq: augmentation between decode and encode in the idempotence phase: mild saving noise, or "
                        "the evaluation's attacks at their reported strengths")
    p.add_argument("--rec-weight", type=float, default=1.0, help="fsq: weight of the reconstruction loss")
    p.add_argument("--idem-clip", type=float, default=None,
                   help="fsq: idempotence positions read more than this many levels off the target add no loss")
    p.add_argument("--idem-weight", type=float, default=None)
    p.add_argument("--tau", type=float, default=0.05)
    p.add_argument("--restart-every", type=int, default=100)
    # classifier
    p.add_argument("--n-encode", type=int, default=None,
                   help="tokens: encode only the first N of the --n-train training scenes (a shorter GPT run)")
    p.add_argument("--vq-every", type=int, default=2,
                   help="classifier: every N-th batch goes through the shipped VQ's round trip (reads decoded images)")
    # GPT
    p.add_argument("--multi-object-frac", type=float, default=None,
                   help="gpt: fraction of each batch drawn from two-object scenes (default: as in the data, 0.4); "
                        "two-object prompts are where the generator binds shapes to the wrong position")
    p.add_argument("--average-last", type=int, default=None,
                   help="gpt: ship the uniform average of the last N checkpoints (every --ckpt-every steps, the final "
                        "one included) instead of the final weights")
    p.add_argument("--device", default="cpu", help="gpt: torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="gpt: autocast precision; auto = bf16 on CUDA, fp32 on CPU")
    p.add_argument("--resume", action="store_true",
                   help="gpt: go on from <workdir>/gpt.resume.pt (weights, optimizer, step, batch RNG)")
    p.add_argument("--transfer-from", type=Path, default=None,
                   help="gpt: folder (gpt.safetensors + card.json) of a GPT trained on another world/tokenizer; its "
                        "blocks, shared-word text embeddings and positions start this one (transfer_gpt_state)")
    p.add_argument("--transfer-words", default=None,
                   help="gpt: the old GPT's text vocabulary, comma-separated, in its order (for --transfer-from)")
    p.add_argument("--d-model", type=int, default=None, help="gpt: width (default GPTConfig)")
    p.add_argument("--n-layer", type=int, default=None, help="gpt: depth (default GPTConfig)")
    p.add_argument("--n-head", type=int, default=None, help="gpt: attention heads (default GPTConfig)")
    p.add_argument("--object-weight", type=float, default=1.0,
                   help="gpt: loss weight on the tokens around the objects (1 = plain cross-entropy)")
    return p


DEFAULTS = {
    "vq": {"steps": 2400, "batch": 32, "lr": 2e-3, "n_train": 60000},
    "classifier": {"steps": 1500, "batch": 64, "lr": 2e-3, "n_train": 60000},
    "gpt": {"steps": 2400, "batch": 32, "lr": 1e-3, "n_train": 60000},
    "tokens": {"steps": 0, "batch": 250, "lr": 0.0, "n_train": 60000},
    "encoder": {"steps": 300, "batch": 32, "lr": 2e-5, "n_train": 60000},
}

ENCODER_STAGE = {"freeze_decoder": True, "anchor_encoder": True, "anchor_weight": 0.0, "aug": "mild",
                 "idem_frac": 1.0, "idem_weight": 1.0, "rec_weight": 0.0, "crop": 0}
"""Stage 2 of the tokenizer as shipped (card.json -> vq.command): only the encoder learns, on decoded pictures
after mild saving noise, to read back their codes; `--idem-clip` 1 and `--stop-after` 100 of the 300-step
schedule unless given (the shipped checkpoint, chosen on validation scenes)."""


def _train_encoder(a: argparse.Namespace) -> None:
    """`train encoder`: stage 2 from <out>/vq.safetensors (or --init); the stage-1 card section is kept in
    the new one as `first_stage`."""
    for k, v in ENCODER_STAGE.items():
        setattr(a, k, v)
    a.idem_clip = 1.0 if a.idem_clip is None else a.idem_clip
    a.stop_after = 100 if a.stop_after is None else a.stop_after
    a.init = a.init or a.out / "vq.safetensors"
    if not Path(a.init).is_file():
        raise SystemExit(f"train encoder fine-tunes a trained VQ: {a.init} does not exist (train vq first, or give --init)")
    card = a.out / "card.json"
    first = json.loads(card.read_text()).get("components", {}).get("vq") if card.is_file() else None
    train_vq(a)
    if first is not None:
        doc = json.loads(card.read_text())
        doc["components"]["vq"]["first_stage"] = first
        card.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    comps = ["vq", "classifier", "tokens", "gpt", "encoder"] if args.component == "all" else [args.component]
    for comp in comps:
        a = argparse.Namespace(**vars(args))
        for k, v in DEFAULTS[comp].items():
            if getattr(a, k, None) is None:
                setattr(a, k, v)
        # The idempotence phase is on by default for FSQ only (cosine codebooks collapsed under it).
        fsq = comp == "vq" and a.quantizer == "fsq"
        for k, v in {"idem_frac": 0.8 if fsq else 0.0, "idem_weight": 0.05 if fsq else 0.1}.items():
            if getattr(a, k) is None:
                setattr(a, k, v)
        if args.component == "all" and comp == "encoder":
            a.init = None                              # stage 2 starts from the stage 1 just trained in --out
        globals()[{"vq": "train_vq", "classifier": "train_classifier", "tokens": "make_tokens", "gpt": "train_gpt",
                   "encoder": "_train_encoder"}[comp]](a)


if __name__ == "__main__":
    main()
