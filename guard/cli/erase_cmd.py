"""`guard erase train|eval`: erase a concept with EAR, and measure what was forgotten and what was kept.

    guard erase train --concept circle --replacement square --out erase-circle.safetensors
    guard erase eval --concept circle --replacement square --erased erase-circle.safetensors --steer 4 --out eval-circle/

`train` writes the delta (changed tensors only) and its card (.json beside it) and prints the delta path.
`eval` writes report.json, report.csv and grid.png into --out and prints the report table. Bad concepts,
replacements, deltas or settings exit with code 2.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from ._common import app, exit_on_error, info

erase_app = typer.Typer(help="Erase concepts: fine-tune with EAR (train) and evaluate erasure (eval).",
                        no_args_is_help=True)
app.add_typer(erase_app, name="erase")

ConceptOpt = Annotated[str, typer.Option("--concept", help="Concept to erase (reference: a shape or colour).")]
ReplacementOpt = Annotated[str, typer.Option("--replacement", help="What the concept becomes (same kind).")]
ModelOpt = Annotated[str, typer.Option("--model", help="Model spec: 'reference' (default) or an adapter spec.")]
JudgeOpt = Annotated[str | None, typer.Option("--judge", help="Concept judge 'clip:ARCH@PATH' (local open_clip "
                                                              "weights; zero-shot concept vs replacement) instead "
                                                              "of the model kind's own.")]


def _judge(spec: str | None, replacement):
    """The --judge CLIP judge (the concept competes with the replacement), or None for the kind's own."""
    if spec is None:
        return None
    from ..models.clip_judge import load_clip_judge

    return load_clip_judge(spec, contrasts=[replacement])


def _layers(text: str) -> tuple[int, ...]:
    try:
        layers = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--layers must be comma-separated layer indices like 0,1; got {text!r}") from None
    if not layers:
        raise ConfigError("--layers must name at least one layer")
    return layers


@erase_app.command("train")
def train(
    concept: ConceptOpt,
    replacement: ReplacementOpt,
    out: Annotated[Path, typer.Option("--out", help="Delta file to write (.safetensors; the card goes beside it "
                                                    "as .json).")],
    model: ModelOpt = "reference",
    window: Annotated[int, typer.Option("--window", help="WGA window W: image positions per optimiser step "
                                                         "(1 disables WGA).")] = 16,
    mu: Annotated[float, typer.Option("--mu", help="TLM threshold on a window's relative loss (windows at or below "
                                                   "it are masked).")] = 0.05,
    no_tlm: Annotated[bool, typer.Option("--no-tlm", help="Disable Thresholded Loss Masking (ablation).")] = False,
    eta: Annotated[float, typer.Option("--eta", help="Negative guidance of the hidden-state target.")] = 1.0,
    layers: Annotated[str, typer.Option("--layers", help="Comma-separated layers whose attention is trained.")] = "0,1",
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-4,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the kept pairs.")] = 4,
    candidates: Annotated[int, typer.Option("--candidates", min=1, help="Candidate prompt pairs before the "
                                                                        "visual filter.")] = 64,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of prompts, rollouts and shuffling.")] = 0,
    preserve: Annotated[float, typer.Option("--preserve", min=0.0, help="Weight of the loss that keeps non-target "
                                                                        "prompts' hidden states (0 = EAR as "
                                                                        "published).")] = 4.0,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing delta file.")] = False,
    judge: JudgeOpt = None,
) -> None:
    """Fine-tune with EAR (hidden-state regression, WGA + TLM) and write the delta of changed tensors + card."""
    import torch

    from ..erasure import EarConfig, check_pair, erase
    from ..models import load

    with exit_on_error():
        _, r = check_pair(concept, replacement, model)
        concept_judge = _judge(judge, r)
        if threads:
            torch.set_num_threads(threads)
        if out.exists() and not force:
            raise ConfigError(f"{out} already exists; pass --force to overwrite it")
        config = EarConfig(window=window, mu=None if no_tlm else mu, eta=eta, layers=_layers(layers), lr=lr,
                           epochs=epochs, candidates=candidates, seed=seed, preserve=preserve)
        gen = load(model)
        info(f"erasing {concept!r} -> {replacement!r} from {gen.id} (W={window}, mu={config.mu}, eta={eta}, "
             f"layers={list(config.layers)}, preserve={preserve:g})")
        t0 = time.time()

        def progress(ev: dict) -> None:
            if "filter" in ev:
                info(f"pairs: {ev['filter']}")
            else:
                info(f"epoch {ev['epoch']} batch {ev['batch']}: {ev['steps']} steps, loss {ev['loss']:.4f} "
                     f"({time.time() - t0:.0f}s)")

        result = erase(gen, concept, replacement, config, out=out, progress=progress, judge=concept_judge)
        card = result.card
        info(f"{card['steps']} optimiser steps over {card['windows']} windows; "
             f"{card['windows_masked_rollouts']} of {card['rollout_windows']} rollout windows masked by TLM; "
             f"{card['changed_parameters']} parameters in {len(card['changed_tensors'])} tensors changed; "
             f"{card['time_s']}s")
        typer.echo(str(result.delta_path))


