"""`guard eval`: watermarked and clean populations -> attack grid -> detection -> metrics, reports, plots.

    >>> from guard.eval.harness import EvalConfig, run_eval
    >>> cfg = EvalConfig(out=Path("eval-soft"), n=1000, mode="soft", delta=2.0)
    >>> summary = run_eval(cfg)                                   # resumable: run it again to continue

Layout of `out` (DESIGN §10):

    config.json                       what was evaluated (model ids, key id, options); checked on resume
    eval.key                          the evaluation key (mode 0600) when no --key was given
    populations/<pop>/chunk_*.npz     the watermarked and clean images (uint8), prompts, list indices
    <attack>__<strength>/results.jsonl  one detection record per image (+ population, token match, PSNR)
    report.csv, summary.json          one row per attack and strength; family means; the DESIGN §10 table
    roc.png, tpr_vs_strength.png, summary_table.png

Populations (`mode`): "soft" / "hard" generate N watermarked images with the reference (or any)
generator and N clean ones from the same prompts and seeds; "posthoc" renders N held-out reference
scenes and marks them post hoc (PSNR/SSIM recorded); "folders" reads `wm_dir` and `clean_dir`.

Key-free detection (`detector="fingerprint"`, DESIGN §13): the "watermarked" population holds the model's
images (the positives: generated in soft/hard, marked post hoc in posthoc, `wm_dir` in folders) and the
"clean" population real images that never went through the decoder (the kind's rendered evaluation scenes
in soft/hard/posthoc, `clean_dir` in folders). The conformal p of each attacked image is against a
calibration of real images that are not attacked (`fingerprint` file, or `out/fingerprint_calibration.json`
made from `n` other rendered scenes); TPR at alpha reads that p, the ROC (TPR@FPR, AUC) the score itself.

Detection is `guard detect`'s own `Detector.detect_images` on the attacked pixels at 8-bit levels —
the same numbers `guard detect` gives for the attacked image saved as PNG. Randomised attacks are
paired: clean image i and watermarked image i get the same randomness. Everything is written chunk by
chunk; an interrupted run continues where it stopped when started again with the same `out`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import ConfigError
from ..imageio import from_uint8, quantize, to_uint8
from . import regeneration  # noqa: F401  (registers the regeneration attacks)
from .attacks import ATTACKS, AttackContext, apply_attack, param_label, parse_attack_list
from .metrics import ALPHAS, FPRS, auc, psnr, ssim, token_match, tpr_at_alpha, tpr_at_fpr

__all__ = ["EvalConfig", "run_eval", "summarize", "attack_metrics", "metric_columns", "MODES", "POPULATIONS",
           "REPORT_KEYS", "SUMMARY_FAMILIES", "TARGETS", "generate_population", "eval_prompts", "padded_count"]

MODES = ("soft", "hard", "posthoc", "folders")
DETECTORS = ("watermark", "fingerprint")
POPULATIONS = ("watermarked", "clean")
SUMMARY_FAMILIES = {
    "valuemetric": (("jpeg", 25), ("blur", 9), ("noise", 0.1), ("brightness", 2.0)),
    "geometric": (("crop", 0.75), ("hflip", 1), ("rotate", 10)),
}
"""The DESIGN §10 / wmar summary operating points averaged per family; regeneration attacks are listed
one by one at their summary strength."""
TARGETS = {"none": ("tpr_at_fpr_0.001", 0.999), "valuemetric": ("tpr_at_fpr_0.01", 0.95),
           "geometric": ("tpr_at_fpr_0.01", 0.90), "regeneration": ("tpr_at_fpr_0.01", 0.80)}


@dataclass
class EvalConfig:
    """What to evaluate.

    Attributes:
        out: output directory (created; an existing one is resumed if its config.json matches).
        n: images per population (watermarked and clean), >= 2.
        mode: "soft", "hard", "posthoc" or "folders".
        delta: soft bias (mode "soft").
        attacks: [(name, strength)] (default: every attack's whole grid; "none" always first).
        key: key file; None creates `out/eval.key` (gamma, n_lists) on the first run.
        gamma, n_lists: for a created key.
        model: model spec ("reference").
        alphas: significance levels for TPR at alpha.
        fprs: target FPRs for the empirical operating points.
        test: "distinct" (exact) or "tokens".
        search: detect with `--search` (flips, turns, small rotations, crop offsets; corrected).
        seed: seeds prompts, sampling, list indices and attack randomness.
        cfg: guidance scale for generation and AR resampling.
        batch_size: images per chunk (generation, attack and detection).
        min_psnr: post-hoc marking floor (mode "posthoc"); None = `watermark_image`'s default (30 dB, or 3 dB
            below each scene's round trip through the tokenizer).
        wm_dir, clean_dir: folders of images (mode "folders").
        clip: a CLIP judge spec `clip:ARCH@PATH` (local open_clip weights): adds the watermark's quality
            cost as CLIPScore of each population against its prompts (modes soft/hard) to the summary.
        detector: "watermark" (the key's test) or "fingerprint" (key-free detection; see the module docstring).
        fingerprint: a calibration file (`guard calibrate --fingerprint`) for detector "fingerprint"; None
            calibrates on `n` rendered scenes of the model kind (needed in mode "folders").
    """

    out: Path
    n: int = 1000
    mode: str = "soft"
    delta: float = 2.0
    attacks: list[tuple[str, Any]] | None = None
    key: Path | None = None
    gamma: float = 0.25
    n_lists: int = 8
    model: str = "reference"
    alphas: Sequence[float] = ALPHAS
    fprs: Sequence[float] = FPRS
    test: str = "distinct"
    search: bool = False
    seed: int = 0
    cfg: float = 3.0
    batch_size: int = 64
    min_psnr: float | None = None
    wm_dir: Path | None = None
    clean_dir: Path | None = None
    clip: str | None = None
    detector: str = "watermark"
    fingerprint: Path | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.detector not in DETECTORS:
            raise ConfigError(f"detector must be one of {', '.join(DETECTORS)}, got {self.detector!r}")
        if self.fingerprint is not None and self.detector != "fingerprint":
            raise ConfigError("a fingerprint calibration file is for detector 'fingerprint'")
        if self.detector == "fingerprint" and self.clip is not None:
            raise ConfigError("clip scores the watermark's quality cost; it has no meaning with detector 'fingerprint'")
        if self.detector == "fingerprint" and self.mode == "folders" and self.fingerprint is None:
            raise ConfigError("detector 'fingerprint' in mode 'folders' needs a calibration file of real images "
                              "(guard calibrate --fingerprint REAL_DIR --out FILE; then --fingerprint FILE)")
        if self.clip is not None:
            from ..models.clip_judge import parse_clip_spec

            parse_clip_spec(self.clip)
            if self.mode not in ("soft", "hard"):
                raise ConfigError(f"clip scores images against their prompts: modes soft and hard only, not "
                                  f"{self.mode!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 2:
            raise ConfigError(f"n must be an int >= 2 (images per population), got {self.n!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if self.mode == "soft" and not (isinstance(self.delta, (int, float)) and math.isfinite(self.delta) and self.delta > 0):
            raise ConfigError(f"delta must be a finite number > 0, got {self.delta!r}")
        if self.mode == "folders" and (self.wm_dir is None or self.clean_dir is None):
            raise ConfigError("mode 'folders' needs both wm_dir (watermarked images) and clean_dir (clean images)")
        if self.mode != "folders" and (self.wm_dir is not None or self.clean_dir is not None):
            raise ConfigError(f"wm_dir/clean_dir are only for mode 'folders', not {self.mode!r}")
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"out {self.out} exists and is not a folder; name a folder (it is created or resumed)")
        if not list(self.alphas):
            raise ConfigError("alphas must list at least one significance level")
        if not list(self.fprs):
            raise ConfigError("fprs must list at least one false-positive rate")
        for a in self.alphas:
            if not (isinstance(a, (int, float)) and 0 < a < 1):
                raise ConfigError(f"alpha must be in (0, 1), got {a!r}")
        for f in self.fprs:
            if not (isinstance(f, (int, float)) and 0 < f < 1):
                raise ConfigError(f"fpr must be in (0, 1), got {f!r}")
        if self.attacks is None:
            self.attacks = parse_attack_list(None, full=True)
        else:
            checked = [("none", 0)]
            for name, p in self.attacks:
                if name not in ATTACKS:
                    raise ConfigError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
                item = (name, ATTACKS[name].check(p))
                if item not in checked:
                    checked.append(item)
            self.attacks = checked

    def identity(self) -> dict:
        """The options a resumed run must share with the first one (populations and detection)."""
        return {"n": self.n, "mode": self.mode, "delta": self.delta if self.mode == "soft" else None,
                "model": self.model, "test": self.test, "search": self.search, "seed": self.seed, "cfg": self.cfg,
                "batch_size": self.batch_size, "min_psnr": self.min_psnr if self.mode == "posthoc" else None,
                "wm_dir": str(self.wm_dir) if self.wm_dir else None,
                "clean_dir": str(self.clean_dir) if self.clean_dir else None,
                **({"detector": self.detector, "fingerprint": str(self.fingerprint) if self.fingerprint else None}
                   if self.detector != "watermark" else {})}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _derived_seed(*parts) -> int:
    digest = hashlib.sha256("/".join(str(p) for p in ("guard/eval/v1", *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def padded_count(n: int, batch_size: int) -> int:
    """n rounded up to whole chunks of `batch_size`."""
    return -(-n // batch_size) * batch_size


def eval_prompts(n: int, seed: int = 0, model: object = "reference") -> list[str]:
    """N prompts from scenes the generator never trained on: the `prompts` capability of `model`'s kind."""
    from ..models import prompts_for

    return prompts_for(model).eval_prompts(n, seed)


# ---------------------------------------------------------------------------------------------- populations

def _save_chunk(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")      # two runs sharing a folder never collide
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _population_tag(generator, green_lists, delta, hard, seed, cfg, batch_size) -> str:
    """What a generated chunk depends on (no secret: the key appears by its id)."""
    wm = "clean" if green_lists is None else f"key={green_lists.key_id},{'hard' if hard else f'delta={delta}'}"
    return f"{generator.id}|{wm}|seed={seed}|cfg={cfg}|batch={batch_size}"


def generate_population(generator, green_lists, n: int, *, folder: Path, prompts: Sequence[str],
                        delta: float | None, hard: bool, seed: int, cfg: float, batch_size: int,
                        on_chunk: Callable[[int], None] | None = None) -> dict:
    """Generate `n` images chunk by chunk into `folder/chunk_*.npz` (existing chunks are reused).

    With `green_lists` the images are watermarked (`WatermarkProcessor`, soft `delta` or `hard`, list
    indices from the seed); without, clean. Chunk c is seeded from (seed, c), so the clean and the
    watermarked population share prompts and sampling seeds.

    Chunks are always whole (`batch_size` images, prompts[c*batch_size:(c+1)*batch_size]) and the first
    `n` images are returned, so a chunk is the same whatever `n` asks for and can be shared.

    Returns: {"images": uint8 (n, S, S, 3), "codes": long (n, h, w), "list_index": int64 (n,) (-1 = none),
    "prompts": list}.
    """
    from ..watermark import WatermarkProcessor

    tok = generator.tokenizer
    padded = padded_count(n, batch_size)
    if len(prompts) < padded:
        raise ConfigError(f"need {padded} prompts (whole chunks of {batch_size}), got {len(prompts)}")
    parts = []
    for c, start in enumerate(range(0, n, batch_size)):
        stop = start + batch_size            # whole chunks: a chunk's images never depend on n
        path = Path(folder) / f"chunk_{c:05d}.npz"
        tag = _population_tag(generator, green_lists, delta, hard, seed, cfg, batch_size)
        if path.exists():
            d = np.load(path, allow_pickle=False)
            if str(d["tag"]) != tag:
                raise ConfigError(f"{path} was generated with other settings (model, key, mode, seed or batch "
                                  f"size); use another output folder")
            if len(d["images"]) == stop - start:
                parts.append({k: d[k] for k in d.files if k != "tag"})
                continue
        chunk_seed = _derived_seed(seed, "generate", c)
        procs = None
        if green_lists is not None:
            procs = [WatermarkProcessor(green_lists, delta=delta or 2.0, hard=hard, seed=chunk_seed)]
        codes = generator.generate(list(prompts[start:stop]), n=1, seed=chunk_seed, cfg=cfg, logits_processor=procs)
        images = to_uint8(tok.decode(codes))
        idx = np.array(procs[0].list_indices if procs else [-1] * len(codes), dtype=np.int64)
        arrays = {"images": images, "codes": codes.numpy().astype(np.int32), "list_index": idx}
        _save_chunk(path, tag=np.array(tag), **arrays)
        parts.append(arrays)
        if on_chunk:
            on_chunk(stop - start)
    return {"images": np.concatenate([p["images"] for p in parts])[:n],
            "codes": torch.from_numpy(np.concatenate([p["codes"] for p in parts])[:n].astype(np.int64)),
            "list_index": np.concatenate([p["list_index"] for p in parts])[:n], "prompts": list(prompts[:n])}


def _render_population(n: int, seed: int, size: int, model: object) -> np.ndarray:
    from ..models import prompts_for

    imgs = prompts_for(model).eval_images(n, seed)
    if imgs.shape[1] != size:
        raise ConfigError(f"rendered scenes are {imgs.shape[1]}px but the tokenizer wants {size}px; mode 'posthoc' "
                          f"renders the model kind's evaluation scenes, use mode 'folders' for other models")
    return imgs


def _posthoc_population(tok, green_lists, n: int, *, folder: Path, seed: int, min_psnr: float | None, batch_size: int,
                        model: object = "reference", on_chunk=None) -> tuple[dict, dict]:
    """Render n held-out scenes (clean) and mark them post hoc (watermarked); PSNR/SSIM per image."""
    from ..watermark import watermark_image

    clean_all = _render_population(n, seed, tok.image_size, model)
    parts = []
    for c, start in enumerate(range(0, n, batch_size)):
        stop = min(n, start + batch_size)
        path = Path(folder) / "watermarked" / f"chunk_{c:05d}.npz"
        if path.exists():
            d = np.load(path, allow_pickle=False)
            parts.append({k: d[k] for k in d.files})
            continue
        x0 = from_uint8(clean_all[start:stop])
        idx = [_derived_seed(seed, "posthoc-list", i) % green_lists.n_lists for i in range(start, stop)]
        res = watermark_image(x0, green_lists, tok, list_index=idx, min_psnr=min_psnr)
        marked = quantize(res.images)
        arrays = {"images": to_uint8(marked), "list_index": np.array(idx, dtype=np.int64),
                  "psnr": psnr(marked, x0), "ssim": ssim(marked, x0)}
        _save_chunk(path, **arrays)
        parts.append(arrays)
        if on_chunk:
            on_chunk(stop - start)
    wm = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    wm["prompts"] = None
    clean = {"images": clean_all, "list_index": np.full(n, -1, dtype=np.int64), "prompts": None}
    return wm, clean


def _folder_population(directory: Path, n: int, size: int) -> dict:
    from ..detect.scan import find_images
    from ..imageio import load_image
    from ..errors import ImageError

    paths = find_images(directory, recursive=True)
    images, used = [], []
    for p in paths:
        if len(images) == n:
            break
        try:
            images.append(load_image(p, size).tensor)
            used.append(p)
        except ImageError as e:
            _log(f"skipping unreadable {p}: {e}")
    if len(images) < n:
        raise ConfigError(f"{directory} has {len(images)} readable images, fewer than n={n}; lower --n")
    return {"images": to_uint8(torch.stack(images)), "list_index": np.full(n, -1, dtype=np.int64),
            "prompts": None, "paths": used}


# ---------------------------------------------------------------------------------------------- run

@dataclass
class _State:
    cfg: EvalConfig
    tok: Any
    generator: Any
    green_lists: Any
    detector: Any
    pops: dict = field(default_factory=dict)        # name -> dict(images uint8, list_index, prompts, ...)
    ref_codes: dict = field(default_factory=dict)   # name -> codes of the un-attacked image (B, h, w)


def _check_config(cfg: EvalConfig, meta: dict) -> None:
    path = cfg.out / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        mismatch = {k: (old.get("identity", {}).get(k), v) for k, v in meta["identity"].items()
                    if old.get("identity", {}).get(k) != v}
        for k in ("key_id", "tokenizer_id", "generator_id"):
            if old.get(k) != meta.get(k):
                mismatch[k] = (old.get(k), meta.get(k))
        if mismatch:
            what = "; ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in sorted(mismatch.items()))
            raise ConfigError(f"{cfg.out} holds another evaluation ({what}); use the same options to resume or "
                              f"choose another --out")
        meta["attacks"] = sorted({*map(tuple, old.get("attacks", [])), *map(tuple, meta["attacks"])},
                                 key=lambda a: (list(ATTACKS).index(a[0]) if a[0] in ATTACKS else 99, str(a[1])))
    cfg.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2) + "\n")


def _prepare(cfg: EvalConfig, progress) -> _State:
    from ..detect import Detector
    from ..keys import resolve_key
    from ..models import load, load_tokenizer
    from ..watermark import GreenLists

    needs_generator = cfg.mode in ("soft", "hard") or any(ATTACKS[a].needs == "generator" for a, _ in cfg.attacks)
    generator = load(cfg.model) if needs_generator else None
    tok = generator.tokenizer if generator is not None else load_tokenizer(cfg.model)
    cfg.out.mkdir(parents=True, exist_ok=True)
    key = resolve_key(cfg.key, tok, create_at=cfg.out / "eval.key", gamma=cfg.gamma, n_lists=cfg.n_lists, log=_log)
    gl = GreenLists(key, tok)
    fp = _fingerprinter(cfg, tok) if cfg.detector == "fingerprint" else None
    det = Detector(gl, tok, test=cfg.test, alpha=min(cfg.alphas), search=cfg.search, batch_size=cfg.batch_size,
                   fingerprints=fp)
    meta = {"identity": cfg.identity(), "key_id": key.key_id, "gamma": key.gamma, "n_lists": key.n_lists,
            "tokenizer_id": tok.id, "generator_id": getattr(generator, "id", None), "n_looks": det.n_looks,
            "attacks": [[a, p] for a, p in cfg.attacks], "guard_version": __version__}
    _check_config(cfg, meta)
    st = _State(cfg, tok, generator, gl, det)
    pop_dir = cfg.out / "populations"
    t0 = time.time()
    if cfg.mode in ("soft", "hard"):
        prompts = eval_prompts(padded_count(cfg.n, cfg.batch_size), cfg.seed, cfg.model)
        for name, lists in (("watermarked", gl), ("clean", None)):
            if name == "clean" and fp is not None:          # key-free detection: real images are the negatives
                st.pops[name] = {"images": _render_population(cfg.n, cfg.seed, tok.image_size, cfg.model),
                                 "list_index": np.full(cfg.n, -1, dtype=np.int64), "prompts": None}
                continue
            st.pops[name] = generate_population(
                generator, lists, cfg.n, folder=pop_dir / name, prompts=prompts,
                delta=cfg.delta if cfg.mode == "soft" else None, hard=cfg.mode == "hard", seed=cfg.seed,
                cfg=cfg.cfg, batch_size=cfg.batch_size, on_chunk=lambda k, nm=name: progress(f"generate {nm}", k))
    elif cfg.mode == "posthoc":
        st.pops["watermarked"], st.pops["clean"] = _posthoc_population(
            tok, gl, cfg.n, folder=pop_dir, seed=cfg.seed, min_psnr=cfg.min_psnr, batch_size=cfg.batch_size,
            model=cfg.model, on_chunk=lambda k: progress("mark post hoc", k))
    else:
        st.pops["watermarked"] = _folder_population(cfg.wm_dir, cfg.n, tok.image_size)
        st.pops["clean"] = _folder_population(cfg.clean_dir, cfg.n, tok.image_size)
    _log(f"populations ready ({cfg.mode}, n={cfg.n} each) in {time.time() - t0:.0f}s")
    for name, pop in st.pops.items():
        x = from_uint8(pop["images"])
        st.ref_codes[name] = det.encode(x)
    return st


FINGERPRINT_CALIBRATION_SEED = 7919
"""Seed offset of the rendered scenes a fingerprint evaluation calibrates on (disjoint from the negatives')."""


def _fingerprinter(cfg: EvalConfig, tok):
    """The key-free detector of an evaluation: the given calibration, or one made (and kept) from rendered scenes."""
    from ..detect.fingerprint import FingerprintCalibration, Fingerprinter, fingerprint_scores

    path = cfg.fingerprint or cfg.out / "fingerprint_calibration.json"
    if cfg.fingerprint is not None or path.exists():
        cal = FingerprintCalibration.load(path)
    else:
        x = from_uint8(_render_population(cfg.n, cfg.seed + FINGERPRINT_CALIBRATION_SEED, tok.image_size, cfg.model))
        cal = FingerprintCalibration(tokenizer_id=tok.id, model=cfg.model, image_size=int(tok.image_size),
                                     scores=tuple(fingerprint_scores(tok, x, batch_size=cfg.batch_size)),
                                     source=f"{cfg.model} rendered evaluation scenes, seed "
                                            f"{cfg.seed + FINGERPRINT_CALIBRATION_SEED}")
        cal.save(path)
        _log(f"fingerprint calibration on {cal.n} rendered scenes -> {path}")
    if cal.tokenizer_id != tok.id:
        raise ConfigError(f"fingerprint calibration {path} is of tokenizer {cal.tokenizer_id}, the evaluation's is "
                          f"{tok.id}")
    return Fingerprinter([cal], [tok], alpha=min(0.999, max(min(cfg.alphas), 2 * cal.min_p)),
                         batch_size=cfg.batch_size)


def _attack_dir(out: Path, name: str, param: Any) -> Path:
    return out / f"{name}__{param_label(param)}"


def _run_attack(st: _State, name: str, param: Any, progress) -> None:
    from ..detect.scan import read_resume_state

    cfg = st.cfg
    spec = ATTACKS[name]
    folder = _attack_dir(cfg.out, name, param)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.jsonl"
    state = read_resume_state(path, "jsonl")
    if state.dropped_bytes:
        _log(f"{path}: dropped a partial last line ({state.dropped_bytes} bytes)")
    context = AttackContext(generator=st.generator, cfg=cfg.cfg)
    with open(path, "a", encoding="utf-8") as f:
        for pop_name in POPULATIONS:
            pop = st.pops[pop_name]
            context.prompts = pop.get("prompts")
            n = len(pop["images"])
            for start in range(0, n, cfg.batch_size):
                stop = min(n, start + cfg.batch_size)
                todo = [i for i in range(start, stop) if f"{pop_name}/{i:05d}" not in state.done]
                if not todo:
                    continue
                x = from_uint8(pop["images"][start:stop])
                # The whole fixed chunk is attacked (AR resampling depends on the batch), then the rows to do kept.
                y = apply_attack(name, x, param, seed=cfg.seed, indices=range(start, stop), context=context)
                sel = [i - start for i in todo]
                ys = y[sel]
                records = st.detector.detect_images(ys)
                codes = st.detector.encode(ys)
                tm = token_match(codes, st.ref_codes[pop_name][todo])
                tm_gen = token_match(codes, pop["codes"][todo]) if "codes" in pop else None
                ps = psnr(ys, x[sel])
                lines = []
                for j, (i, rec) in enumerate(zip(todo, records)):
                    row = rec.to_dict()
                    true_k = int(pop["list_index"][i])
                    row.update(path=f"{pop_name}/{i:05d}", population=pop_name, index=i, attack=name,
                               param=param, family=spec.family, token_match=round(float(tm[j]), 5),
                               token_match_generated=None if tm_gen is None else round(float(tm_gen[j]), 5),
                               psnr_attack=None if not math.isfinite(ps[j]) else round(float(ps[j]), 3),
                               list_index_true=true_k if true_k >= 0 else None, detector=cfg.detector)
                    lines.append(json.dumps(row) + "\n")
                f.write("".join(lines))
                f.flush()
                progress(f"{name} {param_label(param)}", len(todo))


def run_eval(cfg: EvalConfig, *, progress: Callable[[str, int], None] | None = None,
             plots: bool = True) -> dict:
    """Run (or resume) an evaluation and write its reports; returns the summary dict (also `summary.json`).

    Args:
        cfg: what to evaluate.
        progress: called with (stage, images done) after each chunk.
        plots: also write roc.png, tpr_vs_strength.png and summary_table.png.
    """
    progress = progress or (lambda stage, k: None)
    t0 = time.time()
    st = _prepare(cfg, progress)
    timings = {"prepare_s": round(time.time() - t0, 1)}
    for name, param in cfg.attacks:
        t1 = time.time()
        _run_attack(st, name, param, progress)
        timings[f"{name}__{param_label(param)}"] = round(time.time() - t1, 1)
        _log(f"{name} {param_label(param)}: done in {time.time() - t1:.0f}s")
    summary = summarize(cfg.out, cfg.attacks, alphas=cfg.alphas, fprs=cfg.fprs)
    if cfg.mode == "posthoc":
        wm = st.pops["watermarked"]
        summary["posthoc_quality"] = {"psnr_db_mean": float(np.mean(wm["psnr"][np.isfinite(wm["psnr"])]))
                                      if np.isfinite(wm["psnr"]).any() else None,
                                      "ssim_mean": float(np.mean(wm["ssim"])),
                                      "unchanged_share": float(np.mean(~np.isfinite(wm["psnr"]))), "n": len(wm["psnr"])}
    summary["clipscore"] = clip_quality(st.pops, cfg.clip, cfg.batch_size) if cfg.clip else None
    summary["timings_s"] = timings
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if plots:
        from .plots import write_plots

        write_plots(cfg.out, summary)
    return summary


def clip_quality(pops: dict, spec: str, batch_size: int = 64) -> dict:
    """The watermark's quality cost as CLIPScore (100·max(cos, 0)) of the watermarked and the clean population
    against their shared prompts: means, the paired mean difference (watermarked − clean) and its standard error."""
    from ..models.clip_judge import load_clip_judge

    judge = load_clip_judge(spec)
    scores = {}
    for name in POPULATIONS:
        pop = pops[name]
        x = from_uint8(pop["images"])
        scores[name] = torch.cat([judge.clip_score(x[i:i + batch_size], pop["prompts"][i:i + batch_size])
                                  for i in range(0, len(x), batch_size)]).double().numpy()
    diff = scores["watermarked"] - scores["clean"]
    return {"judge": judge.description, "n": int(len(diff)),
            "watermarked_mean": round(float(scores["watermarked"].mean()), 4),
            "clean_mean": round(float(scores["clean"].mean()), 4),
            "difference_mean": round(float(diff.mean()), 4),
            "difference_se": round(float(diff.std(ddof=1) / math.sqrt(len(diff))), 4) if len(diff) > 1 else None}


# ---------------------------------------------------------------------------------------------- summary

def _read_rows(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _log10p(rows: list[dict], p_field: str | None = None) -> np.ndarray:
    if p_field is not None:
        return np.log10(np.array([r[p_field] if r.get(p_field) is not None else 1.0 for r in rows], dtype=np.float64))
    return np.array([r["log10_p"] if r.get("log10_p") is not None else 0.0 for r in rows], dtype=np.float64)


def _fingerprint_roc_score(rows: list[dict]) -> np.ndarray:
    """-log10 of the fingerprint score (larger = nearer the decoder's manifold); error rows score -inf."""
    s = np.array([r["fingerprint_score"] if r.get("fingerprint_score") is not None else np.inf for r in rows],
                 dtype=np.float64)
    return -np.log10(np.maximum(s, 1e-12))


REPORT_KEYS = ("attack", "param", "param_name", "family", "summary_point")
"""The columns of a report row before its metrics (`metric_columns`)."""


def metric_columns(alphas=ALPHAS, fprs=FPRS) -> list[str]:
    """The keys `attack_metrics` returns, always all of them and in this order (the report.csv columns)."""
    cols = ["n_wm", "n_clean", "n_errors", *(f"tpr_at_alpha_{a:g}" for a in alphas),
            *(f"fpr_at_alpha_{a:g}" for a in alphas)]
    for f in fprs:
        cols += [f"tpr_at_fpr_{f:g}", f"tpr_at_fpr_{f:g}_resolvable", f"tpr_at_fpr_{f:g}_split",
                 f"fpr_heldout_at_fpr_{f:g}_split"]
    return cols + ["auc", "median_log10_p_wm", "median_log10_p_clean", "token_match_wm", "token_match_clean",
                   "token_match_generated_wm", "psnr_attack_db", "list_index_correct"]


def attack_metrics(rows: list[dict], *, alphas=ALPHAS, fprs=FPRS) -> dict:
    """Metrics of one attack/strength from its result rows (watermarked vs clean).

    Returns every key of `metric_columns(alphas, fprs)`, whatever the data: a metric that cannot be computed
    (no image of a population, a single clean image for the split estimate, no generated codes or known list
    indices) is None.
    """
    wm = [r for r in rows if r["population"] == "watermarked"]
    cl = [r for r in rows if r["population"] == "clean"]
    out: dict[str, Any] = dict.fromkeys(metric_columns(alphas, fprs))
    out.update(n_wm=len(wm), n_clean=len(cl), n_errors=sum(r.get("error") is not None for r in rows))
    if not wm or not cl:
        return out
    lp_wm, lp_cl = _log10p(wm), _log10p(cl)
    s_wm, s_cl = -lp_wm, -lp_cl
    if wm[0].get("detector") == "fingerprint":      # key-free: p is conformal; the ROC reads the score itself
        lp_wm, lp_cl = _log10p(wm, "fingerprint_p"), _log10p(cl, "fingerprint_p")
        s_wm, s_cl = _fingerprint_roc_score(wm), _fingerprint_roc_score(cl)
    for a, v in tpr_at_alpha(lp_wm, alphas).items():
        out[f"tpr_at_alpha_{a:g}"] = v
    for a, v in tpr_at_alpha(lp_cl, alphas).items():
        out[f"fpr_at_alpha_{a:g}"] = v
    for f in fprs:
        op = tpr_at_fpr(s_wm, s_cl, f)
        held = tpr_at_fpr(s_wm, s_cl, f, heldout_split=True) if len(cl) >= 2 else None
        out[f"tpr_at_fpr_{f:g}"] = op.tpr
        out[f"tpr_at_fpr_{f:g}_resolvable"] = op.resolvable
        if held is not None:
            out[f"tpr_at_fpr_{f:g}_split"] = held.tpr
            out[f"fpr_heldout_at_fpr_{f:g}_split"] = held.fpr_heldout
    out["auc"] = auc(s_wm, s_cl)
    out["median_log10_p_wm"] = float(np.median(lp_wm))
    out["median_log10_p_clean"] = float(np.median(lp_cl))
    out["token_match_wm"] = float(np.mean([r["token_match"] for r in wm]))
    out["token_match_clean"] = float(np.mean([r["token_match"] for r in cl]))
    gen_wm = [r["token_match_generated"] for r in wm if r.get("token_match_generated") is not None]
    if gen_wm:
        out["token_match_generated_wm"] = float(np.mean(gen_wm))
    ps = [r["psnr_attack"] for r in wm if r.get("psnr_attack") is not None]
    out["psnr_attack_db"] = float(np.mean(ps)) if ps else None
    known = [r for r in wm if r.get("list_index_true") is not None]
    if known:
        out["list_index_correct"] = float(np.mean([r["list_index"] == r["list_index_true"] for r in known]))
    return out


def summarize(out: Path, attacks: Sequence[tuple[str, Any]], *, alphas=ALPHAS, fprs=FPRS) -> dict:
    """Read every `<attack>__<strength>/results.jsonl` under `out`; write report.csv; return the summary."""
    import csv

    out = Path(out)
    meta = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    columns = [*REPORT_KEYS, *metric_columns(alphas, fprs)]
    rows_out = []
    for name, param in attacks:
        path = _attack_dir(out, name, param) / "results.jsonl"
        if not path.exists():
            continue
        m = attack_metrics(_read_rows(path), alphas=alphas, fprs=fprs)
        spec = ATTACKS[name]
        rows_out.append({"attack": name, "param": param, "param_name": spec.param_name, "family": spec.family,
                         "summary_point": spec.summary == param, **m})
    by_key = {(r["attack"], r["param"]): r for r in rows_out}
    table = []
    means = [k for k in metric_columns(alphas, fprs) if k.startswith(("tpr_at", "auc", "token_match_wm",
                                                                        "token_match_generated"))
             and not k.endswith("_resolvable")]

    def add_row(label: str, family: str, members: list[dict]) -> None:
        """A summary-table row: the mean of each metric over `members` (None unless every member has it)."""
        if not members:
            return
        row = {"row": label, "family": family, "members": [f"{m['attack']} {param_label(m['param'])}" for m in members],
               "n_wm": min(m["n_wm"] for m in members), "n_clean": min(m["n_clean"] for m in members)}
        for k in means:
            values = [m.get(k) for m in members]
            row[k] = float(np.mean(values)) if all(isinstance(v, (int, float)) for v in values) else None
        metric, target = TARGETS.get(family, (None, None))
        row["target"] = None if row.get(metric) is None else \
            {"metric": metric, "value": target, "met": bool(row[metric] >= target)}
        table.append(row)

    if ("none", 0) in by_key:
        add_row("no attack", "none", [by_key[("none", 0)]])
    for fam, members in SUMMARY_FAMILIES.items():
        found = [by_key[m] for m in members if m in by_key]
        if found:
            add_row(f"{fam} (mean of {len(found)}/{len(members)})", fam, found)
    for r in rows_out:
        if r["family"] == "regeneration":
            add_row(f"{r['attack']} {param_label(r['param'])}", "regeneration", [r])
    regen_summary = [r for r in rows_out if r["family"] == "regeneration" and r["summary_point"]]
    if regen_summary:
        add_row(f"regeneration (mean of {len(regen_summary)})", "regeneration", regen_summary)

    if rows_out:
        with open(out / "report.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows_out)
    return {"config": meta, "alphas": list(alphas), "fprs": list(fprs), "attacks": rows_out, "table": table,
            "notes": ["tpr_at_alpha_*: share of watermarked images with corrected p <= alpha (threshold fixed "
                      "in advance, nothing fitted)",
                      "tpr_at_fpr_*: empirical operating point; the threshold is read off the clean images under "
                      "the same attack (ROC); *_split fits it on half of them and fpr_heldout_* is the FPR on the "
                      "other half",
                      "regeneration attacks are offline stand-ins (second VQ, AR resampling, small autoencoder), "
                      "not diffusion regeneration"]}
