"""Image → `DetectionRecord`: re-quantize with the tokenizer, test every green list, correct, decide.

One `Detector` holds the tokenizer and one or more keys' `GreenLists` (the same objects embedding uses,
so detection cannot drift from generation). For each image it encodes the (optionally transformed)
pixels in batches, runs the chosen test against all K lists of every key, takes the smallest p over
lists × keys × transforms, and corrects it with Bonferroni over that many looks (DESIGN §5).

    >>> from guard.keys import WatermarkKey
    >>> from guard.models import load_tokenizer
    >>> from guard.watermark import GreenLists
    >>> from guard.detect import Detector
    >>> tok = load_tokenizer("reference")
    >>> det = Detector(GreenLists(WatermarkKey.load("my.key"), tok), tok)    # doctest: +SKIP
    >>> [r.watermarked for r in det.detect_paths(["a.png", "b.png"])]        # doctest: +SKIP
    [True, False]
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..errors import ConfigError, ImageError, KeyFileError
from ..provenance.binding import empty_record_fields, record_fields
from ..provenance.read import ManifestReader
from . import stats
from .fingerprint import Fingerprinter, empty_fields
from ..imageio import DECODE_BUDGET_BYTES, MAX_DECODE_BYTES, MAX_PIXELS, DecodeBudget, LoadedImage, load_image

__all__ = ["DetectionRecord", "Detector", "DetectorSpec", "RECORD_FIELDS", "TESTS", "search_transforms"]

TESTS = ("distinct", "tokens")


@dataclass
class DetectionRecord:
    """One image's detection result; identical keys in every mode (None where a field does not apply).

    Attributes:
        path: the file as given (None for in-memory images).
        sha256: hex digest of the file bytes (None for in-memory images or unreadable files).
        size_bytes: file size in bytes.
        width, height: image size after EXIF orientation, before cropping/resizing.
        resize: what was done to reach the tokenizer's size: "none", "resize", "center-crop",
            "center-crop+resize" (an addition to DESIGN §6).
        key_id: the attributed key (smallest p over all keys); None on error rows.
        tokenizer_id: the tokenizer that re-quantized the image.
        test: "distinct" (exact) or "tokens" (approximate).
        n_tokens: tokens in the map (h·w).
        n_distinct: distinct codes in the map (of the best transform).
        n_green: the statistic of the best list: distinct green codes ("distinct") or green tokens
            with repetition ("tokens").
        list_index: index k of the best list within the attributed key.
        transform: the search transform giving the best p ("identity" without --search).
        gamma: the attributed key's green fraction.
        p_value_raw: smallest uncorrected p over lists × keys × transforms (0.0 once below ~1e-308).
        p_value: Bonferroni-corrected p = min(1, n_looks · p_value_raw); the decision uses it.
        log10_p: log10 of `p_value`, exact even when `p_value` underflows.
        alpha: the significance level used.
        watermarked: p_value <= alpha (False on error rows).
        c2pa_manifest: the file carries Content Credentials (C2PA); None when not checked (error rows,
            in-memory images, provenance off, formats c2pa cannot hold). An addition to DESIGN §6, as are
            the c2pa_* fields and `provenance` (see `guard.provenance.binding`).
        c2pa_state: "trusted", "valid" or "invalid" (None without a manifest).
        c2pa_status: c2pa's failure status codes joined by ";" (e.g. "assertion.dataHash.mismatch").
        c2pa_signer: the signing certificate's common name.
        c2pa_claim_generator: "name/version" of the tool that signed (e.g. "guard/0.1.0").
        c2pa_key_id: the watermark key id named in the manifest's guard soft binding.
        c2pa_key_match: the manifest's key id equals `key_id` of the watermark found (None when no
            watermark was found or there is no manifest).
        provenance: "agree", "mismatch", "watermark-only", "manifest-only", "other-manifest",
            "invalid-manifest" or "none".
        fingerprint_score: key-free detection (`guard.detect.fingerprint`, DESIGN §13): the luma MSE between
            the image and its round trip through the attributed tokenizer (small = near its decoder's
            manifold); None when no fingerprint was asked for (and on error rows), as are the next three.
        fingerprint_p: conformal p against that tokenizer's calibration of real images, corrected for the
            number of tokenizers compared: min(1, m · p); never below m / (n + 1).
        fingerprint_tokenizer: the tokenizer with the smallest p (attribution to a model family).
        fingerprint_hit: fingerprint_p <= the fingerprint alpha (an addition to the issue's three fields,
            so that exit codes and resumed scans can count hits from the rows alone).
        error: None, or one line saying why the file could not be read.
        elapsed_ms: this image's decode time plus its share of its batch's tokenize + test time, plus the
            time to read its Content Credentials.
        guard_version: guard's version.
    """

    path: str | None
    sha256: str | None
    size_bytes: int | None
    width: int | None
    height: int | None
    resize: str | None
    key_id: str | None
    tokenizer_id: str
    test: str
    n_tokens: int | None
    n_distinct: int | None
    n_green: int | None
    list_index: int | None
    transform: str | None
    gamma: float | None
    p_value_raw: float | None
    p_value: float | None
    log10_p: float | None
    alpha: float
    watermarked: bool
    c2pa_manifest: bool | None
    c2pa_state: str | None
    c2pa_status: str | None
    c2pa_signer: str | None
    c2pa_claim_generator: str | None
    c2pa_key_id: str | None
    c2pa_key_match: bool | None
    provenance: str | None
    fingerprint_score: float | None
    fingerprint_p: float | None
    fingerprint_tokenizer: str | None
    fingerprint_hit: bool | None
    error: str | None
    elapsed_ms: float
    guard_version: str

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def flagged(self) -> bool:
        """Watermarked, or a fingerprint hit: what exit code 0 counts."""
        return bool(self.watermarked) or self.fingerprint_hit is True

    @classmethod
    def from_dict(cls, d: dict) -> "DetectionRecord":
        return cls(**{f: d.get(f) for f in RECORD_FIELDS})


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(DetectionRecord))


# ---------------------------------------------------------------------------------------------------
# Search transforms: each maps a batch (B, 3, S, S) to the same shape; "identity" is always first.
# ---------------------------------------------------------------------------------------------------

def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate about the centre (bilinear, borders replicated), counter-clockwise for positive degrees."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype, device=x.device).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Move the content left by dx and up by dy pixels, replicating the right/bottom edges back to size."""
    out = x[..., dy:, dx:]
    return F.pad(out, (0, dx, 0, dy), mode="replicate") if (dx or dy) else out


