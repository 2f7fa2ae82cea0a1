"""Adapter protocols every model plugs into: `Tokenizer` (image <-> codes) and `Generator`.

Shapes and ranges:
    images: float tensor (B, 3, H, W) in [0, 1], H = W = `Tokenizer.image_size`
    codes:  long tensor (B, h, w) of codebook ids in [0, vocab_size), (h, w) = `Tokenizer.grid`

Logits processors follow transformers' convention, `proc(input_ids, scores) -> scores`, with
`scores` float (rows, V). `rows` is B (after classifier-free guidance) or 2B (Janus: conditional rows
then unconditional rows, before guidance); a processor must give the same sample distribution in both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch

from ..errors import ConfigError

LogitsProcessorLike = Callable[[torch.LongTensor, torch.FloatTensor], torch.FloatTensor]


@runtime_checkable
class Tokenizer(Protocol):
    """A VQ image tokenizer."""

    @property
    def id(self) -> str:
        """Stable identifier including a hash of the weights, e.g. 'reference-vq-1024@3f2a9c0d1e2b'."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def grid(self) -> tuple[int, int]: ...

    @property
    def image_size(self) -> int: ...

    @property
    def alive(self) -> torch.Tensor | None:
        """Bool (V,) of codes the tokenizer actually emits, or None when unknown."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) float in [0,1] -> (B,h,w) long codes."""

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B,h,w) long codes -> (B,3,H,W) float in [0,1]."""

    def embeddings(self) -> torch.Tensor:
        """(V, d) code embeddings used for nearest-code search."""


@runtime_checkable
class Generator(Protocol):
    """A text-to-image autoregressive generator over a `Tokenizer`'s codes."""

    @property
    def id(self) -> str: ...

    @property
    def tokenizer(self) -> Tokenizer: ...

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        seed: int | None = None,
        cfg: float = 3.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        logits_processor: Sequence[LogitsProcessorLike] | None = None,
    ) -> torch.Tensor:
        """Sample `n` images per prompt; returns codes (len(prompts)*n, h, w), prompt-major."""


def check_sampling_args(prompts: Sequence[str], n: int, cfg: float, temperature: float, top_k: int | None,
                        top_p: float | None, *, allow_empty: bool = False) -> list[str]:
    """Validate `Generator.generate` arguments the same way for every adapter; returns prompts × n."""
    if isinstance(prompts, str):
        raise ConfigError("prompts must be a list of strings, got a single str; wrap it in a list")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"n must be an int >= 1, got {n!r}")
    if cfg < 1:
        raise ConfigError(f"cfg must be >= 1 (1 disables guidance), got {cfg}")
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    if not prompts and not allow_empty:
        raise ConfigError("prompts is empty; give at least one prompt")
    return [p for p in prompts for _ in range(n)]
