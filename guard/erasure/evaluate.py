"""Erasure evaluation: what was forgotten, what was kept, and how much the model changed.

For every variant (the original model, EAR deltas, steering processors…) on the same prompts and seeds:

- concept rate on target prompts, split by form: the training template, synonyms never used in training,
  paraphrases (other templates); with exact Clopper-Pearson intervals;
- replacement rate on the same prompts (how often the replacement shows up instead);
- prompt adherence on non-target prompts (shape / colour / both, by the model kind's judge: the reference
  scene classifier);
- token agreement with the original model on the same prompts and seeds;
- an exact McNemar test of each paired change against the original, Holm-corrected over all rows;
- a before/after image grid (PNG), `report.json` and `report.csv`.

    >>> from guard.models import load
    >>> from guard.erasure import load_erased
    >>> from guard.erasure.evaluate import Variant, evaluate_erasure
    >>> base = load("reference")
    >>> report = evaluate_erasure(base, [Variant("ear", load_erased(base, "erase-circle.safetensors"))],
    ...                           "circle", "square", n_target=256, n_non_target=256, out_dir="eval-circle")
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from scipy.stats import binomtest

from ..errors import ConfigError
from ..imageio import quantize, to_pil
from ..models import ConceptJudge, judge_for, prompts_for
from .pairs import FORMS, Concept, check_pair

__all__ = ["Variant", "EvalPrompts", "evaluate_erasure", "eval_prompts", "summarize_rows", "ROW_FIELDS",
           "SUMMARY_FIELDS"]

ROW_FIELDS = ("variant", "prompt_set", "n", "concept_rate", "concept_ci_low", "concept_ci_high", "replacement_rate",
              "adherence_shape", "adherence_colour", "adherence_both", "token_agreement", "mcnemar_p", "holm_p")


@dataclass
class Variant:
    """A model to evaluate: a generator, and optionally a factory of fresh logits processors per generate call."""

    name: str
    generator: object
    processors: Callable[[object], list] | None = None
    description: str = ""


@dataclass(frozen=True)
class EvalPrompts:
    target: list[str]
    forms: list[str]  # the form of each target prompt
    non_target: list[str]


def eval_prompts(concept: Concept, replacement: Concept, n_target: int, n_non_target: int, *, seed: int,
                 also_avoid: Sequence[Concept] = (), model: object = "reference") -> EvalPrompts:
    """Target prompts, a third of each form (training template, held-out synonyms, paraphrases), and non-target ones.

    Seeds are offset from training's, so no evaluation prompt set is the training set (the held-out synonym
    and paraphrase forms never occur in training at all). The templates are `model`'s kind's
    (`guard.models.prompts_for`).
    """
    source = prompts_for(model)
    if n_target < len(FORMS) or n_non_target < 1:
        raise ConfigError(f"need n_target >= {len(FORMS)} and n_non_target >= 1, got {n_target}, {n_non_target}")
    target, forms = [], []
    for i, form in enumerate(FORMS):
        k = n_target // len(FORMS) + (1 if i < n_target % len(FORMS) else 0)
        target += source.target_prompts(concept, k, seed=seed + 7919, form=form, exclude=[replacement.name])
        forms += [form] * k
    non_target = source.non_target_prompts([concept, replacement, *also_avoid], n_non_target, seed=seed + 7919)
    return EvalPrompts(target, forms, non_target)


def _generate(variant: Variant, prompts: list[str], seed: int, cfg: float, cache_dir: Path | None,
              log: Callable[[str], None]) -> torch.Tensor:
    gen = variant.generator
    key = None
    if cache_dir is not None:
        procs_desc = repr(variant.processors(gen)) if variant.processors else ""
        blob = json.dumps({"model": getattr(gen, "id", ""), "procs": procs_desc, "prompts": prompts, "seed": seed,
                           "cfg": cfg}, sort_keys=True).encode()
        key = cache_dir / f"codes-{hashlib.sha256(blob).hexdigest()[:20]}.pt"
        if key.exists():
            return torch.load(key)
    t0 = time.time()
    procs = variant.processors(gen) if variant.processors else None
    codes = gen.generate(prompts, n=1, seed=seed, cfg=cfg, logits_processor=procs)
    log(f"{variant.name}: generated {len(prompts)} images in {time.time() - t0:.0f}s")
    if key is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        torch.save(codes, key)
    return codes


def _rate_ci(hits: torch.Tensor) -> tuple[float, float, float]:
    n, k = int(hits.numel()), int(hits.sum())
    ci = binomtest(k, n).proportion_ci(method="exact")
    return k / n, float(ci.low), float(ci.high)


def _mcnemar(before: torch.Tensor, after: torch.Tensor) -> float:
    """Exact McNemar (two-sided binomial test on the discordant pairs); 1.0 when none are discordant."""
    b = int((before & ~after).sum())
    c = int((~before & after).sum())
    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


def _holm(ps: list[float | None]) -> list[float | None]:
    idx = [i for i, p in enumerate(ps) if p is not None]
    order = sorted(idx, key=lambda i: ps[i])
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * ps[i]))
        out[i] = running
    return out


def save_grid(images: Sequence[torch.Tensor], labels: Sequence[str], path: Path, scale: int = 2) -> Path:
    """Rows of images (each (k,3,H,W) in [0,1]) with a text label to the left of each row."""
    from PIL import Image, ImageDraw

    k, _, h, w = images[0].shape
    label_w = 150
    canvas = Image.new("RGB", (label_w + k * w * scale, len(images) * h * scale), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (row, label) in enumerate(zip(images, labels)):
        draw.text((4, r * h * scale + h * scale // 2 - 6), label[:24], fill="black")
        for j, img in enumerate(row):
            tile = to_pil(img).resize((w * scale, h * scale), Image.Resampling.NEAREST)
            canvas.paste(tile, (label_w + j * w * scale, r * h * scale))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def evaluate_erasure(base, variants: Sequence[Variant], concept: str, replacement: str, *, n_target: int = 256,
                     n_non_target: int = 256, seed: int = 0, cfg: float = 3.0, judge: ConceptJudge | None = None,
                     out_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                     also_avoid: Sequence[str] = (), grid_columns: int = 8,
                     log: Callable[[str], None] = lambda s: None) -> dict:
    """Evaluate erasure variants against the original `base` on the same prompts and seeds.

    Returns a dict with `rows` (one per variant and prompt set, keys `ROW_FIELDS`), the prompts' settings,
    and the paths written under `out_dir` (report.json, report.csv, grid.png). `also_avoid`: further
    concepts the non-target prompts must not name (e.g. the other concept of a joint measurement).
    """
    c, r = check_pair(concept, replacement, base)
    names = [v.name for v in variants]
    if len(set(names)) != len(names) or "original" in names:
        raise ConfigError(f"variant names must be unique and not 'original', got {names}")
    if judge is None:
        judge = judge_for(base)
    source = prompts_for(base)
    prompts = eval_prompts(c, r, n_target, n_non_target, seed=seed, also_avoid=[source.concept(a) for a in also_avoid],
                           model=base)
    cache = Path(cache_dir) if cache_dir is not None else None
    everyone = [Variant("original", base)] + list(variants)
    results: dict[str, dict] = {}
    for v in everyone:
        t_codes = _generate(v, prompts.target, seed, cfg, cache, log)
        n_codes = _generate(v, prompts.non_target, seed + 1, cfg, cache, log)
        tok = v.generator.tokenizer
        t_img, n_img = quantize(tok.decode(t_codes)), quantize(tok.decode(n_codes))
        t_pred = judge.predict(t_img)
        results[v.name] = {"t_codes": t_codes, "n_codes": n_codes, "t_img": t_img,
                           "present": judge.present_in(t_pred, c),
                           "replaced": judge.replaced_at_prompt(t_pred, prompts.target, c, r),
                           "adherence": judge.adherence(n_img, prompts.non_target)}
    base_res = results["original"]
    forms = torch.tensor([FORMS.index(f) for f in prompts.forms])
    rows = []
    for v in everyone:
        res = results[v.name]
        for set_name, mask in [("target", torch.ones_like(forms, dtype=torch.bool))] + \
                [(f"target/{f}", forms == i) for i, f in enumerate(FORMS)]:
            hits = res["present"][mask]
            rate, lo, hi = _rate_ci(hits)
            agree = (res["t_codes"][mask] == base_res["t_codes"][mask]).flatten(1).float().mean()
            rows.append({"variant": v.name, "prompt_set": set_name, "n": int(mask.sum()), "concept_rate": rate,
                         "concept_ci_low": lo, "concept_ci_high": hi,
                         "replacement_rate": float(res["replaced"][mask].float().mean()),
                         "adherence_shape": None, "adherence_colour": None, "adherence_both": None,
                         "token_agreement": float(agree),
                         "mcnemar_p": None if v.name == "original" else _mcnemar(base_res["present"][mask], hits)})
        adh, per_image = res["adherence"]
        rows.append({"variant": v.name, "prompt_set": "non_target", "n": len(prompts.non_target),
                     "concept_rate": None, "concept_ci_low": None, "concept_ci_high": None, "replacement_rate": None,
                     "adherence_shape": adh["shape"], "adherence_colour": adh["colour"], "adherence_both": adh["both"],
                     "token_agreement": float((res["n_codes"] == base_res["n_codes"]).flatten(1).float().mean()),
                     "mcnemar_p": None if v.name == "original" else _mcnemar(base_res["adherence"][1], per_image)})
    for row, p in zip(rows, _holm([row["mcnemar_p"] for row in rows])):
        row["holm_p"] = p
    for row in rows:
        for k, val in row.items():
            if isinstance(val, float):
                row[k] = round(val, 6)
    report = {"concept": c.name, "replacement": r.name, "heldout_words": list(c.heldout_words),
              "train_words": list(c.train_words), "n_target": n_target, "n_non_target": n_non_target, "seed": seed,
              "cfg": cfg, "judge": getattr(judge, "description", type(judge).__name__), "variants":
              {v.name: {"model": getattr(v.generator, "id", ""), "description": v.description} for v in everyone},
              "rows": rows}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cols = _grid_columns(prompts.forms, grid_columns)
        grid = save_grid([results[v.name]["t_img"][cols] for v in everyone], [v.name for v in everyone],
                         out / "grid.png")
        report["files"] = {"json": str(out / "report.json"), "csv": str(out / "report.csv"), "grid": str(grid)}
        report["grid_prompts"] = [prompts.target[i] for i in cols]
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        with open(out / "report.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
            w.writeheader()
            w.writerows(rows)
    return report


SUMMARY_FIELDS = ("rate_target", *(f"rate_{f}" for f in FORMS), "non_target_adherence_shape",
                  "non_target_adherence_colour", "non_target_token_agreement")
"""The columns of `summarize_rows`, the same for every variant."""


def summarize_rows(rows: Sequence[dict]) -> dict[str, dict]:
    """Per variant, the figures a report is read for: the concept rate on each target prompt set and the
    non-target adherence (shape, colour) and token agreement. Every variant has the keys `SUMMARY_FIELDS`
    (None where its rows lack the set)."""
    out: dict[str, dict] = {}
    for row in rows:
        v = out.setdefault(row["variant"], dict.fromkeys(SUMMARY_FIELDS))
        if row["prompt_set"] == "non_target":
            v["non_target_adherence_shape"] = row["adherence_shape"]
            v["non_target_adherence_colour"] = row["adherence_colour"]
            v["non_target_token_agreement"] = row["token_agreement"]
        else:
            v[f"rate_{row['prompt_set'].replace('target/', '')}"] = row["concept_rate"]
    return out


def _grid_columns(forms: list[str], k: int) -> list[int]:
    """k prompt indices spread over the forms."""
    per = [[i for i, f in enumerate(forms) if f == form] for form in FORMS]
    out: list[int] = []
    j = 0
    while len(out) < min(k, len(forms)):
        for lst in per:
            if j < len(lst) and len(out) < k:
                out.append(lst[j])
        j += 1
    return out
