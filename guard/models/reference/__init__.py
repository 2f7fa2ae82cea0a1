"""The embedded reference generator: shapes VQ tokenizer + text-to-image GPT + scene classifier.

    >>> from guard.models import load
    >>> gen = load("reference")
    >>> codes = gen.generate(["a big red disc in the upper left"], n=4, seed=0)   # (4, 16, 16)
    >>> images = gen.tokenizer.decode(codes)                                       # (4, 3, 64, 64) in [0, 1]

What the reference kind offers the rest of guard (EAR, steering, prompts, judge) is declared once in
`kind.py` and reached through the registry (`guard.models.capability`), never by importing this package.
"""

from .model import (
    ReferenceGenerator,
    ReferenceTokenizer,
    WEIGHTS_DIR,
    load_classifier,
    load_reference,
    load_tokenizer,
)

__all__ = ["ReferenceGenerator", "ReferenceTokenizer", "WEIGHTS_DIR", "load_classifier", "load_reference",
           "load_tokenizer"]
