"""Calibration on clean images: empirical false-positive rates with exact confidence intervals, a QQ plot.

Run the detector on images known to carry no watermark (for this key). Every positive is then a false
positive, so the share of p-values <= α estimates the false-positive rate at α. Two p-values per image:

* **decision** — the corrected p the detector decides with (over K lists × keys); averaged over keys its
  FPR is <= α.
* **list 0** — the raw p of the first key's first list alone; under H0 it is (super-)uniform, so its
  FPR estimates α itself and its QQ plot should lie on or below the diagonal (points above it are
  p-values smaller than a valid test gives).

Intervals are Clopper–Pearson (exact binomial, `scipy.stats.beta.ppf`), treating the images as
independent draws. With fewer than 3/α images an FPR at α rests on fewer than ~3 expected positives;
those rows carry a warning. The exact test bounds the FPR averaged over keys; for one key on one kind
of image the FPR scatters around that bound (see `guard.detect.stats`), which is why calibrating your
own key on your own clean images is worth doing.

    >>> from guard.detect.calibrate import fpr_table
    >>> row = fpr_table([0.5, 0.02, 0.9, 0.0004], alphas=(1e-2,))[0]
    >>> row.n_positive, row.n
    (1, 4)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import beta

from ..errors import ConfigError
from .detector import Detector

__all__ = ["ALPHAS", "FprEstimate", "Calibration", "clopper_pearson", "fpr_table", "calibrate_paths", "qq_plot"]

ALPHAS = (1e-1, 1e-2, 1e-3, 1e-4)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided confidence interval for a binomial proportion k/n (Clopper–Pearson).

    lower = Beta.ppf(a/2; k, n-k+1), upper = Beta.ppf(1-a/2; k+1, n-k), with a = 1 - confidence;
    0 and 1 at the ends.
    """
    if n < 1 or not 0 <= k <= n:
        raise ConfigError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    a = 1.0 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


@dataclass(frozen=True)
class FprEstimate:
    """Empirical false-positive rate at one α.

    Attributes:
        alpha: the level; n: clean images; n_positive: p <= alpha; fpr: n_positive / n;
        ci_low, ci_high: 95% Clopper–Pearson interval; enough: n >= 3/alpha (else the estimate is weak).
    """

    alpha: float
    n: int
    n_positive: int
    fpr: float
    ci_low: float
    ci_high: float
    enough: bool


def fpr_table(p_values: Iterable[float], alphas: Sequence[float] = ALPHAS, confidence: float = 0.95
              ) -> list[FprEstimate]:
    """FPR at each α for p-values of clean images, with Clopper–Pearson intervals."""
    p = np.asarray(list(p_values), dtype=np.float64)
    if p.size == 0:
        raise ConfigError("no p-values to calibrate with (no readable images?)")
    out = []
    for a in alphas:
        k = int(np.sum(p <= a))
        lo, hi = clopper_pearson(k, p.size, confidence)
        out.append(FprEstimate(float(a), int(p.size), k, k / p.size, lo, hi, p.size >= 3.0 / a))
    return out


@dataclass
class Calibration:
    """Result of `calibrate_paths`.

    Attributes:
        test: the detector's test; n_images: readable images; n_errors: unreadable files.
        decision: FPR of the decision p (corrected over lists × keys) at each α.
        list0: FPR of the raw p of list 0 of the first key at each α.
        p_decision, p_list0: the p-values themselves (in scan order; log10 for exactness).
        warnings: human-readable caveats (small N).
    """

    test: str
    n_images: int
    n_errors: int
    decision: list[FprEstimate]
    list0: list[FprEstimate]
    log10_p_decision: list[float] = field(repr=False, default_factory=list)
    log10_p_list0: list[float] = field(repr=False, default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self, with_p: bool = False) -> dict:
        d = asdict(self)
        if not with_p:
            d.pop("log10_p_decision")
            d.pop("log10_p_list0")
        return d


def calibrate_paths(detector: Detector, paths: Iterable, *, alphas: Sequence[float] = ALPHAS, workers: int = 4,
                    on_batch=None) -> Calibration:
    """Detect clean images (no search) and estimate the false-positive rate at each α.

    Args:
        detector: a `Detector` (its `search` setting is ignored: calibration looks at identity only).
        paths: image files assumed unwatermarked for the detector's keys.
        alphas: levels to report.
        workers: decoding threads.
        on_batch: progress callback, called with the number of files done.
    """
    dec, raw0, n_err = [], [], 0
    for chunk, results in detector.iter_loaded(paths, workers=workers):
        ok = [r[0] for r in results if r[0] is not None]
        n_err += len(results) - len(ok)
        if ok:
            import torch

            codes = detector.encode(torch.stack([li.tensor for li in ok]))
            dec += [r.log10_p for r in detector.detect_codes(codes)]
            raw0 += detector.test_codes(codes)[0].log10_p[:, 0].tolist()
        if on_batch:
            on_batch(len(chunk))
    if not dec:
        raise ConfigError("no readable images to calibrate with")
    p_dec = [10.0 ** v for v in dec]
    p_raw = [10.0 ** v for v in raw0]
    cal = Calibration(detector.test, len(dec), n_err, fpr_table(p_dec, alphas), fpr_table(p_raw, alphas),
                      dec, raw0)
    weak = [a for a in alphas if len(dec) < 3.0 / a]
    if weak:
        cal.warnings.append(f"N={len(dec)} < 3/alpha for alpha {', '.join(f'{a:g}' for a in weak)}: fewer than 3 "
                            f"false positives expected there, treat those FPRs as rough")
    if detector.test == "tokens":
        cal.warnings.append("the token-count test is approximate: trust its p-values only as far as this "
                            "calibration shows")
    return cal


