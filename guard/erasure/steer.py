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

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import torch
from transformers import LogitsProcessor

from ..errors import ConfigError, ModelError

__all__ = ["ConceptSteering", "ConceptStream", "JanusConceptStream", "ReferenceConceptStream", "concept_stream_for",
           "register_concept_stream"]


class ConceptStream(Protocol):
    """Incremental next-code logits for fixed prompts, fed the generated codes one step at a time."""

    def start(self, prompts: Sequence[str], batch: int) -> torch.Tensor:
        """Reset; rows are prompt-major (prompt j, image i) -> row j*batch + i. Returns logits for position 0."""

    def step(self, codes: torch.Tensor) -> torch.Tensor:
        """Feed the codes (batch,) just sampled; returns (len(prompts)*batch, V) logits for the next position."""


class ReferenceConceptStream:
    """`ConceptStream` over the reference ShapesGPT, with its own KV cache."""

    def __init__(self, gpt) -> None:
        self.gpt = gpt
        self._cache: list | None = None
        self._t = 0
        self._reps = 1

    @torch.no_grad()
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        for i, blk in enumerate(self.gpt.blocks):
            x = blk(x, self._cache, i)
        return self.gpt.head(self.gpt.ln_f(x[:, -1])).float()

    @torch.no_grad()
    def start(self, prompts: Sequence[str], batch: int) -> torch.Tensor:
        from ..models.reference.gpt import null_prompt, tokenize_prompts

        text = [null_prompt(1) if p == "" else tokenize_prompts([p]) for p in prompts]
        ids = torch.cat([t.expand(batch, -1) for t in text])
        self._cache = [None] * len(self.gpt.blocks)
        self._t = 0
        self._reps = len(prompts)
        return self._run(self.gpt.embed_prefix(ids))

    @torch.no_grad()
    def step(self, codes: torch.Tensor) -> torch.Tensor:
        if self._cache is None:
            raise RuntimeError("call start() first")
        pos = self.gpt.cfg.text_len + 1 + self._t
        self._t += 1
        embed = getattr(self.gpt, "embed_codes", self.gpt.image_emb)  # FSQ-level embeddings when the GPT has them
        x = embed(codes.repeat(self._reps))[:, None] + self.gpt.pos[:, pos: pos + 1]
        return self._run(x)


class JanusConceptStream:
    """`ConceptStream` over a `guard.models.janus.JanusGenerator`'s language model, with its own KV cache.

    The empty prompt "" stands for Janus's unconditional branch: the first concept prompt with every token
    but BOS and <begin_of_image> replaced by padding, as Janus builds its own unconditional rows.
    """

    def __init__(self, generator) -> None:
        from .ear import JanusEarModel

        self.ear = JanusEarModel(generator)
        self.model = generator.model
        self._cache = None
        self._mask: torch.Tensor | None = None
        self._reps = 1

    def _head(self, out) -> torch.Tensor:
        return self.model.model.generation_head(out.last_hidden_state[:, -1]).float()

    @torch.no_grad()
    def start(self, prompts: Sequence[str], batch: int) -> torch.Tensor:
        concept = [p for p in prompts if p] or ["a"]
        text = self.ear.encode_prompts(concept)
        gc = self.model.generation_config
        keep = torch.tensor([t for t in (gc.bos_token_id, gc.generation_kwargs.get("boi_token_id")) if t is not None])
        null_ids = text.input_ids[:1].masked_fill(~torch.isin(text.input_ids[:1], keep), int(gc.pad_token_id or 0))
        rows_ids, rows_mask = [], []
        for p in prompts:
            i = concept.index(p) if p else None
            ids = null_ids if i is None else text.input_ids[i:i + 1]
            mask = text.attention_mask[:1] if i is None else text.attention_mask[i:i + 1]
            rows_ids.append(ids.expand(batch, -1))
            rows_mask.append(mask.expand(batch, -1))
        device = next(self.model.parameters()).device
        ids, self._mask = torch.cat(rows_ids).to(device), torch.cat(rows_mask).to(device)
        out = self.model.model.language_model(inputs_embeds=self.model.get_input_embeddings()(ids),
                                              attention_mask=self._mask, use_cache=True)
        self._cache, self._reps = _cache_of(out), len(prompts)
        return self._head(out)

    @torch.no_grad()
    def step(self, codes: torch.Tensor) -> torch.Tensor:
        if self._cache is None:
            raise RuntimeError("call start() first")
        x = self.ear.code_embeddings(self.model, codes.repeat(self._reps)[:, None].to(self._mask.device))
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], 1)
        lm = self.model.model.language_model
        key = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
        out = lm(inputs_embeds=x, attention_mask=self._mask, use_cache=True, **{key: self._cache})
        self._cache = _cache_of(out)
        return self._head(out)


def _cache_of(out):
    """The KV cache of a transformers model output (`cache` in transformers 5, `past_key_values` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _is_janus(generator) -> bool:
    return type(generator).__name__ == "JanusGenerator" and type(generator).__module__.endswith("models.janus")


_STREAMS: list[tuple[Callable[[object], bool], Callable[[object], ConceptStream]]] = [(_is_janus, JanusConceptStream)]


def register_concept_stream(matches: Callable[[object], bool], factory: Callable[[object], ConceptStream]) -> None:
    """Teach `concept_stream_for` a new generator type."""
    _STREAMS.append((matches, factory))


def concept_stream_for(generator) -> ConceptStream:
    from ..models.reference import ReferenceGenerator

    if isinstance(generator, ReferenceGenerator):
        return ReferenceConceptStream(generator.gpt)
    for matches, factory in _STREAMS:
        if matches(generator):
            return factory(generator)
    raise ModelError(f"ConceptSteering has no concept stream for {type(generator).__name__}; pass stream= "
                     f"(a guard.erasure.steer.ConceptStream) or register one")


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
