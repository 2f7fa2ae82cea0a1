"""Exactness of the detection statistics against independent computations (exact rationals, scipy sums)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.stats import binom, hypergeom

from guard.detect import stats
from guard.errors import ConfigError


def exact_hypergeom_sf(x: int, M: int, m: int, n: int) -> Fraction:
    """P(X >= x), X ~ Hypergeom(M, m, n), as an exact rational from integer binomial coefficients."""
    top = sum(math.comb(m, i) * math.comb(M - m, n - i) for i in range(max(x, 0), min(n, m) + 1))
    return Fraction(top, math.comb(M, n))


def exact_hypergeom_pmf(i: int, M: int, m: int, n: int) -> Fraction:
    if i < 0 or i > min(n, m) or n - i > M - m:
        return Fraction(0)
    return Fraction(math.comb(m, i) * math.comb(M - m, n - i), math.comb(M, n))


def log10_fraction(f: Fraction) -> float:
    """log10 of a positive rational; math.log10 takes Python ints of any size, so far below 1e-308 too."""
    return math.log10(f.numerator) - math.log10(f.denominator)


HYPER_CASES = [
    # (x, M, m, n)
    (0, 1024, 256, 100), (1, 10, 5, 8), (3, 10, 5, 8), (25, 1024, 256, 100), (40, 1024, 256, 100),
    (60, 1024, 256, 150), (150, 1024, 256, 150), (256, 1024, 256, 256), (100, 1024, 256, 256),
    (7, 50, 10, 45), (0, 20, 0, 5), (1, 20, 0, 5), (5, 20, 20, 5), (3, 7, 3, 7),
]


@pytest.mark.parametrize("x,M,m,n", HYPER_CASES)
def test_hypergeom_matches_exact_rational(x, M, m, n):
    exact = exact_hypergeom_sf(x, M, m, n)
    got = float(stats.hypergeom_log_sf(x, M, m, n))
    if exact == 0:
        assert got == -math.inf
    else:
        assert got / stats.LN10 == pytest.approx(log10_fraction(exact), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("x,M,m,n", [c for c in HYPER_CASES if c[2] > 0])
def test_hypergeom_matches_bruteforce_scipy_pmf_sum(x, M, m, n):
    brute = hypergeom.pmf(np.arange(x, min(n, m) + 1), M, m, n).sum()
    assert math.exp(float(stats.hypergeom_log_sf(x, M, m, n))) == pytest.approx(min(brute, 1.0), rel=1e-9, abs=1e-300)


def test_hypergeom_below_1e300_is_exact_in_log_space():
    # A 16384-code vocabulary with 1024 tokens all green: p ~ 1e-646, far below double range.
    x, M, m, n = 1000, 16384, 4096, 1000
    exact = exact_hypergeom_sf(x, M, m, n)
    got10 = float(stats.hypergeom_log_sf(x, M, m, n)) / stats.LN10
    assert got10 < -600
    assert got10 == pytest.approx(log10_fraction(exact), rel=1e-11)
    x = 800
    assert float(stats.hypergeom_log_sf(x, M, m, n)) / stats.LN10 == pytest.approx(
        log10_fraction(exact_hypergeom_sf(x, M, m, n)), rel=1e-11)


def test_hypergeom_vectorised_broadcast():
    x = np.array([[10, 20], [30, 40]])
    n = np.array([[60], [120]])
    got = stats.hypergeom_log_sf(x, 1024, 256, n)
    assert got.shape == (2, 2)
    for i in range(2):
        for j in range(2):
            assert got[i, j] == pytest.approx(float(stats.hypergeom_log_sf(int(x[i, j]), 1024, 256, int(n[i, 0]))))


def exact_stratified_sf(x, n_a, n_d, M_a, m_a, M_d, m_d) -> Fraction:
    tot = Fraction(0)
    for i in range(0, min(n_a, m_a) + 1):
        for j in range(0, min(n_d, m_d) + 1):
            if i + j >= x:
                tot += exact_hypergeom_pmf(i, M_a, m_a, n_a) * exact_hypergeom_pmf(j, M_d, m_d, n_d)
    return tot


@pytest.mark.parametrize("x,n_a,n_d,M_a,m_a,M_d,m_d", [
    (30, 100, 5, 900, 225, 124, 31), (60, 100, 5, 900, 225, 124, 31), (105, 100, 5, 900, 225, 124, 31),
    (0, 100, 5, 900, 225, 124, 31), (3, 0, 10, 900, 225, 124, 31), (40, 120, 0, 900, 225, 124, 31),
    (12, 20, 20, 40, 10, 40, 10),
])
def test_stratified_matches_exact_convolution(x, n_a, n_d, M_a, m_a, M_d, m_d):
    exact = exact_stratified_sf(x, n_a, n_d, M_a, m_a, M_d, m_d)
    got = float(stats.stratified_hypergeom_log_sf(x, n_a, n_d, M_a, m_a, M_d, m_d))
    if exact == 0:
        assert got == -math.inf
    else:
        assert got / stats.LN10 == pytest.approx(log10_fraction(exact), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("x,N,p", [(0, 256, 0.25), (64, 256, 0.25), (100, 256, 0.25), (256, 256, 0.25),
                                   (30, 40, 0.5), (1000, 1024, 0.25)])
def test_binomial_matches_exact_rational(x, N, p):
    q = Fraction(p).limit_denominator(1000)
    exact = sum(math.comb(N, i) * q ** i * (1 - q) ** (N - i) for i in range(x, N + 1))
    got = float(stats.binom_log_sf(x, N, p)) / stats.LN10
    assert got == pytest.approx(log10_fraction(exact), rel=1e-10, abs=1e-12)
    if exact > Fraction(1, 10 ** 290):
        assert 10 ** got == pytest.approx(binom.sf(x - 1, N, p), rel=1e-9)


def test_distinct_code_test_agrees_with_scipy_on_constructed_maps():
    V, K = 64, 3
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(K, V, dtype=torch.bool)
    for k in range(K):
        masks[k, torch.randperm(V, generator=g)[:16]] = True
    codes = torch.randint(0, V, (5, 8, 8), generator=g)
    codes[0] = masks[1].nonzero().flatten()[torch.randint(0, 16, (8, 8), generator=g)]  # all green in list 1
    r = stats.distinct_code_test(codes, masks)
    assert r.exact and r.n_tokens == 64 and r.log10_p.shape == (5, K)
    for b in range(5):
        d = set(codes[b].flatten().tolist())
        assert r.n_distinct[b] == len(d)
        for k in range(K):
            x = sum(bool(masks[k, c]) for c in d)
            assert r.n_green[b, k] == x
            brute = hypergeom.pmf(np.arange(x, 17), V, 16, len(d)).sum()
            assert 10 ** r.log10_p[b, k] == pytest.approx(min(brute, 1.0), rel=1e-9)
    assert r.log10_p[0, 1] < -5


def test_stratified_test_agrees_with_exact_convolution():
    V = 40
    alive = torch.zeros(V, dtype=torch.bool)
    alive[:30] = True
    masks = torch.zeros(2, V, dtype=torch.bool)
    masks[0, [0, 3, 5, 9, 11, 20, 25, 32, 35]] = True          # 7 alive + 2 dead green
    masks[1, [1, 2, 4, 6, 8, 10, 12, 30, 31]] = True
    codes = torch.tensor([[0, 3, 3, 5, 9, 9, 32, 35, 1, 2, 39, 38]])
    r = stats.distinct_code_test(codes, masks, alive)
    d = set(codes[0].tolist())
    n_a = sum(c < 30 for c in d)
    for k in range(2):
        green = {int(c) for c in masks[k].nonzero().flatten()}
        x = len(d & green)
        m_a = sum(c < 30 for c in green)
        exact = exact_stratified_sf(x, n_a, len(d) - n_a, 30, m_a, 10, len(green) - m_a)
        assert r.log10_p[0, k] == pytest.approx(log10_fraction(exact), rel=1e-10)


def test_token_count_test_is_binomial_on_tokens_with_repetition():
    V = 32
    masks = torch.zeros(1, V, dtype=torch.bool)
    masks[0, :8] = True
    codes = torch.tensor([[0, 0, 0, 0, 1, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]])
    r = stats.token_count_test(codes, masks)
    assert not r.exact and r.n_green[0, 0] == 5 and r.n_distinct[0] == 13
    assert 10 ** r.log10_p[0, 0] == pytest.approx(binom.sf(4, 16, 0.25), rel=1e-10)


def test_distinct_test_is_valid_under_repetition_while_token_test_is_not():
    # One image made of 4 codes, each repeated 64 times; random green lists (the null) of 25% of V = 256.
    # The distinct test's false-positive rate must be <= alpha; the token test's is far above it.
    V, alpha, trials = 256, 0.01, 2000
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(trials, V, dtype=torch.bool)
    for t in range(trials):
        masks[t, torch.randperm(V, generator=g)[:64]] = True
    codes = torch.tensor([[3, 77, 150, 201]]).repeat_interleave(64, dim=1)
    fpr_distinct = float((stats.distinct_code_test(codes, masks).log10_p <= math.log10(alpha)).mean())
    fpr_tokens = float((stats.token_count_test(codes, masks).log10_p <= math.log10(alpha)).mean())
    assert fpr_distinct <= alpha
    assert fpr_tokens > 0.2           # P(>= 2 of 4 distinct codes green) ~ 0.26


def test_bonferroni():
    assert stats.bonferroni_log10(-10.0, 100) == pytest.approx(-8.0)
    assert stats.bonferroni_log10(-1.0, 1000) == 0.0
    assert stats.bonferroni_log10(-400.0, 8) == pytest.approx(-400 + math.log10(8))
    with pytest.raises(ConfigError):
        stats.bonferroni_log10(-1.0, 0)


def test_bad_inputs_raise_config_error():
    masks = torch.zeros(2, 8, dtype=torch.bool)
    with pytest.raises(ConfigError, match="codes must lie"):
        stats.distinct_code_test(torch.tensor([[0, 9]]), masks)
    with pytest.raises(ConfigError, match="bool tensor"):
        stats.distinct_code_test(torch.tensor([[0, 1]]), masks.float())
    with pytest.raises(ConfigError):
        stats.hypergeom_log_sf(1, 10, 11, 2)
    with pytest.raises(ConfigError):
        stats.binom_log_sf(1, 10, 1.5)
