"""GreenLists: the derivation of DESIGN §4, exact sizes, stratification, lookups and nearest-green."""

from __future__ import annotations

import hashlib
import hmac
import pickle
from itertools import combinations

import numpy as np
import pytest
import torch

from guard.errors import ConfigError, KeyFileError
from guard.keys import WatermarkKey
from guard.watermark import RED_LOGIT, GreenLists

SECRET = bytes(range(32))
TID = "synthetic-vq-4096@0123456789ab"


class SyntheticTokenizer:
    """The parts of the Tokenizer protocol green lists read: id, vocab_size, alive, embeddings."""

    def __init__(self, vocab_size: int = 4096, alive: torch.Tensor | None = None, tid: str = TID, dim: int = 8):
        self.id, self.vocab_size, self.alive = tid, vocab_size, alive
        self._emb = torch.randn(vocab_size, dim, generator=torch.Generator().manual_seed(0))

    def embeddings(self) -> torch.Tensor:
        return self._emb


def key_for(tok, secret: bytes = SECRET, gamma: float = 0.25, n_lists: int = 8) -> WatermarkKey:
    return WatermarkKey._from_secret(secret, gamma=gamma, n_lists=n_lists, tokenizer_id=tok.id,
                                     vocab_size=tok.vocab_size)


def spec_green(secret: bytes, tid: str, k: int, v: int, gamma: float, alive: np.ndarray | None = None) -> np.ndarray:
    """DESIGN §4 written out independently of guard's code."""
    seed = hmac.new(secret, f"guard/greenlist/v1/{tid}/{k}".encode(), hashlib.sha256).digest()
    order = np.argsort(np.frombuffer(hashlib.shake_256(seed).digest(8 * v), dtype="<u8"), kind="stable")
    if alive is None:
        return np.sort(order[: round(gamma * v)])
    a = order[alive[order]][: round(gamma * alive.sum())]
    d = order[~alive[order]][: round(gamma * (~alive).sum())]
    return np.sort(np.concatenate([a, d]))


def test_fixed_secret_gives_fixed_lists():
    """Regression: changing the derivation changes these ids and breaks every existing watermark."""
    gl = GreenLists(key_for(SyntheticTokenizer()), SyntheticTokenizer())
    assert gl.green_ids(0)[:8].tolist() == [2, 6, 8, 10, 18, 22, 32, 33]
    assert gl.green_ids(1)[:8].tolist() == [6, 14, 15, 25, 26, 27, 28, 31]


def test_derivation_matches_the_design_spec():
    alive = torch.arange(4096) % 3 != 0
    for tok in (SyntheticTokenizer(), SyntheticTokenizer(alive=alive)):
        gl = GreenLists(key_for(tok, n_lists=4), tok)
        for k in range(4):
            expected = spec_green(SECRET, TID, k, 4096, 0.25, None if tok.alive is None else alive.numpy())
            assert np.array_equal(gl.green_ids(k).numpy(), expected)


def test_lists_are_deterministic_and_key_specific():
    tok = SyntheticTokenizer()
    a, b = GreenLists(key_for(tok), tok), GreenLists(key_for(tok), tok)
    assert torch.equal(a.masks, b.masks)
    c = GreenLists(key_for(tok, secret=bytes(32)), tok)
    assert not torch.equal(a.masks[0], c.masks[0])
    # A pickled key (worker processes) derives the same lists.
    d = GreenLists(pickle.loads(pickle.dumps(key_for(tok))), tok)
    assert torch.equal(a.masks, d.masks)


def test_tokenizer_id_enters_the_derivation():
    a = GreenLists(key_for(SyntheticTokenizer()), SyntheticTokenizer())
    other = SyntheticTokenizer(tid="synthetic-vq-4096@ffffffffffff")
    b = GreenLists(key_for(other), other)
    assert not torch.equal(a.masks, b.masks)


@pytest.mark.parametrize("v, gamma", [(4096, 0.25), (1000, 0.1), (1001, 0.3), (1024, 0.5), (16384, 0.25)])
def test_exact_green_count(v, gamma):
    tok = SyntheticTokenizer(vocab_size=v, tid=f"syn-{v}")
    gl = GreenLists(key_for(tok, gamma=gamma, n_lists=3), tok)
    assert gl.masks.shape == (3, v) and gl.masks.dtype == torch.bool
    assert gl.n_green.tolist() == [round(gamma * v)] * 3
    assert gl.n_alive == v and gl.alive is None and not gl.stratified


def test_lists_differ_across_k_with_overlap_near_gamma_squared():
    tok = SyntheticTokenizer()
    gl = GreenLists(key_for(tok), tok)
    v, m = 4096, 1024
    mean = m * m / v                                            # 256
    sd = (m * (m / v) * (1 - m / v) * (v - m) / (v - 1)) ** 0.5  # hypergeometric, about 12
    for i, j in combinations(range(gl.n_lists), 2):
        overlap = int((gl.masks[i] & gl.masks[j]).sum())
        assert abs(overlap - mean) < 6 * sd, (i, j, overlap)


