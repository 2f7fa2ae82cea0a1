"""Named image attacks with the grids the robustness literature uses (WAVES, wmar, VideoSeal, W-Bench).

Every attack maps a batch of images to a batch of the same shape: float (B, 3, S, S) in [0, 1] in,
float (B, 3, S, S) at 8-bit levels out (as if the attacked image were saved as PNG). Randomised
attacks (noise, erase, the combined attack) draw from a per-image generator seeded from
(seed, attack, strength, image index), so the same call always gives the same pixels, whatever the
batch an image falls in.

    >>> from guard.eval.attacks import ATTACKS, apply_attack
    >>> out = apply_attack("jpeg", images, 25, seed=0)          # JPEG quality 25
    >>> ATTACKS["rotate"].grid
    (5, 10, 15, 20, 30, 45)

Pixel attacks (all here) need nothing but the image; model-based regeneration attacks
(`guard.eval.regeneration`: a second VQ tokenizer, AR resampling, an autoencoder round trip) register
in the same table with `needs` set, and get their models from an `AttackContext`.

Conventions (the anchors differ; ours are stated): crop keeps the upper-left `s x s` fraction of the
side and resizes it back (wmar's "crop"); resize scales down by `s` and back up with Lanczos, as a
detector loading a small image would; rotation is counter-clockwise about the centre with black
corners, same size (torchvision's default); Gaussian blur takes the kernel size with torchvision's
default sigma (wmar); noise sigma is on the [0, 1] scale; brightness/contrast are torchvision's
factors; random erase fills a random rectangle of the given area fraction with a random flat colour.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from ..errors import ConfigError
from ..imageio import RESAMPLE, from_pil, quantize, to_pil

__all__ = ["ATTACKS", "FAMILIES", "AttackSpec", "AttackContext", "apply_attack", "attack_seed", "param_label",
           "parse_attack_list", "register"]

FAMILIES = ("none", "valuemetric", "geometric", "combined", "regeneration")


def attack_seed(seed: int, name: str, param: Any, index: int) -> int:
    """Per-image seed: SHA-256 of (seed, attack, strength, image index), as a 63-bit int."""
    digest = hashlib.sha256(f"guard/attack/v1/{int(seed)}/{name}/{param_label(param)}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def param_label(param: Any) -> str:
    """The strength as it appears in directory names and reports: 25, 0.75, 0.1 (no trailing zeros)."""
    if isinstance(param, float):
        return f"{param:g}"
    return str(param)


@dataclass
class AttackContext:
    """Models the regeneration attacks need, loaded on first use (see `guard.eval.regeneration`).

    Attributes:
        generator: the `Generator` AR resampling re-samples with (and whose tokenizer it encodes with).
        prompts: optional prompt per image index (AR resampling conditions on it; else a neutral prompt).
        cfg: guidance scale for AR resampling.
        cache: loaded attack models by name.
    """

    generator: Any = None
    prompts: Sequence[str] | None = None
    cfg: float = 3.0
    cache: dict = field(default_factory=dict)


BatchFn = Callable[[torch.Tensor, Any, Sequence[int], AttackContext, Sequence[int]], torch.Tensor]


@dataclass(frozen=True)
class AttackSpec:
    """One named attack.

    Attributes:
        name: the registry key ("jpeg", "rotate", ...).
        family: one of FAMILIES (the report averages families).
        param_name: what the strength means ("quality", "degrees", ...).
        grid: strengths a full evaluation runs, mildest first.
        summary: the strength of the summary table (DESIGN §10 operating point), or None.
        description: one line for reports and --help.
        fn: (images (B,3,S,S), strength, per-image seeds, context, image indices) -> images.
        needs: None for pixel attacks; the model a regeneration attack loads ("vq2", "generator", ...).
    """

    name: str
    family: str
    param_name: str
    grid: tuple
    summary: Any
    description: str
    fn: BatchFn
    needs: str | None = None

    def check(self, param: Any) -> Any:
        """The strength coerced to the grid's type; ConfigError when it is not a valid strength."""
        kind = type(self.grid[0])
        try:
            value = kind(param)
        except (TypeError, ValueError):
            raise ConfigError(f"attack {self.name!r}: strength must be a {kind.__name__} ({self.param_name}), got "
                              f"{param!r}") from None
        _VALIDATORS.get(self.name, lambda v: None)(value)
        return value


ATTACKS: dict[str, AttackSpec] = {}


def register(spec: AttackSpec) -> AttackSpec:
    """Add an attack to `ATTACKS` (one place: the harness, CLI and reports pick it up)."""
    if spec.family not in FAMILIES:
        raise ConfigError(f"unknown family {spec.family!r}; one of {', '.join(FAMILIES)}")
    ATTACKS[spec.name] = spec
    return spec


