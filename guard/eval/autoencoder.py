"""A small convolutional autoencoder: the shipped stand-in for a VAE regeneration attack.

The anchors regenerate images with a diffusion model's VAE (SD-VAE, FLUX VAE) or a neural codec; no such
model can be downloaded here. This continuous autoencoder (64x64 RGB -> 8x16x16 latent -> 64x64, no
quantisation, trained on rendered reference scenes only, with no knowledge of any watermark) plays
that role: an image goes through an unrelated learned bottleneck and comes back slightly different.

    python -m guard.eval.autoencoder --steps 1500 --out guard/eval/weights --workdir /tmp/guard-ae

writes `autoencoder.safetensors` and its section of `card.json` (command, seed, held-out PSNR).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AEConfig", "ConvAutoencoder", "WEIGHTS_DIR", "load_autoencoder"]

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class AEConfig:
    channels: tuple[int, int] = (32, 64)
    latent: int = 8

    def to_dict(self) -> dict:
        return asdict(self)


class ConvAutoencoder(nn.Module):
    """(B, 3, 64, 64) in [0, 1] -> latent (B, latent, 16, 16) -> (B, 3, 64, 64) in [0, 1]."""

    def __init__(self, cfg: AEConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or AEConfig()
        c1, c2 = cfg.channels
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c1, c1, 4, stride=2, padding=1), nn.SiLU(),         # 32x32
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.SiLU(),         # 16x16
            nn.Conv2d(c2, c2, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c2, cfg.latent, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(cfg.latent, c2, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c2, c2, 3, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.SiLU(),  # 32x32
            nn.ConvTranspose2d(c1, c1, 4, stride=2, padding=1), nn.SiLU(),  # 64x64
            nn.Conv2d(c1, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x * 2 - 1)) * 0.5 + 0.5

    @torch.no_grad()
    def roundtrip(self, x: torch.Tensor) -> torch.Tensor:
        """Encode and decode a batch, clamped to [0, 1]."""
        return self(x.float()).clamp(0, 1)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_autoencoder(weights_dir: Path = WEIGHTS_DIR) -> ConvAutoencoder:
    """The shipped autoencoder, its SHA-256 checked against `card.json`.

    Raises:
        ModelError: weights or card missing, or the file does not match the card.
    """
    from safetensors.torch import load_file

    from ..errors import ModelError

    path = Path(weights_dir) / "autoencoder.safetensors"
    card_path = Path(weights_dir) / "card.json"
    if not path.exists() or not card_path.exists():
        raise ModelError(f"autoencoder weights missing: {path}; retrain with `python -m guard.eval.autoencoder`")
    card = json.loads(card_path.read_text())
    section = card.get("autoencoder", {})
    if section.get("sha256") != _sha256(path):
        raise ModelError(f"autoencoder weights do not match {card_path}; retrain with `python -m guard.eval.autoencoder`")
    cfg = AEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in section["config"].items()})
    model = ConvAutoencoder(cfg)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _update_card(out: Path, name: str, section: dict) -> None:
    path = out / "card.json"
    card = json.loads(path.read_text()) if path.exists() else {}
    card[name] = section
    path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")


def train(argv: list[str] | None = None) -> None:
    from safetensors.torch import save_file

    from ..imageio import from_uint8, quantize
    from ..models import prompts_for

    p = argparse.ArgumentParser(prog="python -m guard.eval.autoencoder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--n-train", type=int, default=40000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "guard" / "train")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    scenes = prompts_for("reference")          # rendered reference scenes: the attack never sees a watermark
    imgs = scenes.training_images(args.n_train, workdir=args.workdir)
    test = scenes.training_images(1000, workdir=args.workdir, heldout=True)
    x_all = torch.from_numpy(imgs)
    x_test = from_uint8(test)
    model = ConvAutoencoder()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        sel = torch.randint(0, len(x_all), (args.batch,), generator=gen)
        x = x_all[sel].permute(0, 3, 1, 2).float() / 255
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(3)
        rec = model(x)
        loss = F.mse_loss(rec, x) + 0.2 * (rec - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            _log(f"ae step {step}/{args.steps} loss {loss.item():.4f} {time.time() - t0:.0f}s")
    model.eval()
    with torch.no_grad():
        rec = torch.cat([model.roundtrip(x_test[i:i + 250]) for i in range(0, len(x_test), 250)])
        rec8 = quantize(rec)
        mse = (rec8 - x_test).pow(2).flatten(1).mean(1)
        psnr = float((10 * torch.log10(1 / mse)).mean())
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "autoencoder.safetensors"
    save_file(model.state_dict(), str(path))
    _update_card(args.out, "autoencoder", {
        "command": " ".join(["python -m guard.eval.autoencoder"] + (sys.argv[1:] if argv is None else argv)),
        "seed": args.seed, "steps": args.steps, "batch": args.batch, "lr": args.lr, "n_train": args.n_train,
        "data": "rendered reference scenes, seeds [0, n_train), split 'any'", "config": model.cfg.to_dict(),
        "heldout_psnr_db_8bit": round(psnr, 2), "n_heldout": len(x_test), "wall_time_s": round(time.time() - t0, 1),
        "sha256": _sha256(path),
    })
    _log(f"ae held-out PSNR {psnr:.2f} dB -> {path}")


if __name__ == "__main__":
    train()
