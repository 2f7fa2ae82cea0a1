"""Concept erasure for AR image generators: EAR fine-tuning (WGA + TLM), inference-time steering, evaluation.

    >>> from guard.models import load
    >>> from guard.erasure import EarConfig, erase, load_erased, ConceptSteering
    >>> gen = load("reference")
    >>> erase(gen, "circle", "square", EarConfig(), out="erase-circle.safetensors")
    >>> erased = load_erased(gen, "erase-circle.safetensors")          # base + delta
    >>> steer = ConceptSteering(gen, {"a circle": 4.0})                  # no training

Model-specific pieces come from the model kind's capabilities (`guard.models.registry`): `ear_model`
(what EAR fine-tunes), `concept_stream` (what steering runs), `prompts` (concepts, templates) and `judge`
(the visual filter and the evaluation). A new model plugs in with `guard.models.register_kind`.
"""

from .delta import apply_delta, changed_tensors, load_erased, read_delta, save_delta
from .ear import EarConfig, EarResult, erase, train_ear
from .ear_model import EarModel, ear_model_for
from .pairs import Concept, check_pair
from .steer import ConceptSteering, concept_stream_for

__all__ = ["ConceptSteering", "Concept", "EarConfig", "EarModel", "EarResult", "apply_delta", "changed_tensors",
           "check_pair", "concept_stream_for", "ear_model_for", "erase", "load_erased", "read_delta", "save_delta",
           "train_ear"]
