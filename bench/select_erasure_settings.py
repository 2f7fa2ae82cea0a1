"""Choose EAR settings and a steering strength on a validation seed, never on the reported prompts.

measure_erasure.py reports on seed 1000 (prompts drawn from seed + 7919); this script evaluates on
--seed 5000, and its rule is fixed before looking: among the variants of a family (EAR settings; steering)
whose non-target shape and colour adherence are both >= the original's - 2 points, take the lowest
concept rate on the validation target prompts. The choice then goes to measure_erasure.py
(--ear-overrides, --steer-anchored-eta).

    OMP_NUM_THREADS=1 python bench/select_erasure_settings.py --concept circle --replacement square \\
        --ear default,eta2,pairs64 --out bench/results/erasure_selection_circle.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from guard.erasure import ConceptSteering, EarConfig, erase, load_erased
from guard.erasure.evaluate import Variant, evaluate_erasure, summarize_rows
from guard.erasure.steer import STEER_PROMPT
from guard.models import judge_for, load

CONFIGS = {"default": {}, "eta2": {"eta": 2.0}, "pairs64": {"candidates": 128, "max_pairs": 64},
           "layers4": {"layers": (0, 1, 2, 3)}}


def config(name: str) -> dict:
    """EarConfig overrides of a variant: a name in CONFIGS, `preserve<weight>` (e.g. preserve24), or several
    joined by '+' (e.g. preserve32+eta2)."""
    if "+" in name:
        out: dict = {}
        for part in name.split("+"):
            out.update(config(part))
        return out
    if name in CONFIGS:
        return CONFIGS[name]
    if name.startswith("preserve"):
        try:
            return {"preserve": float(name.removeprefix("preserve"))}
        except ValueError:
            pass
    raise SystemExit(f"unknown EAR variant {name!r}; choose from {sorted(CONFIGS)} or preserve<weight>")
STEER = [(3.0, False), (3.0, True), (6.0, True)]  # (eta, anchored on 'a <replacement>')


NON_TARGET = ("non_target_adherence_shape", "non_target_adherence_colour")


def choose(val: dict, names: list[str]) -> dict:
    """The rule, fixed before looking: among `names` whose non-target shape and colour adherence are both >= the
    original's - 2 points, the lowest validation concept rate. When none keeps that budget (`fallback`): the
    smallest worst non-target drop among those with a concept rate <= 5%, else the lowest concept rate."""
    orig = val["original"]
    drop = lambda n: max(orig[k] - val[n][k] for k in NON_TARGET)
    rate = lambda n: val[n]["rate_target"]
    passing = [n for n in names if drop(n) <= 0.02]
    out = {"passing": passing, "chosen": min(passing, key=rate) if passing else None,
           "lowest_rate_any": min(names, key=rate)}
    if not passing:
        low = [n for n in names if rate(n) <= 0.05]
        out["fallback"] = min(low, key=drop) if low else min(names, key=rate)
    return out


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concept", required=True)
    p.add_argument("--replacement", required=True)
    p.add_argument("--ear", default="default,eta2,pairs64", help=f"comma-separated names from {sorted(CONFIGS)} or preserve<weight>")
    p.add_argument("--no-steer", action="store_true", help="evaluate EAR settings only")
    p.add_argument("--seed", type=int, default=5000)
    p.add_argument("--n-target", type=int, default=192)
    p.add_argument("--n-non-target", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("/tmp/guard-erasure-select"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = load("reference")
    judge = judge_for(base)
    work = args.work / f"{args.concept}-{base.id.replace('@', '_')}"
    work.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.ear.split(",") if n]
    configs = {n: config(n) for n in names}  # checked before any training
    variants, families = [], {}
    for name in names:
        path = work / f"{name}.safetensors"
        if not path.exists():
            t0 = time.time()
            erase(base, args.concept, args.replacement, EarConfig(seed=0, **configs[name]), out=path, judge=judge)
            log(f"{name} trained in {time.time() - t0:.0f}s")
        variants.append(Variant(f"ear-{name}", load_erased(base, path)))
        families.setdefault("ear", []).append(f"ear-{name}")
    cp, ap = STEER_PROMPT.format(concept=args.concept), STEER_PROMPT.format(concept=args.replacement)
    for eta, anchored in ([] if args.no_steer else STEER):
        name = f"steer-{'anchored-' if anchored else ''}{eta:g}"
        variants.append(Variant(name, base, lambda g, eta=eta, anchored=anchored:
                                [ConceptSteering(g, {cp: eta}, anchors={cp: ap} if anchored else None)]))
        families.setdefault("steer", []).append(name)
    report = evaluate_erasure(base, variants, args.concept, args.replacement, n_target=args.n_target,
                              n_non_target=args.n_non_target, seed=args.seed, judge=judge, out_dir=work / "val",
                              cache_dir=work / "cache", log=log)
    val = summarize_rows(report["rows"])

    chosen = {fam: choose(val, names) for fam, names in families.items()}
    log("chosen " + json.dumps(chosen))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "python bench/select_erasure_settings.py " + " ".join(__import__("sys").argv[1:]),
        "base_model": base.id, "validation_seed": args.seed, "n_target": args.n_target,
        "n_non_target": args.n_non_target, "configs": configs,
        "steering": [] if args.no_steer else [{"eta": e, "anchor": ap if a else None} for e, a in STEER],
        "rule": "among variants of a family with non-target shape and colour >= original - 2 points, the lowest "
                "validation concept rate; if none, `fallback`: the smallest worst non-target drop among rates <= 5%, "
                "else the lowest rate (choose())", "validation": val, "chosen": chosen}, indent=2, default=list) + "\n")


if __name__ == "__main__":
    main()