# Small rotations a search undoes (degrees, counter-clockwise positive): a 1° grid up to 10° either way.
SEARCH_ROTATIONS = tuple(d for a in range(1, 11) for d in (a, -a))


def search_transforms(image_size: int, grid: tuple[int, int], search: bool) -> dict[str, Callable]:
    """The named transforms a search tries, identity first.

    With `search`: flips, 90° turns, small rotations (every degree from -10° to +10°) and crop
    re-alignment offsets — the content moved by a quarter, half and three quarters of a token cell in x
    and/or y (cells of 4 px give shifts of 1, 2, 3 px; 15 offsets). Tokens carry no position in a
    context-free green list, so sub-cell phases are the only misalignments a crop without rescaling
    leaves. Rotations are a 1° grid because on the reference tokenizer a look 1° away from the attack's
    angle keeps about half of what the exact inverse recovers, and 2° away almost nothing.
    """
    ts: dict[str, Callable] = {"identity": lambda x: x}
    if not search:
        return ts
    ts.update({
        "hflip": lambda x: x.flip(-1),
        "vflip": lambda x: x.flip(-2),
        "rot90": lambda x: x.rot90(1, (-2, -1)),
        "rot180": lambda x: x.rot90(2, (-2, -1)),
        "rot270": lambda x: x.rot90(3, (-2, -1)),
    })
    for deg in SEARCH_ROTATIONS:
        ts[f"rot{deg:+d}"] = lambda x, d=deg: _rotate(x, d)
    cell = max(1, image_size // max(grid))
    phases = sorted({round(cell * q / 4) for q in (1, 2, 3)} - {0, cell})
    for dy in [0, *phases]:
        for dx in [0, *phases]:
            if dx or dy:
                ts[f"shift({dx},{dy})"] = lambda x, a=dx, b=dy: _shift(x, a, b)
    return ts


# ---------------------------------------------------------------------------------------------------


def _timed_load(path, size: int, max_pixels: int, max_decode_bytes: int = MAX_DECODE_BYTES,
                budget: DecodeBudget | None = None) -> tuple[LoadedImage | None, str | None, float]:
    t0 = time.perf_counter()
    try:
        img, err = load_image(path, size, max_pixels=max_pixels, max_decode_bytes=max_decode_bytes,
                              budget=budget), None
    except ImageError as e:
        img, err = None, str(e) or "unreadable image"
    except Exception as e:  # noqa: BLE001 - a scan must survive any one file
        img, err = None, f"unexpected error: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return img, err, (time.perf_counter() - t0) * 1e3


class Detector:
    """Detect a green-list watermark in images, with exact p-values and a correction for every look.

    Args:
        green_lists: one `GreenLists` or a sequence (several keys: attribution goes to the key with the
            smallest p, corrected over all of them).
        tokenizer: the `Tokenizer` the keys were made for (checked against each list's tokenizer_id).
        test: "distinct" (exact hypergeometric on distinct codes, default) or "tokens" (approximate
            binomial on tokens with repetition).
        alpha: significance level in (0, 1); watermarked means corrected p <= alpha. Default 1e-4.
        search: also try flips, 90° turns, small rotations and sub-cell crop offsets; the correction
            then counts every transform.
        batch_size: images per tokenizer call (with search, transforms × images are batched together).
        max_pixels: decompression-bomb limit for files.
        max_decode_bytes: memory budget of decoding one file (`guard.imageio.decode_estimate`; above it a
            JPEG is decoded at a reduced scale if one fits, other files get an error row).
        decode_budget_bytes: memory budget shared by the decoding threads (`guard.imageio.DecodeBudget`).
        provenance: read each file's Content Credentials into the record (True, default), with a
            `guard.provenance.ManifestReader` (e.g. one holding trust anchors), or not at all (False).
        fingerprints: a `guard.detect.fingerprint.Fingerprinter` (key-free detection; the fingerprint_*
            fields), or None. With fingerprints, `green_lists` may be empty: no watermark test is run.

    Raises:
        ConfigError: a bad argument; KeyFileError: a key made for another tokenizer.

    Example:
        >>> det = Detector(lists, tok, alpha=1e-3)                  # doctest: +SKIP
        >>> rec = det.detect_images(images)[0]                      # doctest: +SKIP
        >>> rec.watermarked, rec.log10_p                            # doctest: +SKIP
        (True, -41.7)
    """

    def __init__(self, green_lists, tokenizer, *, test: str = "distinct", alpha: float = 1e-4,
                 search: bool = False, batch_size: int = 64, max_pixels: int = MAX_PIXELS,
                 provenance: "bool | ManifestReader" = True, max_decode_bytes: int = MAX_DECODE_BYTES,
                 decode_budget_bytes: int = DECODE_BUDGET_BYTES, fingerprints: Fingerprinter | None = None) -> None:
        lists = [green_lists] if hasattr(green_lists, "masks") else list(green_lists)
        if not lists and fingerprints is None:
            raise ConfigError("green_lists is empty; pass at least one GreenLists (one per key) or fingerprints")
        if fingerprints is not None and int(fingerprints.image_size) != int(tokenizer.image_size):
            raise ConfigError(f"fingerprint calibrations read images at {fingerprints.image_size}px but tokenizer "
                              f"{tokenizer.id} takes {tokenizer.image_size}px; run separate scans")
        if test not in TESTS:
            raise ConfigError(f"test must be one of {', '.join(TESTS)}, got {test!r}")
        if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
            raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not isinstance(max_decode_bytes, int) or max_decode_bytes < 1:
            raise ConfigError(f"max_decode_bytes must be an int >= 1, got {max_decode_bytes!r}")
        seen = set()
        for g in lists:
            if g.tokenizer_id != tokenizer.id or int(g.vocab_size) != int(tokenizer.vocab_size):
                raise KeyFileError(
                    f"key {g.key_id} was made for tokenizer {g.tokenizer_id!r} (vocab {g.vocab_size}), but the "
                    f"detector's tokenizer is {tokenizer.id!r} (vocab {tokenizer.vocab_size}); pass the key made "
                    f"for this model or choose the matching --model")
            if g.key_id in seen:
                raise ConfigError(f"key {g.key_id} was given twice; pass each key once")
            seen.add(g.key_id)
            if g.stratified and g.alive is None:
                raise ConfigError(f"key {g.key_id}: stratified green lists need the tokenizer's alive codes")
        self.green_lists = lists
        self.tokenizer = tokenizer
        self.test = test
        self.alpha = float(alpha)
        self.search = bool(search)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.max_decode_bytes = max_decode_bytes
        self.decode_budget = DecodeBudget(decode_budget_bytes)
        self.image_size = int(tokenizer.image_size)
        self.transforms = search_transforms(self.image_size, tuple(tokenizer.grid), self.search)
        self._masks = [g.masks.detach().to("cpu", torch.bool) for g in lists]
        self._alive = [g.alive.detach().to("cpu", torch.bool) if g.stratified else None for g in lists]
        self._log10_alpha = math.log10(self.alpha)
        self.manifests = ManifestReader() if provenance is True else (provenance or None)
        self.fingerprints = fingerprints

    def __repr__(self) -> str:
        keys = ",".join(g.key_id for g in self.green_lists)
        return (f"Detector(keys=[{keys}], tokenizer={self.tokenizer.id!r}, test={self.test!r}, alpha={self.alpha}, "
                f"search={self.search}, transforms={len(self.transforms)})")

    @property
    def n_looks(self) -> int:
        """Tests behind each decision: Σ_keys K × |transforms| (the Bonferroni factor)."""
        return sum(int(m.shape[0]) for m in self._masks) * len(self.transforms)

    # ----------------------------------------------------------------------------------- scoring
    def test_codes(self, codes: torch.Tensor) -> list[stats.TestResult]:
        """Raw per-list results of the configured test for every key: one `TestResult` (B, K_key) per key."""
        fn = stats.distinct_code_test if self.test == "distinct" else stats.token_count_test
        codes = codes.detach().to("cpu").reshape(codes.shape[0], -1)
        return [fn(codes, m, a) for m, a in zip(self._masks, self._alive)]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Tokenize (B, 3, S, S) in [0, 1] in chunks of `batch_size`; returns long (B, h, w) on the CPU."""
        out = [self.tokenizer.encode(images[i:i + self.batch_size]).to("cpu")
               for i in range(0, len(images), self.batch_size)]
        h, w = self.tokenizer.grid
        return torch.cat(out) if out else torch.empty(0, h, w, dtype=torch.long)

    def _table(self, codes: torch.Tensor, n_transforms: int):
        """Test codes (B·T, h, w) (transform-major within each image) against every list of every key.

        Returns (log10 p (B, T, L), n_green (B, T, L), n_distinct (B, T), n_tokens) with L = Σ K over keys,
        the lists of the first key first.
        """
        results = self.test_codes(codes)
        B = codes.shape[0] // n_transforms
        log10_p = np.concatenate([r.log10_p for r in results], axis=1).reshape(B, n_transforms, -1)
        n_green = np.concatenate([r.n_green for r in results], axis=1).reshape(B, n_transforms, -1)
        return log10_p, n_green, results[0].n_distinct.reshape(B, n_transforms), int(results[0].n_tokens)

    def _transformed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B·T, 3, S, S), each image followed by its transforms (identity first)."""
        if len(self.transforms) == 1:
            return images
        batch = torch.stack([fn(images) for fn in self.transforms.values()], dim=1)      # (B, T, 3, S, S)
        return batch.reshape(-1, *images.shape[1:])

    def look_table(self, images: torch.Tensor) -> np.ndarray:
        """Raw log10 p of every look: float64 (B, T, L), T = transforms (identity first), L = lists of all keys.

        The record of an image reports the minimum of its (T, L) table, corrected by T·L (`n_looks`).
        Lists are ordered key by key in the order the keys were given.
        """
        self._check_images(images)
        return self._table(self.encode(self._transformed(images).float().clamp(0, 1)), len(self.transforms))[0]

    def _records_from_codes(self, codes: torch.Tensor, n_transforms: int) -> list[dict]:
        """codes (B·T, h, w), transform-major within each image → the best look per image, as field dicts."""
        names = list(self.transforms)[:n_transforms]
        log10_p, n_green, n_distinct, n_tokens = self._table(codes, n_transforms)
        B, T, L = log10_p.shape
        owner = [(ki, k) for ki, g in enumerate(self._masks) for k in range(g.shape[0])]      # L -> (key, list)
        rows = []
        for b in range(B):
            t, j = np.unravel_index(int(np.argmin(log10_p[b])), (T, L))       # first minimum: identity, key order
            ki, k = owner[j]
            log10_raw = float(log10_p[b, t, j])
            log10_corr = float(stats.bonferroni_log10(log10_raw, T * L))
            rows.append(dict(
                key_id=self.green_lists[ki].key_id, n_tokens=n_tokens, n_distinct=int(n_distinct[b, t]),
                n_green=int(n_green[b, t, j]), list_index=int(k), transform=names[t],
                gamma=float(self.green_lists[ki].gamma), p_value_raw=10.0 ** log10_raw,
                p_value=10.0 ** log10_corr, log10_p=log10_corr,
                watermarked=bool(log10_corr <= self._log10_alpha)))
        return rows

    def _record(self, *, path=None, img: LoadedImage | None = None, error: str | None = None,
                elapsed_ms: float = 0.0, fields_: dict | None = None) -> DetectionRecord:
        base = dict(
            path=None if path is None else os.fspath(path),
            sha256=img.sha256 if img else None, size_bytes=img.size_bytes if img else None,
            width=img.width if img else None, height=img.height if img else None,
            resize=img.resize if img else None, key_id=None, tokenizer_id=self.tokenizer.id, test=self.test,
            n_tokens=None, n_distinct=None, n_green=None, list_index=None, transform=None, gamma=None,
            p_value_raw=None, p_value=None, log10_p=None, alpha=self.alpha, watermarked=False,
            **empty_record_fields(), **empty_fields(), error=error, elapsed_ms=round(float(elapsed_ms), 3),
            guard_version=__version__)
        if fields_:
            base.update(fields_)
        if self.manifests is not None and img is not None and path is not None and error is None:
            t0 = time.perf_counter()
            base.update(self._provenance(path, base["watermarked"], base["key_id"]))
            base["elapsed_ms"] = round(base["elapsed_ms"] + (time.perf_counter() - t0) * 1e3, 3)
        return DetectionRecord(**base)

    def _provenance(self, path, watermarked: bool, key_id: str | None) -> dict:
        """The file's Content Credentials as record fields (all None if the file cannot be read again)."""
        try:
            summary = self.manifests.read(path)
        except Exception:  # noqa: BLE001 - the watermark row stands even if the manifest cannot be read
            summary = None
        return record_fields(summary, watermarked, key_id)

    def error_record(self, path, error: str, elapsed_ms: float = 0.0) -> DetectionRecord:
        """The row for a file that could not be read: every statistic None, `watermarked` False."""
        return self._record(path=path, error=" ".join(str(error).split()), elapsed_ms=elapsed_ms)

    # ----------------------------------------------------------------------------------- public API
    def detect_codes(self, codes: torch.Tensor, paths: Sequence | None = None) -> list[DetectionRecord]:
        """Records for code maps (B, h, w) already tokenized: no transforms (the correction counts lists × keys)."""
        t0 = time.perf_counter()
        if not self.green_lists:
            rows = [{} for _ in range(codes.shape[0])]
        else:
            rows = self._records_from_codes(codes.reshape(codes.shape[0], *codes.shape[-2:]), 1)
        ms = (time.perf_counter() - t0) * 1e3 / max(len(rows), 1)
        paths = list(paths) if paths is not None else [None] * len(rows)
        for r in rows:
            r["transform"] = "identity" if self.green_lists else None
        return [self._record(path=p, elapsed_ms=ms, fields_=r) for p, r in zip(paths, rows)]

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1:] != (3, self.image_size, self.image_size):
            raise ConfigError(f"images must be float (B, 3, {self.image_size}, {self.image_size}) in [0, 1], "
                              f"got shape {tuple(images.shape)}")

    def detect_images(self, images: torch.Tensor, paths: Sequence | None = None,
                      loaded: Sequence[LoadedImage] | None = None, load_ms: Sequence[float] | None = None
                      ) -> list[DetectionRecord]:
        """Records for a batch of images (B, 3, S, S) float in [0, 1], S = tokenizer.image_size.

        Args:
            images: the pixels (already at the tokenizer's size; see `guard.imageio.to_square`).
            paths: optional names for the `path` field.
            loaded, load_ms: file metadata and decode times when the images came from `load_image`.
        """
        self._check_images(images)
        B = images.shape[0]
        if B == 0:
            return []
        t0 = time.perf_counter()
        rows: list[dict] = [{} for _ in range(B)]
        codes = None
        if self.green_lists:
            T = len(self.transforms)
            codes = self.encode(self._transformed(images).float().clamp(0, 1))
            rows = self._records_from_codes(codes, T)
            codes = codes.reshape(B, T, *codes.shape[1:])[:, 0]           # the identity transform's codes
        if self.fingerprints is not None:
            known = {self.tokenizer.id: codes} if codes is not None else {}
            for r, f in zip(rows, self.fingerprints.fields(images.float().clamp(0, 1), known)):
                r.update(f)
        share = (time.perf_counter() - t0) * 1e3 / B
        paths = list(paths) if paths is not None else [None] * B
        loaded = list(loaded) if loaded is not None else [None] * B
        load_ms = list(load_ms) if load_ms is not None else [0.0] * B
        in_memory = dict(width=self.image_size, height=self.image_size, resize="none")
        return [self._record(path=p, img=li, elapsed_ms=share + lm, fields_=r if li else {**in_memory, **r})
                for p, li, lm, r in zip(paths, loaded, load_ms, rows)]

    def iter_batches(self, paths: Iterable, *, workers: int = 4, prefetch: bool = False
                     ) -> Iterator[list[DetectionRecord]]:
        """Detect files batch by batch (records in input order), decoding with a pool of `workers` threads.

        Unreadable files give error records (never exceptions). `prefetch`: see `iter_loaded`.
        """
        for chunk, results in self.iter_loaded(paths, workers=workers, prefetch=prefetch):
            yield self._detect_loaded(chunk, results)

    def iter_loaded(self, paths: Iterable, *, workers: int = 4, prefetch: bool = False
                    ) -> Iterator[tuple[list, list[tuple[LoadedImage | None, str | None, float]]]]:
        """Decode files in batches of `batch_size`, each batch spread over `workers` threads.

        Yields (paths of the batch, [(LoadedImage or None, error line or None, decode ms)]). With
        `prefetch` the next batch is decoded while the consumer works on the current one; that overlaps
        decoding with tokenizing when the tokenizer runs elsewhere (a GPU), but on a CPU tokenizer the
        decoding threads contend with it for the GIL and slow it down, so it is off by default.

        The threads share the detector's `decode_budget` (memory). If the consumer stops early or an
        exception (a second Ctrl-C) interrupts the wait, the pool is shut down without waiting for a
        thread still reading a file (threads are named "guard-decode*").
        """
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers must be an int >= 1, got {workers!r}")
        paths = list(paths)
        chunks = [paths[i:i + self.batch_size] for i in range(0, len(paths), self.batch_size)]
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="guard-decode")

        def submit(chunk) -> list[Future]:
            return [pool.submit(_timed_load, p, self.image_size, self.max_pixels, self.max_decode_bytes,
                                self.decode_budget) for p in chunk]

        try:
            pending = submit(chunks[0]) if chunks else []
            for i, chunk in enumerate(chunks):
                futures = pending
                try:
                    results = [f.result() for f in futures]
                    pending = submit(chunks[i + 1]) if prefetch and i + 1 < len(chunks) else []
                    yield chunk, results
                    if not prefetch and i + 1 < len(chunks):
                        pending = submit(chunks[i + 1])
                except BaseException:  # incl. GeneratorExit when the consumer stops early
                    for f in pending:
                        f.cancel()
                    raise
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    def _detect_loaded(self, chunk: Sequence, results: Sequence) -> list[DetectionRecord]:
        ok = [i for i, (img, _, _) in enumerate(results) if img is not None]
        out: list[DetectionRecord | None] = [None] * len(chunk)
        for i, (img, err, ms) in enumerate(results):
            if img is None:
                out[i] = self.error_record(chunk[i], err or "unreadable image", ms)
        if ok:
            images = torch.stack([results[i][0].tensor for i in ok])
            recs = self.detect_images(images, paths=[chunk[i] for i in ok], loaded=[results[i][0] for i in ok],
                                      load_ms=[results[i][2] for i in ok])
            for i, r in zip(ok, recs):
                out[i] = r
        return out  # type: ignore[return-value]

    def detect_paths(self, paths: Iterable, *, workers: int = 4) -> list[DetectionRecord]:
        """All records for `paths` (see `iter_batches`)."""
        return [r for batch in self.iter_batches(paths, workers=workers) for r in batch]


