"""The `reference` model kind: what the embedded shapes generator offers to the rest of guard.

Every capability the registry (`guard.models.registry`) lists is here, written once against the
reference modules' public names (`shapes`, `gpt`, `model`, `classifier`, `data`):

* `load` / `load_tokenizer`: the shipped weights (`reference`), or weights in another folder
  (`reference:DIR`, e.g. the second VQ of the regeneration attack);
* `ear_model`: `ReferenceEarModel`, the attention projections of the first GPT blocks;
* `concept_stream`: `ReferenceConceptStream`, the GPT on concept prompts with its own KV cache;
* `prompts`: `ReferencePrompts`, held-out evaluation scenes and the erasure vocabulary (shapes and colours
  with their synonyms, prompt templates);
* `judge`: `ReferenceJudge`, the scene classifier reading shapes and colours per quadrant.

    >>> from guard.models import capability, load, prompts_for
    >>> gen = load("reference")
    >>> prompts_for(gen).concept("disc")                      # Concept(name='circle', kind='shape', ...)
    >>> capability(gen, "ear_model")(gen).n_layers
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...errors import ConfigError
from ..base import FORMS, Concept
from ..registry import ModelKind

__all__ = ["KIND", "EVAL_SEED_BASE", "ReferenceConceptStream", "ReferenceEarModel", "ReferenceJudge",
           "ReferencePrompts"]

EVAL_SEED_BASE = 20_000_000
"""Scene seeds of evaluation sets: `EVAL_SEED_BASE + 100_000 * seed + i`, far from training's."""


# ------------------------------------------------------------------------------------------ loading
def _load(path: str, spec: str, device: str | None = None):
    from .._hf_common import pick_device
    from .model import load_reference

    dev = pick_device(device) if device is not None else None     # checked before any weights are read
    gen = load_reference(Path(path)) if path else load_reference()
    return gen.to(dev) if dev is not None else gen


def _load_tokenizer(path: str, spec: str, device: str | None = None):
    from .._hf_common import pick_device
    from .model import load_tokenizer

    dev = pick_device(device) if device is not None else None
    tok = load_tokenizer(Path(path)) if path else load_tokenizer()
    return tok.to(dev) if dev is not None else tok


def _owns(generator) -> bool:
    from .model import ReferenceGenerator

    return isinstance(generator, ReferenceGenerator)