def test_stratified_share_is_exactly_gamma_among_alive():
    alive = torch.zeros(4096, dtype=torch.bool)
    alive[torch.randperm(4096, generator=torch.Generator().manual_seed(1))[:971]] = True
    tok = SyntheticTokenizer(alive=alive)
    gl = GreenLists(key_for(tok), tok)
    assert gl.stratified and gl.n_alive == 971 and torch.equal(gl.alive, alive)
    assert gl.n_green_alive.tolist() == [round(0.25 * 971)] * 8
    assert ((gl.masks & ~alive).sum(1)).tolist() == [round(0.25 * (4096 - 971))] * 8
    assert torch.equal(gl.n_green, gl.masks.sum(1))
    plain = GreenLists(key_for(tok), tok, stratified=False)
    assert not plain.stratified and plain.alive is None and plain.n_green.tolist() == [1024] * 8


def test_stratified_without_alive_codes_is_an_error():
    tok = SyntheticTokenizer()
    with pytest.raises(ConfigError, match="alive"):
        GreenLists(key_for(tok), tok, stratified=True)


def test_wrong_tokenizer_is_refused():
    tok = SyntheticTokenizer()
    other = SyntheticTokenizer(tid="reference-vq-1024@000000000000", vocab_size=1024)
    with pytest.raises(KeyFileError, match="reference-vq-1024@000000000000"):
        GreenLists(key_for(tok), other)


def test_lookups_agree_with_masks():
    tok = SyntheticTokenizer()
    gl = GreenLists(key_for(tok), tok)
    codes = torch.randint(0, 4096, (5, 16, 16), generator=torch.Generator().manual_seed(2))
    codes[0] = int(gl.green_ids(3)[0])           # a constant green image: repetition counts
    for k in (0, 3):
        assert torch.equal(gl.is_green(codes, k), gl.masks[k][codes])
    counts = gl.green_counts(codes)
    assert counts.shape == (5, 8) and counts.dtype == torch.long
    assert counts[0, 3] == 256
    assert torch.equal(counts, torch.stack([gl.masks[k][codes.flatten(1)].sum(1) for k in range(8)], 1))
    assert torch.equal(gl.green_counts(codes.flatten(1)), counts)
    share = gl.green_share(codes, [3, 0, 1, 2, 4])
    assert share[0] == 1.0 and torch.allclose(share[1], counts[1, 0] / 256.0)
    with pytest.raises(ConfigError, match=r"\[0, 4096\)"):
        gl.green_counts(torch.tensor([[0, 4096]]))
    with pytest.raises(ConfigError, match="list index"):
        gl.green_ids(8)


def test_bias_tables():
    tok = SyntheticTokenizer()
    gl = GreenLists(key_for(tok), tok)
    soft = gl.bias(2.0, "cpu", torch.float32)
    assert soft.shape == (8, 4096)
    assert torch.equal(soft, gl.masks.float() * 2.0)
    assert gl.bias(2.0, "cpu", torch.float32) is soft                # cached
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        hard = gl.hard_bias("cpu", dtype)
        assert hard.dtype == dtype and torch.isfinite(hard).all()
        assert (hard[gl.masks] == 0).all() and (hard[~gl.masks] == RED_LOGIT).all()
        # Guidance with the same list on both rows keeps red far below green and stays finite.
        c, u = torch.randn(4096).to(dtype) * 5 + hard[0], torch.randn(4096).to(dtype) * 5 + hard[0]
        guided = u + 7.5 * (c - u)
        assert torch.isfinite(guided).all()
        assert guided[~gl.masks[0]].max() < guided[gl.masks[0]].min() - 1000
        assert torch.softmax(guided.float(), -1)[~gl.masks[0]].sum() == 0
    assert gl.masks_on("cpu") is gl.masks_on(torch.device("cpu"))


def test_nearest_green_matches_brute_force():
    alive = torch.arange(512) % 4 != 0
    tok = SyntheticTokenizer(vocab_size=512, alive=alive, tid="syn-512")
    gl = GreenLists(key_for(tok, n_lists=3), tok)
    ng = gl.nearest_green
    assert ng.shape == (3, 512) and ng.dtype == torch.long and gl.nearest_green is ng
    emb = tok.embeddings()
    for k in range(3):
        assert gl.masks[k][ng[k]].all()
        green = gl.masks[k].nonzero().flatten()
        assert torch.equal(ng[k][green], green)                 # green codes map to themselves
        targets = (gl.masks[k] & alive).nonzero().flatten()     # red codes go to alive green codes
        for v in (~gl.masks[k]).nonzero().flatten()[:40].tolist():
            assert alive[ng[k, v]]
            assert int(ng[k, v]) == int(targets[(emb[targets] - emb[v]).norm(dim=1).argmin()])
