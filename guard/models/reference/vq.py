"""The reference VQ tokenizer: 64x64 RGB <-> 16x16 codes from a 1024-entry codebook.

Encoder and decoder are small conv nets (downsampling 4). Two quantisers:

- "fsq" (shipped): finite scalar quantisation (Mentzer et al. 2023). The encoder emits 5 numbers per
  position, each bounded to (-0.5, L-0.5) and rounded to one of L = 4 levels; the code id is the
  mixed-radix number of the 5 levels (4^5 = 1024). The codebook is the fixed grid, so it cannot
  collapse and has no dead codes to restart; every code has a cell of the same width (1 level),
  which is what lets an idempotence fine-tune give decode -> encode round trips a margin.
- "cosine": an L2-normalised learned codebook (LlamaGen style), nearest code by cosine similarity,
  dead codes restarted from encoder outputs during training. Kept for old checkpoints.
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
    quantizer: str = "cosine"
    levels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.quantizer not in ("cosine", "fsq"):
            raise ValueError(f"quantizer must be 'cosine' or 'fsq', got {self.quantizer!r}")
        if self.quantizer == "fsq":
            n = 1
            for lv in self.levels:
                n *= int(lv)
            if len(self.levels) != self.code_dim or n != self.codebook_size:
                raise ValueError(f"fsq levels {self.levels} must have code_dim={self.code_dim} entries "
                                 f"whose product is codebook_size={self.codebook_size}")

    @classmethod
    def fsq(cls, levels: tuple[int, ...] = (4, 4, 4, 4, 4), **kw) -> "VQConfig":
        n = 1
        for lv in levels:
            n *= int(lv)
        return cls(codebook_size=n, code_dim=len(levels), quantizer="fsq", levels=tuple(levels), **kw)

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
    """Encoder + quantiser + decoder. Images are float (B,3,64,64) in [0,1]."""

    def __init__(self, cfg: VQConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or VQConfig()
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)
        if self.cfg.quantizer == "cosine":
            self.codebook = nn.Parameter(F.normalize(torch.randn(self.cfg.codebook_size, self.cfg.code_dim), dim=-1))
        else:
            levels = torch.tensor(self.cfg.levels, dtype=torch.long)
            basis = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), levels[:-1]]), 0)
            self.register_buffer("levels", levels, persistent=False)
            self.register_buffer("basis", basis, persistent=False)

    @property
    def is_fsq(self) -> bool:
        return self.cfg.quantizer == "fsq"

    # ---------------------------------------------------------------------------------------- FSQ
    def bounded(self, x: torch.Tensor) -> torch.Tensor:
        """FSQ: encoder output squashed to (-0.5, L-0.5) per channel, (B,d,h,w); rounds to a level."""
        h = self.encoder(x)
        lv = self.levels.view(1, -1, 1, 1).to(h.dtype)
        return torch.sigmoid(h) * lv - 0.5

    def round_levels(self, zb: torch.Tensor) -> torch.Tensor:
        """Nearest level per channel, clamped to [0, L-1]."""
        top = (self.levels - 1).view(1, -1, 1, 1).to(zb.dtype)
        return torch.minimum(zb.round().clamp_min(0), top)

    def levels_to_latent(self, q: torch.Tensor) -> torch.Tensor:
        """Integer (or straight-through) levels (B,d,h,w) -> decoder input in [-1, 1]."""
        lv = self.levels.view(1, -1, 1, 1).to(q.dtype)
        return q / (lv - 1) * 2 - 1

    def levels_of(self, idx: torch.Tensor) -> torch.Tensor:
        """Code ids (B,h,w) -> integer levels (B,d,h,w)."""
        q = (idx.unsqueeze(-1) // self.basis) % self.levels
        return q.permute(0, 3, 1, 2)

    def ids_of(self, q: torch.Tensor) -> torch.Tensor:
        """Integer levels (B,d,h,w) -> code ids (B,h,w)."""
        return (q.long() * self.basis.view(1, -1, 1, 1)).sum(1)

    # ------------------------------------------------------------------------------------- cosine
    def normalized_codebook(self) -> torch.Tensor:
        if self.is_fsq:
            ids = torch.arange(self.cfg.codebook_size).view(1, -1, 1)
            return self.levels_to_latent(self.levels_of(ids).float()).view(self.cfg.code_dim, -1).t()
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

    # -------------------------------------------------------------------------------------- shared
    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Code ids (B,h,w) -> decoder input (B,d,h,w)."""
        if self.is_fsq:
            return self.levels_to_latent(self.levels_of(idx).float())
        return self.normalized_codebook()[idx].permute(0, 3, 1, 2)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_fsq:
            return self.ids_of(self.round_levels(self.bounded(x)))
        return self.code_logits(self.encode_latent(x)).argmax(-1)

    @torch.no_grad()
    def decode(self, idx: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.lookup(idx)).clamp(0, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (reconstruction, indices, quantiser loss, latents).

        For FSQ the latents are the bounded pre-rounding values and the quantiser loss is zero.
        """
        if self.is_fsq:
            zb = self.bounded(x)
            q = self.round_levels(zb)
            idx = self.ids_of(q.detach())
            q_st = zb + (q - zb).detach()
            return self.decoder(self.levels_to_latent(q_st)), idx, torch.zeros((), device=x.device), zb
        z = self.encode_latent(x)
        idx, zq_st = self.quantize(z)
        zq = self.lookup(idx)
        vq_loss = F.mse_loss(zq, z.detach()) + self.cfg.beta * F.mse_loss(z, zq.detach())
        return self.decoder(zq_st), idx, vq_loss, z
