"""Pixels in and out: the one module that opens, orients, converts, resizes, quantises and writes images.

Every other module calls it, so `guard watermark posthoc`, `guard detect`, the evaluation harness and
the Ray engine see the same pixels for the same file, and "round to 8-bit levels, as saving a PNG does"
has one definition (`quantize`).

Loading policy (every choice is recorded or documented, nothing is silent):

* **Size limits.** Files larger than `max_bytes` and images with more than `max_pixels` pixels are
  refused before decoding (decompression bombs). PIL's own bomb check is turned into an error for the
  duration of the open, under a lock, so it never prints a warning and never changes global state
  for other threads for longer than that.
* **Truncated or corrupt files** are errors (`ImageFile.LOAD_TRUNCATED_IMAGES` is never set).
* **Frames.** Multi-frame files (GIF, APNG, TIFF, WebP) use their first frame.
* **Orientation.** The EXIF orientation tag is applied (`ImageOps.exif_transpose`); `width`/`height`
  are the size after that, i.e. as the image is displayed. A broken EXIF block is ignored.
* **Modes → RGB.** Transparency (RGBA, LA, PA, P with a transparent index) is composited over white.
  L/1/P/CMYK/YCbCr/LAB/HSV use PIL's conversion. 16-bit ("I;16*") is scaled by 1/257 to 8 bits;
  32-bit integer ("I") is taken as 8-bit if its maximum is <= 255, as 16-bit if <= 65535, otherwise
  scaled by its maximum; float ("F") as [0, 1] if its maximum is <= 1, [0, 255] if <= 255, otherwise
  scaled by its maximum (NaN -> 0, negatives clipped).
* **Geometry** (the resize policy; the `resize` field of records): exact S×S → "none"; other squares →
  "resize"; non-square → the largest centred square is cropped, then resized if needed ("center-crop"
  or "center-crop+resize"). Resizing uses Lanczos (`RESAMPLE`) in 8-bit RGB.

Writing: images are float (3, H, W) in [0, 1]; `quantize` rounds to the 8-bit levels a PNG stores,
`to_uint8` / `from_uint8` convert exactly between the two (x -> round(255·x) -> /255), `save_png` writes.

    >>> from guard.imageio import load_image, save_png
    >>> img = load_image("photo.jpg", 64)          # doctest: +SKIP
    >>> img.tensor.shape, img.resize               # doctest: +SKIP
    (torch.Size([3, 64, 64]), 'center-crop+resize')
    >>> save_png(img.tensor, "copy.png")           # doctest: +SKIP
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ConfigError, ImageError

__all__ = ["LoadedImage", "load_image", "load_pil", "to_square", "pil_to_rgb", "quantize", "to_uint8", "from_uint8",
           "to_pil", "from_pil", "save_png", "MAX_PIXELS", "MAX_BYTES", "IMAGE_SUFFIXES", "RESIZE_POLICIES",
           "RESAMPLE"]

MAX_PIXELS = 64_000_000          # 8000 × 8000
MAX_BYTES = 256 * 1024 * 1024
IMAGE_SUFFIXES = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k", ".avif", ".heic", ".qoi",
})
RESIZE_POLICIES = ("none", "resize", "center-crop", "center-crop+resize")
RESAMPLE = Image.LANCZOS         # the one resampling filter of the resize policy

_OPEN_LOCK = threading.Lock()
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image ready for the tokenizer.

    Attributes:
        tensor: float32 (3, S, S) in [0, 1].
        width, height: size after EXIF orientation, before cropping/resizing.
        resize: what was done to reach S×S: "none", "resize", "center-crop" or "center-crop+resize".
        sha256: hex digest of the file's bytes (None for in-memory images).
        size_bytes: file size (None for in-memory images).
    """

    tensor: torch.Tensor
    width: int
    height: int
    resize: str
    sha256: str | None = None
    size_bytes: int | None = None


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    try:
        with open(path, "rb") as f:  # follows symlinks; a loop raises ELOOP
            st = os.fstat(f.fileno())
            if not _is_regular(st.st_mode):
                raise ImageError("not a regular file")
            if st.st_size > max_bytes:
                raise ImageError(f"file too large: {st.st_size} bytes exceeds the limit of {max_bytes}")
            data = f.read(max_bytes + 1)
    except ImageError:
        raise
    except IsADirectoryError:
        raise ImageError("is a directory, not an image file") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageError("symbolic link loop (too many levels of symbolic links)") from None
        if e.errno == errno.ENOENT and os.path.islink(path):
            raise ImageError("broken symbolic link (target does not exist)") from None
        raise ImageError(f"cannot read file: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise ImageError(f"file too large: more than {max_bytes} bytes")
    if not data:
        raise ImageError("empty file (0 bytes)")
    return data


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Image.open with PIL's bomb check raised as an error (not a warning) and our own pixel limit."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"decompression bomb refused: {_one_line(e)}") from None
        except UnidentifiedImageError:
            raise ImageError("not an image file (format not recognised)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageError(f"corrupt image header: {_one_line(e)}") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError(f"image has an empty size {w}x{h}")
    if w * h > max_pixels:
        raise ImageError(f"decompression bomb refused: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
    return im


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg[:300]


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(arr.max()) if arr.size else 0.0
    if mode.startswith("I;16"):
        scale = 65535.0
    elif mode == "I":
        scale = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
    else:  # "F"
        scale = 1.0 if top <= 1.0 else 255.0 if top <= 255 else top
    return np.clip(np.rint(arr / scale * 255.0), 0, 255).astype(np.uint8)


def pil_to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB by the module's policy (transparency over white)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
        if mode == "RGB":
            return im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _scale_to_uint8(np.asarray(im), mode)
        if gray.ndim == 3:  # some plugins give (H, W, 1)
            gray = gray[..., 0]
        return Image.fromarray(gray, mode="L").convert("RGB")
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(f"unsupported image mode {mode!r}: {_one_line(e)}") from None


def to_square(im: Image.Image, size: int) -> tuple[Image.Image, str]:
    """Centre-crop to a square if needed, then resize to `size`×`size` (Lanczos). Returns (image, policy)."""
    w, h = im.size
    policy = []
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s))
        policy.append("center-crop")
    if im.size != (size, size):
        im = im.resize((size, size), RESAMPLE)
        policy.append("resize")
    return im, "+".join(policy) or "none"


def _decode(im: Image.Image, size: int) -> tuple[torch.Tensor, int, int, str]:
    try:
        im.seek(0)  # first frame of multi-frame files
    except (EOFError, OSError, ValueError):
        pass
    try:
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"decompression bomb refused: {_one_line(e)}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as e:
        msg = _one_line(e)
        if "truncated" in msg.lower():
            raise ImageError(f"truncated image file: {msg}") from None
        raise ImageError(f"corrupt image data: {msg}") from None
    try:
        transposed = ImageOps.exif_transpose(im)
        if transposed is not None:
            im = transposed
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a readable image unreadable
        pass
    width, height = im.size
    try:
        rgb = pil_to_rgb(im)
        rgb, policy = to_square(rgb, size)
        arr = np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"corrupt image data: {_one_line(e)}") from None
    if arr.shape != (size, size, 3):
        raise ImageError(f"unexpected decoded shape {arr.shape}")
    return from_uint8(arr), width, height, policy


