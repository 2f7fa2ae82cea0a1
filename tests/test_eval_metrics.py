"""Metrics agree with scikit-learn / scikit-image reference computations on small fixed inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from guard.errors import ConfigError
from guard.eval import metrics as M

POS = np.array([9.0, 7.5, 7.5, 5.0, 3.2, 3.2, 1.0, 0.4, 0.0, 12.0])
NEG = np.array([0.0, 0.0, 0.1, 0.4, 0.4, 1.0, 1.3, 2.2, 3.2, 0.7, 0.0, 0.05])


def _labels_scores(pos, neg):
    return np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]


def test_roc_curve_matches_sklearn_with_ties():
    y, s = _labels_scores(POS, NEG)
    fpr, tpr, thr = M.roc_curve(POS, NEG)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    pos = np.round(rng.normal(1.5, 1, 40), 1)          # rounding makes ties
    neg = np.round(rng.normal(0, 1, 55), 1)
    y, s = _labels_scores(pos, neg)
    assert M.auc(pos, neg) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.auc(POS, NEG) == pytest.approx(roc_auc_score(*_labels_scores(POS, NEG)), abs=1e-12)


@pytest.mark.parametrize("target", [0.01, 0.1, 0.2, 0.25, 0.5])
def test_tpr_at_fpr_matches_the_sklearn_roc_point(target):
    """The largest TPR on sklearn's ROC with FPR <= target (no positive tied with the threshold here)."""
    rng = np.random.default_rng(7)
    pos, neg = rng.normal(1, 1, 60), rng.normal(0, 1, 80)
    y, s = _labels_scores(pos, neg)
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    op = M.tpr_at_fpr(pos, neg, target)
    assert op.tpr == pytest.approx(tpr[fpr <= target].max())
    assert op.fpr <= target
    assert op.resolvable == (80 * target >= 1)


def test_tpr_at_fpr_counts_ties_with_threshold_as_not_detected():
    op = M.tpr_at_fpr(np.array([1.0, 1.0, 2.0]), np.array([0.0, 1.0]), 0.4)
    assert op.threshold == 1.0 and op.tpr == pytest.approx(1 / 3) and op.fpr == 0.0


def test_tpr_at_fpr_heldout_split_uses_disjoint_negatives():
    neg = np.array([0.0, 5.0, 0.1, 6.0, 0.2, 7.0, 0.3, 8.0])      # even indices low, odd high
    op = M.tpr_at_fpr(np.array([1.0, 4.0]), neg, 0.2, heldout_split=True)
    assert op.n_neg_fit == 4 and op.threshold == 0.3
    assert op.fpr == 0.0 and op.fpr_heldout == 1.0 and op.tpr == 1.0


def test_tpr_at_alpha_from_log10_p():
    lp = np.array([-1.0, -2.0, -3.5, -7.0, 0.0, -2.0000000001])
    got = M.tpr_at_alpha(lp, (1e-2, 1e-3, 1e-6))
    assert got == {0.01: 4 / 6, 0.001: 2 / 6, 1e-06: 1 / 6}


def test_metric_bad_inputs():
    with pytest.raises(ConfigError, match="empty"):
        M.auc(np.array([]), NEG)
    with pytest.raises(ConfigError, match="NaN"):
        M.auc(np.array([1.0, math.nan]), NEG)
    with pytest.raises(ConfigError, match="target_fpr"):
        M.tpr_at_fpr(POS, NEG, 0.0)
    with pytest.raises(ConfigError, match="alpha"):
        M.tpr_at_alpha(POS, (2.0,))


def test_psnr_and_ssim_match_skimage():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 64, 64, generator=g)
    a = torch.nn.functional.avg_pool2d(a, 5, 1, 2)                       # some structure
    b = (a + 0.05 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    ps, ss = M.psnr(a, b), M.ssim(a, b)
    for i in range(3):
        x, y = a[i].permute(1, 2, 0).double().numpy(), b[i].permute(1, 2, 0).double().numpy()
        assert ps[i] == pytest.approx(peak_signal_noise_ratio(x, y, data_range=1.0), abs=1e-9)
        assert ss[i] == pytest.approx(structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                                            use_sample_covariance=True, channel_axis=-1), abs=1e-9)
    assert M.ssim(a, a) == pytest.approx(np.ones(3))
    assert math.isinf(M.psnr(a, a)[0])


def test_token_match():
    a = torch.zeros(2, 4, 4, dtype=torch.long)
    b = a.clone()
    b[1, :2] = 5
    np.testing.assert_allclose(M.token_match(a, b), [1.0, 0.5])
    with pytest.raises(ConfigError, match="shape"):
        M.token_match(a, b[:, :2])