# ------------------------------------------------------------------------------------------ erasure
class ReferenceEarModel:
    """EAR interface of the reference ShapesGPT: blocks[i].qkv and blocks[i].proj are the attention projections."""

    def __init__(self, generator) -> None:
        self.generator = generator
        self.module = generator.gpt
        self.n_layers = len(self.module.blocks)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        from .gpt import tokenize_prompts

        return tokenize_prompts(list(prompts))

    def image_hidden(self, module: nn.Module, text: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return module.hidden_states(text, codes)[-1][:, module.cfg.text_len:]

    def attention_parameter_names(self, layers: Sequence[int]) -> list[str]:
        return [f"blocks.{i}.{lin}.{p}" for i in layers for lin in ("qkv", "proj") for p in ("weight", "bias")]

    def with_module(self, module: nn.Module):
        erased = copy.copy(self.generator)
        erased.gpt = module.eval()
        return erased


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
        from .gpt import null_prompt, tokenize_prompts

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


# ------------------------------------------------------------------------------------------ prompts
def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _other(rng: np.random.Generator, pool: Sequence[str], exclude: Sequence[str]) -> str:
    return _pick(rng, [p for p in pool if p not in exclude])


class ReferencePrompts:
    """Prompts of the reference world: held-out evaluation scenes and the erasure vocabulary.

    Concepts are the shapes and colours; each synonym list's last word is held out of training prompts.
    """

    # ---------------------------------------------------------------------------------- evaluation
    @staticmethod
    def _eval_seeds(n: int, seed: int) -> range:
        base = EVAL_SEED_BASE + 100_000 * int(seed)
        return range(base, base + n)

    def eval_prompts(self, n: int, seed: int = 0) -> list[str]:
        """`n` prompts from scenes the generator never trained on (seeds from `EVAL_SEED_BASE`)."""
        from .shapes import prompt_for, sample_scene

        return [prompt_for(sample_scene(s, split="any"), s) for s in self._eval_seeds(n, seed)]

    def eval_images(self, n: int, seed: int = 0) -> np.ndarray:
        """uint8 (n, 64, 64, 3): the rendered scenes `eval_prompts(n, seed)` describe."""
        from .shapes import render, sample_scene

        return np.stack([render(sample_scene(s, split="any")) for s in self._eval_seeds(n, seed)])

    def training_images(self, n: int, *, workdir: Path, heldout: bool = False) -> np.ndarray:
        """uint8 (n, 64, 64, 3) rendered training scenes (or held-out ones), cached under `workdir`."""
        from .data import HELDOUT_SEED_BASE, cached_dataset

        return cached_dataset(Path(workdir), HELDOUT_SEED_BASE if heldout else 0, n, "any")[0]

    # ---------------------------------------------------------------------------------- vocabulary
    @staticmethod
    def _vocabulary_hint() -> str:
        from .shapes import COLOURS, SHAPES

        return f"shapes {', '.join(SHAPES)}; colours {', '.join(COLOURS)}"

    def concept(self, name: str) -> Concept:
        """The shape or colour `name` names (a canonical word or a synonym).

        Raises `ConfigError` naming the vocabulary when `name` is not a shape or colour.
        """
        from .shapes import COLOURS, SHAPES, SYNONYMS

        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"concept must be a non-empty word, got {name!r}; the reference model knows "
                              f"{self._vocabulary_hint()}")
        key = name.strip().lower()
        canon = next((c for c in SHAPES + COLOURS if key == c or key in SYNONYMS[c]), None)
        if canon is None:
            raise ConfigError(f"unknown concept {name!r}; the reference model knows {self._vocabulary_hint()}")
        syns = SYNONYMS[canon]
        return Concept(canon, "shape" if canon in SHAPES else "colour", tuple(syns[:-1]), (syns[-1],))

    @staticmethod
    def _phrase(rng: np.random.Generator, shape: str, colour: str, position: str, *, shape_word: str | None = None,
                colour_word: str | None = None, order: str = "size colour shape", size: bool = True) -> str:
        from .shapes import PREPOSITIONS, SIZES, SYNONYMS

        words = {"size": _pick(rng, SYNONYMS[_pick(rng, SIZES)]) if size else "",
                 "colour": colour_word or _pick(rng, SYNONYMS[colour]),
                 "shape": shape_word or _pick(rng, SYNONYMS[shape])}
        body = " ".join(w for w in (words[k] for k in order.split()) if w)
        return f"a {body} {_pick(rng, PREPOSITIONS)} {_pick(rng, SYNONYMS[position])}"

    def target_prompts(self, concept: Concept, n: int, *, seed: int, form: str = "train",
                       exclude: Sequence[str] = ()) -> list[str]:
        """`n` prompts that each ask for the concept once.

        Args:
            concept: from `concept`.
            n: number of prompts.
            seed: prompts are a pure function of (concept, n, seed, form).
            form: "train" (one object, the training template, a training synonym), "heldout_synonym" (same
                template with a synonym never used in training), "paraphrase" (other templates: two objects
                with the concept second, reordered or size-less phrases; any synonym).
            exclude: canonical words the other attributes must avoid (e.g. the replacement, so a prompt never
                asks for the replacement and the concept at once).
        """
        from .shapes import COLOURS, POSITIONS, SHAPES

        if form not in FORMS:
            raise ConfigError(f"form must be one of {FORMS}, got {form!r}")
        rng = np.random.default_rng([int(seed), FORMS.index(form), (SHAPES + COLOURS).index(concept.name)])
        phrase = self._phrase
        out = []
        for _ in range(n):
            position = _pick(rng, POSITIONS)
            word = _pick(rng, concept.heldout_words if form == "heldout_synonym" else
                         concept.train_words if form == "train" else concept.words)
            if concept.kind == "shape":
                shape, colour = concept.name, _other(rng, COLOURS, exclude)
                kw = {"shape_word": word}
            else:
                shape, colour = _other(rng, SHAPES, exclude), concept.name
                kw = {"colour_word": word}
            if form != "paraphrase":
                out.append(phrase(rng, shape, colour, position, **kw))
                continue
            style = int(rng.integers(3))
            if style == 0:  # two objects, the concept second
                other_pos = _other(rng, POSITIONS, [position])
                first = phrase(rng, _other(rng, SHAPES, [concept.name, *exclude]),
                               _other(rng, COLOURS, [concept.name, *exclude]), other_pos)
                out.append(f"{first} and {phrase(rng, shape, colour, position, **kw)}")
            elif style == 1:  # no size word, "at the"/"in the" either way
                out.append(phrase(rng, shape, colour, position, size=False, **kw))
            else:  # shape before colour and size
                out.append(phrase(rng, shape, colour, position, order="shape colour size", **kw))
        return out

    def non_target_prompts(self, concepts: Sequence[Concept], n: int, *, seed: int) -> list[str]:
        """`n` prompts (one or two objects) that name none of `concepts` (for adherence that must be kept)."""
        from .shapes import COLOURS, POSITIONS, SHAPES

        banned = {c.name for c in concepts}
        shapes = [s for s in SHAPES if s not in banned]
        colours = [c for c in COLOURS if c not in banned]
        rng = np.random.default_rng([int(seed), 99])
        out = []
        for _ in range(n):
            k = 1 if rng.random() < 0.6 else 2
            pos = rng.permutation(len(POSITIONS))[:k]
            out.append(" and ".join(self._phrase(rng, _pick(rng, shapes), _pick(rng, colours), POSITIONS[int(q)])
                                    for q in pos))
        return out


