"""Concept -> replacement prompt pairs for erasure, from a model kind's templates, kept only when a visual check agrees.

ECGVF-style: every training prompt names the concept once; its replacement prompt is the same text with
the concept word swapped for the replacement. A pair is kept only when the generator's image for the
concept prompt shows the concept and its image for the replacement prompt does not (the visual filter;
the judge is the model kind's `judge` capability, e.g. the reference scene classifier).

The vocabulary (concepts, synonyms, templates) is the model kind's `prompts` capability
(`guard.models.prompts_for`). A concept's synonyms are split: `train_words` appear in training prompts,
`heldout_words` never do and serve only to test that erasure generalises (EAR's "nudity" vs "naked"
problem).

    >>> from guard.models import prompts_for
    >>> from guard.erasure.pairs import check_pair
    >>> c, r = check_pair("circle", "square")                   # the reference vocabulary by default
    >>> c.train_words, c.heldout_words
    (('circle', 'disc'), ('round shape',))
    >>> prompts_for("reference").target_prompts(c, 2, seed=0, form="train")
    ['a small purple disc in the bottom right', ...]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..models import FORMS, Concept, ConceptJudge, PromptSource, prompts_for

__all__ = ["Concept", "ConceptJudge", "PromptPair", "check_pair", "training_pairs", "filter_pairs", "swap_concept",
           "FORMS"]


def check_pair(concept: str, replacement: str, model: object = "reference") -> tuple[Concept, Concept]:
    """Validate a concept/replacement pair in `model`'s vocabulary (a kind name, spec or generator):
    both known, of the same kind (shape->shape, colour->colour), distinct."""
    prompts = prompts_for(model)
    c = prompts.concept(concept)
    try:
        r = prompts.concept(replacement)
    except ConfigError as e:
        raise ConfigError(f"replacement: {e}") from None
    if c.name == r.name:
        raise ConfigError(f"replacement {replacement!r} is the concept {concept!r} itself (or its synonym); "
                          f"choose another {c.kind}")
    if c.kind != r.kind:
        raise ConfigError(f"replacement {replacement!r} is a {r.kind} but concept {concept!r} is a {c.kind}; "
                          f"replace a {c.kind} by another {c.kind}")
    return c, r


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


def training_pairs(source: PromptSource, concept: Concept, replacement: Concept, n: int, *,
                   seed: int) -> list[PromptPair]:
    """`n` candidate pairs from `source`'s training template (training synonyms only)."""
    prompts = source.target_prompts(concept, n, seed=seed, form="train", exclude=[replacement.name])
    return [PromptPair(p, swap_concept(p, concept, replacement)) for p in prompts]


# ------------------------------------------------------------------------------------------ visual check
def filter_pairs(pairs: Sequence[PromptPair], generator, judge: ConceptJudge, concept: Concept, *,
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
