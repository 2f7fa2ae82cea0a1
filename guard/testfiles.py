"""Awkward image files for tests and benchmarks of `guard.imageio`'s loading policy.

`write_bad_inputs(folder)` writes one file of every kind a scan must survive (bombs, truncated and empty
files, link loops, exotic modes, EXIF rotation, a directory cycle) and says which are unreadable; the
test suite and `bench/measure_detection.py` both scan it.

    >>> from guard.testfiles import write_bad_inputs
    >>> unreadable = write_bad_inputs("/tmp/awkward")                 # doctest: +SKIP
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["png_header_only", "random_rgb", "write_bad_inputs"]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width × height pixels with almost no data: a decompression-bomb probe."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def random_rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def write_bad_inputs(folder: str | os.PathLike) -> dict[str, bool]:
    """Write one file of every awkward kind into `folder`; returns {file name: is unreadable}.

    Unreadable: a PIL-level bomb, a bomb above guard's pixel limit, truncated PNG and JPEG, a zero-byte
    file, a text file with an image suffix, a symlink loop, a dangling symlink. Readable: CMYK JPEG,
    16-bit and 32-bit grey, float TIFF, palette with transparency, RGBA, LA, a multi-frame GIF, an
    EXIF-rotated JPEG. Also a `readme.txt` (no image suffix: not scanned) and a directory cycle.
    """
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, bool] = {}
    (d / "bomb_pil.png").write_bytes(png_header_only(100_000, 100_000)); out["bomb_pil.png"] = True
    (d / "bomb_limit.png").write_bytes(png_header_only(9_000, 9_000)); out["bomb_limit.png"] = True
    good = random_rgb(64, 64, 1)
    good.save(d / "_tmp.png")
    data = (d / "_tmp.png").read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 2]); out["truncated.png"] = True
    good.save(d / "_tmp.jpg", quality=90)
    data = (d / "_tmp.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2]); out["truncated.jpg"] = True
    (d / "_tmp.png").unlink()
    (d / "_tmp.jpg").unlink()
    (d / "empty.png").write_bytes(b""); out["empty.png"] = True
    (d / "notes.png").write_text("this is not an image\n"); out["notes.png"] = True
    (d / "readme.txt").write_text("not scanned: no image suffix\n")
    os.symlink("loop.png", d / "loop.png"); out["loop.png"] = True
    os.symlink("does-not-exist.png", d / "dangling.png"); out["dangling.png"] = True
    random_rgb(64, 64, 2).convert("CMYK").save(d / "cmyk.jpg"); out["cmyk.jpg"] = False
    Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)).save(d / "gray16.png")
    out["gray16.png"] = False
    Image.fromarray(np.full((64, 64), 70000, dtype=np.int32)).save(d / "gray32.tif"); out["gray32.tif"] = False
    Image.fromarray(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)).save(d / "float.tif")
    out["float.tif"] = False
    pal = random_rgb(64, 64, 3).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(d / "palette.png", transparency=0); out["palette.png"] = False
    rgba = random_rgb(64, 64, 4).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(d / "rgba.png"); out["rgba.png"] = False
    Image.new("LA", (64, 64), (100, 0)).save(d / "la.png"); out["la.png"] = False
    frames = [random_rgb(64, 64, 10 + i).convert("P") for i in range(3)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out["anim.gif"] = False
    exif = Image.Exif()
    exif[0x0112] = 6
    random_rgb(80, 40, 5).save(d / "exif_rotated.jpg", exif=exif.tobytes()); out["exif_rotated.jpg"] = False
    (d / "sub").mkdir(exist_ok=True)
    if not (d / "sub" / "up").exists():
        os.symlink("..", d / "sub" / "up")  # a directory cycle for recursive scans
    random_rgb(100, 60, 6).save(d / "sub" / "wide.png"); out[os.path.join("sub", "wide.png")] = False
    return out
