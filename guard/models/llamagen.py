"""LlamaGen (FoundationVision/LlamaGen) behind guard's `Tokenizer` / `Generator` protocols, from its `.pt` files.

LlamaGen is not a transformers model: its release is a VQ checkpoint (`vq_ds16_c2i.pt`, `vq_ds16_t2i.pt`,
`{"model": state_dict, ...}`) and a GPT checkpoint (`c2i_L_384.pt`, `t2i_XL_stage1_256.pt`; the state dict
under "model" (DDP), "module" (DeepSpeed), "state_dict", or at the top level (FSDP)). This module writes
the two architectures from the official description (`tokenizer/tokenizer_image/vq_model.py` and
`autoregressive/models/gpt.py` at ce98ec4) with the same module and parameter names, so those state dicts
load with `strict=True`; the shapes (widths, levels, codebook, layers, classes, caption width) are read
from the tensors themselves. Nothing from the LlamaGen repository is imported.

Spec: `llamagen:DIR[@SIZE]` (`llamagen:tiny`: the tiny model shipped with guard). DIR holds one `vq_*.pt` and one `c2i_*.pt` or `t2i_*.pt`, and optionally
`llamagen.json` (guard's card for the folder: `vq`, `gpt` file names, `image_size`, `n_head`,
`codebook_l2_norm`, `t5` folder, `cfg`, `top_k`, `temperature`, `top_p`). The image size comes from
`@SIZE`, else the card, else the GPT file name (`c2i_L_384.pt` -> 384). A folder with only a VQ is enough
for keys, post-hoc marking and detection.

* c2i prompts are ImageNet class ids ("207") or exact ImageNet class names ("golden retriever").
* t2i prompts are text, embedded by a local FLAN-T5 encoder folder (transformers `T5EncoderModel`,
  saved with `save_pretrained`; `t5` in the card, default `DIR/flan-t5-xl`), left-padded as the official
  sampler does (`caption * mask`, 120 tokens).

Sampling follows the official loop: classifier-free guidance on a doubled batch `[cond; null]` (null
class / learned `uncond_embedding`), `logits = u + (c - u) * cfg`, then guard's processors on the guided
`(B, V)` logits with the codebook history `(B, t)`, then temperature, top-k, top-p and multinomial.
Defaults are the official samplers': c2i cfg 4.0, top-k 2000; t2i cfg 7.5, top-k 1000; temperature 1.

    >>> from guard.models import load
    >>> gen = load("llamagen:/models/llamagen-c2i-L-384")            # vq_ds16_c2i.pt + c2i_L_384.pt
    >>> codes = gen.generate(["207"], n=2, seed=0)                   # (2, 24, 24) codebook ids
    >>> images = gen.tokenizer.decode(codes)                         # (2, 3, 384, 384) in [0, 1]
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, ModelError
from .base import check_sampling_args
from .registry import ModelKind

__all__ = ["GPTArgs", "KIND", "LlamaGenGenerator", "LlamaGenTokenizer", "Transformer", "VQArgs", "VQModel",
           "load_llamagen", "load_llamagen_tokenizer", "load_checkpoint", "save_checkpoint", "GPT_SIZES",
           "DEFAULTS", "ffn_hidden_size", "gpt_args_from_state", "vq_args_from_state"]

CARD_NAME = "llamagen.json"
GPT_SIZES = {"B": (12, 12, 768), "L": (24, 16, 1024), "XL": (36, 20, 1280), "XXL": (48, 24, 1536),
             "XXXL": (48, 40, 2560), "1B": (22, 32, 2048), "3B": (24, 32, 3200), "7B": (32, 32, 4096)}
"""Official GPT configurations: name -> (n_layer, n_head, dim); the head count is read from here by width."""
DEFAULTS = {"c2i": {"cfg": 4.0, "temperature": 1.0, "top_k": 2000, "top_p": None},
            "t2i": {"cfg": 7.5, "temperature": 1.0, "top_k": 1000, "top_p": None}}
"""The official samplers' defaults (`autoregressive/sample/sample_c2i.py`, `sample_t2i.py`)."""
CODEBOOK_USED = 65536  # length of the official quantiser's `codebook_used` usage buffer


# ================================================================================================ VQ
@dataclass
class VQArgs:
    """The VQ's architecture (official `ModelArgs` plus the widths the official code fixes: ch 128, 2 blocks)."""

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True
    encoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    decoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    z_channels: int = 256
    ch: int = 128
    num_res_blocks: int = 2


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = cin, cout
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = _norm(cout)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        return (self.nin_shortcut(x) if self.in_channels != self.out_channels else x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all h*w positions (1x1 conv projections)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = _norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = x.shape
        q, k, v = (m(h).reshape(b, c, hh * ww).transpose(1, 2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]     # (b, hw, c)
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, hh, ww))


class Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int) -> None:
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.conv_in = nn.Conv2d(3, ch, 3, 1, 1)
        in_mult = (1, *ch_mult)
        self.conv_blocks = nn.ModuleList()
        for i, m in enumerate(ch_mult):
            level = nn.Module()
            cin, cout = ch * in_mult[i], ch * m
            level.res = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.res.append(ResnetBlock(cin, cout))
                cin = cout
                if i == self.num_resolutions - 1:
                    level.attn.append(AttnBlock(cin))
            if i != self.num_resolutions - 1:
                level.downsample = Downsample(cin)
            self.conv_blocks.append(level)
        self.mid = nn.ModuleList([ResnetBlock(cin, cin), AttnBlock(cin), ResnetBlock(cin, cin)])
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.conv_blocks):
            for j in range(self.num_res_blocks):
                h = level.res[j](h)
                if len(level.attn):
                    h = level.attn[j](h)
            if i != self.num_resolutions - 1:
                h = level.downsample(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int) -> None:
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        cin = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, cin, 3, 1, 1)
        self.mid = nn.ModuleList([ResnetBlock(cin, cin), AttnBlock(cin), ResnetBlock(cin, cin)])
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(self.num_resolutions)):
            level = nn.Module()
            cout = ch * ch_mult[i]
            level.res = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.res.append(ResnetBlock(cin, cout))
                cin = cout
                if i == self.num_resolutions - 1:
                    level.attn.append(AttnBlock(cin))
            if i != 0:
                level.upsample = Upsample(cin)
            self.conv_blocks.append(level)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, 3, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for i, level in enumerate(self.conv_blocks):
            for j in range(self.num_res_blocks + 1):
                h = level.res[j](h)
                if len(level.attn):
                    h = level.attn[j](h)
            if i != self.num_resolutions - 1:
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-code quantiser; with `l2_norm` both latents and codebook rows are L2-normalised (cosine)."""

    def __init__(self, n_e: int, e_dim: int, l2_norm: bool, show_usage: bool) -> None:
        super().__init__()
        self.n_e, self.e_dim, self.l2_norm = n_e, e_dim, l2_norm
        self.embedding = nn.Embedding(n_e, e_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_e, 1.0 / n_e)
        if l2_norm:
            self.embedding.weight.data = F.normalize(self.embedding.weight.data, dim=-1)
        if show_usage:
            self.register_buffer("codebook_used", torch.zeros(CODEBOOK_USED))

    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """z float (B, d, h, w) -> long (B, h, w): argmin of the (normalised) Euclidean distance."""
        b, d, h, w = z.shape
        zf = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        book = self.codebook().float()
        if self.l2_norm:
            zf = F.normalize(zf, dim=-1)
        dist = (zf ** 2).sum(1, keepdim=True) + (book ** 2).sum(1) - 2 * zf @ book.T
        return dist.argmin(1).view(b, h, w)

    def get_codebook_entry(self, indices: torch.Tensor) -> torch.Tensor:
        """long (B, h, w) -> float (B, d, h, w)."""
        return self.codebook()[indices].permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    """LlamaGen's VQ tokenizer (VQ-16: ch_mult [1,1,2,2,4], factor 16; VQ-8: [1,2,2,4], factor 8)."""

    def __init__(self, args: VQArgs) -> None:
        super().__init__()
        if args.encoder_ch_mult != args.decoder_ch_mult:
            raise ConfigError("encoder_ch_mult and decoder_ch_mult must match (the grid depends on both)")
        bad = [args.ch * m for m in args.encoder_ch_mult if (args.ch * m) % 32]
        if bad:
            raise ConfigError(f"VQ widths must be multiples of 32 (GroupNorm(32)), got {bad}")
        self.config = args
        self.encoder = Encoder(args.ch, args.encoder_ch_mult, args.num_res_blocks, args.z_channels)
        self.decoder = Decoder(args.ch, args.decoder_ch_mult, args.num_res_blocks, args.z_channels)
        self.quantize = VectorQuantizer(args.codebook_size, args.codebook_embed_dim, args.codebook_l2_norm,
                                        args.codebook_show_usage)
        self.quant_conv = nn.Conv2d(args.z_channels, args.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(args.codebook_embed_dim, args.z_channels, 1)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.config.encoder_ch_mult) - 1)

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """x in [-1, 1] (B,3,H,W) -> pre-quantisation latents (B, d, H/f, W/f)."""
        return self.quant_conv(self.encoder(x))

    def decode_latents(self, q: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(q))

    def decode_code(self, codes: torch.Tensor) -> torch.Tensor:
        """long (B, h, w) -> images in [-1, 1] (not clamped), as the official `decode_code`."""
        return self.decode_latents(self.quantize.get_codebook_entry(codes))


