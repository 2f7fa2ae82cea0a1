"""The embedded reference generator: shapes VQ tokenizer + text-to-image GPT + scene classifier.

    >>> from guard.models import load
    >>> gen = load("reference")
    >>> codes = gen.generate(["a big red disc in the upper left"], n=4, seed=0)   # (4, 16, 16)
    >>> images = gen.tokenizer.decode(codes)                                       # (4, 3, 64, 64) in [0, 1]
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
