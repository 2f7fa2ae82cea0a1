"""Pixels in and out: the one module that opens, orients, converts, resizes, quantises and writes images.

Every other module calls it, so `guard watermark posthoc`, `guard detect`, the evaluation harness and
the Ray engine see the same pixels for the same file, and "round to 8-bit levels, as saving a PNG does"
has one definition (`quantize`).

Loading policy (every choice is recorded or documented, nothing is silent):

* **File types.** Only regular files are opened: the type is checked with `stat` first, and the open
  itself never blocks (`O_NONBLOCK`), so a FIFO, socket or device named like an image is an error
  ("not a regular file (FIFO)"), never a hang. A folder that cannot be listed says so.
* **Size limits.** Files larger than `max_bytes` and images with more than `max_pixels` pixels are
  refused before decoding (decompression bombs). PIL's own bomb check is turned into an error for the
  duration of the open, under a lock, so it never prints a warning and never changes global state
  for other threads for longer than that.
* **Memory.** Before decoding, the peak memory of decoding the image is estimated from its header
  (`decode_estimate`: file bytes + decoded pixels + the RGB copy + the crop, with alpha compositing and
  high-bit-depth scaling done in strips of rows, so no full-size temporary is made). Above
  `max_decode_bytes` (default `MAX_DECODE_BYTES`, 1 GiB), a JPEG is decoded at a reduced scale (1/2, 1/4
  or 1/8, JPEG's DCT scaling; `resize` then starts with "reduced+") if one fits and still covers the
  tokenizer's size; any other image is an error ("... over the memory budget ..."). A `DecodeBudget`
  shared by decoding threads bounds the sum of the estimates of the images being decoded at once
  (`guard.detect.Detector`: `DECODE_BUDGET_BYTES`, 2 GiB): a thread waits until the others free enough.
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
  or "center-crop+resize"). Resizing uses Lanczos (`RESAMPLE`) in 8-bit RGB. A JPEG decoded at a
  reduced scale (see Memory) gets the prefix "reduced+" ("reduced+resize", "reduced+center-crop+resize");
  `width`/`height` stay the full size.

Writing: images are float (3, H, W) in [0, 1]; `quantize` rounds to the 8-bit levels a PNG stores,
`to_uint8` / `from_uint8` convert exactly between the two (x -> round(255·x) -> /255), `save_png` writes.

    >>> from guard.imageio import load_image, save_png
    >>> img = load_image("photo.jpg", 64)          # doctest: +SKIP
    >>> img.tensor.shape, img.resize               # doctest: +SKIP
    (torch.Size([3, 64, 64]), 'center-crop+resize')
    >>> save_png(img.tensor, "copy.png")           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import math
import os
import stat
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ConfigError, ImageError

__all__ = ["LoadedImage", "load_image", "load_pil", "to_square", "pil_to_rgb", "quantize", "to_uint8", "from_uint8",
           "to_pil", "from_pil", "save_png", "decode_estimate", "DecodeBudget", "MAX_PIXELS", "MAX_BYTES",
           "MAX_DECODE_BYTES", "DECODE_BUDGET_BYTES", "IMAGE_SUFFIXES", "RESIZE_POLICIES", "RESAMPLE"]

MAX_PIXELS = 64_000_000          # 8000 × 8000
MAX_BYTES = 256 * 1024 * 1024
MAX_DECODE_BYTES = 1 << 30       # estimated peak memory of decoding one image
DECODE_BUDGET_BYTES = 2 << 30    # estimated peak memory of all the images decoded at once (one DecodeBudget)
IMAGE_SUFFIXES = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k", ".avif", ".heic", ".qoi",
})
RESIZE_POLICIES = ("none", "resize", "center-crop", "center-crop+resize", "reduced+resize",
                   "reduced+center-crop+resize")
RESAMPLE = Image.LANCZOS         # the one resampling filter of the resize policy

_OPEN_LOCK = threading.Lock()
_WHITE = (255, 255, 255)
_STRIP_PIXELS = 1 << 18          # pixels converted at a time (alpha compositing, high-bit-depth scaling)
_REDUCED_SCALES = (2, 4, 8)      # JPEG DCT scaling
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_FILE_KINDS = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
               (stat.S_ISBLK, "block device"))


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
    """The file's bytes; only a regular file is opened (checked with stat first; the open never blocks)."""
    try:
        st = os.stat(path)  # follows symlinks; a loop raises ELOOP
    except OSError as e:
        raise _os_error(path, e) from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(_folder_error(path))
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "special file")
        raise ImageError(f"not a regular file ({kind})")
    if st.st_size > max_bytes:
        raise ImageError(f"file too large: {st.st_size} bytes exceeds the limit of {max_bytes}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _os_error(path, e) from None
    try:
        with os.fdopen(fd, "rb") as f:
            now = os.fstat(f.fileno())
            if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                raise ImageError("the file was replaced while it was being opened")
            data = f.read(max_bytes + 1)
    except ImageError:
        raise
    except OSError as e:
        raise ImageError(f"cannot read file: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise ImageError(f"file too large: more than {max_bytes} bytes")
    if not data:
        raise ImageError("empty file (0 bytes)")
    return data


def _os_error(path: Path, e: OSError) -> ImageError:
    if e.errno == errno.ELOOP:
        return ImageError("symbolic link loop (too many levels of symbolic links)")
    if e.errno == errno.ENOENT and os.path.islink(path):
        return ImageError("broken symbolic link (target does not exist)")
    if e.errno == errno.EISDIR:
        return ImageError("is a directory, not an image file")
    return ImageError(f"cannot read file: {e.strerror or e}")


def _folder_error(path: Path) -> str:
    """A folder in a list of image files: say whether it could even be listed (a scan's unreadable subfolder)."""
    try:
        with os.scandir(path) as it:
            next(it, None)
    except OSError as e:
        return f"cannot list folder: {e.strerror or e}"
    return "is a directory, not an image file"


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


def _finite(arr: np.ndarray) -> np.ndarray:
    return np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _scale_to_uint8(arr: np.ndarray, mode: str, top: float | None = None) -> np.ndarray:
    """High-bit-depth values -> 8 bits by the module's policy; `top`: the whole image's maximum (strips)."""
    arr = _finite(arr)
    if top is None:
        top = float(arr.max()) if arr.size else 0.0
    if mode.startswith("I;16"):
        scale = 65535.0
    elif mode == "I":
        scale = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
    else:  # "F"
        scale = 1.0 if top <= 1.0 else 255.0 if top <= 255 else top
    return np.clip(np.rint(arr / scale * 255.0), 0, 255).astype(np.uint8)


def pil_to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB by the module's policy (transparency over white).

    Alpha compositing and high-bit-depth scaling run in strips of rows into one RGB image: per-pixel
    operations give the same pixels as on the whole image, without full-size temporaries.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
        return _over_white(im)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_rgb(im, mode)
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(f"unsupported image mode {mode!r}: {_one_line(e)}") from None


def _strips(im: Image.Image) -> list[tuple[int, int, int, int]]:
    w, h = im.size
    rows = max(1, _STRIP_PIXELS // max(w, 1))
    return [(0, y, w, min(h, y + rows)) for y in range(0, h, rows)]


def _over_white(im: Image.Image) -> Image.Image:
    """Composite over white, strip by strip (P with transparency and the alpha modes)."""
    out = Image.new("RGB", im.size)
    for box in _strips(im):
        strip = im.crop(box)
        rgba = strip if strip.mode == "RGBA" else strip.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, _WHITE + (255,))
        out.paste(Image.alpha_composite(bg, rgba).convert("RGB"), box[:2])
    return out


def _high_depth_to_rgb(im: Image.Image, mode: str) -> Image.Image:
    """16/32-bit and float grey to RGB, strip by strip, scaled by the whole image's maximum."""
    def gray(box) -> np.ndarray:
        a = np.asarray(im.crop(box))
        return a[..., 0] if a.ndim == 3 else a  # some plugins give (H, W, 1)

    boxes = _strips(im)
    top = 0.0
    for box in boxes:
        a = _finite(gray(box))
        if a.size:
            top = max(top, float(a.max()))
    out = Image.new("RGB", im.size)
    for box in boxes:
        out.paste(Image.fromarray(_scale_to_uint8(gray(box), mode, top), mode="L").convert("RGB"), box[:2])
    return out


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


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation from the header (estimates only; 1 when unknown before decoding)."""
    try:
        if "exif" in im.info:
            ex = Image.Exif()
            ex.load(im.info["exif"])
            return int(ex.get(0x0112, 1))
        return int(getattr(im, "tag_v2", {}).get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block only makes the estimate less exact
        return 1


def _pil_bytes(mode: str) -> int:
    """Bytes per pixel PIL stores for `mode` (multi-band modes use 4)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def _strip_temp_bytes(mode: str) -> int:
    """Temporaries per pixel of one strip: float64 copies (high bit depth), RGBA copies (alpha), none otherwise."""
    if mode.startswith("I;16") or mode in ("I", "F"):
        return 40
    if mode in _ALPHA_MODES or mode == "P":
        return 20
    return 0


def decode_estimate(mode: str, size: tuple[int, int], file_bytes: int = 0, *, target: int = 0,
                    transposed: bool = False) -> int:
    """Estimated peak bytes of decoding a `mode` image of `size` = (width, height) by the module's policy.

    The largest of: decoding (+ the transposed copy when EXIF rotates it), converting to RGB (the RGB
    image + one strip's temporaries), cropping the centred square; plus the file's bytes, held throughout,
    and the resize to `target`.
    """
    w, h = (int(v) for v in size)
    n, side = w * h, min(w, h)
    decoded = n * _pil_bytes(mode)
    if transposed:
        decoded *= 2
    phases = [decoded]
    rgb = decoded if mode == "RGB" else n * 4
    if mode != "RGB":
        phases.append(n * _pil_bytes(mode) + rgb + min(n, _STRIP_PIXELS) * _strip_temp_bytes(mode))
    if w != h:
        phases.append(rgb + side * side * 4)
    return int(file_bytes) + max(phases) + 4 * max(target, 1) * max(w, h)


def _plan(im: Image.Image, size: int, file_bytes: int, max_decode_bytes: int) -> tuple[int, int]:
    """(estimate, reduction scale) for decoding `im`: scale 1, or a JPEG scale that fits; else ImageError."""
    transposed = _orientation(im) in (2, 3, 4, 5, 6, 7, 8)
    est = decode_estimate(im.mode, im.size, file_bytes, target=size, transposed=transposed)
    if est <= max_decode_bytes:
        return est, 1
    if im.format in ("JPEG", "MPO"):
        w, h = im.size
        for scale in _REDUCED_SCALES:
            if min(w, h) // scale < size:
                break
            small = decode_estimate(im.mode, (math.ceil(w / scale), math.ceil(h / scale)), file_bytes, target=size,
                                    transposed=transposed)
            if small <= max_decode_bytes:
                return small, scale
    raise ImageError(f"decoding needs about {_mib(est)} MiB, over the memory budget of {_mib(max_decode_bytes)} MiB "
                     f"per image ({im.mode} {im.size[0]}x{im.size[1]})")


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:.0f}"


class DecodeBudget:
    """A memory budget shared by decoding threads: the estimates of the images decoded at once stay below `total`.

    A thread whose image does not fit now waits until others finish; an image larger than the whole
    budget is an error (`ImageError`, an error row in scans).

    Args:
        total: bytes; default `DECODE_BUDGET_BYTES`.

    Example:
        >>> budget = DecodeBudget(2 << 30)
        >>> with budget.reserve(300 << 20):       # decode here
        ...     pass
    """

    def __init__(self, total: int = DECODE_BUDGET_BYTES) -> None:
        if not isinstance(total, int) or total < 1:
            raise ConfigError(f"the decode budget must be an int >= 1 (bytes), got {total!r}")
        self.total = total
        self.in_use = 0
        self._cond = threading.Condition()

    def __repr__(self) -> str:
        return f"DecodeBudget(total={self.total}, in_use={self.in_use})"

    @contextlib.contextmanager
    def reserve(self, n: int) -> Iterator[None]:
        """Hold `n` bytes of the budget for the duration of the block (waits until they are free)."""
        n = int(n)
        if n > self.total:
            raise ImageError(f"decoding needs about {_mib(n)} MiB, over the memory budget of {_mib(self.total)} MiB "
                             f"shared by the decoding threads")
        with self._cond:
            while self.in_use + n > self.total:
                self._cond.wait()
            self.in_use += n
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= n
                self._cond.notify_all()


def _decode(im: Image.Image, size: int, *, scale: int = 1, owned: bool = False
            ) -> tuple[torch.Tensor, int, int, str]:
    """Decode `im` to (tensor, width, height, resize policy); `owned`: free its pixels once converted."""
    try:
        im.seek(0)  # first frame of multi-frame files
    except (EOFError, OSError, ValueError):
        pass
    full = im.size
    if scale > 1 and im.draft(im.mode, (full[0] // scale, full[1] // scale)) is None:
        raise ImageError(f"decoding at full size is over the memory budget per image, and this {im.format} cannot be "
                         f"decoded at a reduced scale ({im.mode} {full[0]}x{full[1]})")
    try:
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"decompression bomb refused: {_one_line(e)}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as e:
        msg = _one_line(e)
        if "truncated" in msg.lower():
            raise ImageError(f"truncated image file: {msg}") from None
        raise ImageError(f"corrupt image data: {msg}") from None
    src = im
    try:
        if im.getexif().get(0x0112, 1) in (2, 3, 4, 5, 6, 7, 8):    # no copy when nothing is to be turned
            transposed = ImageOps.exif_transpose(im)
            if transposed is not None:
                im = transposed
                full = full if transposed.size == src.size else (full[1], full[0])
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a readable image unreadable
        pass
    if owned and im is not src:
        src.close()              # frees the untransposed pixels
    width, height = full if scale > 1 else im.size
    try:
        rgb = pil_to_rgb(im)
        if rgb is not im and (owned or im is not src):
            im.close()           # frees the decoded pixels before the crop and resize
        rgb, policy = to_square(rgb, size)
        arr = np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"corrupt image data: {_one_line(e)}") from None
    if arr.shape != (size, size, 3):
        raise ImageError(f"unexpected decoded shape {arr.shape}")
    if scale > 1:
        policy = "reduced+" + policy
    return from_uint8(arr), width, height, policy


def load_image(path: str | os.PathLike, size: int, *, max_pixels: int = MAX_PIXELS,
               max_bytes: int = MAX_BYTES, max_decode_bytes: int = MAX_DECODE_BYTES,
               budget: DecodeBudget | None = None) -> LoadedImage:
    """Read, hash and decode one image file into a (3, size, size) tensor by the module's policy.

    Args:
        path: the file (symlinks are followed; loops, dangling links and non-regular files are errors).
        size: the tokenizer's `image_size` (S).
        max_pixels: refuse images with more pixels than this (decompression bombs).
        max_bytes: refuse files larger than this.
        max_decode_bytes: the memory budget of this image (`decode_estimate`); above it a JPEG is decoded
            at a reduced scale if one fits, anything else is refused.
        budget: a `DecodeBudget` shared with other decoding threads (waits for room; None: no sharing).

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
        est, scale = _plan(im, size, len(data), max_decode_bytes)
        with budget.reserve(est) if budget is not None else contextlib.nullcontext():
            tensor, width, height, policy = _decode(im, size, scale=scale, owned=True)
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