def vq_args_from_state(state: dict[str, torch.Tensor], *, l2_norm: bool = True) -> VQArgs:
    """The VQ architecture a state dict holds (widths, levels, blocks, codebook), official names expected."""
    try:
        ch = int(state["encoder.conv_in.weight"].shape[0])
        n_levels = 1 + max(int(m.group(1)) for k in state
                           if (m := re.match(r"encoder\.conv_blocks\.(\d+)\.", k)))
        mult = [int(state[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0]) // ch for i in range(n_levels)]
        blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.conv_blocks\.0\.res\.(\d+)\.", k)))
        book = state["quantize.embedding.weight"]
        z = int(state["encoder.conv_out.weight"].shape[0])
    except (KeyError, ValueError) as e:
        raise ModelError(f"not a LlamaGen VQ state dict (missing {e}); expected the official VQModel names "
                         f"(encoder.conv_blocks.*, quantize.embedding.weight, ...)") from None
    return VQArgs(codebook_size=int(book.shape[0]), codebook_embed_dim=int(book.shape[1]), codebook_l2_norm=l2_norm,
                  codebook_show_usage="quantize.codebook_used" in state, encoder_ch_mult=mult,
                  decoder_ch_mult=list(mult), z_channels=z, ch=ch, num_res_blocks=blocks)


# ================================================================================================ GPT
@dataclass
class GPTArgs:
    """The GPT's architecture (official `ModelArgs`; `ffn_hidden` replaces multiple_of/ffn_dim_multiplier)."""

    dim: int = 1024
    n_layer: int = 24
    n_head: int = 16
    n_kv_head: int | None = None
    ffn_hidden: int = 2816
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    num_classes: int = 1000
    caption_dim: int = 2048
    model_type: str = "c2i"
    vocab_size: int = 16384
    cls_token_num: int = 1
    caption_tokens: int = 120
    block_size: int = 256
    class_dropout_prob: float = 0.1

    def __post_init__(self) -> None:
        if self.model_type not in ("c2i", "t2i"):
            raise ConfigError(f"model_type must be 'c2i' or 't2i', got {self.model_type!r}")
        if self.dim % self.n_head:
            raise ConfigError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        g = int(round(math.sqrt(self.block_size)))
        if g * g != self.block_size:
            raise ConfigError(f"block_size must be a square (grid h*w), got {self.block_size}")


def ffn_hidden_size(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """The official SwiGLU width: int(2*4*dim/3), times the multiplier, rounded up to `multiple_of`."""
    h = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        h = int(ffn_dim_multiplier * h)
    return h if h % multiple_of == 0 else h + multiple_of - h % multiple_of


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, dim: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels).unsqueeze(1)


class MLP(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cin, hidden, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, cout, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CaptionEmbedder(nn.Module):
    def __init__(self, caption_dim: int, dim: int, token_num: int) -> None:
        super().__init__()
        self.cap_proj = MLP(caption_dim, dim, dim)
        self.register_buffer("uncond_embedding", torch.randn(token_num, caption_dim) / caption_dim ** 0.5)

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        return self.cap_proj(caption)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def _rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotary embedding: x (B, S, H, D), freqs (S, D/2, 2) of (cos, sin) -> same shape as x."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    f = freqs.view(1, xs.shape[1], 1, xs.shape[3], 2)
    out = torch.stack([xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1],
                       xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]], dim=-1)
    return out.flatten(3).type_as(x)


def rope_2d(grid: int, head_dim: int, base: float, cls_token_num: int) -> torch.Tensor:
    """2-D RoPE table (cls_token_num + grid², head_dim/2, 2): half the pairs rotate with the row, half with the
    column; condition positions get zeros, as in the official code (their q and k vanish under rotation)."""
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    t = torch.outer(torch.arange(grid, dtype=torch.float32), freqs)                    # (grid, half/2)
    g = torch.cat([t[:, None, :].expand(-1, grid, -1), t[None, :, :].expand(grid, -1, -1)], dim=-1)
    cache = torch.stack([torch.cos(g), torch.sin(g)], dim=-1).flatten(0, 1)            # (grid², half, 2)
    return torch.cat([torch.zeros(cls_token_num, half, 2), cache])


