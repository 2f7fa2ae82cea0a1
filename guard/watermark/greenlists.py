"""Green lists: the single source of truth shared by embedding, post-hoc marking and detection.

Derivation (DESIGN §4, scheme "lbw-v1"), for list k of a key bound to tokenizer `tid` with V codes:

    seed_k  = HMAC-SHA256(secret, f"guard/greenlist/v1/{tid}/{k}")
    values  = SHAKE-256(seed_k) read as V little-endian uint64 (V*8 bytes), one per code
    ranking = stable argsort of values (code ids, smallest value first)
    green   = the first round(gamma*V) codes of the ranking

Stratified lists (the default when the tokenizer knows its `alive` codes) walk the same ranking but
take the first round(gamma*n_alive) alive codes and the first round(gamma*n_dead) dead codes, so the
green share among codes the tokenizer really emits is gamma. `round` is Python's (half to even).
Nothing here depends on a numpy or torch RNG, so lists are stable across versions and machines.

    >>> gl = GreenLists(key, tokenizer)
    >>> gl.masks.shape                      # (K, V) bool
    >>> gl.green_counts(codes.flatten(1))   # (B, K) green tokens per image and list
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..keys import WatermarkKey

__all__ = ["GreenLists", "RED_LOGIT"]

RED_LOGIT = -1.0e4
"""Logit offset of red codes in hard mode: finite in fp16/bf16/fp32 (so classifier-free guidance
`u + s*(c-u)` never meets inf-inf), yet exp() of it underflows to exactly 0 in every float dtype."""


def _ranking(seed: bytes, vocab_size: int) -> np.ndarray:
    """Code ids ordered by the SHAKE-256(seed) stream read as little-endian uint64 per code."""
    values = np.frombuffer(hashlib.shake_256(seed).digest(8 * vocab_size), dtype="<u8")
    return np.argsort(values, kind="stable")


def _device_key(device: Any) -> str:
    return str(torch.device(device))


class GreenLists:
    """The K green lists of a key for one tokenizer, with the tensors every consumer needs.

    Args:
        key: a `WatermarkKey` bound to `tokenizer` (checked: KeyFileError otherwise).
        tokenizer: a `guard.models.Tokenizer`; its `alive` codes (if known) make the lists stratified and
            its `embeddings()` give `nearest_green` (computed on first use).
        stratified: force stratified (True) or plain (False) lists; default: stratified iff
            `tokenizer.alive` is not None.

    Attributes:
        key_id, tokenizer_id, vocab_size (V), gamma, n_lists (K): copied from the key.
        stratified: whether lists were split alive/dead.
        alive: bool (V,) alive codes used for stratification, or None for plain lists.
        masks: bool (K, V) on CPU, True = green.
        n_green: long (K,) green codes per list; n_green_alive: long (K,) green codes among alive ones.
        n_alive: number of alive codes (V for plain lists).
    """

    def __init__(self, key: WatermarkKey, tokenizer: Any, *, stratified: bool | None = None) -> None:
        key.check_tokenizer(tokenizer)
        self.key_id = key.key_id
        self.tokenizer_id = key.tokenizer_id
        self.vocab_size = v = key.vocab_size
        self.gamma = key.gamma
        self.n_lists = key.n_lists
        self._tokenizer = tokenizer
        alive = getattr(tokenizer, "alive", None)     # optional in the Tokenizer protocol
        if stratified is None:
            stratified = alive is not None
        if stratified and alive is None:
            raise ConfigError(f"stratified=True needs the tokenizer's alive codes, but {tokenizer.id!r} has alive=None")
        self.stratified = bool(stratified)
        if self.stratified:
            alive = torch.as_tensor(alive).detach().to("cpu", torch.bool).flatten()
            if alive.numel() != v:
                raise ConfigError(f"tokenizer alive mask has {alive.numel()} entries, expected vocab_size {v}")
            self.alive: torch.Tensor | None = alive
        else:
            self.alive = None
        self.n_alive = int(self.alive.sum()) if self.alive is not None else v
        self.masks = self._derive(key)
        self.n_green = self.masks.sum(1)
        self.n_green_alive = (self.masks & self.alive).sum(1) if self.alive is not None else self.n_green.clone()
        self._masks_on: dict[str, torch.Tensor] = {}
        self._bias: dict[tuple, torch.Tensor] = {}
        self._nearest: torch.Tensor | None = None

    def __repr__(self) -> str:
        return (f"GreenLists(key_id={self.key_id!r}, tokenizer_id={self.tokenizer_id!r}, K={self.n_lists}, "
                f"gamma={self.gamma}, stratified={self.stratified})")

    # ----------------------------------------------------------------------------------- derivation
    def _derive(self, key: WatermarkKey) -> torch.Tensor:
        v, gamma = self.vocab_size, self.gamma
        if self.alive is None:
            parts = [(None, int(round(gamma * v)), v)]
        else:
            alive_np = self.alive.numpy()
            n_alive = int(alive_np.sum())
            if n_alive == 0:
                raise ConfigError(f"tokenizer {self.tokenizer_id!r} reports no alive codes; cannot stratify")
            parts = [(alive_np, int(round(gamma * n_alive)), n_alive),
                     (~alive_np, int(round(gamma * (v - n_alive))), v - n_alive)]
        total = sum(m for _, m, _ in parts)
        if total < 1 or (self.alive is not None and parts[0][1] < 1) or total >= v:
            raise ConfigError(f"gamma={gamma} gives {total} green codes of {v} (alive: {self.n_alive}); "
                              f"choose gamma so that at least one code is green and one is red")
        masks = np.zeros((self.n_lists, v), dtype=bool)
        for k in range(self.n_lists):
            seed = key.derive(f"guard/greenlist/v1/{self.tokenizer_id}/{k}".encode())
            order = _ranking(seed, v)
            for subset, m, _ in parts:
                chosen = order if subset is None else order[subset[order]]
                masks[k, chosen[:m]] = True
        return torch.from_numpy(masks)

    # ----------------------------------------------------------------------------------- tensors
    def masks_on(self, device: Any) -> torch.Tensor:
        """`masks` (K, V) bool on `device` (cached per device)."""
        dk = _device_key(device)
        if dk not in self._masks_on:
            self._masks_on[dk] = self.masks.to(dk)
        return self._masks_on[dk]

    def bias(self, delta: float, device: Any = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Soft bias (K, V): `delta` on green codes, 0 on red (cached per delta, device, dtype)."""
        ck = ("soft", float(delta), _device_key(device), dtype)
        if ck not in self._bias:
            self._bias[ck] = self.masks_on(device).to(dtype) * torch.tensor(float(delta), dtype=dtype)
        return self._bias[ck]

    def hard_bias(self, device: Any = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Hard bias (K, V): 0 on green, `RED_LOGIT` (-1e4, finite in every float dtype) on red (cached)."""
        ck = ("hard", _device_key(device), dtype)
        if ck not in self._bias:
            zero = torch.zeros((), dtype=dtype, device=device)
            red = torch.full((), RED_LOGIT, dtype=dtype, device=device)
            self._bias[ck] = torch.where(self.masks_on(device), zero, red)
        return self._bias[ck]

    def check_index(self, k: int) -> int:
        """Validate a list index: an int in [0, K)."""
        if isinstance(k, torch.Tensor) and k.numel() == 1:
            k = int(k)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < self.n_lists:
            raise ConfigError(f"list index must be an int in [0, {self.n_lists}), got {k!r}")
        return int(k)

    def green_ids(self, k: int) -> torch.Tensor:
        """Green code ids of list `k`, ascending, long (n_green[k],)."""
        return self.masks[self.check_index(k)].nonzero().flatten()

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        codes = torch.as_tensor(codes)
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ConfigError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.vocab_size):
            raise ConfigError(f"codes must lie in [0, {self.vocab_size}), got range [{int(codes.min())}, "
                              f"{int(codes.max())}]")
        return codes.long()

    def is_green(self, codes: torch.Tensor, k: int) -> torch.Tensor:
        """Bool tensor shaped like `codes`: whether each code is green in list `k`."""
        codes = self._check_codes(codes)
        return self.masks_on(codes.device)[self.check_index(k)][codes]

    def green_counts(self, codes: torch.Tensor) -> torch.Tensor:
        """Green tokens (with repetition) per image and list: codes (B, N) or (B, h, w) -> long (B, K)."""
        codes = self._check_codes(codes)
        if codes.ndim < 2:
            raise ConfigError(f"codes must be (B, N) or (B, h, w), got shape {tuple(codes.shape)}")
        flat = codes.flatten(1)
        hist = torch.zeros(flat.shape[0], self.vocab_size, dtype=torch.float32, device=flat.device)
        hist.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
        return (hist @ self.masks_on(flat.device).T.float()).round().long()

    def green_share(self, codes: torch.Tensor, list_indices: torch.Tensor | list[int] | int) -> torch.Tensor:
        """Fraction of tokens of each image that are green in that image's list: codes (B, ...) -> float (B,)."""
        counts = self.green_counts(codes)
        b = counts.shape[0]
        idx = torch.as_tensor(list_indices, dtype=torch.long).flatten()
        if idx.numel() == 1:
            idx = idx.expand(b)
        if idx.numel() != b or (b and (int(idx.min()) < 0 or int(idx.max()) >= self.n_lists)):
            raise ConfigError(f"list_indices must be one int or {b} ints in [0, {self.n_lists}), "
                              f"got {idx.tolist()}")
        n = codes[0].numel() if b else 1
        return counts.gather(1, idx.to(counts.device)[:, None]).squeeze(1).float() / n

    # ----------------------------------------------------------------------------------- post-hoc
    @property
    def nearest_green(self) -> torch.Tensor:
        """long (K, V): the green code nearest (Euclidean, in `tokenizer.embeddings()` space) to each code.

        `embeddings()` are the vectors the tokenizer's quantiser compares: L2-normalised rows for a
        cosine codebook (where Euclidean and cosine rank alike), the grid points for an FSQ tokenizer.

        Green codes map to themselves. With stratified lists, targets are alive green codes (dead codes
        decode to images the encoder rarely maps back to them). Computed on first use and cached.
        """
        if self._nearest is None:
            self._nearest = self._compute_nearest()
        return self._nearest

    @torch.no_grad()
    def _compute_nearest(self, chunk: int = 2048) -> torch.Tensor:
        emb = torch.as_tensor(self._tokenizer.embeddings()).detach().float().cpu()
        if emb.ndim != 2 or emb.shape[0] != self.vocab_size:
            raise ConfigError(f"tokenizer embeddings must be (V={self.vocab_size}, d), got {tuple(emb.shape)}")
        targets = self.masks.clone()
        if self.alive is not None:
            alive_green = targets & self.alive
            has = alive_green.any(1, keepdim=True)
            targets = torch.where(has, alive_green, targets)
        out = torch.empty(self.n_lists, self.vocab_size, dtype=torch.long)
        neg = torch.tensor(float("-inf"))
        for i in range(0, self.vocab_size, chunk):
            sim = -torch.cdist(emb[i:i + chunk], emb)  # (c, V): nearer is larger
            for k in range(self.n_lists):
                out[k, i:i + chunk] = torch.where(targets[k], sim, neg).argmax(1)
        ar = torch.arange(self.vocab_size).expand(self.n_lists, -1)
        return torch.where(self.masks, ar, out)
