"""Calibration: Clopper–Pearson intervals, FPR tables, the PIL QQ plot, and a run on clean images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy.stats import binomtest

from guard.detect.calibrate import calibrate_paths, clopper_pearson, fpr_table, qq_plot
from guard.errors import ConfigError


@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (5, 10), (10, 10), (3, 3000), (0, 3000), (17, 500)])
def test_clopper_pearson_matches_scipy_binomtest(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    lo, hi = clopper_pearson(k, n)
    assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)


def test_clopper_pearson_rejects_bad_counts():
    with pytest.raises(ConfigError):
        clopper_pearson(5, 3)
    with pytest.raises(ConfigError):
        clopper_pearson(0, 0)


def test_fpr_table_on_uniform_p_values():
    p = np.random.default_rng(0).uniform(size=5000)
    rows = fpr_table(p, alphas=(0.1, 0.01, 0.001, 1e-4))
    assert [r.n for r in rows] == [5000] * 4
    for r in rows[:2]:
        assert r.ci_low <= r.alpha <= r.ci_high
        assert r.fpr == r.n_positive / 5000
    assert [r.enough for r in rows] == [True, True, True, False]   # 3 / 1e-4 = 30000 > 5000
    with pytest.raises(ConfigError):
        fpr_table([])


def test_qq_plot_writes_a_png(tmp_path):
    rng = np.random.default_rng(1)
    series = {"uniform": np.log10(rng.uniform(size=400)).tolist(),
              "too small": (np.log10(rng.uniform(size=400)) * 3).tolist()}
    out = qq_plot(series, tmp_path / "qq.png", title="test")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (640, 640)
        arr = np.asarray(im.convert("RGB"))
    assert (arr != 255).any(axis=2).mean() > 0.01       # something was drawn
    with pytest.raises(ConfigError):
        qq_plot({}, tmp_path / "empty.png")


def test_calibrate_on_clean_reference_images(tmp_path):
    from test_detector import reference_assets, save_pngs

    a = reference_assets()
    paths = save_pngs(a.clean_images, tmp_path, "clean")
    (tmp_path / "broken.png").write_bytes(b"nope")
    from guard.detect import Detector

    det = Detector(a.lists_a, a.tokenizer)
    cal = calibrate_paths(det, [*paths, str(tmp_path / "broken.png")], workers=2)
    assert cal.n_images == len(paths) and cal.n_errors == 1
    assert len(cal.log10_p_decision) == len(paths) == len(cal.log10_p_list0)
    assert all(v <= 0 for v in cal.log10_p_decision)
    recs = det.detect_paths(paths)
    assert cal.log10_p_decision == [r.log10_p for r in recs]          # the decision p of the records
    assert cal.decision[-1].n_positive == 0        # no clean image flagged at 1e-4
    assert any("3/alpha" in w for w in cal.warnings)
    assert cal.to_dict()["n_images"] == len(paths)
    assert math.isfinite(cal.list0[0].ci_high)
