"""Robustness metrics as plain functions on arrays: TPR at alpha, ROC, AUC, empirical TPR@FPR, PSNR, SSIM.

Scores: a detection's score is `-log10(p)` of its corrected p-value (higher = more evidence of a
watermark; `log10_p` of a record is exact even where p underflows). "Positive" = a watermarked image,
"negative" = a clean image under the same attack.

Two kinds of operating point, never mixed:

* **TPR at alpha** (`tpr_at_alpha`): the share of watermarked images whose corrected p <= alpha. The
  threshold is alpha itself, fixed before seeing any data: nothing is fitted.
* **Empirical TPR@FPR** (`tpr_at_fpr`): the threshold is read off the clean images under the same attack
  (the largest TPR whose FPR on those clean images is <= the target, as on a ROC curve). That fits a
  threshold on the clean images, so `tpr_at_fpr` also returns the FPR realised on a held-out half of
  them (`heldout_split`), to show how far the fitted threshold carries.

    >>> import numpy as np
    >>> from guard.eval.metrics import auc, tpr_at_fpr
    >>> pos, neg = np.array([5.0, 4.0, 0.5]), np.array([0.1, 0.6, 0.2, 0.3])
    >>> auc(pos, neg)
    0.9166666666666666
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata

from ..errors import ConfigError

__all__ = ["ALPHAS", "FPRS", "roc_curve", "auc", "tpr_at_alpha", "tpr_at_fpr", "TprAtFpr", "psnr", "ssim",
           "token_match", "scores_from_log10_p"]

ALPHAS = (1e-2, 1e-3, 1e-4, 1e-6)
FPRS = (1e-2, 1e-3)


def _scores(x, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise ConfigError(f"{what} is empty")
    if np.isnan(a).any():
        raise ConfigError(f"{what} contains NaN")
    return a


def scores_from_log10_p(log10_p) -> np.ndarray:
    """Detection scores -log10 p (float64); +inf for p = 0 exactly."""
    return -np.asarray(log10_p, dtype=np.float64)


def roc_curve(pos, neg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of "score >= threshold": (fpr, tpr, thresholds), thresholds decreasing, first point (0, 0) at +inf.

    Same points as `sklearn.metrics.roc_curve(..., drop_intermediate=False)` (one point per distinct score).
    """
    pos, neg = _scores(pos, "pos"), _scores(neg, "neg")
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    ps, ns = np.sort(pos), np.sort(neg)
    tpr = (len(ps) - np.searchsorted(ps, thresholds, side="left")) / len(ps)
    fpr = (len(ns) - np.searchsorted(ns, thresholds, side="left")) / len(ns)
    return (np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr]), np.concatenate([[np.inf], thresholds]))


