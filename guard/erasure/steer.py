"""`ConceptSteering`: erase concepts at inference time, with no training.

For each concept k with its prompt and strength η_k, the processor runs the generator on the concept
prompt alongside the real generation (its own KV cache, fed the same image codes), and on the null
prompt, and moves the logits away from the concept's guidance direction:

    l  <-  l − Σ_k η_k · (l_concept_k − l_uncond)

An *anchor* prompt per concept (e.g. the replacement, "a square" for "a circle") takes the place of the
null prompt in that concept's direction, l_concept_k − l_anchor_k: what the concept adds over its
replacement rather than over nothing. The null-prompt direction also carries "there is an object here",
and pushing away from it removes objects of every kind (measured in the README's erasure table).

In the B layout (scores after guidance) this is applied to the guided scores; in the 2B layout (cond rows
then uncond rows, before guidance) the same vector is subtracted from both rows of an image, and since
guidance u + s(c − u) has weights summing to 1 the guided result is identical. η = 0 is an exact no-op
(no extra pass is run for such a concept).

    >>> from guard.models import load
    >>> from guard.erasure import ConceptSteering
    >>> gen = load("reference")
    >>> steer = ConceptSteering(gen, {"a circle": 4.0, "a red shape": 2.0})
    >>> codes = gen.generate(["a big red disc in the upper left"], n=4, seed=0, logits_processor=[steer])
    >>> swap = ConceptSteering(gen, {"a circle": 4.0}, anchors={"a circle": "a square"})
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
from transformers import LogitsProcessor

from ..errors import ConfigError
from ..models import capability

__all__ = ["ConceptSteering", "ConceptStream", "STEER_PROMPT", "concept_stream_for"]

STEER_PROMPT = "a {concept}"
"""The default concept prompt of steering: `STEER_PROMPT.format(concept="circle")` is "a circle"."""


class ConceptStream(Protocol):
    """Incremental next-code logits for fixed prompts, fed the generated codes one step at a time.

    A model kind offers one as its `concept_stream` capability (`guard.models.registry`).
    """

    def start(self, prompts: Sequence[str], batch: int) -> torch.Tensor:
        """Reset; rows are prompt-major (prompt j, image i) -> row j*batch + i. Returns logits for position 0."""

    def step(self, codes: torch.Tensor) -> torch.Tensor:
        """Feed the codes (batch,) just sampled; returns (len(prompts)*batch, V) logits for the next position."""


def concept_stream_for(generator) -> ConceptStream:
    """The `ConceptStream` of a generator: its model kind's `concept_stream` capability.

    Raises `ModelError` naming the kind when it offers none (pass `stream=` to `ConceptSteering` instead).
    """
    return capability(generator, "concept_stream")(generator)


class ConceptSteering(LogitsProcessor):
    r"""Steer image-token logits away from one or several concepts: `l − Σ η_k (l_concept_k − l_anchor_k)`.

    Args:
        generator: the generator being sampled (its network runs the concept and null prompts).
        concepts (`Mapping[str, float]`): concept prompt -> η (finite, >= 0), e.g. {"a circle": 4.0}.
        anchors (`Mapping[str, str]`, *optional*): concept prompt -> anchor prompt whose logits replace the
            null prompt's in that concept's direction (default: every concept uses the null prompt).
        stream (`ConceptStream`, *optional*): overrides the stream built from `generator`.

    Shapes: `input_ids` long (B, t), the image codes sampled so far (t grows by one per call; t = 0 or a
    new batch size starts a new image batch); `scores` float (B, V) after guidance or (2B, V) with cond
    rows then uncond rows. Both layouts give the same guided logits.
    """

    supports_continuous_batching = False

    def __init__(self, generator, concepts: Mapping[str, float], *, anchors: Mapping[str, str] | None = None,
                 stream: ConceptStream | None = None) -> None:
        if not isinstance(concepts, Mapping) or not concepts:
            raise ConfigError("concepts must be a non-empty mapping of concept prompt -> eta, e.g. {'a circle': 4.0}")
        for prompt, eta in concepts.items():
            if not isinstance(prompt, str) or not prompt.strip():
                raise ConfigError(f"concept prompt must be a non-empty string, got {prompt!r}")
            if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
                raise ConfigError(f"eta for {prompt!r} must be a finite number >= 0, got {eta!r}")
        if anchors is not None and not isinstance(anchors, Mapping):
            raise ConfigError("anchors must map concept prompts to anchor prompts, e.g. {'a circle': 'a square'}")
        anchors = dict(anchors or {})
        for prompt, anchor in anchors.items():
            if prompt not in concepts:
                raise ConfigError(f"anchor given for {prompt!r}, which is not one of the concepts")
            if not isinstance(anchor, str) or not anchor.strip() or anchor == prompt:
                raise ConfigError(f"anchor for {prompt!r} must be a non-empty prompt other than the concept, "
                                  f"got {anchor!r}")
        self.concepts = {p: float(e) for p, e in concepts.items()}
        self.anchors = anchors
        self._active = [(p, e) for p, e in self.concepts.items() if e != 0.0]
        self.stream = stream if stream is not None else (concept_stream_for(generator) if self._active else None)
        self._etas = torch.tensor([e for _, e in self._active]).view(-1, 1, 1)
        # stream rows: the active concepts, then each distinct anchor they use, then the null prompt ""
        active = [p for p, _ in self._active]
        extra = [a for a in dict.fromkeys(anchors[p] for p in active if p in anchors) if a not in active]
        self._prompts = active + extra + [""]
        self._base_rows = torch.tensor([self._prompts.index(anchors.get(p, "")) for p in active], dtype=torch.long)
        self._logits: torch.Tensor | None = None
        self._batch = -1
        self._t = -1

    def reset(self) -> None:
        self._logits, self._batch, self._t = None, -1, -1

    def _advance(self, input_ids: torch.Tensor) -> torch.Tensor:
        b = input_ids.shape[0]
        t = input_ids.shape[1] if input_ids.ndim > 1 else 0
        if self._logits is None or t == 0 or b != self._batch or t < self._t:
            if t != 0:
                raise ConfigError(f"ConceptSteering joined a generation at step {t}; it must see every step from "
                                  f"the first image token (use a fresh processor per generate call)")
            self._logits = self.stream.start(self._prompts, b)
            self._batch = b
        elif t == self._t + 1:
            self._logits = self.stream.step(input_ids[:, -1])
        elif t != self._t:
            raise ConfigError(f"ConceptSteering saw step {t} after step {self._t}; it must be called once per token")
        self._t = t
        return self._logits

    def direction(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Σ η_k (l_concept_k − l_anchor_k) for the current step (anchor = null prompt by default): (B, V)."""
        logits = self._advance(input_ids)
        b = input_ids.shape[0]
        per = logits.view(len(self._prompts), b, -1)
        concept, base = per[:len(self._active)], per[self._base_rows]
        return (self._etas.to(logits.dtype) * (concept - base)).sum(0)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Args: input_ids long (B, t); scores float (B, V) or (2B, V). Returns new scores, same shape."""
        if not self._active:
            return scores
        b, rows = input_ids.shape[0], scores.shape[0]
        if rows not in (b, 2 * b):
            raise ConfigError(f"scores have {rows} rows for a batch of {b} images; expected {b} or {2 * b}")
        d = self.direction(input_ids).to(scores.dtype)
        if d.shape[-1] != scores.shape[-1]:
            raise ConfigError(f"scores have {scores.shape[-1]} columns but the concept stream gives {d.shape[-1]}")
        return scores - (torch.cat([d, d]) if rows == 2 * b else d)

    def __repr__(self) -> str:
        return f"ConceptSteering({self.concepts}" + (f", anchors={self.anchors})" if self.anchors else ")")
