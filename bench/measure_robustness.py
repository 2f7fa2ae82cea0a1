"""Measure robustness on the reference generator: the DESIGN §10 table (soft and hard) and the spoofing table.

    nice -n 10 python bench/measure_robustness.py --n 1000 --threads 1 --workdir /tmp/guard-robustness

Stages (each resumable: rerun the same command after an interruption; generated images are cached):

1. `guard eval` soft (delta --delta, gamma 0.25, K=8, fixed benchmark key), N watermarked + N clean
   generations, every attack at its summary operating point (plus --full-attacks at their whole grid);
2. the same with a hard green list (the clean population is shared: same prompts and seeds);
3. `guard eval spoof`: N_obs in --spoof-observed, K in --spoof-lists (soft); the K=8 watermarked set is the
   soft evaluation's, the clean set is shared too.

Writes --out (bench/results/robustness.json) with both tables, every attack row, the spoofing rows and
the exact command, and copies the figures beside it (robustness_<mode>_{roc,strength,table}.png).
Thresholds: TPR at alpha uses alpha itself; empirical TPR@FPR reads its threshold off the clean images
under the same attack (and `_split` variants fit it on half of them and report the other half's FPR).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bench_key(tok, k: int, path: Path):
    """A fixed benchmark key (public secret: reproducible figures), saved 0600 for the harness."""
    from guard.keys import WatermarkKey

    if path.exists():
        return path
    secret = hashlib.sha256(f"guard/bench/measure_robustness/K{k}".encode()).digest()
    key = WatermarkKey._from_secret(secret, gamma=0.25, n_lists=k, tokenizer_id=tok.id, vocab_size=tok.vocab_size,
                                    created="2026-01-01T00:00:00Z")
    path.parent.mkdir(parents=True, exist_ok=True)
    key.save(path)
    return path


def share_population(src: Path, dst: Path) -> None:
    """Point dst at src's cached chunks (same prompts, seeds and model: identical images); two runs may fill
    the shared folder at once (chunk files are replaced atomically)."""
    src.mkdir(parents=True, exist_ok=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        dst.symlink_to(src.resolve(), target_is_directory=True)


def markdown_table(table: list[dict]) -> str:
    """The DESIGN §10 table as markdown (what the README shows)."""
    cols = [("tpr_at_fpr_0.01", "TPR@1%FPR"), ("tpr_at_fpr_0.001", "TPR@0.1%FPR"), ("tpr_at_alpha_0.01", "TPR α=1e-2"),
            ("tpr_at_alpha_0.0001", "TPR α=1e-4"), ("tpr_at_alpha_1e-06", "TPR α=1e-6"), ("auc", "AUC"),
            ("token_match_generated_wm", "token match")]
    lines = ["| attack | " + " | ".join(c for _, c in cols) + " | target |", "|---" * (len(cols) + 2) + "|"]
    for r in table:
        t = r.get("target")
        target = "" if not t else f"{t['value']:g}: {'met' if t['met'] else '**not met**'}"
        vals = " | ".join(f"{r[k]:.3f}" if isinstance(r.get(k), float) else "–" for k, _ in cols)
        lines.append(f"| {r['row']} | {vals} | {target} |")
    return "\n".join(lines)


def markdown_spoof(rows: list[dict]) -> str:
    lines = ["| K | N observed | forge success α=1e-2 | α=1e-4 | α=1e-6 | estimate overlap (best list; γ = chance) | "
             "PSNR forged |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n_lists']} | {r['n_observed']} | {r['success_at_alpha_0.01']:.3f} | "
                     f"{r['success_at_alpha_0.0001']:.3f} | {r['success_at_alpha_1e-06']:.3f} | "
                     f"{r['estimate_overlap_best_list']:.3f} | {r['psnr_forged_db'] or float('nan'):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="images per population (watermarked and clean)")
    p.add_argument("--delta", type=float, default=2.0)
    p.add_argument("--modes", default="soft,hard")
    p.add_argument("--attacks", default=None, help="restrict to these attacks (comma list; default: all)")
    p.add_argument("--full-attacks", default="jpeg,noise,blur,crop,rotate,ar_resample",
                   help="attacks measured at every strength of their grid (the rest at their summary point)")
    p.add_argument("--search", action="store_true", help="detect with --search")
    p.add_argument("--seed", type=int, default=0, help="prompts, sampling, list indices and attacks (0: the README's "
                   "populations; another seed gives fresh images, e.g. to report on images no choice was made on)")
    p.add_argument("--spoof-observed", default="10,100,1000")
    p.add_argument("--spoof-lists", default="1,64,8", help="pool sizes K, generated in this order (K=8 reuses the "
                   "soft evaluation's watermarked set, so it goes last)")
    p.add_argument("--spoof-targets", type=int, default=200)
    p.add_argument("--skip-spoof", action="store_true")
    p.add_argument("--summarize-only", action="store_true",
                   help="no new work: summarize the attacks already complete in --workdir/<mode> (an interrupted run)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/guard-robustness"))
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "robustness.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from guard import __version__
    from guard.eval.attacks import ATTACKS, param_label, parse_attack_list
    from guard.eval.harness import EvalConfig, run_eval
    from guard.eval.spoof import SpoofConfig, run_spoof
    from guard.models import load

    t0 = time.time()
    gen = load("reference")
    tok = gen.tokenizer
    work = args.workdir
    chosen = [a.strip() for a in args.attacks.split(",")] if args.attacks else list(ATTACKS)
    full = {a.strip() for a in args.full_attacks.split(",") if a.strip()} & set(chosen)
    attacks = parse_attack_list(",".join(a for a in chosen if a not in full and a != "none") or "none", full=False)
    if full:
        attacks += [x for x in parse_attack_list(",".join(sorted(full)), full=True) if x not in attacks]
    key8 = bench_key(tok, 8, work / "keys" / "K8.key")
    result: dict = {
        "command": "nice -n 10 python bench/measure_robustness.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "guard_version": __version__, "generator_id": gen.id, "tokenizer_id": tok.id, "n_per_population": args.n,
        "gamma": 0.25, "n_lists": 8, "delta": args.delta, "search": args.search, "seed": args.seed, "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": args.threads,
        "thresholds": "TPR at alpha: corrected p <= alpha (nothing fitted). Empirical TPR@FPR: threshold from the "
                      "clean images under the same attack; *_split: fitted on half of them, FPR reported on the other "
                      "half.",
        "regeneration_note": "vq2 / ar_resample / autoencoder are offline stand-ins for diffusion/VAE regeneration",
        "modes": {},
    }
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]          # "" = spoofing only
    for mode in modes:
        out = work / mode
        if mode == "hard":           # the soft evaluation's clean images (same prompts, seeds, model)
            share_population(work / "soft" / "populations" / "clean", out / "populations" / "clean")
        if args.summarize_only:
            from guard.eval.harness import summarize
            from guard.eval.plots import write_plots

            done, missing = [], []
            for a, prm in attacks:
                res = out / f"{a}__{param_label(prm)}" / "results.jsonl"
                n_rows = sum(1 for line in open(res) if line.strip()) if res.exists() else 0
                (done if n_rows == 2 * args.n else missing).append((a, prm))
            summary = summarize(out, done)
            write_plots(out, summary)
            summary["timings_s"], summary["seconds"] = {}, None
            summary["partial"] = {"not_measured": [f"{a} {param_label(prm)}" for a, prm in missing],
                                  "why": "the run was stopped at the session deadline (2 shared CPU cores)"}
            result["modes"][mode] = {k: summary[k] for k in ("table", "attacks", "partial")}
            result["modes"][mode]["markdown"] = markdown_table(summary["table"])
            print(f"\n{mode}:\n" + result["modes"][mode]["markdown"], flush=True)
            for src, name in (("roc.png", "roc"), ("tpr_vs_strength.png", "strength"), ("summary_table.png", "table")):
                if (out / src).exists():
                    shutil.copy(out / src, args.out.parent / f"robustness_{mode}_{name}.png")
            args.out.write_text(json.dumps(result, indent=2) + "\n")
            continue
        log(f"eval {mode}: n={args.n}, {len(attacks)} attack settings -> {out}")
        t1 = time.time()
        summary = run_eval(EvalConfig(out=out, n=args.n, mode=mode, delta=args.delta, key=key8, attacks=attacks,
                                      search=args.search, batch_size=args.batch_size, seed=args.seed),
                           progress=lambda stage, k: None)
        summary["seconds"] = round(time.time() - t1, 1)
        result["modes"][mode] = {k: summary[k] for k in ("table", "attacks", "timings_s", "seconds", "posthoc_quality")
                                 if k in summary}
        result["modes"][mode]["markdown"] = markdown_table(summary["table"])
        print(f"\n{mode}:\n" + result["modes"][mode]["markdown"], flush=True)
        for src, name in (("roc.png", "roc"), ("tpr_vs_strength.png", "strength"), ("summary_table.png", "table")):
            if (out / src).exists():
                shutil.copy(out / src, args.out.parent / f"robustness_{mode}_{name}.png")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        log(f"eval {mode} done in {summary['seconds']:.0f}s")

    if not args.skip_spoof:
        lists = [int(k) for k in args.spoof_lists.split(",")]
        observed = [int(n) for n in args.spoof_observed.split(",")]
        sp = work / "spoof"
        keys = {k: bench_key(tok, k, work / "keys" / f"K{k}.key") for k in lists}
        n_clean = max(args.n, args.spoof_targets + 1)
        if n_clean == args.n:               # the soft evaluation's clean set (and K=8 set) are the same images
            share_population(work / "soft" / "populations" / "clean", sp / "populations" / "clean")
            if 8 in lists and max(observed) <= args.n:
                share_population(work / "soft" / "populations" / "watermarked", sp / "populations" / "watermarked_K8")
        log(f"spoof: K {lists}, N {observed}, {args.spoof_targets} targets")
        t1 = time.time()
        res = run_spoof(SpoofConfig(out=sp, n_observed=observed, n_lists=lists, n_targets=args.spoof_targets,
                                    n_clean=n_clean, delta=args.delta, keys=keys, batch_size=args.batch_size))
        res["seconds"] = round(time.time() - t1, 1)
        res["markdown"] = markdown_spoof(res["rows"])
        print("\nspoof:\n" + res["markdown"], flush=True)
        result["spoof"] = res
    result["seconds_total"] = round(time.time() - t0, 1)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out} in {result['seconds_total']:.0f}s")


if __name__ == "__main__":
    main()
