"""`WatermarkProcessor`: biases image-token logits towards one green list per image.

A `transformers.LogitsProcessor`, so it drops into any `generate(logits_processor=[...])`, and the
reference generator's hand-written loop alike.

    >>> from guard.models import load
    >>> from guard.keys import WatermarkKey
    >>> from guard.watermark import GreenLists, WatermarkProcessor
    >>> gen = load("reference")
    >>> gl = GreenLists(WatermarkKey.create(gen.tokenizer), gen.tokenizer)
    >>> proc = WatermarkProcessor(gl, delta=2.0)
    >>> codes = gen.generate(["a big red disc in the upper left"], n=4, seed=0, logits_processor=[proc])
    >>> proc.list_indices          # one green-list index per image, for the manifest
    [5, 0, 3, 3]
"""

from __future__ import annotations

import hashlib
import math
import secrets
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

from ..errors import ConfigError
from .greenlists import GreenLists

__all__ = ["WatermarkProcessor"]


def _index_from_seed(seed: int, i: int, n_lists: int) -> int:
    """List index of the i-th image of a seeded run (version-stable: SHA-256, not a library RNG)."""
    digest = hashlib.sha256(f"guard/list-index/v1/{seed}/{i}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % n_lists


class WatermarkProcessor(LogitsProcessor):
    r"""Add a green-list bias to the scores of each image's rows: `scores + bias[list_index of the row]`.

    Each image uses one list of the key's pool for all its tokens. Indices are assigned when the
    processor first sees a batch (the batch size is only known then): from `list_index` when given,
    otherwise per image from a CSPRNG, or deterministically from `seed`. A new batch starts whenever
    the batch size changes or `input_ids` gets shorter (a generator that samples in chunks, or a second
    `generate` call); its images get the next indices, so `list_indices` lists every image in order.
    Generators that pass a constant prompt as `input_ids` (Janus) cannot signal a second call with the
    same batch size: use a fresh processor (or `reset()`) per `generate` call there.

    Args:
        green_lists (`GreenLists`): the key's lists for the generator's tokenizer.
        delta (`float`, defaults to 2.0): logit bonus of green codes (soft mode), finite and > 0.
        hard (`bool`, defaults to False): instead of a bonus, push red codes to -1e4 (finite, so
            classifier-free guidance never produces NaN); every sampled token is then green.
        list_index (`int` or sequence of ints, *optional*): the list of every image (an int) or of each
            image in order (a sequence); each in [0, K).
        seed (`int`, *optional*): draw the per-image indices from this seed instead of the CSPRNG
            (reproducible runs); not together with `list_index`.
        strict (`bool`, defaults to False): raise `ConfigError` from `check_sampling` when the sampling
            settings defeat the watermark, instead of warning.

    Shapes: `input_ids` long (B, t) (t may be 0 or constant), `scores` float (B, V) after guidance or
    (2B, V) with conditional rows then unconditional rows; rows i and i+B get the same list, and since
    guidance `u + s*(c-u)` is affine with weights summing to 1 the bias passes through it unchanged, so
    both layouts give the same sample distribution.
    """

    supports_continuous_batching = False  # per-image state: rows must stay the images they started as

    def __init__(self, green_lists: GreenLists, *, delta: float = 2.0, hard: bool = False,
                 list_index: int | Sequence[int] | torch.Tensor | None = None, seed: int | None = None,
                 strict: bool = False) -> None:
        if not isinstance(green_lists, GreenLists):
            raise ConfigError(f"green_lists must be a GreenLists, got {type(green_lists).__name__}")
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not math.isfinite(delta) or delta <= 0:
            raise ConfigError(f"delta must be a finite number > 0, got {delta!r}; use hard=True for a hard green "
                              f"list")
        if list_index is not None and seed is not None:
            raise ConfigError("pass list_index or seed, not both: seed only draws indices when none are given")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ConfigError(f"seed must be an int >= 0, got {seed!r}")
        self.green_lists = green_lists
        self.delta = float(delta)
        self.hard = bool(hard)
        self.seed = seed
        self.strict = bool(strict)
        self._fixed: int | None = None
        self._given: list[int] | None = None
        if isinstance(list_index, torch.Tensor):
            list_index = list_index.flatten().tolist() if list_index.ndim else int(list_index)
        if list_index is None:
            pass
        elif isinstance(list_index, Sequence) and not isinstance(list_index, str):
            if len(list_index) == 0:
                raise ConfigError("list_index must not be an empty sequence")
            self._given = [green_lists.check_index(k) for k in list_index]
        else:
            self._fixed = green_lists.check_index(list_index)
        self.reset()

    def reset(self) -> None:
        """Forget assigned indices; the next call starts a new run at image 0."""
        self.list_indices: list[int] = []
        self._defeated = False
        self._calls = 0
        self._rows_bias: torch.Tensor | None = None
        self._batch = -1
        self._last_len = -1

    # ----------------------------------------------------------------------------------- indices
    def _next_indices(self, b: int) -> list[int]:
        start = len(self.list_indices)
        if self._fixed is not None:
            return [self._fixed] * b
        if self._given is not None:
            if start + b > len(self._given):
                raise ConfigError(f"list_index has {len(self._given)} entries but generation asked for image "
                                  f"{start + b} (batch of {b}); give one index per image")
            return self._given[start:start + b]
        k = self.green_lists.n_lists
        if self.seed is not None:
            return [_index_from_seed(self.seed, start + i, k) for i in range(b)]
        return [secrets.randbelow(k) for _ in range(b)]

    def _start_batch(self, b: int, rows: int, scores: torch.Tensor) -> None:
        idx = self._next_indices(b)
        self.list_indices.extend(idx)
        table = (self.green_lists.hard_bias(scores.device, scores.dtype) if self.hard
                 else self.green_lists.bias(self.delta, scores.device, scores.dtype))
        sel = torch.tensor(idx, dtype=torch.long, device=scores.device)
        if rows == 2 * b:
            sel = torch.cat([sel, sel])
        self._rows_bias = table.index_select(0, sel)  # (rows, V), gathered once per batch
        self._batch = b

    # ----------------------------------------------------------------------------------- hot path
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Args: input_ids long (B, t); scores float (B, V) or (2B, V). Returns new scores, same shape."""
        b, t = input_ids.shape[0], (input_ids.shape[1] if input_ids.ndim > 1 else 0)
        rows = scores.shape[0]
        if scores.ndim != 2 or scores.shape[1] != self.green_lists.vocab_size:
            raise ConfigError(f"scores must be (rows, V={self.green_lists.vocab_size}) codebook logits, got "
                              f"{tuple(scores.shape)}; the adapter must pass image-codebook logits")
        if rows not in (b, 2 * b):
            raise ConfigError(f"scores have {rows} rows for a batch of {b} images; expected {b} (after guidance) "
                              f"or {2 * b} (conditional then unconditional rows)")
        bias = self._rows_bias
        if bias is None or b != self._batch or t < self._last_len:
            self._start_batch(b, rows, scores)
            bias = self._rows_bias
        elif bias.shape[0] != rows or bias.device != scores.device or bias.dtype != scores.dtype:
            idx = torch.tensor(self.list_indices[-b:], dtype=torch.long, device=scores.device)
            table = (self.green_lists.hard_bias(scores.device, scores.dtype) if self.hard
                     else self.green_lists.bias(self.delta, scores.device, scores.dtype))
            bias = self._rows_bias = table.index_select(0, torch.cat([idx, idx]) if rows == 2 * b else idx)
        self._last_len = t
        self._calls += 1
        return scores + bias

    # ----------------------------------------------------------------------------------- reporting
    def check_sampling(self, temperature: float | None = 1.0, top_k: int | None = None, do_sample: bool = True) -> bool:
        """Check that sampling settings let the watermark through; returns whether it will be applied.

        Greedy decoding (`do_sample=False` or temperature 0) and top_k=1 pick the argmax: a soft bias
        then only flips near-ties, so the green share is not what detection assumes. That case warns
        (or raises ConfigError when `strict`) and marks the record `applied=False`. Hard mode is
        unaffected: the argmax of hard-biased scores is green.
        """
        greedy = (not do_sample) or temperature == 0 or top_k == 1
        if greedy and not self.hard:
            what = ("do_sample=False" if not do_sample else "temperature=0" if temperature == 0 else "top_k=1")
            msg = (f"{what} makes decoding greedy, which defeats a soft watermark (delta={self.delta}); "
                   f"sample with temperature > 0 and top_k > 1, or use hard=True")
            if self.strict:
                raise ConfigError(msg)
            self._defeated = True
            warnings.warn(msg, UserWarning, stacklevel=2)
            return False
        self._defeated = False
        return True

    @property
    def applied(self) -> bool:
        """True once the processor has biased at least one step and sampling did not defeat it."""
        return self._calls > 0 and not self._defeated

    def record(self) -> dict[str, Any]:
        """Manifest fields: list_indices, delta (None in hard mode), hard, key_id, applied."""
        return {"list_indices": list(self.list_indices), "delta": None if self.hard else self.delta,
                "hard": self.hard, "key_id": self.green_lists.key_id, "applied": self.applied}

    def __repr__(self) -> str:
        mode = "hard" if self.hard else f"delta={self.delta}"
        return f"WatermarkProcessor(key_id={self.green_lists.key_id!r}, {mode}, K={self.green_lists.n_lists})"
