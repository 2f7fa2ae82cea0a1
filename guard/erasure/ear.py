"""EAR fine-tuning: erase a concept by regressing hidden states, with WGA and TLM.

For a concept prompt c, its replacement prompt r and a rollout x (image codes sampled from the original
model for c), the student θ is trained so that, at every image position t,

    h_θ(c, x<t)  ≈  h*(r, x<t) − η · (h*(c, x<t) − h*(r, x<t))

where h is the last hidden state (the residual stream before the final norm) and * is the frozen
original (the teacher). Only the attention projections of the first layers are trained. Rollouts are
teacher-forced: one forward per branch gives every position's hidden state at once (EAR's own loop
decodes token by token).

Windowed Gradient Accumulation (WGA): image positions are cut into windows of W; the loss of a window is
accumulated into one backward and one optimiser step. Thresholded Loss Masking (TLM): a rollout's window
whose loss is <= μ is masked out; when every rollout of the batch is masked the step is skipped.
`window=1` is EAR without WGA (a step per position) and `mu=None` EAR without TLM.

Preservation (guard's addition, on by default; `preserve=0` is EAR as published): prompts that name
neither concept nor replacement, with rollouts of the original model, are trained in the same windows to
keep their hidden states, h_θ(p, x<t) ≈ h*(p, x<t), weighted by `preserve`. On the reference model,
plain EAR on "red" also erased every other colour (non-target colour adherence 0.80 -> 0.10, shape
0.70 -> 0.45); with preserve=4 the red rate still fell 0.97 -> 0.02 and non-target adherence stayed at
0.82 / 0.68 (256 images per set, bench/results/erasure*.json).

    >>> from guard.models import load
    >>> from guard.erasure import EarConfig, erase
    >>> result = erase(load("reference"), "circle", "square", EarConfig(), out="erase-circle.safetensors")
    >>> result.card["steps"], result.delta_path
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..models import ConceptJudge, judge_for, prompts_for
from .delta import changed_tensors, save_delta
from .ear_model import EarModel, ear_model_for
from .pairs import PromptPair, check_pair, filter_pairs, training_pairs

__all__ = ["EarConfig", "EarModel", "EarResult", "ear_model_for", "erase", "train_ear"]


# ------------------------------------------------------------------------------------------ config and result
@dataclass(frozen=True)
class EarConfig:
    """EAR settings.

    Args:
        window: W, image positions per optimiser step (WGA); 1 = a step per position (no WGA).
        mu: TLM threshold on a rollout's window loss (relative MSE, see `window_losses`); None = no TLM.
        eta: negative guidance η of the target h*(r) − η (h*(c) − h*(r)).
        layers: indices of the layers whose attention projections are trained.
        lr: Adam learning rate.
        epochs: passes over the kept pairs.
        batch_size: rollouts per optimiser step.
        candidates: candidate prompt pairs before the visual filter.
        max_pairs: train on at most this many kept pairs (the first ones).
        min_pairs: fail when the filter keeps fewer pairs than this.
        cfg: guidance scale of the filter's rollouts.
        seed: seeds prompts, rollouts, shuffling.
        preserve: weight of the preservation loss on non-target prompts (0 = EAR as published).
        preserve_prompts: how many non-target prompts (with rollouts) the preservation loss draws from.
    """

    window: int = 16
    mu: float | None = 0.05
    eta: float = 1.0
    layers: tuple[int, ...] = (0, 1)
    lr: float = 1e-4
    epochs: int = 4
    batch_size: int = 8
    candidates: int = 64
    max_pairs: int = 32
    min_pairs: int = 4
    cfg: float = 3.0
    seed: int = 0
    preserve: float = 4.0
    preserve_prompts: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or self.window < 1:
            raise ConfigError(f"window must be an int >= 1 (image positions per step), got {self.window!r}")
        if self.mu is not None and (not math.isfinite(self.mu) or self.mu < 0):
            raise ConfigError(f"mu must be a finite number >= 0 or None (no TLM), got {self.mu!r}")
        if not math.isfinite(self.eta) or self.eta < 0:
            raise ConfigError(f"eta must be a finite number >= 0, got {self.eta!r}")
        if not self.layers or any((not isinstance(i, int)) or i < 0 for i in self.layers):
            raise ConfigError(f"layers must be a non-empty list of layer indices >= 0, got {self.layers!r}")
        if not (math.isfinite(self.preserve) and self.preserve >= 0):
            raise ConfigError(f"preserve must be a finite number >= 0, got {self.preserve!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        for name in ("epochs", "batch_size", "candidates", "max_pairs", "min_pairs", "preserve_prompts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")


@dataclass
class EarResult:
    """The trained network, the tensors that changed, the card, the training log and the pairs trained on."""

    module: nn.Module
    delta: dict[str, torch.Tensor]
    card: dict
    log: list[dict] = field(default_factory=list)
    delta_path: Path | None = None
    pairs: list[PromptPair] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ training
def window_losses(h: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-rollout loss of one window: mean squared error over positions and features, divided by `scale`.

    h, target: (B, w, d); scale: (B,) the teacher's mean squared hidden-state norm per feature on that
    rollout, so μ is a relative error that means the same for any model width or hidden-state scale.
    """
    return (h - target).pow(2).mean(dim=(1, 2)) / scale


