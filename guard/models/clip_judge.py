"""A CLIP judge from local open_clip weights (`clip:ARCH@PATH`): zero-shot concept presence for erasure on
real models, and CLIPScore for the watermark's quality cost in `guard eval`.

`ARCH` is an open_clip model name (`ViT-B-32`, `ViT-L-14`, …; `open_clip.list_models()`) or the path of a
model-config JSON (`embed_dim`, `vision_cfg`, `text_cfg`, as open_clip's own configs); `PATH` is a local
weight file: a state dict as `torch.save` or safetensors writes it (open_clip's released
`open_clip_pytorch_model.bin` / `open_clip_model.safetensors`; a `{"state_dict": …}` training checkpoint
with `module.` prefixes also loads). Weights load with strict=True and nothing is downloaded.

* Concept presence (`ConceptJudge`): zero-shot between the concept's prompts and the contrast prompts
  (erasure passes the replacement): an image shows the concept when its embedding is closer to the
  concept's mean text embedding (all synonyms × templates) than to every contrast's. Without contrasts
  the concept competes with a generic "a photo." prompt.
* Prompt adherence: zero-shot retrieval — an image adheres when its own prompt is the closest of the
  distinct prompts evaluated together. CLIP has no shape/colour split, so the "shape", "colour" and
  "both" keys of `adherence` all carry that share.
* CLIPScore: `100 · max(cos(image, prompt), 0)` per image (the torchmetrics convention; Hessel et al.
  2021 scale by 2.5 instead of 100).

    >>> from guard.models.clip_judge import load_clip_judge
    >>> judge = load_clip_judge("clip:ViT-B-32@/models/clip/open_clip_pytorch_model.bin")   # doctest: +SKIP
    >>> judge.clip_score(images, ["a red fox in the snow"] * len(images))                   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ModelError
from .base import Concept

__all__ = ["ClipJudge", "load_clip_judge", "parse_clip_spec", "TEMPLATES"]

TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")
"""Prompt templates of a concept word (averaged, as CLIP's zero-shot classifiers do)."""

GENERIC = "a photo."


def parse_clip_spec(spec: str) -> tuple[str, str]:
    """'clip:ARCH@PATH' -> (ARCH, PATH); one-line `ConfigError` for anything else."""
    if not isinstance(spec, str) or not spec.startswith("clip:"):
        raise ConfigError(f"a CLIP judge spec reads 'clip:ARCH@PATH' (e.g. 'clip:ViT-B-32@/models/clip/"
                          f"open_clip_pytorch_model.bin'), got {spec!r}")
    arch, sep, path = spec[len("clip:"):].rpartition("@")
    if not sep or not arch.strip() or not path.strip():
        raise ConfigError(f"a CLIP judge needs local weights: 'clip:ARCH@PATH', got {spec!r} (no hub is used)")
    return arch.strip(), path.strip()


def _arch_name(arch: str) -> str:
    import open_clip

    if arch.endswith(".json"):
        p = Path(arch).expanduser()
        if not p.is_file():
            raise ModelError(f"CLIP model config not found: {p}")
        open_clip.add_model_config(str(p))
        return p.stem
    if arch not in open_clip.list_models():
        raise ModelError(f"unknown open_clip architecture {arch!r}; use a name from open_clip.list_models() "
                         f"(e.g. ViT-B-32) or the path of a model-config .json")
    return arch


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling and safetensors raise many types
        raise ModelError(f"CLIP weights unreadable: {path} ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
                         ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} is not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


class ClipJudge:
    """An open_clip model as a guard `ConceptJudge`, plus `clip_score`.

    Args:
        model: an open_clip `CLIP` model (eval mode).
        tokenizer: its open_clip tokenizer (`open_clip.get_tokenizer(arch)`).
        contrasts: prompts (words or `Concept`s) a concept competes with in `present_in` (erasure: the
            replacement); default none (a generic "a photo." prompt).
        templates: prompt templates of a concept word.
        name: a label for reports.
        batch_size: images per encoder call.
    """

    def __init__(self, model: Any, tokenizer: Any, *, contrasts: Sequence[str | Concept] = (),
                 templates: Sequence[str] = TEMPLATES, name: str = "open_clip", batch_size: int = 64) -> None:
        if not templates or any("{}" not in t for t in templates):
            raise ConfigError(f"templates must each contain '{{}}' for the concept word, got {list(templates)!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.contrasts = list(contrasts)
        self.templates = tuple(templates)
        self.batch_size = int(batch_size)
        self.description = f"CLIP zero-shot ({name})"
        size = getattr(model.visual, "image_size", 224)
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        self.mean = torch.tensor(cfg.get("mean", OPENAI_DATASET_MEAN), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", OPENAI_DATASET_STD), dtype=torch.float32).view(1, 3, 1, 1)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------------------- embeddings
    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ConfigError(f"images must be float (B, 3, H, W) in [0, 1], got {shape}")
        x = images.float()
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings float (B, d) of images (B, 3, H, W) in [0, 1] (resized to the model's)."""
        out = [self.model.encode_image(self._pixels(images[i:i + self.batch_size]).to(self.device), normalize=True)
               .float().cpu() for i in range(0, len(images), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    @property
    def embed_dim(self) -> int:
        """Width of the joint embedding space."""
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[-1])
        return int(getattr(self.model.visual, "output_dim"))

    @torch.no_grad()
    def text(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings float (N, d)."""
        toks = self.tokenizer(list(prompts)).to(self.device)
        return self.model.encode_text(toks, normalize=True).float().cpu()

    def concept_embedding(self, concept: str | Concept) -> torch.Tensor:
        """Mean over synonyms × templates of the text embeddings, re-normalised: float (d,)."""
        words = concept.words if isinstance(concept, Concept) else (str(concept),)
        t = self.text([tpl.format(w) for w in words for tpl in self.templates]).mean(0)
        return F.normalize(t, dim=0)

    # ------------------------------------------------------------------------------- ConceptJudge
    def present_in(self, pred: torch.Tensor, concept: Concept | str) -> torch.Tensor:
        """Bool (B,): the concept beats every contrast (or the generic prompt) in zero-shot similarity."""
        rivals = self.contrasts or [GENERIC]
        target = self.concept_embedding(concept)
        others = torch.stack([self.text([r])[0] if isinstance(r, str) and r == GENERIC else self.concept_embedding(r)
                              for r in rivals])
        return (pred @ target)[:, None].gt(pred @ others.T).all(1)

    def present(self, images: torch.Tensor, concept: Concept | str) -> torch.Tensor:
        return self.present_in(self.predict(images), concept)

    def replaced_at_prompt(self, pred: torch.Tensor, prompts: Sequence[str], concept: Concept,
                           replacement: Concept) -> torch.Tensor:
        """Bool (B,): the prompt names the concept and the image is closer to the replacement than to it."""
        if len(prompts) != len(pred):
            raise ConfigError(f"{len(pred)} predictions for {len(prompts)} prompts")
        words = {w.lower() for w in concept.words}
        asked = torch.tensor([bool(words & set(p.lower().replace(",", " ").split())) for p in prompts])
        closer = (pred @ self.concept_embedding(replacement)) > (pred @ self.concept_embedding(concept))
        return asked & closer

    def adherence(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[dict[str, float], torch.Tensor]:
        """Zero-shot retrieval among the distinct prompts: per image, is its own prompt the closest?"""
        if len(prompts) != len(images):
            raise ConfigError(f"{len(images)} images for {len(prompts)} prompts")
        if not len(images):
            return {"shape": 0.0, "colour": 0.0, "both": 0.0}, torch.zeros(0, dtype=torch.bool)
        uniq = sorted(set(prompts))
        sims = self.predict(images) @ self.text(uniq).T
        ok = sims.argmax(1) == torch.tensor([uniq.index(p) for p in prompts])
        share = float(ok.float().mean())
        return {"shape": share, "colour": share, "both": share}, ok

    # ------------------------------------------------------------------------------- CLIPScore
    def clip_score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """CLIPScore float (B,) in [0, 100]: 100 · max(cos(image, its prompt), 0)."""
        if len(prompts) != len(images):
            raise ConfigError(f"{len(images)} images for {len(prompts)} prompts")
        if not len(images):
            return torch.zeros(0)
        img = self.predict(images)
        txt = torch.cat([self.text(prompts[i:i + 256]) for i in range(0, len(prompts), 256)])
        return 100 * (img * txt).sum(1).clamp_min(0)


class _quiet_open_clip:
    """Silence open_clip's 'No pretrained weights loaded … initialized randomly' (guard loads them next)."""

    def __enter__(self):
        import logging

        self.logger, self.level = logging.getLogger(), logging.getLogger().level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def load_clip_judge(spec: str, *, contrasts: Sequence[str | Concept] = (), device: str | torch.device | None = None,
                    templates: Sequence[str] = TEMPLATES) -> ClipJudge:
    """`clip:ARCH@PATH` -> a `ClipJudge` (local weights, strict load, no download).

    Raises:
        ConfigError: a malformed spec. ModelError: unknown architecture, missing/unreadable weights, or
            weights that do not match the architecture (one line each).
    """
    import open_clip

    from ._hf_common import offline, pick_device

    arch, path = parse_clip_spec(spec)
    weights = Path(path).expanduser()
    if not weights.is_file():
        raise ModelError(f"CLIP weights not found: {weights} (a local file; no hub is used)")
    name = _arch_name(arch)
    state = _read_state(weights)
    with offline(), _quiet_open_clip():
        model = open_clip.create_model(name, pretrained=None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{weights} does not match open_clip {name!r}: {' '.join(str(e).split())[:200]}") from None
    model = model.to(pick_device(device)).eval().requires_grad_(False)
    return ClipJudge(model, open_clip.get_tokenizer(name), contrasts=contrasts, templates=templates,
                     name=f"{name}@{weights.name}")


def save_tiny_clip(folder: str | os.PathLike, *, seed: int = 0) -> tuple[Path, Path]:
    """A randomly initialised tiny open_clip model (config JSON + state dict) for tests and `gpu_check --tiny`.

    Returns (config.json path, weights path): the spec is `clip:{config}@{weights}`. Random weights: the
    judge's verdicts are noise; only the plumbing is exercised.
    """
    import json

    import open_clip

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16,
                                           "head_width": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}
    config = out / "TinyGuardCLIP.json"
    config.write_text(json.dumps(cfg))
    open_clip.add_model_config(str(config))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        with _quiet_open_clip():
            model = open_clip.create_model("TinyGuardCLIP", pretrained=None)
    weights = out / "tiny_clip.pt"
    torch.save(model.state_dict(), weights)
    return config, weights