class Attention(nn.Module):
    def __init__(self, a: GPTArgs) -> None:
        super().__init__()
        self.dim, self.n_head = a.dim, a.n_head
        self.n_kv_head = a.n_kv_head or a.n_head
        self.head_dim = a.dim // a.n_head
        self.wqkv = nn.Linear(a.dim, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(a.dim, a.dim, bias=False)
        self.cache: tuple[torch.Tensor, torch.Tensor] | None = None   # plain tensors: never in the state dict

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, pos: torch.Tensor | None, mask: torch.Tensor | None
                ) -> torch.Tensor:
        b, s, _ = x.shape
        kv = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([self.dim, kv, kv], dim=-1)
        q = _rope(q.view(b, s, self.n_head, self.head_dim), freqs).transpose(1, 2)
        k = _rope(k.view(b, s, self.n_kv_head, self.head_dim), freqs).transpose(1, 2)
        v = v.view(b, s, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.cache is not None and pos is not None:
            kc, vc = self.cache
            kc[:, :, pos] = k
            vc[:, :, pos] = v
            k, v = kc, vc
        rep = self.n_head // self.n_kv_head
        if rep > 1:
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.wo(out.transpose(1, 2).reshape(b, s, self.dim))


class TransformerBlock(nn.Module):
    def __init__(self, a: GPTArgs) -> None:
        super().__init__()
        self.attention = Attention(a)
        self.feed_forward = FeedForward(a.dim, a.ffn_hidden)
        self.attention_norm = RMSNorm(a.dim, a.norm_eps)
        self.ffn_norm = RMSNorm(a.dim, a.norm_eps)

    def forward(self, x, freqs, pos, mask):
        h = x + self.attention(self.attention_norm(x), freqs, pos, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """LlamaGen's GPT: condition tokens (class label or projected caption) then image tokens, 2-D RoPE."""

    def __init__(self, a: GPTArgs) -> None:
        super().__init__()
        self.config = a
        self.model_type, self.num_classes, self.cls_token_num = a.model_type, a.num_classes, a.cls_token_num
        self.vocab_size, self.block_size = a.vocab_size, a.block_size
        if a.model_type == "c2i":
            self.cls_embedding: nn.Module = LabelEmbedder(a.num_classes, a.dim, a.class_dropout_prob)
        else:
            self.cls_embedding = CaptionEmbedder(a.caption_dim, a.dim, a.caption_tokens)
        self.tok_embeddings = nn.Embedding(a.vocab_size, a.dim)
        self.layers = nn.ModuleList(TransformerBlock(a) for _ in range(a.n_layer))
        self.norm = RMSNorm(a.dim, a.norm_eps)
        self.output = nn.Linear(a.dim, a.vocab_size, bias=False)
        self.grid = int(round(math.sqrt(a.block_size)))
        self.freqs_cis = rope_2d(self.grid, a.dim // a.n_head, a.rope_base, a.cls_token_num)   # not a buffer
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.output.weight)

    def condition(self, cond: torch.Tensor) -> torch.Tensor:
        """Condition embeddings (B, T, dim): class ids long (B,) or caption features float (B, T, caption_dim)."""
        return self.cls_embedding(cond)[:, : self.cls_token_num]

    def forward(self, h: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings (B, S, dim) at positions `pos` (S,) -> logits float (B, S, V)."""
        freqs = self.freqs_cis.to(h.device)[pos]
        for layer in self.layers:
            h = layer(h, freqs, pos, mask)
        return self.output(self.norm(h)).float()

    def teacher_hidden(self, cond: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """Training-style pass (no cache): final normed hidden states (B, N, dim) at the positions that predict
        each of codes (B, N) from the condition and the codes before it. `mask` (B, T): valid caption tokens."""
        self.clear_caches()
        h = torch.cat([self.condition(cond), self.tok_embeddings(codes)], dim=1)
        t = self.cls_token_num if self.model_type == "t2i" else 1
        n = h.shape[1]
        allowed = None
        if mask is not None:
            allowed = torch.tril(torch.ones(n, n, dtype=torch.bool, device=h.device)).expand(len(h), n, n).clone()
            allowed[:, :, :t] &= mask[:, None, :].bool()
            allowed |= torch.eye(n, dtype=torch.bool, device=h.device)
            allowed = allowed[:, None]
        pos = torch.arange(n, device=h.device)
        freqs = self.freqs_cis.to(h.device)[pos]
        for layer in self.layers:
            h = layer(h, freqs, pos, allowed)
        return self.norm(h)[:, t - 1: t - 1 + codes.shape[1]]

    def teacher_logits(self, cond: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """Training-style forward (no cache): logits (B, N, V) predicting each of codes (B, N) from what precedes."""
        return self.output(self.teacher_hidden(cond, codes, mask)).float()

    def setup_caches(self, batch: int, length: int, dtype: torch.dtype) -> None:
        dev = self.tok_embeddings.weight.device
        for layer in self.layers:
            att = layer.attention
            shape = (batch, att.n_kv_head, length, att.head_dim)
            att.cache = (torch.zeros(shape, dtype=dtype, device=dev), torch.zeros(shape, dtype=dtype, device=dev))

    def clear_caches(self) -> None:
        for layer in self.layers:
            layer.attention.cache = None


def gpt_args_from_state(state: dict[str, torch.Tensor], *, block_size: int, n_head: int | None = None,
                        cls_token_num: int | None = None) -> GPTArgs:
    """The GPT architecture a state dict holds; the head count comes from the official table by width
    (`GPT_SIZES`) unless given; t2i condition length defaults to the rows of `uncond_embedding` (120)."""
    try:
        vocab, dim = (int(s) for s in state["tok_embeddings.weight"].shape)
        n_layer = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k)))
        hidden = int(state["layers.0.feed_forward.w1.weight"].shape[0])
        qkv = int(state["layers.0.attention.wqkv.weight"].shape[0])
    except (KeyError, ValueError) as e:
        raise ModelError(f"not a LlamaGen GPT state dict (missing {e}); expected the official Transformer names "
                         f"(tok_embeddings.weight, layers.N.attention.wqkv.weight, ...)") from None
    if n_head is None:
        by_dim = {d: h for _, h, d in GPT_SIZES.values()}
        if dim not in by_dim:
            raise ModelError(f"GPT width {dim} is not an official LlamaGen size ({', '.join(map(str, sorted(by_dim)))}); "
                             f"give the head count as \"n_head\" in {CARD_NAME}")
        n_head = by_dim[dim]
    head_dim = dim // n_head
    n_kv = (qkv // head_dim - n_head) // 2
    if "cls_embedding.embedding_table.weight" in state:
        rows = int(state["cls_embedding.embedding_table.weight"].shape[0])
        return GPTArgs(dim=dim, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv, ffn_hidden=hidden, model_type="c2i",
                       num_classes=rows - 1, vocab_size=vocab, cls_token_num=1, block_size=block_size)
    if "cls_embedding.cap_proj.fc1.weight" in state:
        un = state["cls_embedding.uncond_embedding"]
        return GPTArgs(dim=dim, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv, ffn_hidden=hidden, model_type="t2i",
                       caption_dim=int(un.shape[1]), vocab_size=vocab, caption_tokens=int(un.shape[0]),
                       cls_token_num=int(cls_token_num or un.shape[0]), block_size=block_size)
    raise ModelError("the GPT state dict has neither cls_embedding.embedding_table (c2i) nor cls_embedding.cap_proj "
                     "(t2i); not a LlamaGen GPT")


# ================================================================================================ files
_STATE_KEYS = ("model", "module", "state_dict")
_BENIGN = re.compile(r"^(freqs_cis|causal_mask|layers\.\d+\.attention\.kv_cache\.[kv]_cache)$")


def load_checkpoint(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The state dict of an official `.pt` file: under "model" / "module" / "state_dict", or the file itself.

    Reads with `weights_only=True` (no code runs from the file). One-line `ModelError` on any failure.
    """
    import argparse

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):    # training scripts store their args
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"llamagen {what} not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - pickle/zip errors come in many types; the message says which file
        raise ModelError(f"llamagen {what} {path} is unreadable as a torch checkpoint ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:120]})") from None
    if not isinstance(obj, dict):
        raise ModelError(f"llamagen {what} {path} holds a {type(obj).__name__}, not a state dict")
    for k in _STATE_KEYS:
        if isinstance(obj.get(k), dict):
            obj = obj[k]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ModelError(f"llamagen {what} {path} has no tensors under {', '.join(_STATE_KEYS)} or at the top level")
    return state


def save_checkpoint(module: nn.Module, path: str | os.PathLike, **extra: Any) -> Path:
    """Write `{"model": state_dict, **extra}` with `torch.save`, the layout of the official releases."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": module.state_dict(), **extra}, path)
    return path


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    state = {k: v for k, v in state.items() if not _BENIGN.match(k)}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        res = module.load_state_dict(state, strict=False) if "size mismatch" not in str(e) else None
        if res is None:
            msg = " ".join(str(e).split("size mismatch for ", 1)[-1].split())[:200]
            raise ModelError(f"{path}: a tensor has another shape than the architecture read from it ({msg})") from None
        parts = []
        if res.missing_keys:
            parts.append(f"missing {len(res.missing_keys)} (e.g. {', '.join(res.missing_keys[:3])})")
        if res.unexpected_keys:
            parts.append(f"unexpected {len(res.unexpected_keys)} (e.g. {', '.join(res.unexpected_keys[:3])})")
        raise ModelError(f"{path} does not match the official LlamaGen names: {'; '.join(parts)}") from None


# ================================================================================================ adapters
def _digest(state: dict[str, torch.Tensor]) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class LlamaGenTokenizer:
    """LlamaGen's VQ as a guard `Tokenizer` at one square image size: (B,3,S,S) in [0,1] <-> (B, S/f, S/f).

    Args:
        vq: a `VQModel` (kept in float32). image_size: pixels per side, a multiple of the VQ factor f.
        digest: SHA-256 of the VQ weights (the `id` carries 12 hex digits). batch_size: images per call.
    """

    model_kind = "llamagen"

    def __init__(self, vq: VQModel, *, image_size: int, digest: str, batch_size: int = 16) -> None:
        self.vq = vq.float().eval()
        f = vq.factor
        if not isinstance(image_size, int) or image_size < f or image_size % f:
            raise ConfigError(f"llamagen image size must be a positive multiple of the VQ factor {f}, got {image_size}")
        self._image_size = image_size
        self._grid = (image_size // f, image_size // f)
        self.batch_size = int(batch_size)
        self._id = f"llamagen-vq-{vq.config.codebook_size}@{digest[:12]}"

    def __repr__(self) -> str:
        return f"LlamaGenTokenizer(id={self._id!r}, grid={self._grid}, image_size={self._image_size})"

    id = property(lambda self: self._id)
    vocab_size = property(lambda self: int(self.vq.config.codebook_size))
    grid = property(lambda self: self._grid)
    image_size = property(lambda self: self._image_size)
    alive = property(lambda self: None, doc="Unknown for released VQs: every code counts (plain green lists).")
    device = property(lambda self: self.vq.quantize.embedding.weight.device)

    def _check_images(self, images: torch.Tensor) -> None:
        s = self._image_size
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ConfigError(f"images must be float (B,3,{s},{s}) in [0,1], got shape "
                              f"{tuple(getattr(images, 'shape', ()))}")

    def _check_codes(self, codes: torch.Tensor) -> None:
        h, w = self._grid
        if codes.ndim != 3 or tuple(codes.shape[1:]) != (h, w):
            raise ConfigError(f"codes must be long (B,{h},{w}), got shape {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.vocab_size):
            raise ConfigError(f"codes must lie in [0, {self.vocab_size}), got [{int(codes.min())}, {int(codes.max())}]")

    @torch.inference_mode()
    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) in [0,1] -> pre-quantisation latents float (B, d, h, w)."""
        self._check_images(images)
        return self.vq.latents(images.to(self.device).float() * 2 - 1)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) in [0,1] -> long (B,h,w) on the CPU (the official quantiser: cosine when l2-normalised)."""
        self._check_images(images)
        h, w = self._grid
        out = [self.vq.quantize.indices(self.latents(images[i:i + self.batch_size])).cpu()
               for i in range(0, len(images), self.batch_size)]
        return torch.cat(out) if out else torch.empty(0, h, w, dtype=torch.long)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B,h,w) long -> float (B,3,S,S) in [0,1] on the CPU."""
        self._check_codes(codes)
        out = [((self.vq.decode_code(codes[i:i + self.batch_size].to(self.device)).float() + 1) / 2).clamp(0, 1).cpu()
               for i in range(0, len(codes), self.batch_size)]
        s = self._image_size
        return torch.cat(out) if out else torch.empty(0, 3, s, s)

    @torch.inference_mode()
    def embeddings(self) -> torch.Tensor:
        """The codebook rows the decoder uses (L2-normalised when the quantiser is), float (V, d)."""
        return self.vq.quantize.codebook().detach().float().cpu().clone()


class T5Captions:
    """Caption features for t2i prompts from a local FLAN-T5 encoder folder, left-padded like the official sampler."""

    def __init__(self, folder: Path, max_len: int, device: torch.device, dtype: torch.dtype) -> None:
        from transformers import AutoTokenizer, T5EncoderModel

        from ._hf_common import offline

        if not folder.is_dir():
            raise ModelError(f"llamagen t2i needs a local T5 encoder folder (save_pretrained of "
                             f"google/flan-t5-xl) at {folder}; set \"t5\" in {CARD_NAME}")
        with offline():
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
                self.model = T5EncoderModel.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ModelError(f"T5 encoder unreadable in {folder}: {' '.join(str(e).split())[:160]}") from None
        self.model = self.model.to(device).eval()
        self.max_len = max_len

    @torch.inference_mode()
    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(features float (B, T, C) with padding at the front and zeroed, mask long (B, T))."""
        enc = self.tokenizer(list(prompts), max_length=self.max_len, padding="max_length", truncation=True,
                             return_tensors="pt")
        dev = next(self.model.parameters()).device
        ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
        feats = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        out, masks = [], []
        for f, m in zip(feats, mask):
            n = int(m.sum())
            out.append(torch.cat([f[n:], f[:n]]))
            masks.append(torch.flip(m, dims=[-1]))
        masks_t = torch.stack(masks)
        return torch.stack(out) * masks_t[:, :, None].to(feats.dtype), masks_t


def _imagenet_class(prompt: str, num_classes: int) -> int:
    p = prompt.strip()
    if p.isdigit():
        c = int(p)
    else:
        c = -1
        if num_classes == 1000:
            try:
                from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
            except ImportError:
                IMAGENET_CLASSNAMES = ()
            names = [n.lower() for n in IMAGENET_CLASSNAMES]
            c = names.index(p.lower()) if p.lower() in names else -1
        if c < 0:
            raise ConfigError(f"llamagen c2i prompts are class ids 0..{num_classes - 1} (or exact ImageNet class "
                              f"names), got {prompt!r}")
    if not 0 <= c < num_classes:
        raise ConfigError(f"class id {c} is outside 0..{num_classes - 1}")
    return c


def _filter(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Top-k then nucleus filtering (the official `top_k_top_p_filtering`), on a copy."""
    logits = logits.clone()
    if top_k is not None and top_k > 0:
        k = min(top_k, logits.shape[-1])
        logits[logits < torch.topk(logits, k)[0][..., -1, None]] = -float("inf")
    if top_p is not None and top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True)
        cum = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        drop = cum > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        logits[drop.scatter(1, idx, drop)] = -float("inf")
    return logits


