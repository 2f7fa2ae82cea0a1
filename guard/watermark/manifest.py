"""The generation manifest: one `ManifestRow` per image that `guard watermark generate|posthoc` writes.

`manifest.jsonl` beside the PNGs holds one JSON object per line, with the same keys in both modes
(None where a field does not apply), so one reader serves both. The key's secret never appears; the
list index is the only per-image secret-derived value and it stays out of the image.

    >>> from guard.watermark.manifest import read_manifest
    >>> rows = read_manifest("watermarked/manifest.jsonl")          # doctest: +SKIP
    >>> rows[0].mode, rows[0].list_index                           # doctest: +SKIP
    ('generate', 3)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

from ..errors import ConfigError

__all__ = ["MANIFEST_NAME", "MANIFEST_FIELDS", "MODES", "ManifestRow", "read_manifest"]

MANIFEST_NAME = "manifest.jsonl"
MODES = ("generate", "posthoc")


@dataclass(frozen=True)
class ManifestRow:
    """One image of a `guard watermark` run.

    Attributes:
        file: the PNG written, relative to the output folder (None when the input could not be read).
        mode: "generate" (drawn by the generator) or "posthoc" (an existing image marked).
        index: position of the image in the run (prompt-major for generate, input order for posthoc).
        source: posthoc: the input file as given; generate: None.
        prompt: generate: the prompt; posthoc: None.
        model: generate: the generator id; posthoc: None (only the tokenizer is used).
        tokenizer_id: the tokenizer the key is bound to.
        key_id: the watermark key's id.
        list_index: the green list used for this image (None on error rows or when not recorded).
        hard: generate: hard green list (True) or soft bias (False); posthoc: None.
        delta: generate: the soft bias (None when hard); posthoc: None.
        applied: the watermark was embedded (generate: the processor ran with effective settings;
            posthoc: an iterate was kept, i.e. `iterations` > 0); None on error rows.
        seed, cfg, temperature, top_k, top_p: generate: the sampling settings; posthoc: None.
        min_psnr: posthoc: the PSNR floor applied to this image in dB (the absolute `--min-psnr`, or the default:
            30 dB or 3 dB below the image's round trip); generate: None.
        psnr: posthoc: dB of the written image against the input (None when written unchanged).
        green_share_before, green_share_after: posthoc: share of green tokens in the chosen list before
            marking and after re-encoding the written PNG.
        iterations: posthoc: swap rounds behind the written image (0 = written unchanged).
        resized_from: posthoc: the input's [width, height] after EXIF orientation when it was cropped or
            resized to the tokenizer's size (`guard.imageio` policy), else None.
        c2pa_signer: the Content Credentials signer's name when the PNG was signed, else None.
        geometry: the tokenizer's geometry the codes live in (`guard.keys.Geometry.to_json()`: image_size,
            grid, vocab_size, scales); detection must read images at it.
        error: None, or one line saying why the input could not be read (posthoc).
    """

    file: str | None
    mode: str
    index: int
    source: str | None = None
    prompt: str | None = None
    model: str | None = None
    tokenizer_id: str | None = None
    key_id: str | None = None
    list_index: int | None = None
    hard: bool | None = None
    delta: float | None = None
    applied: bool | None = None
    seed: int | None = None
    cfg: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_psnr: float | None = None
    psnr: float | None = None
    green_share_before: float | None = None
    green_share_after: float | None = None
    iterations: int | None = None
    resized_from: list[int] | None = None
    c2pa_signer: str | None = None
    geometry: dict | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        """One line of manifest.jsonl (no newline)."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "ManifestRow":
        return cls(**{f: d.get(f) for f in MANIFEST_FIELDS})


MANIFEST_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ManifestRow))


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """The rows of a manifest.jsonl (or of the manifest in folder `path`)."""
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST_NAME)
    with open(path, encoding="utf-8") as f:
        return [ManifestRow.from_dict(json.loads(line)) for line in f if line.strip()]
