"""Erasure deltas: only the tensors fine-tuning changed, in safetensors, with a card.

An erased model is base weights + delta. `X.safetensors` holds the changed tensors and the card (JSON in
the header metadata, so the file is self-contained); `X.json` is the same card for people to read.

    >>> from guard.models import load
    >>> from guard.erasure import load_erased
    >>> erased = load_erased(load("reference"), "erase-circle.safetensors")   # the base is left untouched
    >>> codes = erased.generate(["a big red disc in the upper left"], n=4, seed=0)
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from .ear_model import ear_model_for

__all__ = ["changed_tensors", "save_delta", "read_delta", "apply_delta", "load_erased"]

CARD_KEY = "guard.erasure.card"
FORMAT = "guard-erasure-delta/v1"


def changed_tensors(base: nn.Module, tuned: nn.Module) -> dict[str, torch.Tensor]:
    """The entries of `tuned.state_dict()` that differ (in any element) from `base`'s."""
    b, t = base.state_dict(), tuned.state_dict()
    if b.keys() != t.keys():
        raise ModelError("the tuned network has different tensors from the base; cannot take a delta")
    return {k: v.detach().clone().contiguous() for k, v in t.items() if not torch.equal(v, b[k])}


def save_delta(path: str | Path, tensors: dict[str, torch.Tensor], card: dict) -> Path:
    """Write `path` (.safetensors, card in its metadata) and the card beside it as .json. Returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"delta file must end in .safetensors, got {path.name!r}")
    if not tensors:
        raise ModelError("nothing changed: the delta would be empty (no training step was taken?)")
    card = {**card, "format": FORMAT, "tensors": {k: list(v.shape) for k, v in sorted(tensors.items())}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={CARD_KEY: json.dumps(card, sort_keys=True)})
        path.with_suffix(".json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise ConfigError(f"cannot write delta {path}: {e.strerror}") from None
    return path


def read_delta(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, card) of a delta file; `ModelError` when it is missing, unreadable or not a guard delta."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"erasure delta not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"erasure delta unreadable: {path} ({type(e).__name__})") from None
    if CARD_KEY not in meta:
        raise ModelError(f"{path} is not a guard erasure delta (no card in its metadata)")
    card = json.loads(meta[CARD_KEY])
    if card.get("format") != FORMAT:
        raise ModelError(f"{path}: unsupported delta format {card.get('format')!r} (expected {FORMAT})")
    return tensors, card


def apply_delta(module: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of `module` with the delta's tensors loaded (shapes and names checked)."""
    state = module.state_dict()
    unknown = sorted(set(tensors) - set(state))
    if unknown:
        raise ModelError(f"delta names tensors the model does not have: {unknown[:4]}")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise ModelError(f"delta tensor {k} has shape {tuple(v.shape)}, the model's is {tuple(state[k].shape)}")
    out = copy.deepcopy(module)
    out.load_state_dict(tensors, strict=False)
    return out


def load_erased(generator, path: str | Path):
    """Base generator + delta -> an erased generator (a copy; `generator` is not modified).

    Raises `ModelError` when the delta was trained on another base model (the card's `base_model` must
    equal `generator.id`) or does not fit the network.
    """
    path = Path(path)
    tensors, card = read_delta(path)
    base_id = getattr(generator, "id", None)
    if card.get("base_model") != base_id:
        raise ModelError(f"delta {path.name} was trained on {card.get('base_model')!r}, not on {base_id!r}; "
                         f"retrain it with `guard erase train` for this model")
    model = ear_model_for(generator)
    erased = model.with_module(apply_delta(model.module, tensors))
    erased_id = f"{base_id}+erase-{card.get('concept')}@{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
    try:
        erased._id = erased_id  # reference generators keep their id here
    except AttributeError:
        pass
    erased.erasure_card = card
    return erased
