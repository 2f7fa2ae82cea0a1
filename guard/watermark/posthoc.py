"""Post-hoc watermarking of existing images in token space.

encode -> replace each red code by `nearest_green[k]` -> decode, repeated on the decoded image while
the re-encoded green share keeps rising and the PSNR to the input stays above a floor. The default floor
is 30 dB, or `max_drop` dB below the image's own round trip through the tokenizer when that is lower: a
VQ that reconstructs a photo at 25 dB cannot mark it at 30 (every decoded image is at most as close to
the input as the plain round trip), so an absolute floor would leave such images unmarked. When swapping
every red code would cross the floor, only the red codes whose swap changes the pixels least are
swapped (the largest share of them, among a few, that keeps the floor). Decoded
images are rounded to 8-bit levels inside the loop, so the green share reported is the one a detector
sees after the image is saved as PNG.

    >>> from guard.watermark import GreenLists, watermark_image
    >>> res = watermark_image(images, GreenLists(key, tok), tok)            # 30 dB, or round trip - 3 dB
    >>> res = watermark_image(images, GreenLists(key, tok), tok, min_psnr=30.0)   # an absolute floor
    >>> res.green_share_before, res.green_share_after, res.psnr, res.floor
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..imageio import quantize
from .greenlists import GreenLists

__all__ = ["DEFAULT_FLOOR_DB", "DEFAULT_MAX_DROP_DB", "PosthocResult", "psnr", "watermark_image"]

DEFAULT_FLOOR_DB = 30.0
"""The default PSNR floor against the input, for images the tokenizer reconstructs well."""
DEFAULT_MAX_DROP_DB = 3.0
"""With the default floor: at most this many dB below the image's own round trip through the tokenizer."""


@dataclass(frozen=True)
class PosthocResult:
    """Result of `watermark_image` for B images.

    Attributes:
        images: float (B, 3, H, W) in [0, 1]: the kept iterate (8-bit levels), or the input unchanged when
            no iterate qualified.
        list_indices: the green list used for each image (B ints; goes to the manifest).
        green_share_before: float (B,), share of the input's tokens green in its list.
        green_share_after: float (B,), same for the re-encoded kept image.
        psnr: float (B,), dB of the kept image against the input (inf when the input was kept).
        iterations: long (B,), swap iterations behind the kept image (0 = input kept unchanged).
        floor: float (B,), the PSNR floor applied to each image (dB against the input).
        roundtrip_psnr: float (B,), dB of the plain round trip decode(encode(input)) against the input (what
            the tokenizer can reach at best; inf for an image it reproduces exactly).
    """

    images: torch.Tensor
    list_indices: list[int]
    green_share_before: torch.Tensor
    green_share_after: torch.Tensor
    psnr: torch.Tensor
    iterations: torch.Tensor
    floor: torch.Tensor
    roundtrip_psnr: torch.Tensor


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1]: (B, C, H, W) x 2 -> (B,); inf for identical images."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def _indices(list_index: int | Sequence[int] | torch.Tensor | None, b: int, gl: GreenLists) -> list[int]:
    if list_index is None:
        return [secrets.randbelow(gl.n_lists) for _ in range(b)]
    if isinstance(list_index, torch.Tensor):
        list_index = list_index.flatten().tolist() if list_index.ndim else int(list_index)
    if isinstance(list_index, Sequence) and not isinstance(list_index, str):
        if len(list_index) != b:
            raise ConfigError(f"list_index has {len(list_index)} entries for {b} images; give one per image")
        return [gl.check_index(k) for k in list_index]
    return [gl.check_index(list_index)] * b


SWAP_FRACTIONS = (0.6, 0.35, 0.15)


