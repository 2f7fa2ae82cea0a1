"""The registry of model kinds: what each kind of model offers, looked up by name, spec or generator.

A *kind* (reference, janus, emu3, or one you register) is a `ModelKind`: its name, how its spec reads,
and the capabilities it offers. Every layer above `guard.models` asks the registry for a capability
instead of importing a kind's internals or matching type names:

| capability       | what it returns                                                        | used by             |
|------------------|------------------------------------------------------------------------|---------------------|
| `load`           | `(path, spec) -> Generator`                                            | `guard.models.load` |
| `load_tokenizer` | `(path, spec) -> Tokenizer` (detection needs no generator)             | `load_tokenizer`    |
| `ear_model`      | `generator -> EarModel`: hidden states + trainable attention weights   | `guard.erasure.ear` |
| `concept_stream` | `generator -> ConceptStream`: logits of concept prompts, step by step  | `ConceptSteering`   |
| `prompts`        | `() -> PromptSource`: evaluation prompts/images, erasure vocabulary    | `guard.eval`, erasure |
| `judge`          | `() -> ConceptJudge`: concept presence and prompt adherence in images  | erasure             |

Only `load` is required; a kind without a capability gets a one-line `ModelError` naming the kind and
what it lacks when a command needs it.

    >>> from guard.models import ModelKind, register_kind, capability
    >>> register_kind(ModelKind("mymodel", "mymodel:PATH", load=lambda path, spec: MyGenerator(path),
    ...                         owns=lambda g: isinstance(g, MyGenerator)))              # doctest: +SKIP
    >>> gen = guard.models.load("mymodel:/weights")                                     # doctest: +SKIP
    >>> capability(gen, "ear_model")                                                    # doctest: +SKIP
    ModelError: model kind 'mymodel' does not offer ear_model (the trainable parameters ...); it offers load
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, ModelError

__all__ = ["CAPABILITIES", "ModelKind", "capability", "get_kind", "kind_of", "kinds", "register_kind", "spec_help",
           "split_spec"]

CAPABILITIES: dict[str, str] = {
    "load": "loads the generator",
    "load_tokenizer": "loads the tokenizer alone",
    "ear_model": "the trainable parameters and hidden states EAR fine-tunes",
    "concept_stream": "the concept stream ConceptSteering runs",
    "prompts": "evaluation and erasure prompts",
    "judge": "a concept judge for its images",
}
"""Capability name -> what it is, in the words of the error a missing one raises."""

_BUILTIN: dict[str, str] = {"reference": "guard.models.reference.kind", "janus": "guard.models.janus",
                            "emu3": "guard.models.emu3", "llamagen": "guard.models.llamagen",
                            "factory": "guard.models.factory",
                            "var": "guard.models.var"}
"""Built-in kinds and the module whose `KIND` declares each (imported on first use)."""


@dataclass(frozen=True)
class ModelKind:
    """A kind of model and the capabilities it offers (None = not offered).

    Args:
        name: the spec prefix, e.g. "janus" in "janus:/models/Janus-Pro-1B".
        spec: how its spec reads, for help and errors, e.g. "janus:PATH".
        load: `(path, spec) -> Generator`; path is the text after "name:" ("" when absent).
        load_tokenizer: `(path, spec) -> Tokenizer`; None loads the generator and takes its tokenizer.
        owns: `generator -> bool`, whether a generator object is of this kind (for `kind_of`).
        ear_model, concept_stream, prompts, judge: see the module docstring.
        load_options: keyword options `load` and `load_tokenizer` accept beyond (path, spec), e.g.
            ("device", "dtype"); `guard.models.load` refuses others in one line.
    """

    name: str
    spec: str
    load: Callable[[str, str], Any]
    load_tokenizer: Callable[[str, str], Any] | None = None
    owns: Callable[[Any], bool] | None = None
    ear_model: Callable[[Any], Any] | None = None
    concept_stream: Callable[[Any], Any] | None = None
    prompts: Callable[[], Any] | None = None
    judge: Callable[[], Any] | None = None
    load_options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"model kind name must be an identifier like 'mymodel', got {self.name!r}")
        if not callable(self.load):
            raise ConfigError(f"model kind {self.name!r}: load must be callable (path, spec) -> Generator")

    def offers(self) -> list[str]:
        """The capabilities this kind offers, in `CAPABILITIES` order."""
        return [c for c in CAPABILITIES if getattr(self, c) is not None]

    def require(self, name: str) -> Callable:
        """The capability `name`, or a one-line `ModelError` naming this kind and what it lacks."""
        if name not in CAPABILITIES:
            raise ConfigError(f"unknown capability {name!r}; capabilities: {', '.join(CAPABILITIES)}")
        found = getattr(self, name)
        if found is None:
            raise ModelError(f"model kind {self.name!r} does not offer {name} ({CAPABILITIES[name]}); it offers "
                             f"{', '.join(self.offers())}")
        return found


_KINDS: dict[str, ModelKind] = {}


def register_kind(kind: ModelKind, *, replace: bool = False) -> ModelKind:
    """Add a model kind; `guard.models.load(f"{kind.name}:PATH")` and every capability lookup then find it.

    Raises ConfigError when the name is taken (pass `replace=True` to override it on purpose).
    """
    if not isinstance(kind, ModelKind):
        raise ConfigError(f"register_kind takes a ModelKind, got {type(kind).__name__}")
    if not replace and (kind.name in _KINDS or kind.name in _BUILTIN):
        raise ConfigError(f"model kind {kind.name!r} is already registered; pass replace=True to override it")
    _KINDS[kind.name] = kind
    return kind


def _builtin(name: str) -> ModelKind:
    kind = importlib.import_module(_BUILTIN[name]).KIND
    _KINDS.setdefault(name, kind)
    return _KINDS[name]


def kinds() -> dict[str, ModelKind]:
    """Every registered kind by name (built-in ones first)."""
    for name in _BUILTIN:
        if name not in _KINDS:
            _builtin(name)
    return {**{n: _KINDS[n] for n in _BUILTIN}, **{n: k for n, k in _KINDS.items() if n not in _BUILTIN}}


def spec_help() -> str:
    """The accepted specs, for help texts and errors."""
    return ", ".join(f"'{k.spec}'" for k in kinds().values())


def split_spec(spec: str) -> tuple[str, str]:
    """'janus:/models/x' -> ('janus', '/models/x'); 'reference' -> ('reference', '')."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError(f"model spec must be a non-empty string like 'reference', got {spec!r}")
    name, _, path = spec.partition(":")
    return name.strip(), path


