"""Embedding watermarks: green lists, the generation-time logits processor, post-hoc marking.

    >>> from guard.keys import WatermarkKey
    >>> from guard.watermark import GreenLists, WatermarkProcessor, watermark_image
    >>> gl = GreenLists(key, tokenizer)            # the one derivation embed/posthoc/detect share
    >>> proc = WatermarkProcessor(gl, delta=2.0)   # logits_processor=[proc] in any generate()

`ManifestRow` is one line of the manifest.jsonl that `guard watermark generate|posthoc` write.

`WatermarkProcessor` is imported on first use: it subclasses transformers' `LogitsProcessor`, and
detection, which only needs `GreenLists`, should not pay for importing transformers.
"""

from typing import TYPE_CHECKING

from .greenlists import RED_LOGIT, GreenLists
from .manifest import MANIFEST_NAME, ManifestRow, read_manifest
from .posthoc import PosthocResult, psnr, watermark_image

if TYPE_CHECKING:
    from .processor import WatermarkProcessor

__all__ = ["GreenLists", "MANIFEST_NAME", "ManifestRow", "PosthocResult", "RED_LOGIT", "WatermarkProcessor", "psnr",
           "read_manifest", "watermark_image"]


def __getattr__(name: str):
    if name == "WatermarkProcessor":
        from .processor import WatermarkProcessor

        return WatermarkProcessor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
