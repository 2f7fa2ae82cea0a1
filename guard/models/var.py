"""VAR (FoundationVision/VAR, "Visual Autoregressive Modeling") behind guard's `Tokenizer` / `Generator`.

VAR predicts a *pyramid* of token maps, coarse to fine (`patch_nums` 1, 2, 3, 4, 5, 6, 8, 10, 13, 16 at
256 px: L = Σ pn² = 680 tokens in 10 steps), each step a whole pn×pn map sampled in parallel. Its VQ-VAE
is a multi-scale *residual* quantiser: scale k quantises what the coarser scales left unexplained, after
upsampling and a small conv Φ (`quant_resi`).

The modules below are written from the official architecture (models/vqvae.py, quant.py, basic_vae.py,
var.py, basic_var.py at 78b9539) with the same module and parameter names, so the released files
`vae_ch160v4096z32.pth` and `var_d16.pth` … `var_d30.pth` load with `strict=True`. The configuration is
read from the state dicts themselves (widths, depth, heads, classes, codebook, scales from `lvl_1L`).
Not implemented: VAR's `more_smooth` (Gumbel) decoding, flash/xformers kernels (PyTorch SDPA is used),
training.

guard's view of the pyramid:
* codes: long (B, 1, L), the scales concatenated coarse to fine (row-major within a scale), i.e. the
  `grid` is (1, L). `VARTokenizer.split` gives the per-scale maps back.
* watermark: the generator's loop calls the module-level `sample_with_top_k_top_p_` once per scale;
  `guard.models.loops.hook_sampler(…, convention="scale")` wraps it, so every position of a scale is
  biased with the same history (the codes of all earlier scales). All scales are watermarked.
* detection: `encode` re-quantises an image into the whole pyramid (VAR's `img_to_idxBl`); the
  tokenizer's `detect_scales` (default: all) chooses which scales the exact test counts (see
  `VARTokenizer`). The choice is a property of the tokenizer, so it is bound into its `id`.
* guidance: guard's `cfg` s means `u + s·(c − u)` as for every other kind (1 = off); VAR ramps it over
  scales, `t_k = (s − 1)·k/(K − 1)`, logits `(1 + t_k)·c − t_k·u`. VAR's own `cfg=1.5` (its FID setting)
  is guard's `cfg=2.5`; its demo's `cfg=4` is guard's 5.
* prompts: VAR is class-conditional. A prompt is a class index ("980", "class 980") or, for 1000-class
  checkpoints, an ImageNet class name ("volcano"); "" or "null" is the unconditional class.

    >>> from guard.models import load
    >>> gen = load("var:/models/var")                       # folder with vae_ch160v4096z32.pth, var_d16.pth
    >>> codes = gen.generate(["980", "volcano"], n=2, seed=0)   # (4, 1, 680)
    >>> images = gen.tokenizer.decode(codes)                # (4, 3, 256, 256) in [0, 1]
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, ModelError
from ._hf_common import check_sampling_args, pick_device, pick_dtype, seeded, weights_digest
from .registry import ModelKind

__all__ = ["VQVAE", "VAR", "VARTokenizer", "VARGenerator", "KIND", "OFFICIAL_PATCH_NUMS", "load_var",
           "load_var_tokenizer", "save_var_checkpoint", "build_tiny_var", "sample_with_top_k_top_p_",
           "DETECT_SCALES"]

OFFICIAL_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
"""The 256 px pyramid of the released VAR models (d16–d30)."""

DETECT_SCALES = "all"
"""Default scales the detection test counts (see `VARTokenizer`). Measured (bench/measure_var_scales.py, N=48,
random quantisers of the released geometry): on generated codes counting all scales is strongest; after
re-quantisation the largest scale alone ('last') is, because the middle scales come back mostly changed. The
shipped trained tiny VQ keeps real images' pyramids the other way round (largest scale least stable), so
'all' stays the default (encode/decode compose, eval and detect agree); measure '@SCALES' on a real model."""


# ================================================================================================ VQ-VAE
# Encoder / decoder of the VQ-VAE (the latent-diffusion VQ-f16 layout VAR reuses).

def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm1 → SiLU → conv1 → norm2 → SiLU → conv2, plus a 1×1 `nin_shortcut` when the width changes."""

    def __init__(self, *, in_channels: int, out_channels: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0) if in_channels != out_channels \
            else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a fused 1×1 `qkv` conv and a residual `proj_out`."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.C = in_channels
        self.norm = _group_norm(in_channels)
        self.qkv = nn.Conv2d(in_channels, 3 * in_channels, 1, 1, 0)
        self.proj_out = nn.Conv2d(in_channels, in_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.C, h * w).unbind(1)          # (b, C, hw) each
        out = F.scaled_dot_product_attention(q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None],
                                             v.transpose(1, 2)[:, None])[:, 0]            # (b, hw, C)
        return x + self.proj_out(out.transpose(1, 2).reshape(b, self.C, h, w))


class Upsample2x(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample2x(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Encoder(nn.Module):
    """conv_in → per level: `num_res_blocks` ResnetBlocks (+ attention at the last level) and a 2× downsample
    (not after the last) → mid (block_1, attn_1, block_2) → norm_out → SiLU → conv_out (z_channels)."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 in_channels: int = 3, dropout: float = 0.0, using_sa: bool = True, using_mid_sa: bool = True) -> None:
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        mults = (1, *ch_mult)
        self.down = nn.ModuleList()
        block_in = ch
        for level in range(self.num_resolutions):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * mults[level], ch * ch_mult[level]
            for _ in range(num_res_blocks):
                stage.block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, dropout=dropout))
                block_in = block_out
                if level == self.num_resolutions - 1 and using_sa:
                    stage.attn.append(AttnBlock(block_in))
            if level != self.num_resolutions - 1:
                stage.downsample = Downsample2x(block_in)
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=dropout)
        self.mid.attn_1 = AttnBlock(block_in) if using_mid_sa else nn.Identity()
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=dropout)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, stage in enumerate(self.down):
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if level != self.num_resolutions - 1:
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """conv_in → mid → per level, coarse to fine: `num_res_blocks + 1` ResnetBlocks (+ attention at the
    coarsest level) and a 2× upsample (not at level 0) → norm_out → SiLU → conv_out (RGB)."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 in_channels: int = 3, dropout: float = 0.0, using_sa: bool = True, using_mid_sa: bool = True) -> None:
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=dropout)
        self.mid.attn_1 = AttnBlock(block_in) if using_mid_sa else nn.Identity()
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=dropout)
        stages: list[nn.Module] = []
        for level in reversed(range(self.num_resolutions)):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, dropout=dropout))
                block_in = block_out
                if level == self.num_resolutions - 1 and using_sa:
                    stage.attn.append(AttnBlock(block_in))
            if level != 0:
                stage.upsample = Upsample2x(block_in)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)                      # up[0] is the finest level, as in the checkpoints
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, in_channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(self.num_resolutions)):
            stage = self.up[level]
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if level != 0:
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ------------------------------------------------------------------------------------ multi-scale quantiser

