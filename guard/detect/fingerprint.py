"""Key-free detection: is an image near the manifold of a known VQ decoder? (DESIGN §13)

Every image an AR model outputs was drawn by its VQ decoder, so it lies on (or very near) that decoder's
manifold: encoding and decoding it again changes it far less than it changes an image that never went
through the decoder (AEROBLADE's reconstruction distance for latent-diffusion autoencoders; D³QE for AR
tokenizers). Per image and tokenizer:

* **score** (`fingerprint_scores`): the mean squared difference of *luma* (BT.601 Y, pixels in [0, 1])
  between the image and `quantize(decode(encode(image)))`. Small = close to the decoder's manifold.
  Why this one (measured on the reference tokenizer, 256 rendered scenes vs 256 decoded ones, a validation
  split disjoint from the reported one; AUC / TPR at 1% FPR):

  | statistic                 | no attack     | JPEG 90       | JPEG 75       |
  |---------------------------|---------------|---------------|---------------|
  | RGB MSE                   | 1.000 / 1.000 | 1.000 / 1.000 | 0.987 / 0.750 |
  | RGB MSE, 2×2-pooled       | 1.000 / 1.000 | 1.000 / 1.000 | 0.991 / 0.801 |
  | max over 8×8 patches      | 1.000 / 0.992 | 0.993 / 0.926 | 0.984 / 0.809 |
  | **luma MSE** (chosen)     | 1.000 / 1.000 | 1.000 / 1.000 | 0.996 / 0.906 |
  | code agreement (below)    | 0.830 / 0.000 | 0.757 / 0.000 | 0.713 / 0.000 |

  Luma wins because lossy codecs keep luma at full resolution and spend their error on chroma (JPEG
  subsamples it 4:2:0), which a decoded image then carries and a pixel-RGB distance counts against it;
  a patch maximum reacts to the few tokens a round trip changes. The encoder's latent quantization error
  (D³QE) needs the continuous latent, which the `Tokenizer` protocol does not expose; the score needs only
  `encode` and `decode`, so it works for every tokenizer behind the model registry. Cost: one decode per
  image on top of the watermark detector's encode (the codes are shared when the tokenizers are the same).
* **code agreement** (`code_agreement`): the share of tokens equal in `encode(x)` and
  `encode(quantize(decode(encode(x))))`. Reported by `calibrate_fingerprint` and the bench, not used for the
  p-value: an idempotence-trained tokenizer snaps real images back just as well (table above), and it
  costs a second encode.

**p-value** (`conformal_p`): against the scores of n calibration images that never went through the
decoder, `p = (1 + #{calibration scores <= score}) / (n + 1)`. If the image and the calibration images are
exchangeable (drawn the same way: same kind of real image, same loading policy), P(p <= α) <= α for every α
in finite samples, whatever the score's distribution. It is never below 1/(n + 1), so a decision at α needs
n >= 1/α - 1 calibration images. For images unlike the calibration set the promise does not hold.

**Several tokenizers** (`Fingerprinter`): one p per tokenizer; the record names the tokenizer with the
smallest p (ties, e.g. two p at the floor 1/(n + 1), go to the smaller robust z of log10 score against that
tokenizer's calibration) and reports p = min(1, m · p_min) for m tokenizers compared (Bonferroni, valid
under any dependence).

A hit means "this image is closer to this decoder's manifold than the real images it was calibrated on";
it names no key, fires on any image passed through the same decoder (a post-hoc mark, a re-tokenized real
photo), and says nothing about generators with other decoders.

    >>> from guard.detect.fingerprint import FingerprintCalibration, Fingerprinter, calibrate_fingerprint
    >>> from guard.models import load_tokenizer
    >>> tok = load_tokenizer("reference")
    >>> cal = calibrate_fingerprint(tok, real_paths, model="reference")      # doctest: +SKIP
    >>> cal.save("calib.json")                                             # doctest: +SKIP
    >>> fp = Fingerprinter([FingerprintCalibration.load("calib.json")])     # doctest: +SKIP
    >>> fp.fields(images)[0]["fingerprint_p"]                              # doctest: +SKIP
    0.000999
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .._files import write_text_atomic
from ..errors import ConfigError, ImageError
from ..imageio import MAX_PIXELS, load_image, quantize

__all__ = ["STATISTIC", "FORMAT", "FINGERPRINT_FIELDS", "FingerprintCalibration", "Fingerprinter",
           "calibrate_fingerprint", "code_agreement", "conformal_p", "fingerprint_scores", "luma_mse"]

STATISTIC = "luma-mse/v1"
"""Name and version of the score; a calibration file made with another statistic is refused."""
FORMAT = "guard-fingerprint-calibration"
FORMAT_VERSION = 1
LUMA = (0.299, 0.587, 0.114)
"""BT.601 luma weights."""
FINGERPRINT_FIELDS = ("fingerprint_score", "fingerprint_p", "fingerprint_tokenizer", "fingerprint_hit")
"""The record fields a `Fingerprinter` fills (None when no fingerprint is asked for)."""


# ---------------------------------------------------------------------------------------------- statistics

def _luma(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(LUMA, dtype=torch.float64).view(1, 3, 1, 1)
    return (x.double() * w).sum(1)


def luma_mse(images: torch.Tensor, reconstructions: torch.Tensor) -> np.ndarray:
    """Mean squared luma difference per image: float64 (B,), for float (B, 3, H, W) in [0, 1]."""
    if images.shape != reconstructions.shape or images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"images and reconstructions must both be (B, 3, H, W), got {tuple(images.shape)} and "
                          f"{tuple(reconstructions.shape)}")
    d = _luma(images) - _luma(reconstructions)
    return (d * d).mean(dim=(1, 2)).numpy()


def _check_images(tokenizer, images: torch.Tensor) -> None:
    s = int(tokenizer.image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
        raise ConfigError(f"images must be float (B, 3, {s}, {s}) in [0, 1] for tokenizer {tokenizer.id}, got "
                          f"shape {tuple(images.shape)}")


@torch.inference_mode()
def fingerprint_scores(tokenizer, images: torch.Tensor, *, codes: torch.Tensor | None = None,
                       batch_size: int = 64) -> np.ndarray:
    """The fingerprint score of each image under `tokenizer`: luma MSE to its 8-bit round trip.

    Args:
        tokenizer: any `guard.models.Tokenizer`.
        images: float (B, 3, S, S) in [0, 1], S = tokenizer.image_size (8-bit levels, as loaded from files).
        codes: `tokenizer.encode(images)` when already computed (the watermark detector's codes); saves the
            encode.
        batch_size: images per encode/decode call.

    Returns:
        float64 (B,), >= 0; smaller = closer to the decoder's manifold.
    """
    _check_images(tokenizer, images)
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].float().clamp(0, 1)
        c = codes[i:i + batch_size] if codes is not None else tokenizer.encode(x)
        r = quantize(tokenizer.decode(c.to(torch.long)).float().cpu().clamp(0, 1))
        out.append(luma_mse(x.cpu(), r))
    return np.concatenate(out) if out else np.zeros(0)


@torch.inference_mode()
def code_agreement(tokenizer, images: torch.Tensor, *, batch_size: int = 64) -> np.ndarray:
    """Share of tokens equal in encode(x) and encode(quantize(decode(encode(x)))): float64 (B,) in [0, 1]."""
    _check_images(tokenizer, images)
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].float().clamp(0, 1)
        c1 = tokenizer.encode(x)
        c2 = tokenizer.encode(quantize(tokenizer.decode(c1).float().clamp(0, 1)))
        out.append((c1 == c2).double().flatten(1).mean(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def conformal_p(scores: Sequence[float] | np.ndarray, calibration: Sequence[float] | np.ndarray) -> np.ndarray:
    """Conformal p-values of `scores` against calibration scores of real images (small score = extreme).

    p = (1 + #{calibration scores <= score}) / (n + 1). H0: the image is exchangeable with the n calibration
    images; then P(p <= α) <= α for every α, in finite samples (ties count against the image, so the p is
    conservative). Never below 1/(n + 1). Returns float64 with the shape of `scores`.

        >>> conformal_p([0.5, 0.0, 9.0], [1.0, 2.0, 3.0]).tolist()
        [0.25, 0.25, 1.0]
    """
    cal = np.sort(np.asarray(calibration, dtype=np.float64).ravel())
    if cal.size == 0:
        raise ConfigError("a conformal p-value needs at least one calibration score")
    s = np.asarray(scores, dtype=np.float64)
    k = np.searchsorted(cal, s, side="right")
    return (1.0 + k) / (cal.size + 1.0)


# ---------------------------------------------------------------------------------------------- calibration

IMAGE_POLICY = {
    "loader": "guard.imageio.load_image",
    "pixels": "8-bit RGB, EXIF orientation applied, transparency over white, first frame",
    "geometry": "largest centred square, then resized to the tokenizer's size",
    "resample": "lanczos (guard.imageio.RESAMPLE)",
}
"""How calibration and detection read an image (both through `guard.imageio.load_image`)."""


@dataclass(frozen=True)
class FingerprintCalibration:
    """Scores of real images under one tokenizer: the reference set of the conformal p-value.

    Attributes:
        tokenizer_id: the tokenizer the scores were computed with (checked when loading its tokenizer).
        model: the model spec that loads it (`guard.models.load_tokenizer`), e.g. "reference".
        image_size: the size images are read at.
        statistic: `STATISTIC`.
        scores: the n calibration scores, sorted ascending.
        image_policy: how images were read (`IMAGE_POLICY`) and how many needed each resize
            ("resize_counts": {"none": 990, "center-crop+resize": 10}).
        n_errors: files that could not be read (not in the scores).
        agreement_median: median code agreement of the calibration images (None if not measured).
        source: the folder calibrated on, as given.
        created: UTC time, ISO 8601; guard_version: the version that wrote it.
    """

    tokenizer_id: str
    model: str
    image_size: int
    scores: tuple[float, ...]
    statistic: str = STATISTIC
    image_policy: Mapping[str, Any] = field(default_factory=lambda: dict(IMAGE_POLICY))
    n_errors: int = 0
    agreement_median: float | None = None
    source: str | None = None
    created: str = ""
    guard_version: str = __version__

    def __post_init__(self) -> None:
        scores = tuple(sorted(float(s) for s in self.scores))
        if not scores:
            raise ConfigError("a fingerprint calibration needs at least one score")
        if not all(math.isfinite(s) and s >= 0 for s in scores):
            raise ConfigError("fingerprint calibration scores must be finite and >= 0")
        object.__setattr__(self, "scores", scores)

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def min_p(self) -> float:
        """The smallest p-value this calibration can give: 1 / (n + 1)."""
        return 1.0 / (self.n + 1)

    def p_values(self, scores) -> np.ndarray:
        """`conformal_p(scores, self.scores)`."""
        return conformal_p(scores, self.scores)

    def robust_z(self, scores) -> np.ndarray:
        """(log10 score − median) / (IQR / 1.349) of the calibration's log10 scores (ties of p broken by it)."""
        logs = np.log10(np.maximum(np.asarray(self.scores), 1e-12))
        q1, med, q3 = np.percentile(logs, [25, 50, 75])
        scale = max((q3 - q1) / 1.349, 1e-6)
        return (np.log10(np.maximum(np.asarray(scores, dtype=np.float64), 1e-12)) - med) / scale

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical content (what a resumed scan compares)."""
        doc = self.to_dict()
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scores"] = list(self.scores)
        d["image_policy"] = dict(self.image_policy)
        return {"format": FORMAT, "version": FORMAT_VERSION, "n": self.n, **d}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the calibration as JSON (atomically). Raises ConfigError when it cannot be written."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        try:
            write_text_atomic(path, text)
        except OSError as e:
            raise ConfigError(f"cannot write fingerprint calibration {path}: {e.strerror or e}") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FingerprintCalibration":
        """Read a calibration file; ConfigError (one line) for a missing, foreign or damaged file."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except IsADirectoryError:
            raise ConfigError(f"--fingerprint {path} is a folder; pass the calibration file written by "
                              f"`guard calibrate --fingerprint REAL_DIR --out FILE`") from None
        except OSError as e:
            raise ConfigError(f"cannot read fingerprint calibration {path}: {e.strerror or e}") from None
        try:
            doc = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            doc = None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ConfigError(f"{path} is not a fingerprint calibration file; make one with `guard calibrate "
                              f"--fingerprint REAL_DIR --out {path.name}`")
        if doc.get("version") != FORMAT_VERSION:
            raise ConfigError(f"{path}: fingerprint calibration version {doc.get('version')!r} is not supported "
                              f"(this guard reads version {FORMAT_VERSION}); recalibrate")
        if doc.get("statistic") != STATISTIC:
            raise ConfigError(f"{path} was calibrated with statistic {doc.get('statistic')!r}, this guard computes "
                              f"{STATISTIC!r}; recalibrate")
        names = {f for f in cls.__dataclass_fields__}
        try:
            cal = cls(**{k: v for k, v in doc.items() if k in names})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{path}: damaged fingerprint calibration ({' '.join(str(e).split())[:200]})") from None
        if doc.get("n") != cal.n:
            raise ConfigError(f"{path}: damaged fingerprint calibration (n = {doc.get('n')!r} but {cal.n} scores)")
        if not isinstance(cal.tokenizer_id, str) or not isinstance(cal.model, str) or \
                not isinstance(cal.image_size, int) or cal.image_size < 1:
            raise ConfigError(f"{path}: damaged fingerprint calibration (tokenizer_id, model or image_size)")
        return cal


def calibrate_fingerprint(tokenizer, paths: Iterable, *, model: str, batch_size: int = 64,
                          max_pixels: int = MAX_PIXELS, agreement: bool = True, source: str | None = None,
                          on_batch: Callable[[int], None] | None = None) -> FingerprintCalibration:
    """Score real images (files never passed through the tokenizer's decoder) into a calibration.

    Args:
        tokenizer: the `Tokenizer` to fingerprint.
        paths: image files, read with `guard.imageio.load_image` at the tokenizer's size (the same policy
            detection uses); unreadable ones are counted in `n_errors` and skipped.
        model: the spec that loads `tokenizer` again (`guard.models.load_tokenizer(model)`).
        batch_size: images per tokenizer call.
        agreement: also measure the median code agreement (one more encode per image).
        source: the folder's name for the file.
        on_batch: progress callback (files done).

    Raises:
        ConfigError: no readable image.
    """
    size = int(tokenizer.image_size)
    paths = list(paths)
    scores: list[np.ndarray] = []
    agree: list[np.ndarray] = []
    resize: Counter = Counter()
    n_err = 0
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        imgs = []
        for p in chunk:
            try:
                li = load_image(p, size, max_pixels=max_pixels)
            except ImageError:
                n_err += 1
                continue
            imgs.append(li.tensor)
            resize[li.resize] += 1
        if imgs:
            x = torch.stack(imgs)
            scores.append(fingerprint_scores(tokenizer, x, batch_size=batch_size))
            if agreement:
                agree.append(code_agreement(tokenizer, x, batch_size=batch_size))
        if on_batch:
            on_batch(len(chunk))
    if not scores:
        raise ConfigError(f"no readable images to calibrate the fingerprint with ({n_err} unreadable)")
    policy = {**IMAGE_POLICY, "size": size, "resize_counts": dict(sorted(resize.items()))}
    return FingerprintCalibration(
        tokenizer_id=tokenizer.id, model=model, image_size=size, scores=tuple(np.concatenate(scores).tolist()),
        image_policy=policy, n_errors=n_err,
        agreement_median=float(np.median(np.concatenate(agree))) if agree else None, source=source,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


# ---------------------------------------------------------------------------------------------- detection

class Fingerprinter:
    """Fingerprint scores, conformal p-values and attribution over one or more calibrated tokenizers.

    Args:
        calibrations: `FingerprintCalibration`s, one per tokenizer (distinct tokenizer ids).
        tokenizers: the tokenizer of each calibration, same order; None loads each with
            `guard.models.load_tokenizer(cal.model)` (a given `reuse` tokenizer is used where its id matches).
        alpha: a hit is corrected p <= alpha, in (0, 1); default 1e-2. Below the floor 1/(n + 1) of every
            calibration nothing can be a hit, so that is refused.
        batch_size: images per tokenizer call.
        reuse: a tokenizer already loaded (the watermark detector's), used for the calibration made with it.
        device: where the tokenizers loaded here run ("cpu", "cuda", "cuda:N"; None: the kind's default),
            passed to `guard.models.load_tokenizer`. Scores and p-values are computed on the CPU either way.

    Raises:
        ConfigError: no calibration, a tokenizer given twice, different image sizes, an alpha no p can reach,
            or a loaded tokenizer whose id differs from the calibration's (other weights).
    """

    def __init__(self, calibrations: Sequence[FingerprintCalibration], tokenizers: Sequence | None = None, *,
                 alpha: float = 1e-2, batch_size: int = 64, reuse: Any = None, device: str | None = None) -> None:
        cals = list(calibrations)
        if not cals:
            raise ConfigError("Fingerprinter needs at least one calibration")
        if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
            raise ConfigError(f"fingerprint alpha must be in (0, 1), got {alpha!r}")
        ids = [c.tokenizer_id for c in cals]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ConfigError(f"two fingerprint calibrations of the same tokenizer {dup[0]}; pass one per tokenizer")
        sizes = sorted({c.image_size for c in cals})
        if len(sizes) > 1:
            raise ConfigError(f"fingerprint calibrations read images at different sizes {sizes}; run one scan per "
                              f"image size")
        m = len(cals)
        floor = m * min(c.min_p for c in cals)
        if alpha < floor:
            raise ConfigError(f"fingerprint alpha {alpha:g} is below the smallest corrected p-value {floor:.3g} "
                              f"(= {m} x 1/(n+1)), so nothing could be a hit; calibrate on at least "
                              f"{math.ceil(m / alpha) - 1} real images or raise the alpha")
        if tokenizers is None:
            tokenizers = [reuse if reuse is not None and reuse.id == c.tokenizer_id else _load_tokenizer(c, device)
                          for c in cals]
        tokenizers = list(tokenizers)
        if len(tokenizers) != m:
            raise ConfigError(f"{m} calibrations but {len(tokenizers)} tokenizers")
        for c, t in zip(cals, tokenizers):
            if t.id != c.tokenizer_id:
                raise ConfigError(f"fingerprint calibration of tokenizer {c.tokenizer_id} but --model "
                                  f"{c.model!r} loads {t.id} (other weights); recalibrate with this tokenizer")
            if int(t.image_size) != c.image_size:
                raise ConfigError(f"fingerprint calibration reads images at {c.image_size}px but tokenizer {t.id} "
                                  f"takes {t.image_size}px")
        self.calibrations = cals
        self.tokenizers = tokenizers
        self.alpha = float(alpha)
        self.batch_size = batch_size
        self.image_size = sizes[0]

    def __repr__(self) -> str:
        return (f"Fingerprinter(tokenizers={[c.tokenizer_id for c in self.calibrations]}, "
                f"n={[c.n for c in self.calibrations]}, alpha={self.alpha:g})")

    @property
    def n_compared(self) -> int:
        return len(self.calibrations)

    def table(self, images: torch.Tensor, codes: Mapping[str, torch.Tensor] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, raw p, robust z), each float64 (B, m): every image under every calibrated tokenizer.

        `codes`: tokenizer id -> codes of `images` already computed with that tokenizer.
        """
        codes = codes or {}
        cols = [fingerprint_scores(t, images, codes=codes.get(t.id), batch_size=self.batch_size)
                for t in self.tokenizers]
        scores = np.stack(cols, axis=1) if cols else np.zeros((len(images), 0))
        p = np.stack([c.p_values(scores[:, j]) for j, c in enumerate(self.calibrations)], axis=1)
        z = np.stack([c.robust_z(scores[:, j]) for j, c in enumerate(self.calibrations)], axis=1)
        return scores, p, z

    def fields(self, images: torch.Tensor, codes: Mapping[str, torch.Tensor] | None = None) -> list[dict]:
        """Record fields (`FINGERPRINT_FIELDS`) per image: the closest tokenizer, its score, the corrected p, hit."""
        if len(images) == 0:
            return []
        scores, p, z = self.table(images, codes)
        m = self.n_compared
        out = []
        for b in range(len(images)):
            j = min(range(m), key=lambda k: (p[b, k], z[b, k]))
            pc = min(1.0, m * float(p[b, j]))
            out.append({"fingerprint_score": float(scores[b, j]), "fingerprint_p": pc,
                        "fingerprint_tokenizer": self.calibrations[j].tokenizer_id,
                        "fingerprint_hit": bool(pc <= self.alpha)})
        return out

    def describe(self) -> str:
        """One log line: tokenizers compared, calibration sizes, the smallest corrected p, alpha."""
        m = self.n_compared
        parts = ", ".join(f"{c.tokenizer_id} (n={c.n})" for c in self.calibrations)
        floor = m * min(c.min_p for c in self.calibrations)
        return f"fingerprint: {parts}; smallest corrected p {floor:.3g}; hit at p <= {self.alpha:g}"


def _load_tokenizer(cal: FingerprintCalibration, device: str | None = None):
    from ..models import load_tokenizer

    return load_tokenizer(cal.model, device=device)


def empty_fields() -> dict:
    """The fingerprint fields of a record made without fingerprints (or an error row): all None."""
    return dict.fromkeys(FINGERPRINT_FIELDS)