def _partial_swaps(tokenizer, x0: torch.Tensor, codes: torch.Tensor, swapped: torch.Tensor, x: torch.Tensor,
                   min_psnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For images whose full swap falls below the PSNR floor, swap only the red positions whose
    swap changes the pixels least (a share of SWAP_FRACTIONS, largest share that keeps the floor)."""
    low = psnr(x, x0) < min_psnr
    changed = swapped != codes
    if not bool((low & changed.flatten(1).any(1)).any()):
        return x, swapped
    gh, gw = codes.shape[1:]
    ph, pw = x.shape[2] // gh, x.shape[3] // gw
    cost = (x - x0).pow(2).mean(1).view(len(x), gh, ph, gw, pw).mean((2, 4))  # (B, gh, gw) per token
    cost = torch.where(changed, cost, torch.full_like(cost, float("inf")))
    n_changed = changed.flatten(1).sum(1)
    order = cost.flatten(1).argsort(1)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
    x, swapped, done = x.clone(), swapped.clone(), ~low
    for frac in SWAP_FRACTIONS:
        todo = (~done).nonzero().flatten()
        if todo.numel() == 0:
            break
        keep = (rank[todo] < (n_changed[todo] * frac).ceil().long()[:, None]).view(-1, gh, gw)
        part = torch.where(keep, swapped[todo], codes[todo])
        xp = quantize(tokenizer.decode(part))
        ok = psnr(xp, x0[todo]) >= min_psnr[todo]
        last = frac == SWAP_FRACTIONS[-1]
        take = ok | last
        x[todo[take]], swapped[todo[take]] = xp[take], part[take]
        done[todo[take]] = True
    return x, swapped


@torch.no_grad()
def watermark_image(image: torch.Tensor, green_lists: GreenLists, tokenizer, *,
                    list_index: int | Sequence[int] | torch.Tensor | None = None, min_psnr: float | None = None,
                    max_drop: float = DEFAULT_MAX_DROP_DB, max_iters: int = 5) -> PosthocResult:
    """Watermark existing images by swapping red codes for their nearest green codes.

    Args:
        image: float (3, H, W) or (B, 3, H, W) in [0, 1], H = W = `tokenizer.image_size`.
        green_lists: the key's lists for `tokenizer`.
        tokenizer: the `Tokenizer` the lists were derived for (checked).
        list_index: one list for all images (int), one per image (sequence), or None to draw each from
            a CSPRNG.
        min_psnr: an absolute floor in dB; an iterate below it (against the input) is never kept. None (the
            default): per image, `min(DEFAULT_FLOOR_DB, round-trip PSNR - max_drop)`.
        max_drop: dB, >= 0, used with the default floor only.
        max_iters: at most this many encode-swap-decode rounds, >= 1.

    Returns:
        `PosthocResult`; images are always batched (B, 3, H, W).
    """
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
        raise ConfigError(f"max_iters must be an int >= 1, got {max_iters!r}")
    if min_psnr is not None and (isinstance(min_psnr, bool) or not isinstance(min_psnr, (int, float))
                                 or min_psnr != min_psnr):
        raise ConfigError(f"min_psnr must be a number (dB) or None, got {min_psnr!r}")
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not max_drop >= 0:
        raise ConfigError(f"max_drop must be a number of dB >= 0, got {max_drop!r}")
    if tokenizer.id != green_lists.tokenizer_id:
        raise ConfigError(f"green lists were derived for tokenizer {green_lists.tokenizer_id!r}, "
                          f"got {tokenizer.id!r}")
    x0 = torch.as_tensor(image)
    if x0.ndim == 3:
        x0 = x0[None]
    if x0.ndim != 4 or x0.shape[1] != 3 or not x0.dtype.is_floating_point:
        raise ConfigError(f"image must be float (3, H, W) or (B, 3, H, W) in [0, 1], got {x0.dtype} "
                          f"{tuple(x0.shape)}")
    x0 = x0.float()
    b = x0.shape[0]
    idx = _indices(list_index, b, green_lists)
    idx_t = torch.tensor(idx, dtype=torch.long)
    nearest = green_lists.nearest_green  # (K, V)

    codes = tokenizer.encode(x0).clone()  # a normal tensor (encoders may return inference tensors)
    share0 = green_lists.green_share(codes, idx_t)
    roundtrip = psnr(quantize(tokenizer.decode(codes)), x0)
    if min_psnr is None:
        floor = torch.clamp(roundtrip - float(max_drop), max=DEFAULT_FLOOR_DB)
    else:
        floor = torch.full((b,), float(min_psnr))
    best_img = x0.clone()
    best_share = share0.clone()
    best_psnr = torch.full((b,), float("inf"))
    best_iter = torch.zeros(b, dtype=torch.long)
    prev_share = share0.clone()
    active = torch.ones(b, dtype=torch.bool)
    for it in range(1, max_iters + 1):
        rows = active.nonzero().flatten()
        if rows.numel() == 0:
            break
        c = codes[rows]
        swapped = nearest[idx_t[rows][:, None], c.flatten(1)].view_as(c)
        x = quantize(tokenizer.decode(swapped))
        x, swapped = _partial_swaps(tokenizer, x0[rows], c, swapped, x, floor[rows])
        re = tokenizer.encode(x)
        share = green_lists.green_share(re, idx_t[rows])
        p = psnr(x, x0[rows])
        ok = p >= floor[rows]
        better = ok & (share > best_share[rows])
        keep = rows[better]
        best_img[keep] = x[better]
        best_share[keep] = share[better]
        best_psnr[keep] = p[better]
        best_iter[keep] = it
        codes[rows] = re
        # Stop an image once its share stops rising or the PSNR floor is crossed.
        go_on = ok & (share > prev_share[rows])
        prev_share[rows] = share
        active[rows] = go_on
    return PosthocResult(images=best_img, list_indices=idx, green_share_before=share0,
                         green_share_after=best_share, psnr=best_psnr, iterations=best_iter, floor=floor,
                         roundtrip_psnr=roundtrip)
