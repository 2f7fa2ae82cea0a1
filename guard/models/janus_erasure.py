"""What erasure needs from Janus: EAR's hidden states and attention weights, and a concept stream for steering.

The `janus` kind (`guard.models.janus.KIND`) offers these as its `ear_model` and `concept_stream`
capabilities; `guard.erasure` finds them through the registry.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["JanusConceptStream", "JanusEarModel"]


@dataclass(frozen=True)
class _TextBatch:
    """Left-padded prompt ids + attention mask that index like a tensor (for real-model adapters)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __getitem__(self, idx) -> "_TextBatch":
        return _TextBatch(self.input_ids[idx], self.attention_mask[idx])

    def __len__(self) -> int:
        return len(self.input_ids)


class JanusEarModel:
    """EAR interface of a `guard.models.janus.JanusGenerator`.

    Hidden states: the language model run on [prompt (chat template + <begin_of_image>) | generation
    embeddings of the image codes], teacher-forced; the last hidden state at the <begin_of_image> position
    and at each image position predicts the next code. Attention projections: every parameter under
    `layers.{i}.self_attn.` of the language model (q/k/v/o, as EAR trains on Janus-Pro).
    """

    def __init__(self, generator) -> None:
        self.generator = generator
        self.module = generator.model
        self.n_layers = len(self.module.model.language_model.layers)

    def encode_prompts(self, prompts: Sequence[str]) -> _TextBatch:
        encoded = [self.generator.encode_prompts([p]) for p in prompts]
        width = max(e["input_ids"].shape[1] for e in encoded)
        pad = self.module.generation_config.pad_token_id or 0
        ids = torch.full((len(prompts), width), int(pad), dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for i, e in enumerate(encoded):
            n = int(e["attention_mask"][0].sum())
            ids[i, width - n:] = e["input_ids"][0, -n:].cpu()
            mask[i, width - n:] = 1
        return _TextBatch(ids, mask)

    def image_hidden(self, module: nn.Module, text: _TextBatch, codes: torch.Tensor) -> torch.Tensor:
        device = next(module.parameters()).device
        ids, mask = text.input_ids.to(device), text.attention_mask.to(device)
        x = module.get_input_embeddings()(ids)
        if codes.shape[1] > 1:
            img = self.code_embeddings(module, codes[:, :-1].to(device))
            x = torch.cat([x, img.to(x.dtype)], 1)
            mask = torch.cat([mask, torch.ones(len(ids), codes.shape[1] - 1, dtype=mask.dtype, device=device)], 1)
        out = module.model.language_model(inputs_embeds=x, attention_mask=mask, use_cache=False)
        return out.last_hidden_state[:, ids.shape[1] - 1:].float()

    @staticmethod
    def code_embeddings(module: nn.Module, codes: torch.Tensor) -> torch.Tensor:
        """Janus's image-generation input embeddings of codes (the class method: the adapter wraps the
        instance attribute during generation to record sampled tokens)."""
        return type(module).prepare_embeddings_for_image_generation(module, codes)

    def attention_parameter_names(self, layers: Sequence[int]) -> list[str]:
        wanted = re.compile(r"(^|\.)language_model\.layers\.(" + "|".join(str(i) for i in layers) + r")\.self_attn\.")
        return [n for n, _ in self.module.named_parameters() if wanted.search(n)]

    def with_module(self, module: nn.Module):
        erased = copy.copy(self.generator)
        erased.model = module.eval()
        return erased


class JanusConceptStream:
    """`ConceptStream` over a `guard.models.janus.JanusGenerator`'s language model, with its own KV cache.

    The empty prompt "" stands for Janus's unconditional branch: the first concept prompt with every token
    but BOS and <begin_of_image> replaced by padding, as Janus builds its own unconditional rows.
    """

    def __init__(self, generator) -> None:
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