def apply_attack(name: str, images: torch.Tensor, param: Any, *, seed: int = 0, indices: Sequence[int] | None = None,
                 context: AttackContext | None = None) -> torch.Tensor:
    """Attack a batch: float (B, 3, S, S) in [0, 1] -> float (B, 3, S, S) at 8-bit levels.

    Args:
        name: a key of `ATTACKS`.
        images: the batch.
        param: the strength (see `ATTACKS[name].grid`).
        seed: the run's seed; each image's randomness comes from (seed, name, param, its index).
        indices: the global index of each image (default 0..B-1): the same image gets the same attack
            in any batch.
        context: models for regeneration attacks.
    """
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
    spec = ATTACKS[name]
    param = spec.check(param)
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[1] != 3 or not images.dtype.is_floating_point:
        raise ConfigError(f"images must be float (B, 3, S, S) in [0, 1], got {images.dtype} {tuple(images.shape)}")
    indices = list(range(len(images))) if indices is None else [int(i) for i in indices]
    if len(indices) != len(images):
        raise ConfigError(f"indices has {len(indices)} entries for {len(images)} images")
    if len(images) == 0:
        return images.float()
    seeds = [attack_seed(seed, name, param, i) for i in indices]
    out = spec.fn(images.float().clamp(0, 1), param, seeds, context or AttackContext(), indices)
    if out.shape != images.shape:
        raise RuntimeError(f"attack {name} returned shape {tuple(out.shape)} for input {tuple(images.shape)}")
    return quantize(out)


def parse_attack_list(text: str | None, *, full: bool) -> list[tuple[str, Any]]:
    """`"jpeg,blur:9,rotate:10|20"` -> [(name, strength), ...].

    A bare name takes its whole grid (`full`) or its summary strength; `name:a|b` takes the strengths
    given. None or "" means every registered attack. "none" (no attack) is always included first.
    """
    items = [s.strip() for s in (text or "").split(",") if s.strip()] or list(ATTACKS)
    out: list[tuple[str, Any]] = [("none", 0)]
    for item in items:
        name, _, params = item.partition(":")
        name = name.strip()
        if name not in ATTACKS:
            raise ConfigError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
        spec = ATTACKS[name]
        if params:
            values = [spec.check(p) for p in params.split("|") if p.strip()]
        elif full or spec.summary is None:
            values = list(spec.grid)
        else:
            values = [spec.summary]
        for v in values:
            if (name, v) not in out:
                out.append((name, v))
    return out


# ---------------------------------------------------------------------------------------------- helpers

def _per_image(fn: Callable[[Image.Image, Any, np.random.Generator], Image.Image]) -> BatchFn:
    """Lift a PIL attack `(image, strength, rng) -> image` to a batch function."""
    def batch(images, param, seeds, context, indices):
        return torch.stack([from_pil(fn(to_pil(x), param, np.random.default_rng(s))) for x, s in zip(images, seeds)])
    return batch


