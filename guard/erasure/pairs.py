"""Concept -> replacement prompt pairs for erasure, from templates, kept only when a visual check agrees.

ECGVF-style: every training prompt names the concept once; its replacement prompt is the same text with
the concept word swapped for the replacement. A pair is kept only when the generator's image for the
concept prompt shows the concept and its image for the replacement prompt does not (the visual filter;
the reference model's judge is its scene classifier).

The concept's synonyms are split: `train_words` appear in training prompts, `heldout_words` never do and
serve only to test that erasure generalises (EAR's "nudity" vs "naked" problem).

    >>> from guard.erasure.pairs import reference_concept, target_prompts
    >>> c = reference_concept("circle")
    >>> c.train_words, c.heldout_words
    (('circle', 'disc'), ('round shape',))
    >>> target_prompts(c, 2, seed=0, form="train")
    ['a small purple disc in the bottom right', ...]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..models.reference.shapes import COLOURS, POSITIONS, PREPOSITIONS, SHAPES, SIZES, SYNONYMS

__all__ = ["Concept", "PromptPair", "ReferenceJudge", "reference_concept", "check_pair", "target_prompts",
           "non_target_prompts", "training_pairs", "filter_pairs", "FORMS"]

FORMS = ("train", "heldout_synonym", "paraphrase")


@dataclass(frozen=True)
class Concept:
    """A concept of the reference vocabulary: a shape or a colour, with its synonym split."""

    name: str
    kind: str  # "shape" | "colour"
    train_words: tuple[str, ...]
    heldout_words: tuple[str, ...]

    @property
    def words(self) -> tuple[str, ...]:
        return self.train_words + self.heldout_words


def _vocabulary_hint() -> str:
    return f"shapes {', '.join(SHAPES)}; colours {', '.join(COLOURS)}"


def reference_concept(name: str) -> Concept:
    """The reference concept named `name` (a canonical shape or colour, or one of its synonyms).

    Raises `ConfigError` naming the vocabulary when `name` is not a shape or colour.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"concept must be a non-empty word, got {name!r}; the reference model knows "
                          f"{_vocabulary_hint()}")
    key = name.strip().lower()
    canon = next((c for c in SHAPES + COLOURS if key == c or key in SYNONYMS[c]), None)
    if canon is None:
        raise ConfigError(f"unknown concept {name!r}; the reference model knows {_vocabulary_hint()}")
    syns = SYNONYMS[canon]
    return Concept(canon, "shape" if canon in SHAPES else "colour", tuple(syns[:-1]), (syns[-1],))


def check_pair(concept: str, replacement: str) -> tuple[Concept, Concept]:
    """Validate a concept/replacement pair: both known, of the same kind (shape->shape, colour->colour), distinct."""
    c = reference_concept(concept)
    try:
        r = reference_concept(replacement)
    except ConfigError as e:
        raise ConfigError(f"replacement: {e}") from None
    if c.name == r.name:
        raise ConfigError(f"replacement {replacement!r} is the concept {concept!r} itself (or its synonym); "
                          f"choose another {c.kind}")
    if c.kind != r.kind:
        raise ConfigError(f"replacement {replacement!r} is a {r.kind} but concept {concept!r} is a {c.kind}; "
                          f"replace a {c.kind} by another {c.kind}")
    return c, r


# ------------------------------------------------------------------------------------------ prompts
def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _other(rng: np.random.Generator, pool: Sequence[str], exclude: Sequence[str]) -> str:
    return _pick(rng, [p for p in pool if p not in exclude])


def _phrase(rng: np.random.Generator, shape: str, colour: str, position: str, *, shape_word: str | None = None,
            colour_word: str | None = None, order: str = "size colour shape", size: bool = True) -> str:
    words = {"size": _pick(rng, SYNONYMS[_pick(rng, SIZES)]) if size else "",
             "colour": colour_word or _pick(rng, SYNONYMS[colour]),
             "shape": shape_word or _pick(rng, SYNONYMS[shape])}
    body = " ".join(w for w in (words[k] for k in order.split()) if w)
    return f"a {body} {_pick(rng, PREPOSITIONS)} {_pick(rng, SYNONYMS[position])}"


def target_prompts(concept: Concept, n: int, *, seed: int, form: str = "train",
                   exclude: Sequence[str] = ()) -> list[str]:
    """`n` prompts that each ask for the concept once.

    Args:
        concept: from `reference_concept`.
        n: number of prompts.
        seed: prompts are a pure function of (concept, n, seed, form).
        form: "train" (one object, the training template, a training synonym), "heldout_synonym" (same
            template with a synonym never used in training), "paraphrase" (other templates: two objects
            with the concept second, reordered or size-less phrases; any synonym).
        exclude: canonical words the other attributes must avoid (e.g. the replacement, so a prompt never
            asks for the replacement and the concept at once).
    """
    if form not in FORMS:
        raise ConfigError(f"form must be one of {FORMS}, got {form!r}")
    rng = np.random.default_rng([int(seed), FORMS.index(form), (SHAPES + COLOURS).index(concept.name)])
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
            out.append(_phrase(rng, shape, colour, position, **kw))
            continue
        style = int(rng.integers(3))
        if style == 0:  # two objects, the concept second
            other_pos = _other(rng, POSITIONS, [position])
            first = _phrase(rng, _other(rng, SHAPES, [concept.name, *exclude]),
                            _other(rng, COLOURS, [concept.name, *exclude]), other_pos)
            out.append(f"{first} and {_phrase(rng, shape, colour, position, **kw)}")
        elif style == 1:  # no size word, "at the"/"in the" either way
            out.append(_phrase(rng, shape, colour, position, size=False, **kw))
        else:  # shape before colour and size
            out.append(_phrase(rng, shape, colour, position, order="shape colour size", **kw))
    return out


