"""The C2PA manifest definitions guard signs: what was made, by which model, and which watermark key.

    >>> from guard.provenance.manifest import generation_manifest
    >>> m = generation_manifest(title="00000.png", model_id="reference-gpt@cce5", key_id="4b5f9dc83459dfbf",
    ...                         tokenizer_id="reference-vq-1024@7210", gamma=0.25, n_lists=8, mode="hard")
    >>> [a["action"] for a in m["assertions"][0]["data"]["actions"]]
    ['c2pa.created', 'c2pa.watermarked']

A generated image's manifest holds:

* `claim_generator_info`: guard and its version.
* `c2pa.actions.v2`: `c2pa.created` with digitalSourceType trainedAlgorithmicMedia and softwareAgent =
  guard + the generator's model id; then `c2pa.watermarked` (softwareAgent guard + tokenizer id). A post-hoc
  marked image instead has `c2pa.opened` (its source file as the parentOf ingredient, which carries the
  source's own Content Credentials if it had any), `c2pa.resized` when it was resized, `c2pa.watermarked`.
* `c2pa.soft-binding`: alg `ALG_ID`, one block whose value is the watermark key id, `alg_params` with the
  detection parameters (tokenizer id, gamma, number of lists, mode). Never the secret, never the list
  index (DESIGN §4: the index stays in the generation manifest, out of the image).

`ALG_ID` is guard's own identifier; it is not (yet) in the C2PA soft-binding algorithm list, so other
validators show it as an unknown soft binding.
"""

from __future__ import annotations

from typing import Any

from .. import __version__

__all__ = ["ALG_ID", "TRAINED_ALGORITHMIC_MEDIA", "generation_manifest", "posthoc_manifest", "parse_alg_params"]

ALG_ID = "org.ar-guard.lbw.1"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
_PARENT = "source"


def _agent(**extra: Any) -> dict:
    return {"name": "guard", "version": __version__, **{k: v for k, v in extra.items() if v is not None}}


def _alg_params(tokenizer_id: str, gamma: float, n_lists: int, mode: str) -> str:
    return f"tokenizer={tokenizer_id};gamma={gamma:g};lists={int(n_lists)};mode={mode}"


def parse_alg_params(text: str | None) -> dict[str, str]:
    """`alg_params` of guard's soft binding back into a dict (unknown or malformed parts are skipped)."""
    out: dict[str, str] = {}
    for part in (text or "").split(";"):
        k, sep, v = part.partition("=")
        if sep and k.strip():
            out[k.strip()] = v.strip()
    return out


def _soft_binding(key_id: str, tokenizer_id: str, gamma: float, n_lists: int, mode: str) -> dict:
    return {"label": "c2pa.soft-binding",
            "data": {"alg": ALG_ID, "alg_params": _alg_params(tokenizer_id, gamma, n_lists, mode),
                     "blocks": [{"scope": {}, "value": key_id}], "pad": []}}


def _watermarked(tokenizer_id: str, mode: str) -> dict:
    return {"action": "c2pa.watermarked", "softwareAgent": _agent(tokenizer=tokenizer_id),
            "parameters": {"description": f"guard lexical-bias token watermark ({mode}); detect with "
                                          f"`guard detect` and the key named in the soft binding"}}


def generation_manifest(*, title: str, model_id: str, key_id: str, tokenizer_id: str, gamma: float, n_lists: int,
                        mode: str) -> dict:
    """The manifest definition of an image generated with a watermark.

    Args:
        title: the file name.
        model_id: the generator's id (`Generator.id`), recorded as the created action's softwareAgent.
        key_id: the watermark key id (public; never the secret).
        tokenizer_id, gamma, n_lists: what a detector needs to test the watermark.
        mode: "hard" or "delta=<d>".
    """
    return {
        "claim_generator_info": [_agent()],
        "title": title,
        "format": "image/png",
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": [
                {"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                 "softwareAgent": _agent(model=model_id)},
                _watermarked(tokenizer_id, mode),
            ]}},
            _soft_binding(key_id, tokenizer_id, gamma, n_lists, mode),
        ],
    }


def posthoc_manifest(*, title: str, key_id: str, tokenizer_id: str, gamma: float, n_lists: int,
                     resized_from: tuple[int, int] | None, size: int) -> dict:
    """The manifest definition of an existing image marked post hoc (its source goes in as an ingredient).

    Args:
        title: the file name written.
        key_id, tokenizer_id, gamma, n_lists: as for `generation_manifest`.
        resized_from: the source's (width, height) when it was resized to the tokenizer's size, else None.
        size: the tokenizer's image size.
    """
    actions: list[dict] = [{"action": "c2pa.opened", "parameters": {"ingredientIds": [_PARENT]}}]
    if resized_from is not None:
        actions.append({"action": "c2pa.resized", "softwareAgent": _agent(),
                        "parameters": {"description": f"{resized_from[0]}x{resized_from[1]} to {size}x{size}"}})
    actions.append(_watermarked(tokenizer_id, "posthoc"))
    return {
        "claim_generator_info": [_agent()],
        "title": title,
        "format": "image/png",
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": actions}},
            _soft_binding(key_id, tokenizer_id, gamma, n_lists, "posthoc"),
        ],
    }


PARENT_LABEL = _PARENT
