"""A picture of the evidence: the image beside its token grid, each cell green or red for the best list.

    >>> from guard.detect.heatmap import heatmap
    >>> rec = heatmap(detector, "image.png", "heat.png")        # doctest: +SKIP
    >>> rec.list_index, rec.transform                           # doctest: +SKIP
    (3, 'identity')

The grid is the re-quantized map of the image as the detector saw it (after the best search
transform), coloured by membership of each token in the attributed key's best list. Repeated codes
count once in the distinct-code test; the caption gives both counts.
"""

from __future__ import annotations

import os

import torch
from PIL import Image, ImageDraw, ImageFont

from ..imageio import load_image, to_pil
from .detector import DetectionRecord, Detector

__all__ = ["heatmap", "render_heatmap"]

GREEN = (46, 160, 67)
RED = (207, 34, 46)


def render_heatmap(image: torch.Tensor, green: torch.Tensor, caption: str, *, panel: int = 256) -> Image.Image:
    """Compose the figure.

    Args:
        image: float (3, S, S) in [0, 1].
        green: bool (h, w), True where the token is green.
        caption: text under the panels.
        panel: side of each panel in pixels.
    """
    pic = to_pil(image).resize((panel, panel), Image.NEAREST)
    h, w = green.shape
    cells = Image.new("RGB", (w, h))
    cells.putdata([GREEN if bool(g) else RED for g in green.flatten().tolist()])
    overlay = Image.blend(pic, cells.resize((panel, panel), Image.NEAREST), 0.6)
    draw = ImageDraw.Draw(overlay)
    for i in range(1, w):
        x = round(i * panel / w)
        draw.line([(x, 0), (x, panel)], fill=(255, 255, 255), width=1)
    for j in range(1, h):
        y = round(j * panel / h)
        draw.line([(0, y), (panel, y)], fill=(255, 255, 255), width=1)
    lines = caption.split("\n")
    fig = Image.new("RGB", (2 * panel + 30, panel + 20 + 14 * len(lines)), "white")
    fig.paste(pic, (10, 10))
    fig.paste(overlay, (panel + 20, 10))
    font = ImageFont.load_default()
    d = ImageDraw.Draw(fig)
    for k, line in enumerate(lines):
        d.text((10, panel + 14 + 14 * k), line, fill="black", font=font)
    return fig


def heatmap(detector: Detector, path: str | os.PathLike, out: str | os.PathLike) -> DetectionRecord:
    """Detect one image file and save its token-grid heat map to `out` (PNG). Returns the record.

    Raises ImageError when the file cannot be read.
    """
    img = load_image(path, detector.image_size, max_pixels=detector.max_pixels)
    rec = detector.detect_images(img.tensor[None], paths=[path], loaded=[img])[0]
    x = detector.transforms[rec.transform](img.tensor[None])
    codes = detector.encode(x.float().clamp(0, 1))[0]
    gl = next(g for g in detector.green_lists if g.key_id == rec.key_id)
    mask = gl.masks[rec.list_index].to("cpu", torch.bool)
    green = mask[codes]
    n_green_tokens = int(green.sum())
    caption = (f"{os.fspath(path)}\n"
               f"key {rec.key_id}  list {rec.list_index}  transform {rec.transform}  test {rec.test}\n"
               f"green tokens {n_green_tokens}/{green.numel()}  distinct codes {rec.n_distinct}  "
               f"statistic {rec.n_green}\n"
               f"p = {rec.p_value:.3g} (log10 {rec.log10_p:.2f}, corrected over {detector.n_looks} looks)  "
               f"{'WATERMARKED' if rec.watermarked else 'not watermarked'} at alpha {rec.alpha:g}")
    render_heatmap(x[0], green, caption).save(os.fspath(out), format="PNG")
    return rec
