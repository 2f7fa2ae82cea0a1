"""Detection statistics: exact tail probabilities of green counts, and the multiple-look correction.

Every p-value here is a one-sided upper tail P(X >= x) under a stated null hypothesis. Tails are
computed in natural-log space from `scipy.stats` log-pmfs (summed with a log-add-exp), so a p-value far
below 1e-300 still has an exact logarithm; `log10_p` is what to report, `p` underflows to 0.0.

Two tests (DESIGN §5):

* **distinct-code test** (default, exact for any image): D = the set of distinct codes in the map,
  n = |D|, x = |D ∩ G|. H0: the green set G is a uniformly random subset of fixed size m of the V codes,
  drawn independently of the image. Then x ~ Hypergeometric(V, m, n) exactly, whatever the image:
  spatial repetition and skewed code use cannot inflate the false-positive rate. Stratified lists (γ of
  the alive codes and γ of the dead ones, drawn separately) give x = x_alive + x_dead, the sum of two
  independent hypergeometrics; its tail is computed exactly by convolving their pmfs.
* **token-count test** (approximate; KGW's statistic): x = green tokens counted with repetition among
  N tokens. H0 (an assumption, not a theorem): tokens are iid and each is green with probability γ,
  so x ~ Binomial(N, γ). Repeated and correlated tokens break it; calibrate before trusting it.

Multiple looks (K lists × keys × search transforms) are corrected with Bonferroni, valid under any
dependence: p = min(1, n_looks · min p).

What "exact" guarantees: the probability is over the key. For ANY fixed image that was made without
the key, a freshly drawn key gives P(p <= α) <= α — so the chance of wrongly accusing a given image is
bounded, whatever the image. For ONE fixed key, the share of a population of clean images it flags is
a property of that key and that population: images share popular codes, so it scatters from key to
key around a mean <= α (bench/results/detection.json, "spread_over_keys"). `guard calibrate` measures
it for your key on your images.

    >>> import torch
    >>> from guard.detect import stats
    >>> masks = torch.zeros(1, 8, dtype=torch.bool); masks[0, :2] = True       # V = 8, m = 2
    >>> r = stats.distinct_code_test(torch.tensor([[0, 1, 1, 5]]), masks)
    >>> round(float(10 ** r.log10_p[0, 0]), 4)                                   # P(X >= 2), X ~ H(8, 2, 3)
    0.1071
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy.special import logsumexp
from scipy.stats import binom, hypergeom

from ..errors import ConfigError

__all__ = [
    "TestResult",
    "hypergeom_log_sf",
    "stratified_hypergeom_log_sf",
    "binom_log_sf",
    "distinct_code_test",
    "token_count_test",
    "bonferroni_log10",
    "LN10",
]

LN10 = math.log(10.0)
_TABLE_CACHE = 8192


# ---------------------------------------------------------------------------------------------------
# Scalar-parameter tail tables (cached): entry x of each table is ln P(X >= x), for x = 0 … max support.
# ---------------------------------------------------------------------------------------------------

def _reverse_log_cumsum(log_pmf: np.ndarray) -> np.ndarray:
    """ln of the upper tail sums: out[x] = ln Σ_{i >= x} exp(log_pmf[i]) (positive terms: no cancellation)."""
    out = np.logaddexp.accumulate(log_pmf[::-1])[::-1]
    return np.minimum(out, 0.0)


@lru_cache(maxsize=_TABLE_CACHE)
def _hypergeom_tail_table(M: int, m: int, n: int) -> np.ndarray:
    """ln P(X >= x) for x = 0 … min(n, m), X ~ Hypergeom(M, m, n) (scipy order: population, successes, draws)."""
    support = np.arange(min(n, m) + 1)
    log_pmf = hypergeom.logpmf(support, M, m, n)          # -inf below max(0, n - (M - m))
    table = _reverse_log_cumsum(log_pmf)
    table.setflags(write=False)
    return table


@lru_cache(maxsize=_TABLE_CACHE)
def _binom_tail_table(N: int, p: float) -> np.ndarray:
    """ln P(X >= x) for x = 0 … N, X ~ Binomial(N, p)."""
    support = np.arange(N + 1)
    table = _reverse_log_cumsum(binom.logpmf(support, N, p))
    table.setflags(write=False)
    return table


@lru_cache(maxsize=_TABLE_CACHE)
def _stratified_tail_table(M_a: int, m_a: int, n_a: int, M_d: int, m_d: int, n_d: int) -> np.ndarray:
    """ln P(X_a + X_d >= x), x = 0 … n_a + n_d, for independent X_a ~ H(M_a, m_a, n_a), X_d ~ H(M_d, m_d, n_d).

    P(X_a + X_d >= x) = Σ_j P(X_d = j) · P(X_a >= x - j), an exact finite convolution.
    """
    tail_a = _hypergeom_tail_table(M_a, m_a, n_a)                       # x = 0 … min(n_a, m_a)
    j = np.arange(min(n_d, m_d) + 1)
    log_pmf_d = hypergeom.logpmf(j, M_d, m_d, n_d) if M_d > 0 else np.zeros(1)
    x = np.arange(n_a + n_d + 1)
    y = x[:, None] - j[None, :]                                         # needed X_a (X, J)
    log_tail_a = np.where(y <= 0, 0.0, np.where(y < len(tail_a), tail_a[np.clip(y, 0, len(tail_a) - 1)], -np.inf))
    table = np.minimum(logsumexp(log_tail_a + log_pmf_d[None, :], axis=1), 0.0)
    table.setflags(write=False)
    return table


def _lookup(table: np.ndarray, x: int) -> float:
    if x <= 0:
        return 0.0
    if x >= len(table):
        return -math.inf
    return float(table[x])


def _as_int_array(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int64)


def hypergeom_log_sf(x, M, m, n) -> np.ndarray:
    """ln P(X >= x) for X ~ Hypergeometric(M, m, n): n draws without replacement from M codes of which m are green.

    H0 of the distinct-code test: the green set is a uniformly random m-subset of the M codes, independent
    of the image, so the green count among the image's n distinct codes is exactly this hypergeometric.
    Exact in log space (`scipy.stats.hypergeom.logpmf` summed over the tail), so values far below
    ln(1e-300) are still right.

    Args:
        x, M, m, n: integer arrays (or scalars), broadcast together; 0 <= m <= M, 0 <= n <= M.

    Returns:
        float64 array of the broadcast shape, in (-inf, 0] (natural log).
    """
    x, M, m, n = np.broadcast_arrays(_as_int_array(x), _as_int_array(M), _as_int_array(m), _as_int_array(n))
    if np.any((m < 0) | (m > M) | (n < 0) | (n > M)):
        raise ConfigError("hypergeom_log_sf needs 0 <= m <= M and 0 <= n <= M")
    out = np.empty(x.shape, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        out[idx] = _lookup(_hypergeom_tail_table(int(M[idx]), int(m[idx]), int(n[idx])), int(x[idx]))
    return out


def stratified_hypergeom_log_sf(x, n_alive, n_dead, M_alive, m_alive, M_dead, m_dead) -> np.ndarray:
    """ln P(X_a + X_d >= x), X_a ~ Hypergeom(M_alive, m_alive, n_alive) and X_d ~ Hypergeom(M_dead, m_dead, n_dead) independent.

    H0 of the stratified distinct-code test: the green set is a uniformly random m_alive-subset of the
    alive codes joined with an independent uniformly random m_dead-subset of the dead codes. The image's
    n_alive distinct alive codes and n_dead distinct dead codes then hold exactly X_a and X_d green codes.
    The tail of the sum is an exact convolution of the two pmfs (`scipy.stats.hypergeom.logpmf`).

    Args:
        x: observed distinct green codes (alive + dead); all arguments are integer arrays, broadcast together.

    Returns:
        float64 array in (-inf, 0] (natural log).
    """
    arrs = np.broadcast_arrays(*(_as_int_array(a) for a in (x, n_alive, n_dead, M_alive, m_alive, M_dead, m_dead)))
    x, n_a, n_d, M_a, m_a, M_d, m_d = arrs
    if np.any((m_a < 0) | (m_a > M_a) | (n_a < 0) | (n_a > M_a) | (m_d < 0) | (m_d > M_d) | (n_d < 0) | (n_d > M_d)):
        raise ConfigError("stratified_hypergeom_log_sf needs 0 <= m, n <= M in each stratum")
    out = np.empty(x.shape, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        if n_d[idx] == 0:
            table = _hypergeom_tail_table(int(M_a[idx]), int(m_a[idx]), int(n_a[idx]))
        else:
            table = _stratified_tail_table(int(M_a[idx]), int(m_a[idx]), int(n_a[idx]),
                                           int(M_d[idx]), int(m_d[idx]), int(n_d[idx]))
        out[idx] = _lookup(table, int(x[idx]))
    return out


def binom_log_sf(x, N, p) -> np.ndarray:
    """ln P(X >= x) for X ~ Binomial(N, p) — the token-count test's tail. APPROXIMATE as a watermark test.

    H0 (assumed): each of the N tokens is independently green with probability p (= γ). Real images
    repeat and correlate tokens, so this null is only approximate; `guard calibrate` measures how far.
    Exact in log space (`scipy.stats.binom.logpmf` summed over the tail).

    Args:
        x, N: integer arrays; p: float array in [0, 1]; broadcast together.

    Returns:
        float64 array in (-inf, 0] (natural log).
    """
    x, N, p = np.broadcast_arrays(_as_int_array(x), _as_int_array(N), np.asarray(p, dtype=np.float64))
    if np.any((p < 0) | (p > 1) | (N < 0)):
        raise ConfigError("binom_log_sf needs N >= 0 and 0 <= p <= 1")
    out = np.empty(x.shape, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        out[idx] = _lookup(_binom_tail_table(int(N[idx]), float(p[idx])), int(x[idx]))
    return out


def bonferroni_log10(log10_p, n_looks: int) -> np.ndarray:
    """Bonferroni-corrected log10 p: log10(min(1, n_looks · p)). Valid under any dependence between looks.

    Args:
        log10_p: log10 of the smallest raw p-value over the looks (array or scalar).
        n_looks: number of tests the minimum was taken over (lists × keys × transforms), >= 1.
    """
    if n_looks < 1:
        raise ConfigError(f"n_looks must be >= 1, got {n_looks}")
    return np.minimum(0.0, np.asarray(log10_p, dtype=np.float64) + math.log10(n_looks))


# ---------------------------------------------------------------------------------------------------
# Tests on code maps, vectorised over images (B) and lists (K).
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TestResult:
    """Per-image, per-list outcome of one test.

    Attributes:
        log10_p: float64 (B, K), log10 of the raw one-sided p-value of each list (<= 0).
        n_green: int64 (B, K), the statistic x (distinct green codes, or green tokens with repetition).
        n_distinct: int64 (B,), distinct codes in each map.
        n_tokens: int, tokens per map (N).
        exact: True for the distinct-code test, False for the token-count test.
    """

    __test__ = False  # not a pytest class

    log10_p: np.ndarray
    n_green: np.ndarray
    n_distinct: np.ndarray
    n_tokens: int
    exact: bool


def _check(codes: torch.Tensor, masks: torch.Tensor, alive: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    if codes.ndim < 2:
        raise ConfigError(f"codes must be (B, N) or (B, h, w), got shape {tuple(codes.shape)}")
    codes = codes.reshape(codes.shape[0], -1).long()
    if masks.ndim != 2 or masks.dtype != torch.bool:
        raise ConfigError(f"masks must be a bool tensor (K, V), got {masks.dtype} {tuple(masks.shape)}")
    V = masks.shape[1]
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= V):
        raise ConfigError(f"codes must lie in [0, {V}), got range [{int(codes.min())}, {int(codes.max())}]")
    if alive is not None and (alive.dtype != torch.bool or alive.shape != (V,)):
        raise ConfigError(f"alive must be a bool tensor ({V},), got {alive.dtype} {tuple(alive.shape)}")
    return codes, V


def distinct_code_test(codes: torch.Tensor, masks: torch.Tensor, alive: torch.Tensor | None = None) -> TestResult:
    """Exact distinct-code test of every map against every list (DESIGN §5).

    H0: each green list is a uniformly random subset (of its fixed size) of the V codes — stratified when
    `alive` is given: a random subset of the alive codes and an independent one of the dead codes —
    drawn independently of the image. Then for distinct codes D of a map, |D ∩ G| ~ Hypergeom(V, m, |D|)
    (stratified: the convolution of the alive and dead hypergeometrics), exactly.

    Args:
        codes: long (B, N) or (B, h, w) codes in [0, V).
        masks: bool (K, V) green masks.
        alive: optional bool (V,); pass it for stratified lists (the green count among alive codes is
            then taken from `masks`, so the test matches the lists exactly).

    Returns:
        `TestResult` with exact log10 p-values (B, K).
    """
    codes, V = _check(codes, masks, alive)
    B, N = codes.shape
    present = torch.zeros(B, V, dtype=torch.bool).scatter_(1, codes, True)
    maskf = masks.to(torch.float32)
    x = (present.to(torch.float32) @ maskf.T).round().long().numpy()            # (B, K)
    n = present.sum(1).numpy()                                                  # (B,)
    m = masks.sum(1).numpy()                                                    # (K,)
    if alive is None:
        ln_p = hypergeom_log_sf(x, V, m[None, :], n[:, None])
    else:
        M_a = int(alive.sum())
        n_a = (present & alive).sum(1).numpy()
        m_a = (masks & alive).sum(1).numpy()
        ln_p = stratified_hypergeom_log_sf(x, n_a[:, None], (n - n_a)[:, None], M_a, m_a[None, :],
                                           V - M_a, (m - m_a)[None, :])
    return TestResult(ln_p / LN10, x, n, N, exact=True)


def token_count_test(codes: torch.Tensor, masks: torch.Tensor, alive: torch.Tensor | None = None) -> TestResult:
    """Token-count test (APPROXIMATE): green tokens with repetition, binomial tail.

    H0 (assumed, not guaranteed): the N tokens are iid and each is green with probability γ_k = m_k / V
    (stratified: m_k,alive / V_alive, the green share among codes the tokenizer emits). Spatial
    repetition violates it, so p-values can be too small; run `guard calibrate` before trusting them.

    Args and Returns: as `distinct_code_test`; `exact` is False.
    """
    codes, V = _check(codes, masks, alive)
    B, N = codes.shape
    counts = torch.zeros(B, V, dtype=torch.float32).scatter_add_(1, codes, torch.ones(B, N))
    x = (counts @ masks.to(torch.float32).T).round().long().numpy()            # (B, K)
    n_distinct = (counts > 0).sum(1).numpy()
    if alive is None:
        gamma = masks.sum(1).numpy() / V
    else:
        gamma = (masks & alive).sum(1).numpy() / max(int(alive.sum()), 1)
    ln_p = binom_log_sf(x, N, gamma[None, :])
    return TestResult(ln_p / LN10, x, n_distinct, N, exact=False)