@erase_app.command("eval")
def evaluate(
    concept: ConceptOpt,
    replacement: ReplacementOpt,
    out: Annotated[Path, typer.Option("--out", help="Directory for report.json, report.csv and grid.png.")],
    erased: Annotated[list[Path] | None, typer.Option("--erased", help="Delta file of an erased model "
                                                                        "(repeatable).")] = None,
    steer: Annotated[list[float] | None, typer.Option("--steer", help="Also evaluate ConceptSteering with this eta "
                                                                      "(repeatable).")] = None,
    steer_prompt: Annotated[str | None, typer.Option("--steer-prompt", help="Concept prompt for steering "
                                                                            "(default 'a <concept>').")] = None,
    steer_anchor: Annotated[str | None, typer.Option(
        "--steer-anchor", help="Anchor prompt for steering, replacing the null prompt in the direction "
                               "(e.g. 'a <replacement>'; default: none).")] = None,
    n: Annotated[int, typer.Option("-n", "--n", min=3, help="Images per prompt set (target and non-target).")] = 256,
    model: ModelOpt = "reference",
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of prompts and sampling.")] = 0,
    cfg: Annotated[float, typer.Option("--cfg", help="Classifier-free guidance scale (>= 1).")] = 3.0,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads.")] = None,
    judge: JudgeOpt = None,
) -> None:
    """Concept rate (incl. held-out synonyms and paraphrases), non-target adherence, token agreement, grid."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from ..erasure import ConceptSteering, check_pair, load_erased
    from ..erasure.steer import STEER_PROMPT
    from ..erasure.evaluate import Variant, evaluate_erasure
    from ..models import load

    with exit_on_error():
        if threads:
            torch.set_num_threads(threads)
        c, r = check_pair(concept, replacement, model)
        if not erased and not steer:
            raise ConfigError("nothing to evaluate: pass --erased DELTA and/or --steer ETA")
        concept_judge = _judge(judge, r)
        base = load(model)
        variants = [Variant(f"ear:{p.stem}", load_erased(base, p)) for p in (erased or [])]
        prompt = steer_prompt or STEER_PROMPT.format(concept=c.name)
        for eta in steer or []:
            anchors = {prompt: steer_anchor} if steer_anchor else None
            variants.append(Variant(f"steer:{eta:g}" + ("-anchored" if anchors else ""), base,
                                    lambda g, eta=eta: [ConceptSteering(g, {prompt: eta}, anchors=anchors)],
                                    f"ConceptSteering({prompt!r}: {eta:g}"
                                    + (f", anchor {steer_anchor!r})" if anchors else ")")))
        report = evaluate_erasure(base, variants, concept, replacement, n_target=n, n_non_target=n, seed=seed,
                                  cfg=cfg, out_dir=out, cache_dir=out / "cache", log=info, judge=concept_judge)
        table = Table(title=f"erase {report['concept']} -> {report['replacement']} (n={n} per set)")
        for col in ("variant", "prompt set", "concept rate", "95% CI", "non-target adherence s/c", "token agreement",
                    "Holm p"):
            table.add_column(col)
        for row in report["rows"]:
            ci = "" if row["concept_rate"] is None else f"[{row['concept_ci_low']:.3f}, {row['concept_ci_high']:.3f}]"
            adh = "" if row["adherence_shape"] is None else f"{row['adherence_shape']:.3f}/{row['adherence_colour']:.3f}"
            table.add_row(row["variant"], row["prompt_set"],
                          "" if row["concept_rate"] is None else f"{row['concept_rate']:.3f}", ci, adh,
                          f"{row['token_agreement']:.3f}", "" if row["holm_p"] is None else f"{row['holm_p']:.2g}")
        Console(width=140).print(table)
        info(f"wrote {report['files']['json']}, {report['files']['csv']}, {report['files']['grid']}")
