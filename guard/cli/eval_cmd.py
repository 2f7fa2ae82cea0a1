"""`guard eval` (robustness under an attack grid) and `guard eval spoof` (forgery without the key).

    guard eval --out eval-soft -n 1000 --delta 2                       # summary operating points
    guard eval --out eval-hard -n 1000 --hard --grid full              # every attack strength
    guard eval --out eval-ph --mode posthoc -n 500 --attacks jpeg,crop:0.9|0.75
    guard eval --out eval-fp --detector fingerprint --mode posthoc -n 1000 --attacks jpeg --grid full  # key-free
    guard eval spoof --out spoof --observed 10,100,1000 --lists 1,8,64

Results go to --out (per-attack results.jsonl, report.csv, summary.json, roc.png, tpr_vs_strength.png,
summary_table.png; spoof.json and spoof.csv for spoof); the summary table is printed on stdout, logs
and progress on stderr. Running the same command again resumes an interrupted run. Exit codes: 0 done;
2 usage, config, model or key error; 4 internal error; 130 interrupted (rerun to resume).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError, ExitCode
from ._common import Test, app, choices, exit_on_error, info, is_tty_stderr

eval_app = typer.Typer(help="Robustness evaluation: attack grid, regeneration attacks, spoofing.")
app.add_typer(eval_app, name="eval")


Mode = choices("Mode", "soft hard posthoc folders")
Grid = choices("Grid", "summary full")
DetectorKind = choices("DetectorKind", "watermark fingerprint")


def _floats(text: str, what: str) -> list[float]:
    try:
        out = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not out:
        raise ConfigError(f"{what} needs at least one number, got {text!r}")
    return out


def _ints(text: str, what: str) -> list[int]:
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not out:
        raise ConfigError(f"{what} needs at least one integer, got {text!r}")
    return out


@contextlib.contextmanager
def _progress() -> Iterator:
    """(stage, n) -> advance a per-stage rich progress bar on a TTY; nothing otherwise."""
    if not is_tty_stderr():
        yield lambda stage, n: None
        return
    from rich.progress import MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ._common import stderr

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=stderr, transient=True) as prog:
        tasks: dict[str, int] = {}

        def advance(stage: str, n: int) -> None:
            if stage not in tasks:
                tasks[stage] = prog.add_task(stage, total=None)
            prog.advance(tasks[stage], n)

        yield advance


def _print_table(summary: dict) -> None:
    cols = [("tpr_at_fpr_0.01", "TPR@1%FPR"), ("tpr_at_fpr_0.001", "TPR@0.1%FPR"), ("tpr_at_alpha_0.01", "a=1e-2"),
            ("tpr_at_alpha_0.0001", "a=1e-4"), ("tpr_at_alpha_1e-06", "a=1e-6"), ("auc", "AUC")]
    typer.echo(f"{'attack':<34}" + "".join(f"{c:>12}" for _, c in cols) + "  target")
    for r in summary["table"]:
        vals = "".join(f"{r[k]:>12.3f}" if isinstance(r.get(k), float) else f"{'-':>12}" for k, _ in cols)
        t = r.get("target")
        note = "" if not t else f"  {t['metric'].replace('tpr_at_fpr_', 'TPR@FPR ')} >= {t['value']:g}: " \
                                f"{'met' if t['met'] else 'NOT met'}"
        typer.echo(f"{r['row']:<34}{vals}{note}")


@eval_app.callback(invoke_without_command=True)
def evaluate(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Output folder (reused to resume).")] = Path("guard-eval"),
    n: Annotated[int, typer.Option("-n", "--n", min=2, help="Images per population (watermarked and clean).")] = 200,
    mode: Annotated[Mode, typer.Option("--mode", help="soft/hard: generate; posthoc: mark rendered scenes; folders: "
                                                      "read --wm-dir and --clean-dir.")] = Mode.soft,
    delta: Annotated[float, typer.Option("--delta", help="Soft bias (mode soft).")] = 2.0,
    hard: Annotated[bool, typer.Option("--hard", help="Shorthand for --mode hard.")] = False,
    attacks: Annotated[str | None, typer.Option(
        "--attacks", help="Comma list: 'jpeg' (its summary strength, or whole grid with --grid full), "
                          "'jpeg:50|25' (given strengths). Default: every attack.")] = None,
    grid: Annotated[Grid, typer.Option("--grid", help="summary: each attack at its operating point; full: every "
                                                      "strength.")] = Grid.summary,
    key: Annotated[Path | None, typer.Option("--key", help="Key file (default: a new key in --out/eval.key).")] = None,
    gamma: Annotated[float, typer.Option("--gamma", help="Green fraction of a created key.")] = 0.25,
    lists: Annotated[int, typer.Option("--lists", min=1, help="Pool size K of a created key.")] = 8,
    alphas: Annotated[str, typer.Option("--alphas", help="Levels for TPR at alpha.")] = "1e-2,1e-3,1e-4,1e-6",
    test: Annotated[Test, typer.Option("--test", help="distinct (exact) or tokens (approximate).")] = Test.distinct,
    search: Annotated[bool, typer.Option("--search", help="Detect with flips, turns, small rotations and crop "
                                                          "offsets (corrected).")] = False,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of prompts, sampling and attacks.")] = 0,
    cfg: Annotated[float, typer.Option("--cfg", help="Guidance scale for generation and AR resampling.")] = 3.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per chunk.")] = 64,
    min_psnr: Annotated[float | None, typer.Option(
        "--min-psnr", help="Post-hoc marking: an absolute PSNR floor (dB); default 30 dB or 3 dB below each "
                           "scene's round trip through the tokenizer.")] = None,
    wm_dir: Annotated[Path | None, typer.Option("--wm-dir", help="Watermarked images (mode folders).")] = None,
    clean_dir: Annotated[Path | None, typer.Option("--clean-dir", help="Clean images (mode folders).")] = None,
    model: Annotated[str, typer.Option("--model", help="Model spec ('reference').")] = "reference",
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the PNG figures.")] = False,
    clip: Annotated[str | None, typer.Option("--clip", help="CLIP judge 'clip:ARCH@PATH' (local open_clip weights): "
                                                            "report CLIPScore of watermarked vs clean images "
                                                            "(modes soft/hard).")] = None,
    detector: Annotated[DetectorKind, typer.Option(
        "--detector", help="watermark: the key's test; fingerprint: key-free detection (positives = the model's "
                           "images, negatives = real images never decoded; see guard.eval.harness).")] =
    DetectorKind.watermark,
    fingerprint: Annotated[Path | None, typer.Option(
        "--fingerprint", help="Fingerprint calibration file (--detector fingerprint; default: calibrate on n "
                              "rendered scenes of the model kind).")] = None,
) -> None:
    """Generate (or read) watermarked and clean images, attack them, detect, and report TPR/FPR/AUC."""
    if ctx.invoked_subcommand is not None:
        return
    from ..eval.attacks import parse_attack_list
    from ..eval.harness import EvalConfig, run_eval

    with exit_on_error():
        if hard and mode not in (Mode.soft, Mode.hard):
            raise ConfigError(f"--hard conflicts with --mode {mode.value}")
        m = Mode.hard if hard else mode
        conf = EvalConfig(out=out, n=n, mode=m.value, delta=delta, key=key, gamma=gamma, n_lists=lists,
                          attacks=parse_attack_list(attacks, full=grid is Grid.full), alphas=_floats(alphas, "--alphas"),
                          test=test.value, search=search, seed=seed, cfg=cfg, batch_size=batch_size, min_psnr=min_psnr,
                          wm_dir=wm_dir, clean_dir=clean_dir, model=model, clip=clip,
                          detector=detector.value, fingerprint=fingerprint)
        info(f"guard eval: {len(conf.attacks)} attack settings, n={n} per population, mode {m.value}, detector "
             f"{detector.value}, out {out}")
        try:
            with _progress() as adv:
                summary = run_eval(conf, progress=adv, plots=not no_plots)
        except KeyboardInterrupt:
            info("interrupted: rows written so far are kept; run the same command again to resume")
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        _print_table(summary)
        if summary.get("clipscore"):
            q = summary["clipscore"]
            info(f"CLIPScore ({q['judge']}, n={q['n']}): watermarked {q['watermarked_mean']:.2f}, clean "
                 f"{q['clean_mean']:.2f}, difference {q['difference_mean']:+.2f}"
                 + (f" ± {q['difference_se']:.2f} (s.e.)" if q["difference_se"] is not None else ""))
        info(f"wrote {out / 'summary.json'}, {out / 'report.csv'}" + ("" if no_plots else ", roc.png, "
                                                                        "tpr_vs_strength.png, summary_table.png"))


@eval_app.command("spoof")
def spoof(
    out: Annotated[Path, typer.Option("--out", help="Output folder (reused to resume).")] = Path("guard-spoof"),
    observed: Annotated[str, typer.Option("--observed", help="Watermarked images the attacker sees (comma list).")]
    = "10,100,1000",
    lists: Annotated[str, typer.Option("--lists", help="Pool sizes K (comma list; one key each).")] = "1,8,64",
    targets: Annotated[int, typer.Option("--targets", min=1, help="Clean images forged onto.")] = 200,
    clean: Annotated[int, typer.Option("--clean", min=2, help="Clean generations in all (targets + the attacker's "
                                                               "reference).")] = 1000,
    delta: Annotated[float, typer.Option("--delta", help="Soft bias of the observed images.")] = 2.0,
    hard: Annotated[bool, typer.Option("--hard", help="Observed images use a hard green list.")] = False,
    gamma: Annotated[float, typer.Option("--gamma", help="Green fraction of the keys.")] = 0.25,
    alphas: Annotated[str, typer.Option("--alphas", help="Levels for the success rate.")] = "1e-2,1e-3,1e-4,1e-6",
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    model: Annotated[str, typer.Option("--model", help="Model spec ('reference').")] = "reference",
) -> None:
    """Estimate green codes from N watermarked images without the key, forge them onto clean images, detect."""
    from ..eval.spoof import SpoofConfig, run_spoof

    with exit_on_error():
        conf = SpoofConfig(out=out, n_observed=_ints(observed, "--observed"), n_lists=_ints(lists, "--lists"),
                           n_targets=targets, n_clean=clean, delta=delta, hard=hard, gamma=gamma,
                           alphas=_floats(alphas, "--alphas"), seed=seed, batch_size=batch_size, model=model)
        try:
            with _progress() as adv:
                res = run_spoof(conf, progress=adv)
        except KeyboardInterrupt:
            info("interrupted: generated images are kept; run the same command again to resume")
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        a_cols = [f"success_at_alpha_{a:g}" for a in conf.alphas]
        typer.echo(f"{'K':>4} {'N':>6} " + "".join(f"{'success a=' + c.split('_')[-1]:>20}" for c in a_cols) +
                   f"{'overlap':>10}{'PSNR':>8}")
        for r in res["rows"]:
            typer.echo(f"{r['n_lists']:>4} {r['n_observed']:>6} " + "".join(f"{r[c]:>20.3f}" for c in a_cols) +
                       f"{r['estimate_overlap_best_list']:>10.3f}{(r['psnr_forged_db'] or float('nan')):>8.1f}")
        info(f"wrote {out / 'spoof.json'}, {out / 'spoof.csv'}")