class Phi(nn.Conv2d):
    """Φ: `h·(1 − r) + conv3x3(h)·r` with r = |quant_resi| (0.5 in the released VQ)."""

    def __init__(self, embed_dim: int, quant_resi: float) -> None:
        super().__init__(embed_dim, embed_dim, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * (1 - self.resi_ratio) + super().forward(h) * self.resi_ratio


def _ticks(k: int) -> np.ndarray:
    return np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4 else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)


class PhiShared(nn.Module):
    """One Φ for every scale (`share_quant_resi=1`); state-dict name `qresi`."""

    def __init__(self, qresi: nn.Module) -> None:
        super().__init__()
        self.qresi = qresi

    def __getitem__(self, _: float) -> nn.Module:
        return self.qresi


class PhiPartiallyShared(nn.Module):
    """`share_quant_resi` Φs spread over the scales (the released VQ: 4); scale k uses the Φ whose tick is
    nearest to k/(K − 1). State-dict names `qresi_ls.{i}`."""

    def __init__(self, qresi_ls: nn.ModuleList) -> None:
        super().__init__()
        self.qresi_ls = qresi_ls
        self.ticks = _ticks(len(qresi_ls))

    def __getitem__(self, at: float) -> nn.Module:
        return self.qresi_ls[int(np.argmin(np.abs(self.ticks - at)))]


class PhiNonShared(nn.ModuleList):
    """One Φ per scale (`share_quant_resi=0`); state-dict names `{i}`."""

    def __init__(self, qresi: list) -> None:
        super().__init__(qresi)
        self.ticks = _ticks(len(qresi))

    def __getitem__(self, at: float) -> nn.Module:  # type: ignore[override]
        return super().__getitem__(int(np.argmin(np.abs(self.ticks - at))))