def non_target_prompts(concepts: Sequence[Concept], n: int, *, seed: int) -> list[str]:
    """`n` prompts (one or two objects) that name none of `concepts` (for adherence that must be kept)."""
    banned = {c.name for c in concepts}
    shapes = [s for s in SHAPES if s not in banned]
    colours = [c for c in COLOURS if c not in banned]
    rng = np.random.default_rng([int(seed), 99])
    out = []
    for _ in range(n):
        k = 1 if rng.random() < 0.6 else 2
        pos = rng.permutation(len(POSITIONS))[:k]
        out.append(" and ".join(_phrase(rng, _pick(rng, shapes), _pick(rng, colours), POSITIONS[int(q)])
                                for q in pos))
    return out


def swap_concept(prompt: str, concept: Concept, replacement: Concept) -> str:
    """The prompt with each concept word (any synonym) replaced by the replacement's canonical word."""
    pattern = r"\b(" + "|".join(re.escape(w) for w in sorted(concept.words, key=len, reverse=True)) + r")\b"
    swapped, count = re.subn(pattern, replacement.name, prompt)
    if count == 0:
        raise ConfigError(f"prompt {prompt!r} does not name the concept {concept.name!r}")
    return swapped


@dataclass(frozen=True)
class PromptPair:
    """A training pair and the concept prompt's rollout (codes sampled from the original model)."""

    concept_prompt: str
    replacement_prompt: str
    codes: torch.Tensor | None = None  # long (h*w,) rollout of the concept prompt, when kept by the filter


def training_pairs(concept: Concept, replacement: Concept, n: int, *, seed: int) -> list[PromptPair]:
    """`n` candidate pairs from the training template (training synonyms only)."""
    prompts = target_prompts(concept, n, seed=seed, form="train", exclude=[replacement.name])
    return [PromptPair(p, swap_concept(p, concept, replacement)) for p in prompts]


# ------------------------------------------------------------------------------------------ visual check
class ReferenceJudge:
    """Concept presence in reference images, read by the scene classifier.

    A shape concept is present when any quadrant shows that shape; a colour concept when any non-empty
    quadrant has that colour.
    """

    def __init__(self, classifier: torch.nn.Module, batch_size: int = 256) -> None:
        self.classifier = classifier.eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,64,64) in [0,1] -> (B,4,3) labels: shape+1 (0 = empty), colour, size per quadrant."""
        if len(images) == 0:
            return torch.zeros(0, 4, 3, dtype=torch.long)
        return torch.cat([self.classifier.predict(images[i:i + self.batch_size].float())
                          for i in range(0, len(images), self.batch_size)])

    @staticmethod
    def present_in(pred: torch.Tensor, concept: Concept) -> torch.Tensor:
        """Bool (B,): does the concept appear in any quadrant of each prediction (B,4,3)?"""
        if concept.kind == "shape":
            return (pred[..., 0] == SHAPES.index(concept.name) + 1).any(-1)
        return ((pred[..., 0] > 0) & (pred[..., 1] == COLOURS.index(concept.name))).any(-1)

    def present(self, images: torch.Tensor, concept: Concept) -> torch.Tensor:
        return self.present_in(self.predict(images), concept)


def filter_pairs(pairs: Sequence[PromptPair], generator, judge: ReferenceJudge, concept: Concept, *,
                 seed: int, cfg: float = 3.0) -> tuple[list[PromptPair], dict]:
    """Render both prompts of every pair once (seeded) and keep the pairs the judge confirms.

    Kept: the concept prompt's image shows the concept and the replacement prompt's image does not.
    Returns the kept pairs (each with its concept rollout `codes`) and counts of what was dropped.
    """
    if not pairs:
        raise ConfigError("no candidate pairs to filter")
    prompts = [p.concept_prompt for p in pairs] + [p.replacement_prompt for p in pairs]
    codes = generator.generate(prompts, n=1, seed=seed, cfg=cfg)
    shown = judge.present(generator.tokenizer.decode(codes), concept)
    m = len(pairs)
    concept_ok, replacement_clean = shown[:m], ~shown[m:]
    kept = [PromptPair(p.concept_prompt, p.replacement_prompt, codes[i].flatten().clone())
            for i, p in enumerate(pairs) if concept_ok[i] and replacement_clean[i]]
    stats = {"candidates": m, "kept": len(kept),
             "dropped_concept_not_shown": int((~concept_ok).sum()),
             "dropped_replacement_shows_concept": int((concept_ok & ~replacement_clean).sum())}
    return kept, stats
