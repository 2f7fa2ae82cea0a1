"""Concept erasure for AR image generators: EAR fine-tuning (WGA + TLM), inference-time steering, evaluation.

    >>> from guard.models import load
    >>> from guard.erasure import EarConfig, erase, load_erased, ConceptSteering
    >>> gen = load("reference")
    >>> erase(gen, "circle", "square", EarConfig(), out="erase-circle.safetensors")
    >>> erased = load_erased(gen, "erase-circle.safetensors")          # base + delta
    >>> steer = ConceptSteering(gen, {"a circle": 4.0})                  # no training
"""

from .delta import apply_delta, changed_tensors, load_erased, read_delta, save_delta
from .ear import EarConfig, EarModel, EarResult, ear_model_for, erase, register_ear_model, train_ear
from .pairs import Concept, ReferenceJudge, check_pair, reference_concept
from .steer import ConceptSteering, concept_stream_for, register_concept_stream

__all__ = ["ConceptSteering", "Concept", "EarConfig", "EarModel", "EarResult", "ReferenceJudge", "apply_delta",
           "changed_tensors", "check_pair", "concept_stream_for", "ear_model_for", "erase", "load_erased",
           "read_delta", "reference_concept", "register_concept_stream", "register_ear_model", "save_delta",
           "train_ear"]
