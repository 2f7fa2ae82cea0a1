"""Models: the `Tokenizer` / `Generator` protocols, the registry of model kinds, and `load(spec)`.

    >>> from guard.models import load, capability
    >>> gen = load("reference")                    # the embedded shapes generator (default everywhere)
    >>> gen = load("janus:/models/Janus-Pro-1B")   # a local checkpoint        # doctest: +SKIP
    >>> capability(gen, "ear_model")(gen)          # what EAR fine-tunes       # doctest: +SKIP

A spec is `KIND` or `KIND:PATH`; each kind (reference, janus, emu3, or one added with `register_kind`)
declares its capabilities once in a `ModelKind` (see `guard.models.registry`). Nothing outside
`guard/models/` imports a kind's internals: it asks the registry.
"""

from __future__ import annotations

from ..errors import ModelError
from .base import FORMS, Concept, ConceptJudge, Generator, LogitsProcessorLike, PromptSource, Tokenizer
from .registry import CAPABILITIES, ModelKind, capability, get_kind, kind_of, kinds, register_kind, spec_help, \
    split_spec

__all__ = ["CAPABILITIES", "FORMS", "Concept", "ConceptJudge", "Generator", "LogitsProcessorLike", "ModelKind",
           "PromptSource", "Tokenizer", "capability", "get_kind", "judge_for", "kind_of", "kinds", "load",
           "load_tokenizer", "prompts_for", "register_kind", "spec_help"]


def _options(kind: ModelKind, **given: object) -> dict:
    """The load options given (not None), refused in one line when the kind does not take them."""
    opts = {k: v for k, v in given.items() if v is not None}
    for name in opts:
        if name not in kind.load_options:
            takes = ", ".join(kind.load_options) or "none"
            raise ModelError(f"model kind {kind.name!r} does not take a {name} option (it takes: {takes})")
    return opts


def load(spec: str = "reference", *, device: str | None = None, dtype: str | None = None) -> Generator:
    """Return the `Generator` named by `spec`; its `.tokenizer` is its `Tokenizer`.

    Raises `ModelError` for an unknown spec or missing/corrupt weights. `janus:PATH` / `emu3:PATH` load a
    local transformers checkpoint (never the hub); `llamagen:DIR` official LlamaGen `.pt` files;
    `reference:DIR` reference weights from another folder. `device` ("cpu", "cuda", "cuda:1") and `dtype`
    ("float32", "bfloat16", "float16") go to kinds that take them (default: CUDA in bfloat16 when
    available, else the CPU in float32).
    """
    kind = get_kind(spec)
    return kind.load(split_spec(spec)[1], spec, **_options(kind, device=device, dtype=dtype))


def load_tokenizer(spec: str = "reference", *, device: str | None = None) -> Tokenizer:
    """Only the tokenizer of `spec` (detection needs no generator)."""
    kind = get_kind(spec)
    path = split_spec(spec)[1]
    opts = _options(kind, device=device)
    if kind.load_tokenizer is None:
        return kind.load(path, spec, **opts).tokenizer
    return kind.load_tokenizer(path, spec, **opts)


def prompts_for(model: object) -> PromptSource:
    """The `PromptSource` of a kind given by name, spec or generator (`ModelError` if it offers none)."""
    return capability(model, "prompts")()


def judge_for(model: object) -> ConceptJudge:
    """The `ConceptJudge` of a kind given by name, spec or generator (`ModelError` if it offers none)."""
    return capability(model, "judge")()
