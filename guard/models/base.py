"""Adapter protocols every model plugs into: `Tokenizer` (image <-> codes) and `Generator`; and the
vocabulary types of a kind's evaluation capabilities: `Concept`, `PromptSource`, `ConceptJudge`.

Shapes and ranges:
    images: float tensor (B, 3, H, W) in [0, 1], H = W = `Tokenizer.image_size`
    codes:  long tensor (B, h, w) of codebook ids in [0, vocab_size), (h, w) = `Tokenizer.grid`

Logits processors follow transformers' convention, `proc(input_ids, scores) -> scores`, with
`scores` float (rows, V). `rows` is B (after classifier-free guidance) or 2B (Janus: conditional rows
then unconditional rows, before guidance); a processor must give the same sample distribution in both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

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

    def generate(self, prompts: Sequence[str], *, n: int = 1, seed: int | None = None, cfg: float = 3.0,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 logits_processor: Sequence[LogitsProcessorLike] | None = None) -> torch.Tensor:
        """Sample `n` images per prompt; returns codes (len(prompts)*n, h, w), prompt-major.

        Every adapter validates these arguments with `check_sampling_args`.
        """


FORMS = ("train", "heldout_synonym", "paraphrase")
"""Forms of target prompts: the training template with a training synonym; the same template with a
synonym never used in training; other templates (paraphrases) with any synonym."""


@dataclass(frozen=True)
class Concept:
    """A concept of a model kind's vocabulary (e.g. a shape or a colour), with its synonym split.

    Attributes:
        name: the canonical word.
        kind: its category within the vocabulary (reference: "shape" or "colour"); a replacement must
            share it.
        train_words: synonyms that training prompts use.
        heldout_words: synonyms that only evaluation uses (does erasure generalise?).
    """

    name: str
    kind: str
    train_words: tuple[str, ...]
    heldout_words: tuple[str, ...]

    @property
    def words(self) -> tuple[str, ...]:
        return self.train_words + self.heldout_words


@runtime_checkable
class PromptSource(Protocol):
    """A kind's prompts (capability `prompts`): evaluation sets and the erasure vocabulary."""

    def eval_prompts(self, n: int, seed: int = 0) -> list[str]:
        """`n` prompts from scenes the generator never trained on (robustness evaluation)."""

    def eval_images(self, n: int, seed: int = 0) -> np.ndarray:
        """uint8 (n, S, S, 3): clean images of the scenes `eval_prompts(n, seed)` describes."""

    def concept(self, name: str) -> Concept:
        """The concept a word names (a canonical word or a synonym); `ConfigError` naming the vocabulary."""

    def target_prompts(self, concept: Concept, n: int, *, seed: int, form: str = "train",
                       exclude: Sequence[str] = ()) -> list[str]:
        """`n` prompts that each ask for `concept` once, in `form` (one of FORMS), naming none of `exclude`."""

    def non_target_prompts(self, concepts: Sequence[Concept], n: int, *, seed: int) -> list[str]:
        """`n` prompts that name none of `concepts`."""


@runtime_checkable
class ConceptJudge(Protocol):
    """Reads images of a kind (capability `judge`): concept presence and prompt adherence."""

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image predictions for float (B, 3, S, S) in [0, 1] (a layout the judge's other methods read)."""

    def present_in(self, pred: torch.Tensor, concept: Concept) -> torch.Tensor:
        """Bool (B,): does the concept appear anywhere in each image?"""

    def present(self, images: torch.Tensor, concept: Concept) -> torch.Tensor:
        """`present_in(predict(images), concept)`."""

    def replaced_at_prompt(self, pred: torch.Tensor, prompts: Sequence[str], concept: Concept,
                           replacement: Concept) -> torch.Tensor:
        """Bool (B,): where each prompt asked for the concept, the image shows the replacement instead."""

    def adherence(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[dict[str, float], torch.Tensor]:
        """({"shape", "colour", "both"}: share of prompted objects right, per-image bool: all objects right)."""


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


_REQUIRED = ("id", "vocab_size", "grid", "image_size", "encode", "decode")


def check_tokenizer_protocol(tokenizer: Any, need: tuple[str, ...] = _REQUIRED) -> None:
    """Raise ConfigError (one line) unless `tokenizer` has the attributes `need` of guard's `Tokenizer` protocol.

    The protocol requires `id`, `vocab_size`, `grid`, `image_size`, `encode`, `decode`; `alive` (None when
    absent: plain green lists), `embeddings` (post-hoc marking only) and `scales` (multi-scale tokenizers)
    are optional. Keys need only the first four (what they bind).
    """
    missing = [a for a in need if not hasattr(tokenizer, a)]
    if missing:
        raise ConfigError(f"{type(tokenizer).__name__} is not a guard Tokenizer: it lacks {', '.join(missing)} "
                          f"(needed: {', '.join(_REQUIRED)}; optional: alive, embeddings, scales; see "
                          f"guard.models.Tokenizer)")
    for a in ("encode", "decode"):
        if a in need and not callable(getattr(tokenizer, a)):
            raise ConfigError(f"{type(tokenizer).__name__}.{a} must be a method, got {type(getattr(tokenizer, a)).__name__}")
