"""The reference VQ tokenizer: 64x64 RGB <-> 16x16 codes from a 1024-entry cosine codebook.

Encoder and decoder are small conv nets (downsampling 4). The codebook is L2-normalised (LlamaGen
style): quantisation is the nearest code by cosine similarity, which keeps codebook use high; dead
codes are restarted from encoder outputs during training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VQConfig:
    codebook_size: int = 1024
    code_dim: int = 16
    channels: tuple[int, int, int] = (32, 64, 128)
    beta: float = 0.25

    def to_dict(self) -> dict:
        return asdict(self)


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, ch)
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1),
            ResBlock(c1),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),  # 32x32
            ResBlock(c2),
            nn.Conv2d(c2, c3, 4, stride=2, padding=1),  # 16x16
            ResBlock(c3),
            ResBlock(c3),
            nn.GroupNorm(8, c3),
            nn.SiLU(),
            nn.Conv2d(c3, cfg.code_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2.0 - 1.0)


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.channels
        self.net = nn.Sequential(
            nn.Conv2d(cfg.code_dim, c3, 3, padding=1),
            ResBlock(c3),
            ResBlock(c3),
            nn.ConvTranspose2d(c3, c2, 4, stride=2, padding=1),  # 32x32
            ResBlock(c2),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),  # 64x64
            ResBlock(c1),
            nn.GroupNorm(8, c1),
            nn.SiLU(),
            nn.Conv2d(c1, 3, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z) * 0.5 + 0.5


class VQModel(nn.Module):
    """Encoder + cosine codebook + decoder. Images are float (B,3,64,64) in [0,1]."""

    def __init__(self, cfg: VQConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or VQConfig()
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)
        self.codebook = nn.Parameter(F.normalize(torch.randn(self.cfg.codebook_size, self.cfg.code_dim), dim=-1))

    def normalized_codebook(self) -> torch.Tensor:
        return F.normalize(self.codebook, dim=-1)

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) -> L2-normalised latents (B,d,h,w)."""
        return F.normalize(self.encoder(x), dim=1)

    def code_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Cosine similarities (B,h,w,V) of normalised latents to every code."""
        return torch.einsum("bdhw,vd->bhwv", z, self.normalized_codebook())

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest code by cosine. Returns (indices (B,h,w), straight-through quantised (B,d,h,w))."""
        idx = self.code_logits(z).argmax(-1)
        zq = self.lookup(idx)
        return idx, z + (zq - z).detach()

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        return self.normalized_codebook()[idx].permute(0, 3, 1, 2)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.code_logits(self.encode_latent(x)).argmax(-1)

    @torch.no_grad()
    def decode(self, idx: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.lookup(idx)).clamp(0, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (reconstruction, indices, vq loss, latents)."""
        z = self.encode_latent(x)
        idx, zq_st = self.quantize(z)
        zq = self.lookup(idx)
        vq_loss = F.mse_loss(zq, z.detach()) + self.cfg.beta * F.mse_loss(z, zq.detach())
        return self.decoder(zq_st), idx, vq_loss, z