# ------------------------------------------------------------------------------------------ judge
class ReferenceJudge:
    """Concept presence and prompt adherence in reference images, read by the scene classifier.

    A shape concept is present when any quadrant shows that shape; a colour concept when any non-empty
    quadrant has that colour.
    """

    description = "reference scene classifier (any quadrant)"

    def __init__(self, classifier: torch.nn.Module | None = None, batch_size: int = 256) -> None:
        if classifier is None:
            from .model import load_classifier

            classifier = load_classifier()
        self.classifier = classifier.eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,64,64) in [0,1] -> (B,4,k) labels per quadrant: shape+1 (0 = empty), colour, size, ..."""
        if len(images) == 0:
            return torch.zeros(0, 4, 3, dtype=torch.long)
        return torch.cat([self.classifier.predict(images[i:i + self.batch_size].float())
                          for i in range(0, len(images), self.batch_size)])

    @staticmethod
    def present_in(pred: torch.Tensor, concept: Concept) -> torch.Tensor:
        """Bool (B,): does the concept appear in any quadrant of each prediction (B,4,k)?"""
        from .shapes import COLOURS, SHAPES

        if concept.kind == "shape":
            return (pred[..., 0] == SHAPES.index(concept.name) + 1).any(-1)
        return ((pred[..., 0] > 0) & (pred[..., 1] == COLOURS.index(concept.name))).any(-1)

    def present(self, images: torch.Tensor, concept: Concept) -> torch.Tensor:
        return self.present_in(self.predict(images), concept)

    @staticmethod
    def replaced_at_prompt(pred: torch.Tensor, prompts: Sequence[str], concept: Concept,
                           replacement: Concept) -> torch.Tensor:
        """Bool per image: the quadrant where the concept was asked for shows the replacement instead."""
        from .shapes import COLOURS, POSITIONS, SHAPES, parse_prompt

        out = torch.zeros(len(prompts), dtype=torch.bool)
        for i, p in enumerate(prompts):
            for shape, colour, _size, pos in parse_prompt(p):
                if concept.name not in (shape, colour):
                    continue
                q = POSITIONS.index(pos)
                if replacement.kind == "shape":
                    out[i] |= int(pred[i, q, 0]) == SHAPES.index(replacement.name) + 1
                else:
                    out[i] |= bool(pred[i, q, 0] > 0) and int(pred[i, q, 1]) == COLOURS.index(replacement.name)
        return out

    def adherence(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[dict[str, float], torch.Tensor]:
        """Share of prompted objects whose shape / colour / both the classifier confirms, and per image
        whether every object is right (`classifier.prompt_adherence`)."""
        from .classifier import prompt_adherence

        adh, per_image = prompt_adherence(self.classifier, images.float(), list(prompts))
        return {"shape": adh.shape, "colour": adh.colour, "both": adh.both}, per_image


# ------------------------------------------------------------------------------------------ the kind
KIND = ModelKind(
    name="reference", spec="reference[:DIR]", load=_load, load_tokenizer=_load_tokenizer, owns=_owns,
    ear_model=ReferenceEarModel, concept_stream=lambda generator: ReferenceConceptStream(generator.gpt),
    prompts=ReferencePrompts, judge=ReferenceJudge, load_options=("device",))
"""The embedded reference generator: every capability. It runs on the CPU unless a `device` is given (it is
small enough that the CPU is the default even where CUDA is available)."""