def get_kind(name_or_spec: str) -> ModelKind:
    """The kind named by a name or a spec ('emu3' or 'emu3:/models/Emu3@512')."""
    name, _ = split_spec(name_or_spec)
    if name in _KINDS:
        return _KINDS[name]
    if name in _BUILTIN:
        return _builtin(name)
    raise ModelError(f"unknown model spec {name_or_spec!r}; supported: {spec_help()}")


def kind_of(generator: Any) -> ModelKind:
    """The kind a generator object belongs to: its `model_kind` attribute, else the kind whose `owns` accepts it."""
    name = getattr(generator, "model_kind", None)
    if isinstance(name, str):
        return get_kind(name)
    for kind in kinds().values():
        if kind.owns is not None and kind.owns(generator):
            return kind
    raise ModelError(f"{type(generator).__name__} belongs to no registered model kind; register one with "
                     f"guard.models.register_kind (or set its model_kind attribute)")


def capability(model: Any, name: str) -> Callable:
    """Capability `name` of a kind given by name, spec, `ModelKind` or generator object.

    Raises ModelError naming the kind when it does not offer it (or no kind owns the generator).
    """
    if isinstance(model, ModelKind):
        kind = model
    elif isinstance(model, str):
        kind = get_kind(model)
    else:
        kind = kind_of(model)
    return kind.require(name)