class VectorQuantizer2(nn.Module):
    """VAR's multi-scale residual quantiser: codebook `embedding` (V, Cvae), Φs in `quant_resi`, and the
    per-scale usage buffer `ema_vocab_hit_SV` (S, V) the released files carry."""

    def __init__(self, vocab_size: int, Cvae: int, using_znorm: bool = False, beta: float = 0.25,
                 default_qresi_counts: int = 0, v_patch_nums: Sequence[int] = OFFICIAL_PATCH_NUMS,
                 quant_resi: float = 0.5, share_quant_resi: int = 4) -> None:
        super().__init__()
        self.vocab_size, self.Cvae, self.using_znorm, self.beta = vocab_size, Cvae, using_znorm, beta
        self.v_patch_nums = tuple(int(p) for p in v_patch_nums)
        self.quant_resi_ratio = quant_resi

        def phi() -> nn.Module:
            return Phi(Cvae, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()

        if share_quant_resi == 0:
            self.quant_resi = PhiNonShared([phi() for _ in range(default_qresi_counts or len(self.v_patch_nums))])
        elif share_quant_resi == 1:
            self.quant_resi = PhiShared(phi())
        else:
            self.quant_resi = PhiPartiallyShared(nn.ModuleList([phi() for _ in range(share_quant_resi)]))
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.v_patch_nums), vocab_size))
        self.embedding = nn.Embedding(vocab_size, Cvae)

    def _phi(self, si: int, n_scales: int) -> nn.Module:
        return self.quant_resi[si / (n_scales - 1)]

    def _nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, C) -> nearest code ids (N,): Euclidean, or cosine when `using_znorm`."""
        book = self.embedding.weight
        if self.using_znorm:
            return (F.normalize(z, dim=-1) @ F.normalize(book, dim=-1).T).argmax(-1)
        d = z.square().sum(1, keepdim=True) + book.square().sum(1) - 2 * z @ book.T
        return d.argmin(-1)

    def _residual_step(self, rest: torch.Tensor, si: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One scale of the residual quantisation of `rest` (B, Cvae, H, W): area-downsample to the scale, nearest
        codes (B, pn, pn), their embeddings upsampled (bicubic) to H x W and passed through Φ (gradient to the
        embedding and Φ only). Shared by `f_to_idx` and the training pass."""
        b, c, H, W = rest.shape
        pn = self.v_patch_nums[si]
        z = rest if si == n - 1 else F.interpolate(rest, size=(pn, pn), mode="area")
        with torch.no_grad():
            idx = self._nearest(z.permute(0, 2, 3, 1).reshape(-1, c)).view(b, pn, pn)
        h = self.embedding(idx).permute(0, 3, 1, 2)
        if si != n - 1:
            h = F.interpolate(h, size=(H, W), mode="bicubic")
        return idx, self._phi(si, n)(h.contiguous())

    def f_to_idx(self, f: torch.Tensor, *, with_fhat: bool = False) -> list[torch.Tensor]:
        """Residual quantisation of f (B, Cvae, H, W): per scale coarse to fine, area-downsample what is left,
        take the nearest codes, upsample (bicubic) their embeddings, apply Φ, subtract. Returns the code maps
        long (B, pn²) per scale (VAR's `f_to_idxBl_or_fhat(to_fhat=False)`), or the running f̂ per scale."""
        b, c, H, W = f.shape
        pns = self.v_patch_nums
        if pns[-1] != H or pns[-1] != W:
            raise ConfigError(f"latent map {H}x{W} does not match the last scale {pns[-1]}; images must be "
                              f"{pns[-1]}·downsample pixels square")
        rest, f_hat, out = f.detach().clone().float(), torch.zeros_like(f, dtype=torch.float32), []
        n = len(pns)
        for si, pn in enumerate(pns):
            idx, h = self._residual_step(rest, si, n)
            f_hat = f_hat + h
            rest = rest - h
            out.append(f_hat.clone() if with_fhat else idx.view(b, pn * pn))
        return out

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass (VAR's VQ training): f (B, Cvae, H, W) -> (f̂ with a straight-through gradient to f,
        VQ loss = mean over scales of β·‖f̂.detach − f‖² + ‖f̂ − f.detach‖²)."""
        n = len(self.v_patch_nums)
        f = f.float()
        target = f.detach()
        rest, f_hat, loss = target.clone(), torch.zeros_like(target), f.new_zeros(())
        for si in range(n):
            _, h = self._residual_step(rest, si, n)
            f_hat = f_hat + h
            rest = rest - h.detach()
            loss = loss + self.beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, target)
        return (f_hat.detach() - target) + f, loss / n

    def idx_to_fhat(self, ms_idx: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-scale code maps (B, pn²) -> f̂ (B, Cvae, H, W): Σ_k Φ_k(upsample(embedding(idx_k))) (VAR's
        `embed_to_fhat(all_to_max_scale=True, last_one=True)`, which the sampling loop also accumulates)."""
        pns = self.v_patch_nums
        H = pns[-1]
        n = len(pns)
        f_hat = None
        for si, (pn, idx) in enumerate(zip(pns, ms_idx)):
            h = self.embedding(idx).transpose(1, 2).reshape(idx.shape[0], self.Cvae, pn, pn)
            if si != n - 1:
                h = F.interpolate(h, size=(H, H), mode="bicubic")
            h = self._phi(si, n)(h)
            f_hat = h if f_hat is None else f_hat + h
        return f_hat

    def idx_to_var_input(self, ms_idx: Sequence[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input of VAR training (`idxBl_to_var_input`): per-scale codes -> f̂ after each scale
        but the last, area-downsampled to the next scale, concatenated: float (B, L − first_l, Cvae)."""
        pns, n = self.v_patch_nums, len(self.v_patch_nums)
        H, b = pns[-1], ms_idx[0].shape[0]
        f_hat = torch.zeros(b, self.Cvae, H, H, device=ms_idx[0].device)
        out = []
        for si in range(n - 1):
            h = self.embedding(ms_idx[si]).transpose(1, 2).reshape(b, self.Cvae, pns[si], pns[si])
            f_hat = f_hat + self._phi(si, n)(F.interpolate(h, size=(H, H), mode="bicubic"))
            out.append(F.interpolate(f_hat, size=(pns[si + 1], pns[si + 1]), mode="area").flatten(2).transpose(1, 2))
        return torch.cat(out, 1)

    def next_input(self, si: int, f_hat: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of VAR's loop (`get_next_autoregressive_input`): add scale si's map h (B, Cvae, pn, pn) to
        f̂ and return (f̂, f̂ area-downsampled to the next scale; f̂ itself after the last)."""
        pns, n = self.v_patch_nums, len(self.v_patch_nums)
        H = pns[-1]
        if si != n - 1:
            f_hat = f_hat + self._phi(si, n)(F.interpolate(h, size=(H, H), mode="bicubic"))
            return f_hat, F.interpolate(f_hat, size=(pns[si + 1], pns[si + 1]), mode="area")
        f_hat = f_hat + self._phi(si, n)(h)
        return f_hat, f_hat


class VQVAE(nn.Module):
    """VAR's VQ-VAE: encoder, `quant_conv`, multi-scale `quantize`, `post_quant_conv`, decoder.

    Args (released VQ: vocab_size=4096, z_channels=32, ch=160, ch_mult=(1,1,2,2,4), num_res_blocks=2,
    share_quant_resi=4, v_patch_nums=OFFICIAL_PATCH_NUMS). `ch_mult` and `num_res_blocks` are fixed in
    the official code; here they are arguments so tiny test configs can shrink them (same names).
    """

    def __init__(self, vocab_size: int = 4096, z_channels: int = 32, ch: int = 160,
                 ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2, dropout: float = 0.0,
                 beta: float = 0.25, using_znorm: bool = False, quant_conv_ks: int = 3, quant_resi: float = 0.5,
                 share_quant_resi: int = 4, default_qresi_counts: int = 0,
                 v_patch_nums: Sequence[int] = OFFICIAL_PATCH_NUMS, using_sa: bool = True,
                 using_mid_sa: bool = True) -> None:
        super().__init__()
        self.V = self.vocab_size = vocab_size
        self.Cvae = z_channels
        self.config = dict(vocab_size=vocab_size, z_channels=z_channels, ch=ch, ch_mult=tuple(ch_mult),
                           num_res_blocks=num_res_blocks, using_znorm=using_znorm, quant_conv_ks=quant_conv_ks,
                           quant_resi=quant_resi, share_quant_resi=share_quant_resi,
                           default_qresi_counts=default_qresi_counts, v_patch_nums=tuple(v_patch_nums),
                           using_sa=using_sa, using_mid_sa=using_mid_sa)
        dd = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, z_channels=z_channels,
                  dropout=dropout, using_sa=using_sa, using_mid_sa=using_mid_sa)
        self.encoder = Encoder(**dd)
        self.decoder = Decoder(**dd)
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.quantize = VectorQuantizer2(vocab_size, z_channels, using_znorm=using_znorm, beta=beta,
                                         default_qresi_counts=default_qresi_counts, v_patch_nums=v_patch_nums,
                                         quant_resi=quant_resi, share_quant_resi=share_quant_resi)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, 1, quant_conv_ks // 2)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, 1, quant_conv_ks // 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: images in [-1, 1] -> (reconstruction, VQ loss)."""
        f_hat, vq_loss = self.quantize(self.quant_conv(self.encoder(x)))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss

    def img_to_idxBl(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images in [-1, 1] (B, 3, S, S) -> per-scale codes long (B, pn²)."""
        return self.quantize.f_to_idx(self.quant_conv(self.encoder(x)))

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f̂ -> images in [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)

    def idxBl_to_img(self, ms_idx: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-scale codes -> images in [-1, 1] (the full pyramid's f̂ through the decoder)."""
        return self.fhat_to_img(self.quantize.idx_to_fhat(ms_idx))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As nn.Module's; a usage buffer of another scale count is replaced (as the official loader does)."""
        key = "quantize.ema_vocab_hit_SV"
        if key in state_dict and state_dict[key].shape != self.quantize.ema_vocab_hit_SV.shape:
            state_dict = {**state_dict, key: self.quantize.ema_vocab_hit_SV}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


# ================================================================================================ VAR
# The transformer: AdaLN self-attention blocks conditioned on the class embedding.

class FFN(nn.Module):
    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head attention with a fused bias-free `mat_qkv`, separate `q_bias`/`v_bias` (k has none), optional
    L2-normalised q/k with a learned per-head scale (`scale_mul_1H11`), and a KV cache for sampling."""

    def __init__(self, embed_dim: int, num_heads: int, attn_l2_norm: bool) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.caching, self.cached_k, self.cached_v = False, None, None

    def kv_caching(self, enable: bool) -> None:
        self.caching, self.cached_k, self.cached_v = enable, None, None

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        b, L, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(b, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                           # (b, H, L, c) each
        if self.attn_l2_norm:
            q = F.normalize(q, dim=-1) * self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            k = F.normalize(k, dim=-1)
        if self.caching:
            if self.cached_k is None:
                self.cached_k, self.cached_v = k, v
            else:
                k = self.cached_k = torch.cat((self.cached_k, k), dim=2)
                v = self.cached_v = torch.cat((self.cached_v, v), dim=2)
        mask = None if attn_bias is None else attn_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, L, C))


class AdaLNSelfAttn(nn.Module):
    """x += γ1·attn(LN(x)·(1+s1)+b1); x += γ2·ffn(LN(x)·(1+s2)+b2), the six modulations from the condition
    (`ada_lin`, or `ada_gss` + the shared projection when `shared_aln`)."""

    def __init__(self, embed_dim: int, cond_dim: int, num_heads: int, mlp_ratio: float, norm_eps: float,
                 shared_aln: bool, attn_l2_norm: bool) -> None:
        super().__init__()
        self.C, self.D = embed_dim, cond_dim
        self.attn = SelfAttention(embed_dim, num_heads, attn_l2_norm)
        self.ffn = FFN(embed_dim, round(embed_dim * mlp_ratio))
        self.ln_wo_grad = nn.LayerNorm(embed_dim, eps=norm_eps, elementwise_affine=False)
        self.shared_aln = shared_aln
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, embed_dim) / embed_dim ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * embed_dim))

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        mod = (self.ada_gss + cond_BD) if self.shared_aln else self.ada_lin(cond_BD).view(-1, 1, 6, self.C)
        g1, g2, s1, s2, b1, b2 = mod.unbind(2)
        x = x + self.attn(self.ln_wo_grad(x) * (s1 + 1) + b1, attn_bias=attn_bias) * g1
        return x + self.ffn(self.ln_wo_grad(x) * (s2 + 1) + b2) * g2


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, D: int, norm_eps: float) -> None:
        super().__init__()
        self.C, self.D = C, D
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * C))

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x) * (scale + 1) + shift


class SharedAdaLin(nn.Linear):
    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:
        return super().forward(cond_BD).view(-1, 1, 6, self.weight.shape[0] // 6)


class VAR(nn.Module):
    """The VAR transformer (class-conditional next-scale prediction), official names.

    Args (released d16: depth 16, embed_dim 1024, num_heads 16, attn_l2_norm True; width = 64·depth):
        Cvae, vocab_size: the VQ's latent width and codebook size.
        num_classes: classes (the null class for guidance is index `num_classes`).
        patch_nums: the scales, coarse to fine.
    """

    def __init__(self, *, Cvae: int, vocab_size: int, num_classes: int = 1000, depth: int = 16,
                 embed_dim: int = 1024, num_heads: int = 16, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 shared_aln: bool = False, attn_l2_norm: bool = True,
                 patch_nums: Sequence[int] = OFFICIAL_PATCH_NUMS) -> None:
        super().__init__()
        self.Cvae, self.V, self.depth, self.C, self.D = Cvae, vocab_size, depth, embed_dim, embed_dim
        self.num_heads, self.num_classes = num_heads, num_classes
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.config = dict(Cvae=Cvae, vocab_size=vocab_size, num_classes=num_classes, depth=depth,
                           embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, norm_eps=norm_eps,
                           shared_aln=shared_aln, attn_l2_norm=attn_l2_norm, patch_nums=self.patch_nums)
        self.L = sum(p * p for p in self.patch_nums)
        self.first_l = self.patch_nums[0] ** 2
        self.begin_ends, cur = [], 0
        for p in self.patch_nums:
            self.begin_ends.append((cur, cur + p * p))
            cur += p * p
        std = math.sqrt(1 / embed_dim / 3)
        self.word_embed = nn.Linear(Cvae, embed_dim)
        self.class_emb = nn.Embedding(num_classes + 1, embed_dim)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, embed_dim))
        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, embed_dim))
        self.lvl_embed = nn.Embedding(len(self.patch_nums), embed_dim)
        for t in (self.class_emb.weight, self.pos_start, self.pos_1LC, self.lvl_embed.weight):
            nn.init.trunc_normal_(t.data, std=std)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(embed_dim, 6 * embed_dim)) if shared_aln \
            else nn.Identity()
        self.blocks = nn.ModuleList([AdaLNSelfAttn(embed_dim, embed_dim, num_heads, mlp_ratio, norm_eps, shared_aln,
                                                   attn_l2_norm) for _ in range(depth)])
        lvl = torch.cat([torch.full((p * p,), i) for i, p in enumerate(self.patch_nums)]).view(1, self.L, 1)
        self.register_buffer("lvl_1L", lvl.transpose(1, 2)[:, 0].contiguous())
        self.register_buffer("attn_bias_for_masking",
                             torch.where(lvl >= lvl.transpose(1, 2), 0.0, -torch.inf).reshape(1, 1, self.L, self.L))
        self.head_nm = AdaLNBeforeHead(embed_dim, embed_dim, norm_eps)
        self.head = nn.Linear(embed_dim, vocab_size)

    def logits(self, x: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_nm(x.float(), cond_BD.float()).float()).float()

    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) from the class and the next-scale inputs (B, L − first_l, Cvae)."""
        b = label_B.shape[0]
        sos = cond = self.class_emb(label_B)
        x = sos.unsqueeze(1).expand(b, self.first_l, -1) + self.pos_start.expand(b, self.first_l, -1)
        x = torch.cat((x, self.word_embed(x_BLCv_wo_first_l.float())), dim=1)
        x = x + self.lvl_embed(self.lvl_1L.expand(b, -1)) + self.pos_1LC
        gss = self.shared_ada_lin(cond)
        for blk in self.blocks:
            x = blk(x, gss, self.attn_bias_for_masking)
        return self.logits(x, cond)


def sample_with_top_k_top_p_(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0, rng=None,
                             num_samples: int = 1, temperature: float = 1.0) -> torch.Tensor:
    """VAR's per-scale sampler (one call per scale; guard's loop hook wraps this name): logits (B, l, V)
    -> ids (B, l, num_samples). top_k 0 / top_p 0 are off; temperature 0 takes the argmax. Modifies the
    logits in place, as VAR's does."""
    b, l, V = logits_BlV.shape
    if temperature == 0:
        return logits_BlV.argmax(-1, keepdim=True)
    if temperature != 1.0:
        logits_BlV.div_(temperature)
    if top_k and 0 < top_k < V:
        kth = logits_BlV.topk(top_k, dim=-1, sorted=False)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth, -torch.inf)
    if top_p and top_p > 0:
        sorted_logits, order = logits_BlV.sort(dim=-1, descending=False)
        drop = sorted_logits.softmax(-1).cumsum(-1) <= (1 - top_p)
        drop[..., -1:] = False
        logits_BlV.masked_fill_(drop.scatter(-1, order, drop), -torch.inf)
    probs = logits_BlV.softmax(-1).view(-1, V)
    return torch.multinomial(probs, num_samples=num_samples, replacement=True, generator=rng).view(b, l, num_samples)


# ================================================================================================ adapters

def _scale_spec(value: str | Sequence[int], n_scales: int) -> tuple[int, ...]:
    """'all' | 'last' | 'lastN' | 'from:K' | '3,4,5' | a sequence of indices -> sorted scale indices."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v == "all":
            out = list(range(n_scales))
        elif v == "last":
            out = [n_scales - 1]
        elif re.fullmatch(r"last\d+", v):
            k = int(v[4:])
            if not 1 <= k <= n_scales:
                raise ConfigError(f"detect scales {value!r}: N in lastN must be in [1, {n_scales}]")
            out = list(range(n_scales - k, n_scales))
        elif re.fullmatch(r"[\d,\s]+", v):
            out = [int(s) for s in v.replace(" ", "").split(",") if s]
        else:
            raise ConfigError(f"detect scales must be 'all', 'last', 'lastN' or indices like '7,8,9', got {value!r}")
    else:
        out = [int(s) for s in value]
    if not out or any(not 0 <= s < n_scales for s in out) or len(set(out)) != len(out):
        raise ConfigError(f"detect scales must be distinct indices in [0, {n_scales}), got {value!r}")
    return tuple(sorted(out))


class VARTokenizer:
    """VAR's multi-scale VQ-VAE as a guard `Tokenizer`: images (B,3,S,S) in [0,1] <-> pyramids (B, 1, L).

    Args:
        vq: a `VQVAE` (kept in float32).
        digest: SHA-256 of its weights.
        detect_scales: which scales `encode` returns for detection — 'all' (default), 'last', 'lastN' or
            scale indices ('7,8,9'); in a spec: `var:PATH@last3`. With anything but 'all' the tokenizer is a
            detection view: `encode` returns (B, 1, n) with n = Σ pn² over those scales (`n_counted`) and
            `decode` refuses; `grid` stays (1, L), so keys made for `var:PATH` are accepted.
        batch_size: images per encoder/decoder call.

    The `id` hashes the VQ weights and the scales (patch_nums), not `detect_scales`: every view re-quantises
    with the same VQ and the same green lists, so a key made for `var:PATH` detects through any view. The
    exact test needs no assumption about which scales carry the mark (the green set is independent of the
    image whichever codes are counted); the choice only moves power.
    """

    def __init__(self, vq: VQVAE, *, digest: str, detect_scales: str | Sequence[int] = DETECT_SCALES,
                 batch_size: int = 16) -> None:
        self.vq = vq.float().eval()
        self.batch_size = int(batch_size)
        self.scales = tuple(vq.quantize.v_patch_nums)
        self.slices = []
        cur = 0
        for p in self.scales:
            self.slices.append((cur, cur + p * p))
            cur += p * p
        self.n_tokens = cur
        self.detect_scales = _scale_spec(detect_scales, len(self.scales))
        self.full = self.detect_scales == tuple(range(len(self.scales)))
        self._image_size = self.scales[-1] * vq.downsample
        self.digest = digest
        geo = hashlib.sha256(f"{digest}|{','.join(map(str, self.scales))}".encode()).hexdigest()
        self._id = f"var-vq-{vq.vocab_size}@{geo[:12]}"

    def __repr__(self) -> str:
        return f"VARTokenizer(id={self._id!r}, scales={self.scales}, detect_scales={self.detect_scales})"

    id = property(lambda self: self._id)
    vocab_size = property(lambda self: int(self.vq.vocab_size))
    image_size = property(lambda self: self._image_size)
    alive = property(lambda self: None)
    device = property(lambda self: self.vq.quantize.embedding.weight.device)

    @property
    def grid(self) -> tuple[int, int]:
        """(1, L): the whole pyramid, the geometry a key binds (with `scales`), the same for every view.

        A detection view's `encode` returns only its n = `n_counted` of these L positions."""
        return (1, self.n_tokens)

    @property
    def n_counted(self) -> int:
        """Tokens per image that detection counts (L for the full tokenizer)."""
        return sum(self.scales[s] ** 2 for s in self.detect_scales)

    def view(self, detect_scales: str | Sequence[int]) -> "VARTokenizer":
        """The same VQ counting other scales (shares the module)."""
        return VARTokenizer(self.vq, digest=self.digest, detect_scales=detect_scales, batch_size=self.batch_size)

    def split(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """Full pyramids (B, 1, L) -> per-scale maps [(B, pn, pn)] coarse to fine."""
        flat = codes.reshape(codes.shape[0], -1)
        if flat.shape[1] != self.n_tokens:
            raise ConfigError(f"codes must be full VAR pyramids (B, 1, {self.n_tokens}), got {tuple(codes.shape)}")
        return [flat[:, a:b].reshape(-1, p, p) for (a, b), p in zip(self.slices, self.scales)]

    def select(self, codes: torch.Tensor) -> torch.Tensor:
        """Full pyramids (B, 1, L) -> the counted scales (B, 1, n) (identity for 'all')."""
        flat = codes.reshape(codes.shape[0], -1)
        if flat.shape[1] != self.n_tokens:
            raise ConfigError(f"codes must be full VAR pyramids (B, 1, {self.n_tokens}), got {tuple(codes.shape)}")
        if self.full:
            return flat[:, None, :]
        return torch.cat([flat[:, slice(*self.slices[s])] for s in self.detect_scales], 1)[:, None, :]

    def _check_images(self, images: torch.Tensor) -> None:
        s = self._image_size
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ConfigError(f"images must be float (B,3,{s},{s}) in [0,1], got {shape}")

    @torch.inference_mode()
    def encode_pyramid(self, images: torch.Tensor) -> torch.Tensor:
        """Residual multi-scale quantisation (VAR's `img_to_idxBl`): (B,3,S,S) in [0,1] -> long (B, 1, L) on the CPU."""
        self._check_images(images)
        out = []
        for i in range(0, len(images), self.batch_size):
            x = images[i:i + self.batch_size].to(self.device).float() * 2 - 1
            out.append(torch.cat(self.vq.img_to_idxBl(x), 1).cpu())
        return torch.cat(out)[:, None, :] if out else torch.empty(0, 1, self.n_tokens, dtype=torch.long)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) in [0,1] -> long (B, 1, n): the counted scales of the re-quantised pyramid."""
        return self.select(self.encode_pyramid(images))

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Full pyramids long (B, 1, L) -> float (B,3,S,S) in [0,1] on the CPU."""
        if not self.full:
            raise ConfigError(f"this VAR tokenizer counts scales {self.detect_scales} for detection and cannot "
                              f"decode; decode with the full tokenizer (detect_scales='all')")
        maps = self.split(codes)
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.vocab_size):
            raise ConfigError(f"codes must lie in [0, {self.vocab_size}), got [{int(codes.min())}, {int(codes.max())}]")
        out = []
        for i in range(0, codes.shape[0], self.batch_size):
            ms = [m[i:i + self.batch_size].reshape(m[i:i + self.batch_size].shape[0], -1).to(self.device) for m in maps]
            out.append(((self.vq.idxBl_to_img(ms) + 1) / 2).clamp(0, 1).float().cpu())
        s = self._image_size
        return torch.cat(out) if out else torch.empty(0, 3, s, s)

    @torch.inference_mode()
    def embeddings(self) -> torch.Tensor:
        """The codebook (V, Cvae) (Euclidean nearest-code search, as the quantiser uses)."""
        return self.vq.quantize.embedding.weight.detach().float().cpu().clone()