def train_ear(model: EarModel, pairs: Sequence[PromptPair], config: EarConfig,
              progress: Callable[[dict], None] | None = None,
              preserve: Sequence[tuple[str, torch.Tensor]] = ()) -> tuple[nn.Module, list[dict]]:
    """Fine-tune a copy of `model.module` on kept pairs (each with rollout `codes`). Returns (student, log).

    `preserve`: (prompt, rollout codes) of non-target prompts whose hidden states are kept, weighted by
    `config.preserve`; the term applies only when both are given (`erase` draws the rollouts with
    `preservation_rollouts`; a bare call without them trains EAR as published).
    """
    if any(p.codes is None for p in pairs):
        raise ConfigError("every training pair needs its rollout codes (use filter_pairs)")
    if not pairs:
        raise ConfigError("no training pairs")
    if max(config.layers) >= model.n_layers:
        raise ConfigError(f"layers {list(config.layers)} out of range: the model has {model.n_layers} layers")
    teacher = model.module.eval()
    student = copy.deepcopy(teacher).eval()  # no dropout: the gradient still flows, the teacher matches
    names = set(model.attention_parameter_names(config.layers))
    params = []
    for name, p in student.named_parameters():
        p.requires_grad_(name in names)
        if name in names:
            params.append(p)
    missing = names - {n for n, _ in student.named_parameters()}
    if missing:
        raise ModelError(f"attention parameters not found in the model: {sorted(missing)[:4]}")
    opt = torch.optim.Adam(params, lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    text_c = model.encode_prompts([p.concept_prompt for p in pairs])
    text_r = model.encode_prompts([p.replacement_prompt for p in pairs])
    codes = torch.stack([p.codes for p in pairs])
    n_pos = codes.shape[1]
    # Teacher targets, one teacher-forced forward per branch.
    with torch.no_grad():
        hc = torch.cat([model.image_hidden(teacher, text_c[i:i + 32], codes[i:i + 32]) for i in range(0, len(pairs), 32)])
        hr = torch.cat([model.image_hidden(teacher, text_r[i:i + 32], codes[i:i + 32]) for i in range(0, len(pairs), 32)])
        target = hr - config.eta * (hc - hr)
        scale = hc.pow(2).mean(dim=(1, 2)).clamp_min(1e-12)
    use_preserve = config.preserve > 0 and len(preserve) > 0   # `erase` passes rollouts; bare calls may not
    if use_preserve:
        text_p = model.encode_prompts([p for p, _ in preserve])
        codes_p = torch.stack([c.flatten() for _, c in preserve])
        if codes_p.shape[1] != n_pos:
            raise ConfigError(f"preservation rollouts have {codes_p.shape[1]} codes, the pairs' rollouts {n_pos}")
        with torch.no_grad():
            hp = torch.cat([model.image_hidden(teacher, text_p[i:i + 32], codes_p[i:i + 32])
                            for i in range(0, len(preserve), 32)])
            scale_p = hp.pow(2).mean(dim=(1, 2)).clamp_min(1e-12)
    log: list[dict] = []
    step = 0
    for epoch in range(config.epochs):
        order = torch.randperm(len(pairs), generator=gen)
        for b0 in range(0, len(pairs), config.batch_size):
            idx = order[b0:b0 + config.batch_size]
            for start in range(0, n_pos, config.window):
                stop = min(start + config.window, n_pos)
                h = model.image_hidden(student, text_c[idx], codes[idx, :stop])[:, start:stop]
                losses = window_losses(h, target[idx, start:stop], scale[idx])
                keep = losses > config.mu if config.mu is not None else torch.ones_like(losses, dtype=torch.bool)
                entry = {"epoch": epoch, "window": start // config.window, "loss": float(losses.detach().mean()),
                         "kept": int(keep.sum()), "rollouts": len(idx)}
                if keep.any():
                    opt.zero_grad(set_to_none=True)
                    loss = losses[keep].sum() / keep.sum()
                    if use_preserve:
                        j = torch.randint(0, len(preserve), (len(idx),), generator=gen)
                        hq = model.image_hidden(student, text_p[j], codes_p[j, :stop])[:, start:stop]
                        keep_loss = window_losses(hq, hp[j, start:stop], scale_p[j]).mean()
                        entry["preserve_loss"] = float(keep_loss.detach())
                        loss = loss + config.preserve * keep_loss
                    loss.backward()
                    opt.step()
                    step += 1
                entry["step"] = step
                log.append(entry)
            if progress is not None:
                progress({"epoch": epoch, "batch": b0 // config.batch_size, "steps": step,
                          "loss": sum(e["loss"] for e in log[-math.ceil(n_pos / config.window):]) /
                          math.ceil(n_pos / config.window)})
    for p in student.parameters():
        p.requires_grad_(False)
    return student.eval(), log


def erase(generator, concept: str, replacement: str, config: EarConfig | None = None, *,
          out: str | Path | None = None, judge: ConceptJudge | None = None,
          progress: Callable[[dict], None] | None = None) -> EarResult:
    """Erase `concept` (replaced by `replacement`) from `generator` with EAR; optionally save the delta.

    Steps: candidate pairs from templates -> visual filter (rollouts from the original model) -> EAR
    training -> delta of the changed tensors (+ card). The prompts and the judge (default) are the
    generator's model kind's (`guard.models.prompts_for`, `judge_for`). Raises `ConfigError` for an unknown or
    mismatched concept/replacement, or when the filter keeps fewer than `config.min_pairs` pairs; `ModelError`
    when the kind offers no EAR model, prompts or judge.
    """
    config = config or EarConfig()
    c, r = check_pair(concept, replacement, generator)
    t0 = time.time()
    model = ear_model_for(generator)
    if judge is None:
        judge = judge_for(generator)
    candidates = training_pairs(prompts_for(generator), c, r, config.candidates, seed=config.seed)
    kept, filter_stats = filter_pairs(candidates, generator, judge, c, seed=config.seed, cfg=config.cfg)
    if progress is not None:
        progress({"filter": filter_stats})
    if len(kept) < config.min_pairs:
        raise ConfigError(f"the visual filter kept {len(kept)} of {len(candidates)} pairs for {c.name!r} -> "
                          f"{r.name!r} (need >= {config.min_pairs}): the model rarely draws the concept or draws "
                          f"it for the replacement too; raise candidates or lower min_pairs")
    kept = kept[:config.max_pairs]
    preserve = preservation_rollouts(generator, c, r, config) if config.preserve > 0 else []
    student, log = train_ear(model, kept, config, progress, preserve=preserve)
    delta = changed_tensors(model.module, student)
    windows = len(log)
    steps = log[-1]["step"] if log else 0
    card = {
        "method": "EAR (hidden-state regression, WGA + TLM), teacher-forced rollouts",
        "concept": c.name, "replacement": r.name, "concept_kind": c.kind,
        "train_words": list(c.train_words), "heldout_words": list(c.heldout_words),
        "base_model": getattr(generator, "id", type(generator).__name__),
        "window": config.window, "mu": config.mu, "eta": config.eta, "layers": list(config.layers),
        "lr": config.lr, "epochs": config.epochs, "batch_size": config.batch_size, "seed": config.seed,
        "wga": config.window > 1, "tlm": config.mu is not None,
        "pairs": {**filter_stats, "trained_on": len(kept)}, "steps": steps, "windows": windows,
        "preserve": config.preserve, "preserve_prompts": len(preserve),
        "windows_masked_rollouts": sum(e["rollouts"] - e["kept"] for e in log),
        "rollout_windows": sum(e["rollouts"] for e in log),
        "loss_first_epoch": _mean([e["loss"] for e in log if e["epoch"] == 0]),
        "loss_last_epoch": _mean([e["loss"] for e in log if e["epoch"] == config.epochs - 1]),
        "changed_tensors": sorted(delta), "changed_parameters": int(sum(t.numel() for t in delta.values())),
        "time_s": round(time.time() - t0, 2),
        "config": asdict(config),
    }
    result = EarResult(student, delta, card, log, pairs=list(kept))
    if out is not None:
        result.delta_path = save_delta(out, delta, card)
    return result


def preservation_rollouts(generator, concept, replacement, config: EarConfig) -> list[tuple[str, torch.Tensor]]:
    """`config.preserve_prompts` prompts naming neither concept nor replacement, with the original model's rollouts.

    Drawn with a seed of their own (not the evaluation's prompts/seeds, `guard.erasure.evaluate`).
    """
    prompts = prompts_for(generator).non_target_prompts([concept, replacement], config.preserve_prompts,
                                                        seed=config.seed + 104_729)
    codes = generator.generate(prompts, n=1, seed=config.seed + 104_729, cfg=config.cfg)
    return [(p, codes[i].flatten().clone()) for i, p in enumerate(prompts)]


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 6) if xs else None
