"""The reference text-to-image GPT: a text prefix, a begin-of-image slot, then 256 image codes.

Sampling uses a KV cache and classifier-free guidance against a null prompt. Logits processors are
called once per image token with transformers' signature `(input_ids, scores)`, where `input_ids` are
the image codes sampled so far, (B, t), and `scores` are the guided logits (B, V) — or, with
`processor_layout="2B"`, the unguided logits of the conditional rows then the unconditional rows
(2B, V), as Janus presents them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .shapes import BACKGROUND_PREPOSITION, PREPOSITIONS, SYNONYMS

# Three object phrases of up to 9 words, two 'and', 'on' and a background of up to 3 words: 34.
TEXT_LEN = 40
SPECIAL = ("<pad>", "<null>", "<unk>")


def _text_vocab() -> tuple[str, ...]:
    words = {"a", "and", BACKGROUND_PREPOSITION}
    for phrases in list(SYNONYMS.values()) + [PREPOSITIONS]:
        for p in phrases:
            words.update(p.split())
    return SPECIAL + tuple(sorted(words))


TEXT_VOCAB = _text_vocab()
_WORD_ID = {w: i for i, w in enumerate(TEXT_VOCAB)}


def tokenize_prompts(prompts: Sequence[str]) -> torch.Tensor:
    """Word-level ids (B, TEXT_LEN); unknown words map to <unk>, long prompts are truncated."""
    out = torch.zeros(len(prompts), TEXT_LEN, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids = [_WORD_ID.get(w, _WORD_ID["<unk>"]) for w in re.findall(r"[a-z\-]+", p.lower())][:TEXT_LEN]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def null_prompt(batch: int) -> torch.Tensor:
    out = torch.zeros(batch, TEXT_LEN, dtype=torch.long)
    out[:, 0] = _WORD_ID["<null>"]
    return out


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 1024
    n_image_tokens: int = 256
    d_model: int = 192
    n_layer: int = 6
    n_head: int = 6
    text_vocab: int = len(TEXT_VOCAB)
    text_len: int = TEXT_LEN
    # FSQ tokenizers: the levels behind each code id; the input embedding then adds one embedding per
    # level, so codes that decode alike start alike (the output head stays a full softmax over ids).
    code_levels: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Keys and values of every layer in buffers allocated once for the whole sequence.

    Appending writes in place; a list cache (`[None] * n_layer`, grown with `torch.cat`) copies the whole
    history at every step, which on a CPU cost more than the attention itself for 297-token sequences.
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.k = torch.empty(n_layer, batch, n_head, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.length = [0] * n_layer

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, t, hd) after what the layer holds; return the layer's keys and values so far."""
        n, t = self.length[layer], k.shape[2]
        if n + t > self.k.shape[3]:
            raise ValueError(f"KV cache holds {self.k.shape[3]} positions; {n + t} asked")
        self.k[layer, :, :, n:n + t] = k
        self.v[layer, :, :, n:n + t] = v
        self.length[layer] = n + t
        return self.k[layer, :, :, :n + t], self.v[layer, :, :, :n + t]


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_head = cfg.n_head
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))

    def attend(self, x: torch.Tensor, cache: "KVCache | list | None", layer: int) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        if isinstance(cache, KVCache):
            k, v = cache.append(layer, k, v)
        elif cache is not None:
            if cache[layer] is not None:
                pk, pv = cache[layer]
                k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
            cache[layer] = (k, v)
        causal = t > 1
        if causal and k.shape[2] != t:
            raise ValueError("multi-token steps with a non-empty cache are not supported")
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor, cache: "KVCache | list | None" = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attend(x, cache, layer)
        return x + self.mlp(self.ln2(x))