def load_image(path: str | os.PathLike, size: int, *, max_pixels: int = MAX_PIXELS,
               max_bytes: int = MAX_BYTES) -> LoadedImage:
    """Read, hash and decode one image file into a (3, size, size) tensor by the module's policy.

    Args:
        path: the file (symlinks are followed; loops and dangling links are errors).
        size: the tokenizer's `image_size` (S).
        max_pixels: refuse images with more pixels than this (decompression bombs).
        max_bytes: refuse files larger than this.

    Raises:
        ImageError: one line saying why the file cannot be used (it becomes a record's `error`).
    """
    if size < 1:
        raise ConfigError(f"size must be >= 1, got {size}")
    path = Path(path)
    data = _read_bytes(path, max_bytes)
    digest = hashlib.sha256(data).hexdigest()
    im = _open(data, max_pixels)
    try:
        tensor, width, height, policy = _decode(im, size)
    finally:
        im.close()
    return LoadedImage(tensor, width, height, policy, digest, len(data))


def load_pil(im: Image.Image, size: int) -> LoadedImage:
    """The same policy for an in-memory PIL image (no hash, no byte size)."""
    tensor, width, height, policy = _decode(im, size)
    return LoadedImage(tensor, width, height, policy)


# ---------------------------------------------------------------------------------------------- 8-bit levels

def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round float images to the 8-bit levels a saved PNG holds: round(255·clamp(x, 0, 1)) / 255.

    Args:
        images: float tensor of any shape (usually (3, H, W) or (B, 3, H, W)), nominally in [0, 1].

    Returns:
        float32 tensor of the same shape whose values are k/255, k in 0..255.
    """
    return (images.float().clamp(0, 1) * 255).round() / 255


def to_uint8(images: torch.Tensor, *, channels_last: bool = True) -> np.ndarray:
    """Float images in [0, 1] -> uint8 array at the same 8-bit levels as `quantize`.

    Args:
        images: float (3, H, W) or (B, 3, H, W).
        channels_last: return (…, H, W, 3) as PIL and PNG store pixels (default), or keep (…, 3, H, W).
    """
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    if channels_last:
        arr = arr.movedim(-3, -1)
    return arr.cpu().numpy()


def from_uint8(arr: np.ndarray, *, channels_last: bool = True) -> torch.Tensor:
    """uint8 array -> float32 tensor (…, 3, H, W) in [0, 1]: exactly x / 255, the inverse of `to_uint8`.

    Args:
        arr: uint8 (…, H, W, 3) when `channels_last` (PIL's layout), else (…, 3, H, W).
    """
    a = np.ascontiguousarray(arr)
    if not a.flags.writeable:
        a = a.copy()
    t = torch.from_numpy(a)
    if channels_last:
        t = t.movedim(-1, -3)
    return t.float().div_(255.0)


def to_pil(image: torch.Tensor) -> Image.Image:
    """Float (3, H, W) in [0, 1] -> an 8-bit RGB PIL image."""
    return Image.fromarray(to_uint8(image))


def from_pil(im: Image.Image) -> torch.Tensor:
    """An in-memory PIL image -> float (3, H, W) in [0, 1], converted to RGB by the loading policy (no resize)."""
    return from_uint8(np.asarray(pil_to_rgb(im), dtype=np.uint8))


def save_png(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write float (3, H, W) in [0, 1] as an 8-bit RGB PNG (the pixels `quantize` gives). Returns the path."""
    path = Path(path)
    to_pil(image).save(path, format="PNG")
    return path