# ---------------------------------------------------------------------------------------------- QQ plot

def qq_plot(series: dict[str, Sequence[float]], path: str | os.PathLike, *, title: str = "QQ plot of p-values",
            size: int = 640) -> str:
    """Draw a -log10 QQ plot of p-value series against the uniform distribution, as a PNG (PIL only).

    Args:
        series: name -> log10 p-values (<= 0) of clean images; up to 4 series, drawn in distinct colours.
        path: output PNG.
        title: caption.
        size: image side in pixels.

    Points above the diagonal are p-values smaller than uniform would give (anti-conservative); the grey
    band is a pointwise 95% band of uniform order statistics (Beta(i, n-i+1)) for the largest series.
    The axes have their own scales (the y axis stretches to the largest observed value, at most 50).
    """
    from PIL import Image, ImageDraw, ImageFont

    colours = [(27, 94, 32), (198, 40, 40), (21, 101, 192), (239, 108, 0)]
    data = {}
    for name, v in list(series.items())[:4]:
        obs = np.sort(-np.asarray(list(v), dtype=np.float64))[::-1]          # largest -log10 p first
        if obs.size:
            n = obs.size
            exp = -np.log10((np.arange(1, n + 1) - 0.5) / n)
            data[name] = (exp, np.maximum(obs, 0.0))
    if not data:
        raise ConfigError("qq_plot needs at least one non-empty series")
    n_max = max(len(e) for e, _ in data.values())
    top_x = max(1.0, math.ceil(max(float(e.max()) for e, _ in data.values())))
    top_y = max(top_x, math.ceil(min(max(float(o.max()) for _, o in data.values()), 50.0)))  # outliers clipped
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top_m, bottom = 60, size - 20, 40, size - 50

    def xy(ex: float, ob: float) -> tuple[float, float]:
        x = left + (right - left) * min(ex, top_x) / top_x
        y = bottom - (bottom - top_m) * min(ob, top_y) / top_y
        return x, y

    i = np.arange(1, n_max + 1)
    lo = -np.log10(beta.ppf(0.975, i, n_max - i + 1))
    hi = -np.log10(beta.ppf(0.025, i, n_max - i + 1))
    exp = -np.log10((i - 0.5) / n_max)
    band = [xy(e, h) for e, h in zip(exp, hi)] + [xy(e, l) for e, l in zip(exp[::-1], lo[::-1])]
    if len(band) >= 3:
        draw.polygon(band, fill=(225, 225, 225))
    draw.line([xy(0, 0), xy(top_x, top_x)], fill=(120, 120, 120), width=1)
    draw.rectangle([left, top_m, right, bottom], outline="black")
    for t in range(0, int(top_x) + 1, max(1, int(math.ceil(top_x / 10)))):
        x, _ = xy(t, 0)
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        draw.text((x - 3, bottom + 6), str(t), fill="black", font=font)
    for t in range(0, int(top_y) + 1, max(1, int(math.ceil(top_y / 10)))):
        _, y = xy(0, t)
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.text((left - 22, y - 5), str(t), fill="black", font=font)
    draw.text((left, bottom + 22), "expected -log10 p (uniform)", fill="black", font=font)
    draw.text((4, top_m - 16), "observed -log10 p", fill="black", font=font)
    draw.text((left, 8), title, fill="black", font=font)
    for (name, (e, o)), c in zip(data.items(), colours):
        for ex, ob in zip(e, o):
            x, y = xy(float(ex), float(ob))
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=c)
    for j, ((name, (e, _)), c) in enumerate(zip(data.items(), colours)):
        draw.rectangle([left + 8, top_m + 8 + 14 * j, left + 16, top_m + 16 + 14 * j], fill=c)
        draw.text((left + 22, top_m + 6 + 14 * j), f"{name} (n={len(e)})", fill="black", font=font)
    out = os.fspath(path)
    try:
        img.save(out, format="PNG")
    except OSError as e:
        raise ConfigError(f"cannot write the QQ plot {out}: {e.strerror or e}") from None
    return out