@dataclass(frozen=True)
class DetectorSpec:
    """How to build a `Detector`: the one builder of every engine (local scan, CLI, Ray workers). Picklable.

    Args:
        keys: the `WatermarkKey`s (with their secrets; never printed: `repr` shows key ids only).
        model: the model spec whose tokenizer re-quantizes images (`guard.models.load_tokenizer`).
        test, alpha, search, batch_size, max_pixels, max_decode_bytes, decode_budget_bytes: as for `Detector`.
        provenance: as for `Detector`: True reads Content Credentials with a default reader, a
            `guard.provenance.ManifestReader` reads them with that reader (e.g. holding trust anchors; it
            travels to workers with its certificates), False turns it off.
        fingerprints: `guard.detect.fingerprint.FingerprintCalibration`s (key-free detection, one per
            tokenizer); with them `keys` may be empty. Without keys the records' tokenizer is the first
            calibration's.
        fingerprint_alpha: a fingerprint hit is corrected fingerprint p <= this (default 1e-2).
        device: where the loaded tokenizers run (the key's and every fingerprint calibration's): "cpu",
            "cuda", "cuda:N"; None lets each model kind choose (CUDA when available). Passed to
            `guard.models.load_tokenizer`, which refuses a kind that takes no device option and a device this
            machine lacks (`ConfigError`/`ModelError`, one line). Images are read on the CPU and moved to the
            tokenizer per batch; codes come back to the CPU and the statistics run there, so the records do
            not depend on it. A `tokenizer` given to `build` is used where it is.

    Example:
        >>> spec = DetectorSpec(keys=(WatermarkKey.load("my.key"),), search=True)     # doctest: +SKIP
        >>> det = spec.build()                                                        # doctest: +SKIP
    """

    keys: tuple
    model: str = "reference"
    test: str = "distinct"
    alpha: float = 1e-4
    search: bool = False
    batch_size: int = 64
    max_pixels: int = MAX_PIXELS
    provenance: "bool | ManifestReader" = True
    max_decode_bytes: int = MAX_DECODE_BYTES
    decode_budget_bytes: int = DECODE_BUDGET_BYTES
    fingerprints: tuple = ()
    fingerprint_alpha: float = 1e-2
    device: str | None = None

    def build(self, tokenizer: Any = None) -> Detector:
        """The `Detector` (loads the tokenizer unless given; derives each key's green lists)."""
        from ..models import load_tokenizer
        from ..watermark import GreenLists

        if not self.keys and not self.fingerprints:
            raise ConfigError("DetectorSpec needs at least one key or one fingerprint calibration")
        if tokenizer is not None:
            tok = tokenizer
        elif self.keys:
            tok = load_tokenizer(self.model, device=self.device)
        else:
            tok = load_tokenizer(self.fingerprints[0].model, device=self.device)
        fp = Fingerprinter(self.fingerprints, alpha=self.fingerprint_alpha, batch_size=self.batch_size, reuse=tok,
                           device=self.device) if self.fingerprints else None
        lists = [GreenLists(k, tok) for k in self.keys]
        return Detector(lists, tok, test=self.test, alpha=self.alpha, search=self.search,
                        batch_size=self.batch_size, max_pixels=self.max_pixels, provenance=self.provenance,
                        max_decode_bytes=self.max_decode_bytes, decode_budget_bytes=self.decode_budget_bytes,
                        fingerprints=fp)

    def describe(self, detector: Detector) -> str:
        """One log line: the looks behind each decision, the test and alpha."""
        lists = sum(g.n_lists for g in detector.green_lists)
        fp = "" if detector.fingerprints is None else "; " + detector.fingerprints.describe()
        if not detector.green_lists:
            return "no key: key-free detection only" + fp
        return (f"{detector.n_looks} looks per image ({lists} lists x {len(detector.transforms)} transforms); "
                f"test {self.test}{' (approximate)' if self.test == 'tokens' else ''}, alpha {self.alpha:g}" + fp)