def _codec(im: Image.Image, fmt: str, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format=fmt, quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def _jpeg(im, q, rng):
    return _codec(im, "JPEG", q)


def _webp(im, q, rng):
    return _codec(im, "WEBP", q)


def _crop(im, s, rng):
    w, h = im.size
    cw, ch = max(1, round(w * s)), max(1, round(h * s))
    return im.crop((0, 0, cw, ch)).resize((w, h), Image.BICUBIC)


def _resize(im, s, rng):
    w, h = im.size
    small = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
    return small.resize((w, h), RESAMPLE)


def _median(im, k, rng):
    return im.filter(ImageFilter.MedianFilter(int(k)))


def _erase(im, area, rng):
    w, h = im.size
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    ew = int(min(w, max(1, round(np.sqrt(area * w * h * aspect)))))
    eh = int(min(h, max(1, round(area * w * h / ew))))
    x0, y0 = int(rng.integers(0, w - ew + 1)), int(rng.integers(0, h - eh + 1))
    arr = np.asarray(im, dtype=np.uint8).copy()
    arr[y0:y0 + eh, x0:x0 + ew] = rng.integers(0, 256, size=3, dtype=np.uint8)
    return Image.fromarray(arr)


def _rotate(images, deg, seeds, context, indices):
    from torchvision.transforms.functional import InterpolationMode, rotate

    return rotate(images, float(deg), interpolation=InterpolationMode.BILINEAR, fill=0.0)


def _hflip(images, p, seeds, context, indices):
    return images.flip(-1)


def _blur(images, k, seeds, context, indices):
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(images, [int(k), int(k)])


def _noise(images, sigma, seeds, context, indices):
    noise = torch.stack([torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds])
    return (images + float(sigma) * noise).clamp(0, 1)


def _brightness(images, f, seeds, context, indices):
    from torchvision.transforms.functional import adjust_brightness

    return adjust_brightness(images, float(f))


def _contrast(images, f, seeds, context, indices):
    from torchvision.transforms.functional import adjust_contrast

    return adjust_contrast(images, float(f))


def _identity(images, p, seeds, context, indices):
    return images


COMBINED_LEVELS = {1: (75, 0.9, 1.25), 2: (50, 0.75, 1.5), 3: (25, 0.5, 2.0)}
"""Combined attack strength -> (JPEG quality, crop side fraction, brightness factor)."""


def _combined(images, level, seeds, context, indices):
    q, s, b = COMBINED_LEVELS[int(level)]
    x = _per_image(_crop)(images, s, seeds, context, indices)
    x = _brightness(quantize(x), b, seeds, context, indices)
    return _per_image(_jpeg)(quantize(x), q, seeds, context, indices)


def _in(lo, hi, what):
    def check(v):
        if not lo <= v <= hi:
            raise ConfigError(f"{what} must be in [{lo}, {hi}], got {v!r}")
    return check


def _odd_kernel(v):
    if v < 1 or v % 2 == 0:
        raise ConfigError(f"kernel size must be an odd int >= 1, got {v!r}")


def _one_of(values, what):
    def check(v):
        if v not in values:
            raise ConfigError(f"{what} must be one of {sorted(values)}, got {v!r}")
    return check


_VALIDATORS: dict[str, Callable[[Any], None]] = {
    "none": _one_of({0}, "the strength of 'none'"), "hflip": _one_of({1}, "the strength of 'hflip'"),
    "jpeg": _in(1, 100, "JPEG quality"), "webp": _in(1, 100, "WebP quality"), "crop": _in(0.05, 1.0, "crop fraction"),
    "resize": _in(0.05, 1.0, "resize scale"), "rotate": _in(-180, 180, "rotation (degrees)"),
    "blur": _odd_kernel, "median": _odd_kernel, "noise": _in(0.0, 1.0, "noise sigma"),
    "brightness": _in(0.0, 10.0, "brightness factor"), "contrast": _in(0.0, 10.0, "contrast factor"),
    "erase": _in(0.0, 1.0, "erased area fraction"), "combined": _one_of(set(COMBINED_LEVELS), "combined level"),
}

for _spec in (
    AttackSpec("none", "none", "-", (0,), 0, "no attack (the PNG as generated)", _identity),
    AttackSpec("jpeg", "valuemetric", "quality", (90, 75, 50, 25, 10), 25, "JPEG compression (PIL)",
               _per_image(_jpeg)),
    AttackSpec("webp", "valuemetric", "quality", (90, 75, 50, 25, 10), None, "WebP compression (PIL)",
               _per_image(_webp)),
    AttackSpec("blur", "valuemetric", "kernel", (3, 5, 9, 13, 17), 9,
               "Gaussian blur, kernel size k, torchvision's default sigma", _blur),
    AttackSpec("noise", "valuemetric", "sigma", (0.02, 0.05, 0.1, 0.15, 0.2), 0.1,
               "additive Gaussian noise, sigma on the [0, 1] scale", _noise),
    AttackSpec("brightness", "valuemetric", "factor", (0.5, 0.75, 1.5, 2.0), 2.0, "brightness factor (torchvision)",
               _brightness),
    AttackSpec("contrast", "valuemetric", "factor", (0.5, 0.75, 1.5, 2.0), None, "contrast factor (torchvision)",
               _contrast),
    AttackSpec("median", "valuemetric", "kernel", (3, 5, 7), None, "median filter (PIL)", _per_image(_median)),
    AttackSpec("crop", "geometric", "side", (0.9, 0.75, 0.6, 0.5), 0.75,
               "keep the upper-left side-fraction square, resize back (bicubic)", _per_image(_crop)),
    AttackSpec("resize", "geometric", "scale", (0.75, 0.5, 0.3), None,
               "downscale by the factor (bicubic), back to size (Lanczos)", _per_image(_resize)),
    AttackSpec("rotate", "geometric", "degrees", (5, 10, 15, 20, 30, 45), 10,
               "rotate counter-clockwise about the centre, black corners", _rotate),
    AttackSpec("hflip", "geometric", "-", (1,), 1, "horizontal flip", _hflip),
    AttackSpec("erase", "geometric", "area", (0.05, 0.1, 0.25), None,
               "random rectangle of that area fraction filled with a random colour", _per_image(_erase)),
    AttackSpec("combined", "combined", "level", (1, 2, 3), 2,
               "crop + brightness + JPEG: level 1 (0.9, 1.25, q75), 2 (0.75, 1.5, q50), 3 (0.5, 2.0, q25)",
               _combined),
):
    register(_spec)