_IMAGENET: dict[str, int] | None = None


def _imagenet_index() -> dict[str, int]:
    global _IMAGENET
    if _IMAGENET is None:
        try:
            from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
        except ImportError:  # pragma: no cover - open-clip-torch is a dependency
            IMAGENET_CLASSNAMES = ()
        _IMAGENET = {}
        for i, name in enumerate(IMAGENET_CLASSNAMES):
            _IMAGENET.setdefault(name.lower(), i)
    return _IMAGENET


def parse_label(prompt: str, num_classes: int) -> int:
    """A class prompt -> label: '980', 'class 980', an ImageNet class name (1000 classes), '' / 'null' -> null class."""
    p = " ".join(str(prompt).split()).lower()
    if p in ("", "null", "uncond", "unconditional"):
        return num_classes
    m = re.fullmatch(r"(?:class\s*)?(\d+)", p)
    if m:
        label = int(m.group(1))
        if label >= num_classes:
            raise ConfigError(f"class {label} is out of range: this VAR checkpoint has {num_classes} classes "
                              f"(0..{num_classes - 1})")
        return label
    if num_classes == 1000 and p in _imagenet_index():
        return _imagenet_index()[p]
    raise ConfigError(f"VAR is class-conditional: a prompt must be a class index 0..{num_classes - 1} (e.g. '980')"
                      + (" or an ImageNet class name (e.g. 'volcano')" if num_classes == 1000 else "")
                      + f", got {prompt!r}")