def auc(pos, neg) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + 0.5 P(tie) (Mann–Whitney U / (n_pos n_neg))."""
    pos, neg = _scores(pos, "pos"), _scores(neg, "neg")
    ranks = rankdata(np.concatenate([pos, neg]))             # average ranks for ties
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def tpr_at_alpha(log10_p_pos, alphas: Sequence[float] = ALPHAS) -> dict[float, float]:
    """Share of watermarked images with corrected p <= alpha, for each alpha (no fitted threshold)."""
    lp = _scores(log10_p_pos, "log10_p_pos")
    for a in alphas:
        if not 0 < a < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {a!r}")
    return {float(a): float(np.mean(lp <= math.log10(a) + 1e-12)) for a in alphas}


@dataclass(frozen=True)
class TprAtFpr:
    """Empirical operating point.

    Attributes:
        target_fpr: the FPR asked for.
        threshold: the score threshold (decide "watermarked" when score > threshold).
        tpr: share of positives above it.
        fpr: share of the negatives used to fit it above it (<= target_fpr by construction).
        fpr_heldout: share of the held-out negatives above it (None when no split was asked for).
        n_neg_fit: negatives the threshold was fitted on.
        resolvable: n_neg_fit >= 1/target_fpr (else the threshold is the maximum clean score and the
            target FPR cannot be resolved).
    """

    target_fpr: float
    threshold: float
    tpr: float
    fpr: float
    fpr_heldout: float | None
    n_neg_fit: int
    resolvable: bool


def tpr_at_fpr(pos, neg, target_fpr: float, *, heldout_split: bool = False) -> TprAtFpr:
    """TPR at the largest ROC point whose FPR on `neg` is <= `target_fpr` (decision: score > threshold).

    Args:
        pos, neg: scores of watermarked and clean images (same attack).
        target_fpr: in (0, 1).
        heldout_split: fit the threshold on the even-indexed negatives and also report the FPR on the
            odd-indexed ones (the threshold then never sees the negatives whose FPR is reported).

    The threshold is the k-th largest fitting negative with k = floor(target_fpr * n) + 1, so at most
    floor(target_fpr * n) fitting negatives lie strictly above it. Equals the TPR that
    `sklearn.metrics.roc_curve` gives at its last point with fpr <= target_fpr, except at ties between a
    positive and the threshold (counted here as not detected).
    """
    if not 0 < target_fpr < 1:
        raise ConfigError(f"target_fpr must be in (0, 1), got {target_fpr!r}")
    pos, neg = _scores(pos, "pos"), _scores(neg, "neg")
    fit, held = (neg[0::2], neg[1::2]) if heldout_split else (neg, None)
    if heldout_split and len(held) == 0:
        raise ConfigError("heldout_split needs at least 2 negatives")
    n = len(fit)
    k = math.floor(target_fpr * n + 1e-9) + 1
    threshold = float(np.sort(fit)[::-1][min(k, n) - 1])
    return TprAtFpr(target_fpr=float(target_fpr), threshold=threshold, tpr=float(np.mean(pos > threshold)),
                    fpr=float(np.mean(fit > threshold)),
                    fpr_heldout=None if held is None else float(np.mean(held > threshold)),
                    n_neg_fit=n, resolvable=n * target_fpr >= 1 - 1e-9)


def token_match(codes_a: torch.Tensor, codes_b: torch.Tensor) -> np.ndarray:
    """Per-image share of positions with the same code: (B, h, w) x 2 -> float64 (B,)."""
    a, b = torch.as_tensor(codes_a), torch.as_tensor(codes_b)
    if a.shape != b.shape:
        raise ConfigError(f"code maps differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a == b).reshape(a.shape[0], -1).double().mean(1).numpy()


def psnr(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-image PSNR in dB of images in [0, 1]: (B, C, H, W) x 2 -> float64 (B,); inf when identical."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.shape != b.shape or a.ndim != 4:
        raise ConfigError(f"images must be (B, C, H, W) of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    mse = (a - b).pow(2).flatten(1).mean(1).numpy()
    with np.errstate(divide="ignore"):
        return 10 * np.log10(1.0 / mse)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor, *, win_size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Per-image mean SSIM (Wang et al. 2004) of images in [0, 1], averaged over channels: float64 (B,).

    Gaussian window 11 x 11, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, sample covariance, mean over
    the valid region — the same number as `skimage.metrics.structural_similarity(x, y, data_range=1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=True, channel_axis=-1)` (which filters with
    reflection and then crops the border the window does not cover).
    """
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.shape != b.shape or a.ndim != 4:
        raise ConfigError(f"images must be (B, C, H, W) of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    C = a.shape[1]
    w = _gaussian_window(win_size, sigma).expand(C, 1, win_size, win_size).contiguous()
    conv = lambda x: torch.nn.functional.conv2d(x, w, groups=C)  # noqa: E731
    n = win_size * win_size
    cov_norm = n / (n - 1)
    ux, uy = conv(a), conv(b)
    vx = cov_norm * (conv(a * a) - ux * ux)
    vy = cov_norm * (conv(b * b) - uy * uy)
    vxy = cov_norm * (conv(a * b) - ux * uy)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).numpy()
