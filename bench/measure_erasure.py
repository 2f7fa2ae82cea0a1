"""Measure concept erasure on the reference model: EAR, its ablations, and ConceptSteering.

    nice -n 10 python bench/measure_erasure.py                     # circle->square and red->blue, n=256
    nice -n 10 python bench/measure_erasure.py --n 96 --concepts circle:square

For each concept: one full EAR erasure through the CLI (`guard erase train`, in a child process whose
wall time and peak RSS are read with os.wait4), EAR without TLM and without WGA (same kept pairs, same
budget), ConceptSteering at a fixed eta (chosen before this run, never on these figures), all evaluated
on the same prompts and seeds as the original model (`guard.erasure.evaluate`): concept rate on target
prompts (training template, held-out synonyms, paraphrases), non-target adherence, token agreement,
exact McNemar tests (Holm over the report). Writes bench/results/erasure.json, erasure_<concept>.csv and
erasure_<concept>_grid.png. Generated codes are cached under --work, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from guard.erasure import EarConfig, changed_tensors, check_pair, ear_model_for, load_erased, save_delta  # noqa: E402
from guard.erasure.ear import preservation_rollouts, train_ear  # noqa: E402
from guard.erasure.evaluate import Variant, evaluate_erasure, summarize_rows  # noqa: E402
from guard.erasure.steer import STEER_PROMPT, ConceptSteering  # noqa: E402
from guard.models import judge_for, load  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed_train(cmd: list[str], logs: Path) -> dict:
    """Run a command, reaping the child ourselves (os.wait4): its own wall time, CPU time and peak RSS."""
    t0 = time.time()
    with open(logs / "train.out", "w") as out_f, open(logs / "train.err", "w") as err_f:
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    out, err = (logs / "train.out").read_text(), (logs / "train.err").read_text()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({code}): {err.strip()[-800:]}")
    return {"command": shlex.join(cmd), "wall_s": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "cpu_user_s": round(usage.ru_utime, 1), "stdout": out.strip(), "stderr_tail": err.strip().splitlines()[-3:]}


def child_erase(concept: str, replacement: str, delta: str, *, seed: int, threads: int, preserve: float,
                overrides: dict) -> None:
    """One erasure exactly as `guard erase train` runs it; also saves the kept pairs for the ablations."""
    from guard.erasure import erase

    torch.set_num_threads(threads)
    result = erase(load("reference"), concept, replacement, EarConfig(seed=seed, preserve=preserve, **overrides),
                   out=delta)
    torch.save(result.pairs, Path(delta).with_suffix(".pairs.pt"))


def _shown(path: Path) -> str:
    """A path relative to the repository when it lies inside it, else absolute (an --out elsewhere)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concepts", default="circle:square,red:blue")
    p.add_argument("--n", type=int, default=256, help="images per prompt set (target, non-target) per variant")
    p.add_argument("--steer-eta", type=float, default=3.0)
    p.add_argument("--steer-anchored-eta", type=float, default=None,
                   help="also evaluate ConceptSteering anchored on the replacement ('a <replacement>') at this eta")
    p.add_argument("--no-steer", action="store_true", help="evaluate the original and EAR only (no steering variants)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/guard-erasure-bench"))
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/erasure.json")
    p.add_argument("--ablations", default="no-tlm,no-wga",
                   help="comma-separated subset of no-tlm,no-wga ('' for none); no-wga (W=1) costs ~16x EAR's compute")
    p.add_argument("--preserve", type=float, default=4.0,
                   help="EarConfig.preserve for EAR and its ablations (0 = EAR as published)")
    p.add_argument("--ear-overrides", default="{}",
                   help='JSON of EarConfig fields for EAR and its ablations, e.g. \'{"eta": 2.0}\' (chosen on a '
                        'validation seed, never on this run\'s figures)')
    p.add_argument("--child-erase", nargs=3, metavar=("CONCEPT", "REPLACEMENT", "DELTA"), help=argparse.SUPPRESS)
    args = p.parse_args()
    requested = json.loads(args.ear_overrides)  # as given (recorded, compared with a previous run)
    overrides = dict(requested)
    if "layers" in overrides:
        overrides["layers"] = tuple(overrides["layers"])
    EarConfig(**overrides)  # fail early on a bad field
    if args.child_erase:
        return child_erase(*args.child_erase, seed=args.seed, threads=args.threads, preserve=args.preserve,
                           overrides=overrides)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    base = load("reference")
    judge = judge_for(base)
    results = {"command": "python bench/measure_erasure.py " + " ".join(sys.argv[1:]),
               "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "python": platform.python_version(),
                           "torch": torch.__version__, "load_avg_start": [round(x, 2) for x in os.getloadavg()]},
               "base_model": base.id, "n_per_set": args.n, "steer_eta": None if args.no_steer else args.steer_eta,
               "steer_anchored_eta": None if args.no_steer else args.steer_anchored_eta, "preserve": args.preserve,
               "ear_overrides": requested, "concepts": {}}
    if args.out.exists():
        previous = json.loads(args.out.read_text())
        if (previous.get("base_model") == base.id and previous.get("n_per_set") == args.n
                and previous.get("preserve", 0.0) == args.preserve
                and previous.get("ear_overrides", {}) == requested):
            results["concepts"] = previous.get("concepts", {})
    for spec in args.concepts.split(","):
        concept, replacement = spec.split(":")
        c, r = check_pair(concept, replacement)
        work = args.work / (f"{c.name}-{base.id.replace('@', '_')}" + (f"-preserve{args.preserve:g}" if args.preserve else "")
                            + "".join(f"-{k}{v}" for k, v in sorted(overrides.items())).replace(" ", ""))
        work.mkdir(parents=True, exist_ok=True)
        entry = results["concepts"].setdefault(c.name, {"replacement": r.name})
        delta = work / "ear.safetensors"
        if "erasure_cost" not in entry or not delta.exists():
            log(f"{c.name}: one EAR erasure (filter + training + delta) in a timed child process")
            cost = timed_train([sys.executable, __file__, "--child-erase", c.name, r.name, str(delta),
                                "--seed", str(args.seed), "--threads", "2", "--preserve", str(args.preserve),
                                "--ear-overrides", args.ear_overrides], work)
            cost["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
            entry["erasure_cost"] = cost
            entry["card"] = json.loads(delta.with_suffix(".json").read_text())
            log(f"{c.name}: EAR took {cost['wall_s']}s, peak RSS {cost['peak_rss_mib']} MiB")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")  # partial: the cost survives an interrupted eval
        variants = [Variant("ear", load_erased(base, delta), description="EAR (WGA + TLM)")]
        wanted = [a for a in args.ablations.split(",") if a]
        ablations = {"no-tlm": EarConfig(**{"seed": args.seed, "preserve": args.preserve, **overrides, "mu": None}),
                     "no-wga": EarConfig(**{"seed": args.seed, "preserve": args.preserve, **overrides, "window": 1})}
        for a in wanted:
            if a not in ablations:
                raise SystemExit(f"unknown ablation {a!r}; choose from {sorted(ablations)}")
        if wanted:
            kept = torch.load(delta.with_suffix(".pairs.pt"), weights_only=False)  # the pairs EAR trained on
            for name, cfg in ((f"ear-{a}", ablations[a]) for a in wanted):
                path = work / f"{name}.safetensors"
                if not path.exists():
                    t0 = time.time()
                    model = ear_model_for(base)
                    keep = preservation_rollouts(base, c, r, cfg) if cfg.preserve > 0 else []
                    student, tlog = train_ear(model, kept, cfg, preserve=keep)
                    card = {"concept": c.name, "replacement": r.name, "base_model": base.id, "ablation": name,
                            "window": cfg.window, "mu": cfg.mu, "eta": cfg.eta, "layers": list(cfg.layers),
                            "epochs": cfg.epochs, "seed": cfg.seed, "steps": tlog[-1]["step"],
                            "train_time_s": round(time.time() - t0, 1)}
                    save_delta(path, changed_tensors(model.module, student), card)
                    log(f"{c.name}: {name} trained ({card['steps']} steps, {card['train_time_s']}s)")
                entry.setdefault("ablation_cards", {})[name] = json.loads(path.with_suffix(".json").read_text())
                variants.append(Variant(name, load_erased(base, path), description=name))
        prompt = STEER_PROMPT.format(concept=c.name)
        if not args.no_steer:
            variants.append(Variant(f"steer-{args.steer_eta:g}", base,
                                    lambda g, prompt=prompt: [ConceptSteering(g, {prompt: args.steer_eta})],
                                    f"ConceptSteering({prompt!r}: {args.steer_eta:g})"))
        if args.steer_anchored_eta is not None and not args.no_steer:
            anchor, eta = STEER_PROMPT.format(concept=r.name), args.steer_anchored_eta
            variants.append(Variant(f"steer-anchored-{eta:g}", base,
                                    lambda g, prompt=prompt, anchor=anchor, eta=eta:
                                    [ConceptSteering(g, {prompt: eta}, anchors={prompt: anchor})],
                                    f"ConceptSteering({prompt!r}: {eta:g}, anchor {anchor!r})"))
        t0 = time.time()
        report = evaluate_erasure(base, variants, c.name, r.name, n_target=args.n, n_non_target=args.n,
                                  seed=args.seed + 1000, judge=judge, out_dir=work / "eval", cache_dir=work / "cache",
                                  log=log)
        entry["eval_wall_s"] = round(time.time() - t0, 1)
        entry["rows"] = report["rows"]
        entry["grid_prompts"] = report["grid_prompts"]
        out_dir = args.out.parent
        out_dir.mkdir(parents=True, exist_ok=True)
        grid = out_dir / f"{args.out.stem}_{c.name}_grid.png"
        grid.write_bytes(Path(report["files"]["grid"]).read_bytes())
        csv_path = out_dir / f"{args.out.stem}_{c.name}.csv"
        csv_path.write_text(Path(report["files"]["csv"]).read_text())
        entry["files"] = {"grid": _shown(grid), "csv": _shown(csv_path)}
        entry["summary"] = summarize_rows(report["rows"])
        results["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        log(f"{c.name}: {json.dumps(entry['summary'])}")
    print(json.dumps({k: v.get("summary") for k, v in results["concepts"].items()}, indent=2))


if __name__ == "__main__":
    main()
