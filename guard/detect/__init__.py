"""Detection: re-quantize images, test them against green lists with exact statistics, write records.

    >>> from guard.detect import Detector
    >>> det = Detector(green_lists, tokenizer, alpha=1e-4)            # doctest: +SKIP
    >>> det.detect_paths(["a.png"])[0].watermarked                    # doctest: +SKIP
    True

Modules: `stats` (exact tests, Bonferroni), `detector` (`Detector`, `DetectionRecord`), `scan`
(folders, streaming, resume), `calibrate` (FPR on clean images, QQ plot), `heatmap` (token-grid
picture), `ray_engine` (Ray Data scale-out), `fingerprint` (key-free detection: tokenizer fingerprint,
conformal p-values). Images are loaded by `guard.imageio`.
"""

from ..imageio import LoadedImage, load_image
from .detector import RECORD_FIELDS, TESTS, DetectionRecord, Detector, DetectorSpec, search_transforms
from .fingerprint import FingerprintCalibration, Fingerprinter

__all__ = ["Detector", "DetectorSpec", "DetectionRecord", "FingerprintCalibration", "Fingerprinter", "RECORD_FIELDS",
           "TESTS", "LoadedImage", "load_image", "search_transforms"]
