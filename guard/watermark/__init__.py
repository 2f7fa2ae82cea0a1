"""Embedding watermarks: green lists, the generation-time logits processor, post-hoc marking.

    >>> from guard.keys import WatermarkKey
    >>> from guard.watermark import GreenLists, WatermarkProcessor, watermark_image
    >>> gl = GreenLists(key, tokenizer)            # the one derivation embed/posthoc/detect share
    >>> proc = WatermarkProcessor(gl, delta=2.0)   # logits_processor=[proc] in any generate()
"""

from .greenlists import RED_LOGIT, GreenLists
from .posthoc import PosthocResult, psnr, watermark_image
from .processor import WatermarkProcessor

__all__ = ["GreenLists", "PosthocResult", "RED_LOGIT", "WatermarkProcessor", "psnr", "watermark_image"]