class ShapesGPT(nn.Module):
    """Decoder-only transformer over [text (TEXT_LEN) | BOI | image codes]."""

    def __init__(self, cfg: GPTConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or GPTConfig()
        d = cfg.d_model
        self.text_emb = nn.Embedding(cfg.text_vocab, d)
        self.image_emb = nn.Embedding(cfg.vocab_size, d)
        if cfg.code_levels:
            levels = torch.tensor(cfg.code_levels, dtype=torch.long)
            self.register_buffer("levels", levels, persistent=False)
            self.register_buffer("basis", torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), levels[:-1]]), 0),
                                 persistent=False)
            self.level_emb = nn.ModuleList(nn.Embedding(int(lv), d) for lv in cfg.code_levels)
        self.boi = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.zeros(1, cfg.text_len + 1 + cfg.n_image_tokens, d))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Input embedding of image codes (any shape) -> (..., d)."""
        x = self.image_emb(codes)
        if self.cfg.code_levels:
            lv = (codes.unsqueeze(-1) // self.basis) % self.levels
            for i, emb in enumerate(self.level_emb):
                x = x + emb(lv[..., i])
        return x

    def embed_prefix(self, text_ids: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.text_emb(text_ids), self.boi.expand(len(text_ids), -1, -1)], 1)
        return x + self.pos[:, : x.shape[1]]

    def hidden_states(self, text_ids: torch.Tensor, codes: torch.Tensor) -> list[torch.Tensor]:
        """Teacher-forced residual stream after each block, (B, T+1+n-1, d) each (for erasure)."""
        x = torch.cat([self.embed_prefix(text_ids), self.embed_codes(codes[:, :-1]) +
                       self.pos[:, self.cfg.text_len + 1: self.cfg.text_len + codes.shape[1]]], 1)
        out = []
        for blk in self.blocks:
            x = blk(x)
            out.append(x)
        return out

    def forward(self, text_ids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits (B, n, V) predicting each of the `n` codes in `codes` (B, n)."""
        x = self.hidden_states(text_ids, codes)[-1]
        return self.head(self.ln_f(x[:, self.cfg.text_len:]))

    @torch.no_grad()
    def sample(
        self,
        text_ids: torch.Tensor,
        *,
        cfg_scale: float = 3.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        logits_processor: Sequence | None = None,
        processor_layout: str = "B",
    ) -> torch.Tensor:
        """Sample codes (B, n_image_tokens) for the prompts in `text_ids` (B, TEXT_LEN)."""
        if processor_layout not in ("B", "2B"):
            raise ValueError(f"processor_layout must be 'B' or '2B', got {processor_layout!r}")
        b = len(text_ids)
        guided = cfg_scale != 1.0
        ids = torch.cat([text_ids, null_prompt(b).to(text_ids.device)]) if guided else text_ids
        x = self.embed_prefix(ids)
        cache = KVCache(len(self.blocks), len(ids), self.cfg.n_head, x.shape[1] + self.cfg.n_image_tokens - 1,
                        self.cfg.d_model // self.cfg.n_head, dtype=x.dtype, device=x.device)
        out = torch.empty(b, self.cfg.n_image_tokens, dtype=torch.long, device=text_ids.device)
        procs = list(logits_processor or [])
        for t in range(self.cfg.n_image_tokens):
            for i, blk in enumerate(self.blocks):
                x = blk(x, cache, i)
            logits = self.head(self.ln_f(x[:, -1])).float()
            if guided and processor_layout == "2B":
                for p in procs:
                    logits = p(out[:, :t], logits)
            if guided:
                cond, uncond = logits[:b], logits[b:]
                logits = uncond + cfg_scale * (cond - uncond)
            if not guided or processor_layout == "B":
                for p in procs:
                    logits = p(out[:, :t], logits)
            nxt = sample_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            out[:, t] = nxt
            step_in = torch.cat([nxt, nxt]) if guided else nxt
            pos = self.cfg.text_len + 1 + t
            if t + 1 < self.cfg.n_image_tokens:
                x = self.embed_codes(step_in)[:, None] + self.pos[:, pos: pos + 1]
        return out


def sample_logits(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Temperature, top-k and top-p filtering, then one multinomial draw per row; 0 temperature = argmax."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
