"""What EAR needs from a model (`EarModel`) and where it comes from: the model kind's `ear_model` capability.

Both EAR training (`guard.erasure.ear`) and loading an erased model (`guard.erasure.delta`) ask
`ear_model_for`; neither imports the other for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import ModelError
from ..models import capability

__all__ = ["EarModel", "ear_model_for"]


@runtime_checkable
class EarModel(Protocol):
    """What EAR needs from a generator: its trainable network, hidden states, and named attention weights.

    `module` is the network whose `state_dict` keys name the delta's tensors. `image_hidden(module, text,
    codes)` runs `module` teacher-forced on prompts `text` (as returned by `encode_prompts`) and image codes
    (B, n) and returns the last hidden states (B, n, d) at the positions that predict codes[:, 0..n-1]
    (position t sees only codes < t). `attention_parameter_names(layers)` lists the attention projection
    parameters of those layer indices.

    A model kind offers one as its `ear_model` capability (`guard.models.registry`).
    """

    module: nn.Module
    n_layers: int

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor: ...

    def image_hidden(self, module: nn.Module, text: torch.Tensor, codes: torch.Tensor) -> torch.Tensor: ...

    def attention_parameter_names(self, layers: Sequence[int]) -> list[str]: ...

    def with_module(self, module: nn.Module):
        """A generator like the original whose network is `module` (used to load base + delta)."""


def ear_model_for(generator) -> EarModel:
    """The `EarModel` of a generator: its model kind's `ear_model` capability, or the generator itself when it
    is an `EarModel`. Raises `ModelError` naming the kind when it offers none."""
    try:
        factory = capability(generator, "ear_model")
    except ModelError:
        if isinstance(generator, EarModel):
            return generator
        raise
    return factory(generator)