class LlamaGenGenerator:
    """LlamaGen's GPT sampling codes for a `LlamaGenTokenizer` (c2i or t2i), with guard processors.

    Args:
        gpt: the `Transformer` (eval). tokenizer: the `LlamaGenTokenizer`. model_id: the generator id.
        captions: the t2i caption encoder (None for c2i). defaults: sampling defaults (cfg, temperature,
            top_k, top_p). batch_size: images per sampling loop.
    """

    model_kind = "llamagen"

    def __init__(self, gpt: Transformer, tokenizer: LlamaGenTokenizer, model_id: str, *,
                 captions: T5Captions | None = None, defaults: dict | None = None, batch_size: int = 8) -> None:
        if gpt.block_size != tokenizer.grid[0] * tokenizer.grid[1]:
            raise ConfigError(f"the GPT generates {gpt.block_size} tokens but the VQ grid at {tokenizer.image_size} px "
                              f"is {tokenizer.grid[0]}x{tokenizer.grid[1]}; use the image size the GPT was trained at")
        if gpt.vocab_size != tokenizer.vocab_size:
            raise ModelError(f"the GPT has {gpt.vocab_size} codes but the VQ codebook {tokenizer.vocab_size}; "
                             f"pair the GPT with its own VQ")
        self.gpt = gpt.eval()
        self._tokenizer = tokenizer
        self._id = model_id
        self.captions = captions
        self.sampling_defaults = dict(defaults or DEFAULTS[gpt.model_type])
        self.batch_size = int(batch_size)

    def __repr__(self) -> str:
        return f"LlamaGenGenerator(id={self._id!r}, type={self.gpt.model_type}, tokenizer={self._tokenizer.id!r})"

    id = property(lambda self: self._id)
    tokenizer = property(lambda self: self._tokenizer)
    device = property(lambda self: self.gpt.tok_embeddings.weight.device)

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Conditions for prompts: c2i class ids long (B,), or t2i (caption features (B, T, C), mask (B, T))."""
        if self.gpt.model_type == "c2i":
            return torch.tensor([_imagenet_class(p, self.gpt.num_classes) for p in prompts], device=self.device), None
        if self.captions is None:
            raise ModelError("this t2i LlamaGen has no T5 caption encoder; give its folder as \"t5\" in "
                             f"{CARD_NAME}")
        feats, mask = self.captions(prompts)
        return feats.to(self.device, self.gpt.tok_embeddings.weight.dtype), mask.to(self.device)

    def _null(self, cond: torch.Tensor) -> torch.Tensor:
        if self.gpt.model_type == "c2i":
            return torch.full_like(cond, self.gpt.num_classes)
        return torch.zeros_like(cond) + self.gpt.cls_embedding.uncond_embedding.to(cond.dtype)

    @torch.inference_mode()
    def _sample(self, cond: torch.Tensor, emb_mask: torch.Tensor | None, cfg: float, temperature: float,
                top_k: int | None, top_p: float | None, procs: Sequence) -> torch.Tensor:
        gpt, dev = self.gpt, self.device
        b = cond.shape[0]
        guided = cfg > 1.0
        both = torch.cat([cond, self._null(cond)]) if guided else cond
        rows = both.shape[0]
        t = gpt.cls_token_num if gpt.model_type == "t2i" else 1
        n = gpt.block_size
        length = t + n
        gpt.setup_caches(rows, length, gpt.tok_embeddings.weight.dtype)
        allowed = torch.tril(torch.ones(length, length, dtype=torch.bool, device=dev)).expand(rows, length, length)
        if emb_mask is not None:                      # hide padded caption positions, keep each token's own
            m = torch.cat([emb_mask, emb_mask]) if guided else emb_mask
            allowed = allowed.clone()
            allowed[:, :, :t] &= m[:, None, :].bool()
            allowed |= torch.eye(length, dtype=torch.bool, device=dev)
        history = torch.zeros(b, n, dtype=torch.long, device=dev)
        h = gpt.condition(both)
        pos = torch.arange(t, device=dev)
        try:
            for i in range(n):
                logits = gpt(h, pos, allowed[:, None, pos])[:, -1]
                if guided:
                    c, u = logits[:b], logits[b:]
                    logits = u + (c - u) * cfg
                for p in procs:
                    logits = p(history[:, :i], logits)
                if temperature > 0:
                    probs = F.softmax(_filter(logits / temperature, top_k, top_p), dim=-1)
                    nxt = torch.multinomial(probs, 1)[:, 0]
                else:
                    nxt = logits.argmax(-1)
                history[:, i] = nxt
                tok = nxt if not guided else torch.cat([nxt, nxt])
                h = gpt.tok_embeddings(tok)[:, None]
                pos = torch.tensor([t + i], device=dev)
        finally:
            gpt.clear_caches()
        return history

    def generate(self, prompts: Sequence[str], *, n: int = 1, seed: int | None = None, cfg: float | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 logits_processor: Sequence | None = None) -> torch.Tensor:
        """Sample `n` images per prompt: codes long (len(prompts)*n, h, w) on the CPU, prompt-major.

        Args: as `guard.models.Generator.generate`; None takes the checkpoint's defaults
        (`sampling_defaults`: cfg 4.0 / top-k 2000 for c2i, 7.5 / 1000 for t2i). Processors see the guided
        logits (B, V) and the codebook history (B, t).
        """
        d = self.sampling_defaults
        cfg = d["cfg"] if cfg is None else cfg
        temperature = d["temperature"] if temperature is None else temperature
        all_prompts = check_sampling_args(prompts, n, cfg, temperature, top_k, top_p)
        procs = list(logits_processor or [])
        hh, ww = self._tokenizer.grid
        out = []
        gen_devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=gen_devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(int(seed))
            for i in range(0, len(all_prompts), self.batch_size):
                cond, mask = self.encode_prompts(all_prompts[i:i + self.batch_size])
                codes = self._sample(cond, mask, float(cfg), float(temperature), top_k, top_p, procs)
                out.append(codes.view(-1, hh, ww).to("cpu", torch.long))
        return torch.cat(out)


# ================================================================================================ loading
def _card(folder: Path) -> dict:
    f = folder / CARD_NAME
    if not f.is_file():
        return {}
    try:
        card = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{f} is unreadable ({type(e).__name__})") from None
    if not isinstance(card, dict):
        raise ModelError(f"{f} must hold a JSON object")
    return card


def _split(path: str) -> tuple[str, int | None]:
    m = re.match(r"^(.*)@(\d+)$", path)
    if m and not Path(path).exists():
        return m.group(1), int(m.group(2))
    return path, None


SHIPPED = Path(__file__).resolve().parent / "weights" / "llamagen-tiny"
"""`llamagen:tiny`: a tiny LlamaGen-architecture VQ + c2i GPT trained on reference scenes (see its card.json)."""


def _folder(path: str, spec: str) -> Path:
    if path.strip() == "tiny" and not Path("tiny").exists():
        if not (SHIPPED / "card.json").is_file():
            raise ModelError(f"the tiny LlamaGen weights are not installed at {SHIPPED}; train them with "
                             f"bench/train_llamagen_tiny.py --out {SHIPPED}")
        return SHIPPED
    if not path.strip():
        raise ModelError(f"model spec {spec!r} has no path; use 'llamagen:/path/to/folder' (vq_*.pt and "
                         f"c2i_*.pt / t2i_*.pt)")
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"llamagen checkpoint folder not found: {p}")
    if not p.is_dir():
        raise ModelError(f"llamagen spec must name a folder holding vq_*.pt and c2i_*.pt / t2i_*.pt, got a file: {p}")
    return p


def _pick(folder: Path, card: dict, key: str, patterns: tuple[str, ...], what: str, required: bool) -> Path | None:
    if key in card:
        return folder / str(card[key])
    found = sorted({f for pat in patterns for f in folder.glob(pat)})
    if len(found) > 1:
        raise ModelError(f"{folder} holds several {what} files ({', '.join(f.name for f in found)}); name one as "
                         f"\"{key}\" in {CARD_NAME}")
    if not found:
        if required:
            raise ModelError(f"no {what} file ({' or '.join(patterns)}) in {folder}")
        return None
    return found[0]


def _image_size(folder: Path, card: dict, at: int | None, gpt_file: Path | None) -> int:
    if at is not None:
        return at
    if "image_size" in card:
        return int(card["image_size"])
    if gpt_file is not None:
        m = re.search(r"_(\d{2,4})\.pt$", gpt_file.name)
        if m:
            return int(m.group(1))
    raise ModelError(f"the image size of {folder} is unknown: use 'llamagen:{folder}@SIZE' (e.g. @256) or set "
                     f"\"image_size\" in {CARD_NAME}")


def _locate(path: str, spec: str | None, *, gpt_required: bool) -> tuple[Path, dict, Path, Path | None, int]:
    """`DIR[@SIZE]` -> (folder, card, VQ file, GPT file or None, image size); one-line ModelError otherwise."""
    p, at = _split(path)
    folder = _folder(p, spec or f"llamagen:{path}")
    card = _card(folder)
    vq_file = _pick(folder, card, "vq", ("vq_*.pt",), "VQ", True)
    gpt_file = _pick(folder, card, "gpt", ("c2i_*.pt", "t2i_*.pt"), "GPT", gpt_required)
    return folder, card, vq_file, gpt_file, _image_size(folder, card, at, gpt_file)


def _vq(vq_file: Path, card: dict) -> tuple[VQModel, str]:
    state = load_checkpoint(vq_file, "VQ checkpoint")
    vq = VQModel(vq_args_from_state(state, l2_norm=bool(card.get("codebook_l2_norm", True))))
    _load_strict(vq, state, vq_file)
    return vq, _digest(vq.state_dict())


def load_llamagen_tokenizer(path: str, *, spec: str | None = None, device: str | torch.device | None = None
                            ) -> LlamaGenTokenizer:
    """Only the VQ of a LlamaGen folder (`llamagen:DIR[@SIZE]`) at its image size."""
    from ._hf_common import pick_device

    folder, card, vq_file, gpt_file, size = _locate(path, spec, gpt_required=False)
    vq, digest = _vq(vq_file, card)
    return LlamaGenTokenizer(vq.to(pick_device(device)), image_size=size, digest=digest)


def load_llamagen(path: str, *, spec: str | None = None, device: str | torch.device | None = None,
                  dtype: str | torch.dtype | None = None, batch_size: int = 8) -> LlamaGenGenerator:
    """A LlamaGen folder (official `.pt` files) as a guard `Generator`; see the module docstring for the layout.

    Raises:
        ModelError: a missing folder/file, names that do not match the official architecture (strict load),
            a GPT/VQ pair that does not fit, or an unknown image size (one line).
    """
    from ._hf_common import pick_device, pick_dtype

    folder, card, vq_file, gpt_file, size = _locate(path, spec, gpt_required=True)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    vq, digest = _vq(vq_file, card)
    tok = LlamaGenTokenizer(vq.to(dev), image_size=size, digest=digest)
    state = load_checkpoint(gpt_file, "GPT checkpoint")
    grid = tok.grid
    args = gpt_args_from_state(state, block_size=grid[0] * grid[1], n_head=card.get("n_head"),
                               cls_token_num=card.get("cls_token_num"))
    gpt = Transformer(args)
    _load_strict(gpt, state, gpt_file)
    gpt = gpt.to(dev, dt).eval()
    captions = None
    if args.model_type == "t2i":
        t5 = folder / str(card.get("t5", "flan-t5-xl"))
        captions = T5Captions(t5, args.cls_token_num, dev, dt) if t5.exists() else None
    defaults = dict(DEFAULTS[args.model_type])
    defaults.update({k: card[k] for k in ("cfg", "temperature", "top_k", "top_p") if k in card})
    model_id = f"llamagen-{args.model_type}-{gpt_file.stem}@{_digest(state)[:12]}"
    return LlamaGenGenerator(gpt, tok, model_id, captions=captions, defaults=defaults, batch_size=batch_size)


# ================================================================================================ erasure
@dataclass(frozen=True)
class _Conditions:
    """Conditions of prompts that index like a tensor: class ids (B,) or caption features + mask (t2i)."""

    cond: torch.Tensor
    mask: torch.Tensor | None = None

    def __getitem__(self, idx) -> "_Conditions":
        return _Conditions(self.cond[idx], None if self.mask is None else self.mask[idx])

    def __len__(self) -> int:
        return len(self.cond)


class LlamaGenEarModel:
    """EAR interface of a `LlamaGenGenerator` (capability `ear_model`): the GPT's final hidden states,
    teacher-forced on [condition | codes]; the attention projections `layers.{i}.attention.{wqkv,wo}`.
    For c2i, "prompts" are class ids (erase class 207 towards 208); for t2i, text through the T5 encoder."""

    def __init__(self, generator: LlamaGenGenerator) -> None:
        self.generator = generator
        self.module = generator.gpt
        self.n_layers = len(generator.gpt.layers)

    def encode_prompts(self, prompts: Sequence[str]) -> _Conditions:
        cond, mask = self.generator.encode_prompts(list(prompts))
        return _Conditions(cond, mask)

    def image_hidden(self, module: nn.Module, text: _Conditions, codes: torch.Tensor) -> torch.Tensor:
        dev = module.tok_embeddings.weight.device
        mask = None if text.mask is None else text.mask.to(dev)
        return module.teacher_hidden(text.cond.to(dev), codes.to(dev), mask).float()

    def attention_parameter_names(self, layers: Sequence[int]) -> list[str]:
        return [f"layers.{i}.attention.{m}.weight" for i in layers for m in ("wqkv", "wo")]

    def with_module(self, module: nn.Module) -> LlamaGenGenerator:
        import copy

        erased = copy.copy(self.generator)
        erased.gpt = module.eval()
        return erased


KIND = ModelKind(
    name="llamagen", spec="llamagen:DIR[@SIZE]",
    load=lambda path, spec, **opts: load_llamagen(path, spec=spec, **opts),
    load_tokenizer=lambda path, spec, **opts: load_llamagen_tokenizer(path, spec=spec, **opts),
    owns=lambda generator: isinstance(generator, LlamaGenGenerator), ear_model=LlamaGenEarModel,
    load_options=("device", "dtype"))
"""The `llamagen` model kind: generator (c2i, t2i), tokenizer and EAR (no steering stream, prompts or judge)."""