class VARGenerator:
    """VAR's sampling loop (`autoregressive_infer_cfg`) behind guard's `Generator`: codes (B, 1, L).

    Guard processors run through `guard.models.loops.hook_sampler` on this module's
    `sample_with_top_k_top_p_` ("scale" convention): at scale k each of the pn² positions is processed
    with history = the codes of scales < k, after guidance, before temperature and top-k/top-p.
    """

    model_kind = "var"
    sampling_defaults = {"cfg": 2.5, "temperature": 1.0, "top_k": 900, "top_p": 0.96}
    """VAR's published FID setting (its cfg 1.5 in VAR's convention = guard cfg 2.5); the CLI's defaults."""

    def __init__(self, var: VAR, tokenizer: VARTokenizer, model_id: str, *, batch_size: int = 8) -> None:
        self.var = var.eval()
        self._tokenizer = tokenizer
        self._id = model_id
        self.batch_size = int(batch_size)

    def __repr__(self) -> str:
        return f"VARGenerator(id={self._id!r}, tokenizer={self._tokenizer.id!r})"

    id = property(lambda self: self._id)
    tokenizer = property(lambda self: self._tokenizer)
    device = property(lambda self: self.var.head.weight.device)

    def labels(self, prompts: Sequence[str]) -> list[int]:
        return [parse_label(p, self.var.num_classes) for p in prompts]

    @torch.inference_mode()
    def _sample(self, labels: torch.Tensor, cfg: float, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
        var, quant = self.var, self._tokenizer.vq.quantize
        b, dev, pns = labels.shape[0], labels.device, var.patch_nums
        n = len(pns)
        dtype = var.head.weight.dtype
        sos = cond = var.class_emb(torch.cat((labels, torch.full_like(labels, var.num_classes))))
        lvl_pos = var.lvl_embed(var.lvl_1L) + var.pos_1LC
        x = sos.unsqueeze(1).expand(2 * b, var.first_l, -1) + var.pos_start.expand(2 * b, var.first_l, -1) \
            + lvl_pos[:, :var.first_l]
        f_hat = torch.zeros(b, var.Cvae, pns[-1], pns[-1], device=dev)
        out, cur = [], 0
        for blk in var.blocks:
            blk.attn.kv_caching(True)
        try:
            gss = var.shared_ada_lin(cond)
            for si, pn in enumerate(pns):
                cur += pn * pn
                h = x.to(dtype)
                for blk in var.blocks:
                    h = blk(h, gss, None)
                logits = var.logits(h, cond)                                        # (2B, l, V) float32
                t = (cfg - 1.0) * si / max(n - 1, 1)
                logits = (1 + t) * logits[:b] - t * logits[b:]
                # looked up as a module global at call time, so hook_sampler can wrap it
                idx = sample_with_top_k_top_p_(logits, top_k=top_k, top_p=top_p, rng=None, num_samples=1,
                                               temperature=temperature)[:, :, 0]
                out.append(idx)
                emb = quant.embedding(idx).transpose(1, 2).reshape(b, var.Cvae, pn, pn).float()
                f_hat, nxt = quant.next_input(si, f_hat, emb)
                if si != n - 1:
                    nxt = var.word_embed(nxt.view(b, var.Cvae, -1).transpose(1, 2).to(dtype)) \
                        + lvl_pos[:, cur:cur + pns[si + 1] ** 2]
                    x = nxt.repeat(2, 1, 1)
        finally:
            for blk in var.blocks:
                blk.attn.kv_caching(False)
        return torch.cat(out, 1)

    def generate(self, prompts: Sequence[str], *, n: int = 1, seed: int | None = None, cfg: float = 2.5,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 logits_processor: Sequence | None = None) -> torch.Tensor:
        """Sample `n` pyramids per class prompt: codes long (len(prompts)*n, 1, L) on the CPU, prompt-major.

        Args:
            prompts: class prompts (see `parse_label`).
            n: images per prompt. seed: seeds torch's RNG for the call (restored after); None: fresh.
            cfg: guard guidance scale >= 1 at the last scale (ramped from 1 at the first; VAR cfg + 1).
            temperature: > 0 samples, 0 greedy. top_k, top_p: VAR's filters (None = off).
            logits_processor: callables `(history (B, t), scores (B, V)) -> scores`, applied per scale.
        """
        from .loops import hook_sampler

        all_prompts = check_sampling_args(prompts, n, cfg, temperature, top_k, top_p)
        labels = self.labels(all_prompts)
        procs = list(logits_processor or [])
        dev = self.device
        out = []
        with seeded(seed, dev), torch.inference_mode():
            for i in range(0, len(labels), self.batch_size):
                lab = torch.tensor(labels[i:i + self.batch_size], dtype=torch.long, device=dev)
                with hook_sampler(f"{__name__}.sample_with_top_k_top_p_", procs, convention="scale"):
                    codes = self._sample(lab, float(cfg), float(temperature), int(top_k or 0), float(top_p or 0.0))
                out.append(codes.to("cpu", torch.long))
        return torch.cat(out)[:, None, :]


# ================================================================================================ loading

def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling raises many types
        raise ModelError(f"VAR checkpoint unreadable: {path} ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
                         ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} is not a state dict of tensors (torch.save(model.state_dict()))")
    return state


def _count(state: dict, prefix: str) -> int:
    found = {int(m.group(1)) for k in state for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
    return max(found) + 1 if found else 0


def vqvae_config(state: dict, patch_nums: Sequence[int] | None = None) -> dict:
    """VQVAE kwargs read from a VQ-VAE state dict (the released `vae_ch160v4096z32.pth` or a tiny one)."""
    try:
        ch = int(state["encoder.conv_in.weight"].shape[0])
        cvae, _, ks, _ = state["quant_conv.weight"].shape
        vocab = int(state["quantize.embedding.weight"].shape[0])
        levels = _count(state, "encoder.down.")
        nrb = _count(state, "encoder.down.0.block.")
        mult = tuple(int(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) // ch for i in range(levels))
    except KeyError as e:
        raise ModelError(f"not a VAR VQ-VAE state dict (missing {e.args[0]})") from None
    if "quantize.quant_resi.qresi.weight" in state:
        share, counts = 1, 0
    elif any(k.startswith("quantize.quant_resi.qresi_ls.") for k in state):
        share, counts = _count(state, "quantize.quant_resi.qresi_ls."), 0
    else:
        share, counts = 0, _count(state, "quantize.quant_resi.")
    n_scales = int(state["quantize.ema_vocab_hit_SV"].shape[0]) if "quantize.ema_vocab_hit_SV" in state else None
    if patch_nums is None:
        if n_scales != len(OFFICIAL_PATCH_NUMS):
            raise ModelError(f"the VQ-VAE has {n_scales} scales and no VAR checkpoint names them; put the var_d*.pth "
                             f"next to it")
        patch_nums = OFFICIAL_PATCH_NUMS
    return dict(vocab_size=vocab, z_channels=int(cvae), ch=ch, ch_mult=mult, num_res_blocks=nrb,
                quant_conv_ks=int(ks), share_quant_resi=share, default_qresi_counts=counts,
                v_patch_nums=tuple(patch_nums), using_sa=f"encoder.down.{levels - 1}.attn.0.qkv.weight" in state,
                using_mid_sa="encoder.mid.attn_1.qkv.weight" in state)


def var_config(state: dict) -> dict:
    """VAR kwargs read from a transformer state dict (`var_d16.pth` …): depth, width, heads, classes, scales."""
    try:
        C, cvae = state["word_embed.weight"].shape
        depth = _count(state, "blocks.")
        lvl = state["lvl_1L"].reshape(-1)
        vocab = int(state["head.weight"].shape[0])
        classes = int(state["class_emb.weight"].shape[0]) - 1
        hidden = int(state["blocks.0.ffn.fc1.weight"].shape[0])
    except KeyError as e:
        raise ModelError(f"not a VAR transformer state dict (missing {e.args[0]})") from None
    counts = torch.bincount(lvl.long()).tolist()
    pns = [math.isqrt(c) for c in counts]
    if any(p * p != c for p, c in zip(pns, counts)):
        raise ModelError(f"lvl_1L does not describe square scales (tokens per scale {counts})")
    l2 = "blocks.0.attn.scale_mul_1H11" in state
    heads = int(state["blocks.0.attn.scale_mul_1H11"].shape[1]) if l2 else depth
    return dict(Cvae=int(cvae), vocab_size=vocab, num_classes=classes, depth=depth, embed_dim=int(C),
                num_heads=heads, mlp_ratio=hidden / int(C), shared_aln="blocks.0.ada_gss" in state,
                attn_l2_norm=l2, patch_nums=tuple(pns))


def _find(path: str | os.PathLike, spec: str) -> tuple[Path, Path | None]:
    """'var:DIR' (one vae*.pth, at most one var*.pth) or 'var:DIR/var_d16.pth' -> (vae file, var file or None)."""
    if not str(path).strip():
        raise ModelError(f"model spec {spec!r} has no path; use 'var:/path/to/folder' holding vae_ch160v4096z32.pth "
                         f"and var_d16.pth")
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"VAR checkpoint not found: {p} (no such file or directory)")
    folder, var_file = (p.parent, p) if p.is_file() else (p, None)
    vaes = sorted(folder.glob("vae*.pth"))
    if len(vaes) != 1:
        raise ModelError(f"expected one VQ-VAE file vae*.pth in {folder} (e.g. vae_ch160v4096z32.pth), found "
                         f"{len(vaes)}")
    if var_file is None:
        vars_ = sorted(folder.glob("var*.pth"))
        if len(vars_) > 1:
            raise ModelError(f"{folder} holds {len(vars_)} VAR files ({', '.join(v.name for v in vars_)}); name one: "
                             f"'var:{folder / vars_[0].name}'")
        var_file = vars_[0] if vars_ else None
    return vaes[0], var_file


def _build_vq(vae_file: Path, patch_nums: Sequence[int] | None, device: torch.device) -> tuple[VQVAE, str]:
    state = _torch_load(vae_file)
    vq = VQVAE(**vqvae_config(state, patch_nums))
    try:
        vq.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{vae_file} does not match VAR's VQ-VAE: {' '.join(str(e).split())[:200]}") from None
    vq = vq.to(device).float().eval().requires_grad_(False)
    return vq, weights_digest(vq)


def load_var_tokenizer(path: str | os.PathLike, *, device: str | torch.device | None = None, spec: str | None = None,
                       detect_scales: str | Sequence[int] = DETECT_SCALES, dtype: Any = None) -> VARTokenizer:
    """The VQ-VAE of a VAR checkpoint folder as a `VARTokenizer` (the scales are read from the var*.pth).

    `dtype` is accepted and ignored: the VQ-VAE always runs in float32 (codes must not depend on it)."""
    vae_file, var_file = _find(path, spec or f"var:{path}")
    pns = var_config(_torch_load(var_file))["patch_nums"] if var_file is not None else None
    vq, digest = _build_vq(vae_file, pns, pick_device(device))
    return VARTokenizer(vq, digest=digest, detect_scales=detect_scales)


def load_var(path: str | os.PathLike, *, device: str | torch.device | None = None,
             dtype: str | torch.dtype | None = None, spec: str | None = None, batch_size: int = 8) -> VARGenerator:
    """A local VAR checkpoint (released .pth state dicts, loaded with strict=True) as a guard `Generator`.

    Args:
        path: a folder with one `vae*.pth` and one `var*.pth`, or the `var_d*.pth` file itself.
        device: default CUDA when available. dtype: the transformer's (default bf16 on CUDA, fp32 on CPU);
            the VQ-VAE and the logits stay float32.
    """
    dev = pick_device(device)
    vae_file, var_file = _find(path, spec or f"var:{path}")
    if var_file is None:
        raise ModelError(f"no VAR transformer (var*.pth, e.g. var_d16.pth) next to {vae_file}; detection needs only "
                         f"the VQ-VAE, generation needs both")
    state = _torch_load(var_file)
    cfg = var_config(state)
    vq, digest = _build_vq(vae_file, cfg["patch_nums"], dev)
    if (cfg["Cvae"], cfg["vocab_size"]) != (vq.Cvae, vq.vocab_size):
        raise ModelError(f"{var_file.name} expects a VQ with {cfg['vocab_size']} codes of width {cfg['Cvae']}, but "
                         f"{vae_file.name} has {vq.vocab_size} x {vq.Cvae}")
    var = VAR(**cfg)
    try:
        var.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{var_file} does not match the VAR transformer: {' '.join(str(e).split())[:200]}") from None
    var = var.to(dev, pick_dtype(dtype, dev)).eval().requires_grad_(False)
    var.head.float()
    var.head_nm.float()
    tok = VARTokenizer(vq, digest=digest)
    h = hashlib.sha256(f"{digest}|{weights_digest(var)}".encode()).hexdigest()
    return VARGenerator(var, tok, f"var-d{cfg['depth']}@{h[:12]}", batch_size=batch_size)


# ================================================================================================ tiny configs

def build_tiny_var(*, vocab_size: int = 256, patch_nums: Sequence[int] = (1, 2, 3, 4), ch: int = 32,
                   ch_mult: Sequence[int] = (1, 1, 2), num_res_blocks: int = 1, z_channels: int = 8,
                   depth: int = 2, embed_dim: int = 64, num_heads: int = 2, num_classes: int = 10,
                   seed: int = 0) -> tuple[VQVAE, VAR]:
    """A randomly initialised tiny VQ-VAE + VAR of the official architecture (tests, `bench/gpu_check.py`)."""
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        vq = VQVAE(vocab_size=vocab_size, z_channels=z_channels, ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                   v_patch_nums=patch_nums)
        var = VAR(Cvae=z_channels, vocab_size=vocab_size, num_classes=num_classes, depth=depth, embed_dim=embed_dim,
                  num_heads=num_heads, patch_nums=patch_nums)
    return vq.eval(), var.eval()


def save_var_checkpoint(folder: str | os.PathLike, vq: VQVAE, var: VAR | None = None, *,
                        vae_name: str = "vae_tiny.pth", var_name: str | None = None) -> Path:
    """Write state dicts in the released layout (`torch.save(module.state_dict())`): `vae_*.pth`, `var_d{depth}.pth`."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(vq.state_dict(), out / vae_name)
    if var is not None:
        torch.save(var.state_dict(), out / (var_name or f"var_d{var.depth}.pth"))
    return out


def _split_scales(path: str) -> tuple[str, str]:
    """'DIR@last3' -> ('DIR', 'last3'); 'DIR' -> ('DIR', DETECT_SCALES). Only a trailing '@' + a scale spec counts."""
    head, sep, tail = path.rpartition("@")
    if sep and re.fullmatch(r"all|last\d*|[\d,]+", tail.strip().lower()):
        return head, tail.strip()
    return path, DETECT_SCALES


KIND = ModelKind(
    name="var", spec="var:PATH[@SCALES]",
    load=lambda path, spec, **opts: load_var(_split_scales(path)[0], spec=spec, **opts),
    load_tokenizer=lambda path, spec, **opts: load_var_tokenizer(_split_scales(path)[0], spec=spec,
                                                                 detect_scales=_split_scales(path)[1], **opts),
    owns=lambda generator: isinstance(generator, VARGenerator), load_options=("device", "dtype"))
"""The `var` model kind: generator and tokenizer (class-conditional; no prompts, judge or EAR of its own).
`@SCALES` ('all', 'last', 'lastN', '7,8,9') picks the scales detection counts; generation always uses the
whole pyramid."""
