"""`guard eval spoof`: can an attacker without the key forge the watermark onto clean images?

Threat model (watermark stealing, Jovanović et al. 2024, applied to image tokens): the attacker has
the open generator and its tokenizer, N watermarked images from the victim and as many clean images
as they like (their own generations), but no key. They

1. tokenize both sets and score every code by how much more often it occurs in the watermarked set
   (ratio of smoothed token frequencies);
2. take the top round(gamma * |codes seen|) codes as their estimate of "the" green list (gamma is a
   public parameter; with a pool of K lists the watermarked images mix K lists, so the estimate is a
   blend);
3. forge: post-hoc mark clean target images towards the estimate (encode, swap each code outside the
   estimate for its nearest estimated-green code by cosine in the tokenizer's embedding space,
   decode; a few rounds, keeping the round with the highest estimated-green share);
4. the victim detects the forgeries with the real key: the forge success rate at alpha is the share
   of forged images with corrected p <= alpha.

    >>> from guard.eval.spoof import SpoofConfig, run_spoof
    >>> res = run_spoof(SpoofConfig(out=Path("spoof"), n_observed=(10, 100, 1000), n_lists=(1, 8, 64)))

Writes `out/spoof.json` and `out/spoof.csv`: one row per (K, N) with the success rate at each alpha,
the FPR of the unforged targets, the estimate's overlap with the true lists and the forgeries' PSNR.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..errors import ConfigError
from ..imageio import from_uint8, quantize
from .harness import _log, eval_prompts, generate_population, padded_count
from .metrics import ALPHAS, psnr, tpr_at_alpha

__all__ = ["SpoofConfig", "run_spoof", "estimate_green", "forge"]


@dataclass
class SpoofConfig:
    """The spoofing experiment.

    Attributes:
        out: output directory (populations and keys are cached there; a rerun reuses them).
        n_observed: watermarked images the attacker sees (each N in the grid is a prefix of the same set).
        n_lists: pool sizes K; one key per K (`out/keys/K{K}.key`, or `keys[K]`).
        n_targets: clean images the attacker forges onto (disjoint from the reference images).
        n_clean: clean generations in all (targets first, the rest is the attacker's reference set).
        delta, hard: how the observed images were watermarked.
        gamma: green fraction of the keys (and the attacker's guess of it).
        alphas: levels for the success rate.
        keys: optional {K: key file} to use instead of creating keys.
        model, seed, cfg, batch_size: generation settings (as `EvalConfig`).
        forge_rounds: encode-swap-decode rounds of the forgery.
    """

    out: Path
    n_observed: Sequence[int] = (10, 100, 1000)
    n_lists: Sequence[int] = (1, 8, 64)
    n_targets: int = 200
    n_clean: int = 1000
    delta: float = 2.0
    hard: bool = False
    gamma: float = 0.25
    alphas: Sequence[float] = ALPHAS
    keys: dict | None = None
    model: str = "reference"
    seed: int = 0
    cfg: float = 3.0
    batch_size: int = 64
    forge_rounds: int = 3

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.n_observed = sorted({int(n) for n in self.n_observed})
        self.n_lists = list(dict.fromkeys(int(k) for k in self.n_lists))      # generation order as given
        if not self.n_observed or self.n_observed[0] < 1:
            raise ConfigError(f"n_observed must be ints >= 1, got {self.n_observed!r}")
        if not self.n_lists or self.n_lists[0] < 1:
            raise ConfigError(f"n_lists must be ints >= 1, got {self.n_lists!r}")
        if self.n_targets < 1 or self.n_clean <= self.n_targets:
            raise ConfigError(f"need 1 <= n_targets < n_clean (the rest is the attacker's clean reference), got "
                              f"n_targets={self.n_targets}, n_clean={self.n_clean}")
        if self.forge_rounds < 1:
            raise ConfigError(f"forge_rounds must be >= 1, got {self.forge_rounds}")


def estimate_green(wm_codes: torch.Tensor, clean_codes: torch.Tensor, vocab_size: int, gamma: float
                   ) -> torch.Tensor:
    """The attacker's green-list estimate: bool (V,), the top round(gamma * |seen|) codes by frequency ratio.

    Args:
        wm_codes: long (N, h, w) codes of the observed watermarked images.
        clean_codes: long (M, h, w) codes of the attacker's clean images.
        vocab_size: V.
        gamma: the (public) green fraction.

    Score of code v: log((c_wm(v) + 1) / (T_wm + V)) - log((c_clean(v) + 1) / (T_clean + V)) with token
    counts c and totals T; only codes seen in either set are candidates (the attacker's view of the
    alive codes). Ties go to the more frequent watermarked code, then to the smaller id.
    """
    if not 0 < gamma < 1:
        raise ConfigError(f"gamma must be in (0, 1), got {gamma!r}")
    cw = torch.bincount(wm_codes.reshape(-1).long(), minlength=vocab_size).double()
    cc = torch.bincount(clean_codes.reshape(-1).long(), minlength=vocab_size).double()
    seen = (cw + cc) > 0
    score = torch.log((cw + 1) / (cw.sum() + vocab_size)) - torch.log((cc + 1) / (cc.sum() + vocab_size))
    score = torch.where(seen, score, torch.tensor(-torch.inf, dtype=torch.float64))
    m = max(1, round(gamma * int(seen.sum())))
    order = np.lexsort((np.arange(vocab_size), -cw.numpy(), -score.numpy()))
    est = torch.zeros(vocab_size, dtype=torch.bool)
    est[torch.from_numpy(order[:m].copy())] = True
    return est


@torch.no_grad()
def forge(images: torch.Tensor, estimate: torch.Tensor, tokenizer, *, rounds: int = 3) -> torch.Tensor:
    """Post-hoc mark `images` towards the attacker's `estimate` (no key involved). Returns 8-bit images.

    Each round: encode, replace every code outside the estimate by the estimated-green code nearest in
    cosine (tokenizer embeddings), decode, round to 8 bits. The round with the highest re-encoded
    estimated-green share is kept per image.
    """
    emb = F.normalize(torch.as_tensor(tokenizer.embeddings()).float(), dim=1)
    sim = emb @ emb[estimate].T
    nearest = torch.nonzero(estimate).flatten()[sim.argmax(1)]
    nearest[estimate] = torch.nonzero(estimate).flatten()
    best = images.clone()
    codes = tokenizer.encode(images).clone()
    best_share = estimate[codes].flatten(1).float().mean(1)
    for _ in range(rounds):
        x = quantize(tokenizer.decode(nearest[codes]))
        codes = tokenizer.encode(x).clone()
        share = estimate[codes].flatten(1).float().mean(1)
        better = share > best_share
        best[better] = x[better]
        best_share = torch.where(better, share, best_share)
    return best


def _key_with_lists(cfg: SpoofConfig, k: int, tok):
    """The key with K = k lists: `cfg.keys[k]`, or `out/keys/K{k}.key` (created on first use)."""
    from ..keys import resolve_key

    given = cfg.keys.get(k) if cfg.keys else None
    key = resolve_key(given, tok, create_at=cfg.out / "keys" / f"K{k}.key", gamma=cfg.gamma, n_lists=k)
    if key.n_lists != k:
        raise ConfigError(f"key {given} has K={key.n_lists} lists, expected {k}")
    return key


def run_spoof(cfg: SpoofConfig, *, progress: Callable[[str, int], None] | None = None) -> dict:
    """Run the spoofing grid; writes spoof.json and spoof.csv in `cfg.out` and returns the result dict."""
    from ..detect import Detector
    from ..models import load
    from ..watermark import GreenLists

    progress = progress or (lambda stage, k: None)
    t0 = time.time()
    gen = load(cfg.model)
    tok = gen.tokenizer
    cfg.out.mkdir(parents=True, exist_ok=True)
    n_wm = max(cfg.n_observed)
    prompts = eval_prompts(padded_count(max(n_wm, cfg.n_clean), cfg.batch_size), cfg.seed, gen)
    pops = cfg.out / "populations"
    keys, wm_sets = {}, {}
    for k in cfg.n_lists:                  # watermarked sets first, in the order given, then the clean set
        keys[k] = _key_with_lists(cfg, k, tok)
        wm_sets[k] = generate_population(
            gen, GreenLists(keys[k], tok), n_wm, folder=pops / f"watermarked_K{k}", prompts=prompts,
            delta=None if cfg.hard else cfg.delta, hard=cfg.hard, seed=cfg.seed, cfg=cfg.cfg,
            batch_size=cfg.batch_size, on_chunk=lambda n, kk=k: progress(f"generate K={kk}", n))
    clean = generate_population(gen, None, cfg.n_clean, folder=pops / "clean", prompts=prompts, delta=None,
                                hard=False, seed=cfg.seed, cfg=cfg.cfg, batch_size=cfg.batch_size,
                                on_chunk=lambda k: progress("generate clean", k))
    clean_x = from_uint8(clean["images"])
    targets = clean_x[: cfg.n_targets]
    reference_codes = tok.encode(clean_x[cfg.n_targets:])
    rows = []
    keys_used = {}
    for k in cfg.n_lists:
        key = keys[k]
        keys_used[k] = key.key_id
        gl = GreenLists(key, tok)
        det = Detector(gl, tok, alpha=min(cfg.alphas), batch_size=cfg.batch_size)
        wm_codes = tok.encode(from_uint8(wm_sets[k]["images"]))      # what the attacker sees: the saved images
        base = np.array([r.log10_p for r in det.detect_images(targets)])
        for n in cfg.n_observed:
            est = estimate_green(wm_codes[:n], reference_codes, tok.vocab_size, cfg.gamma)
            forged = forge(targets, est, tok, rounds=cfg.forge_rounds)
            lp = np.array([r.log10_p for r in det.detect_images(forged)])
            overlap = (gl.masks & est).sum(1).double() / est.sum()
            ps = psnr(forged, targets)
            row = {"n_lists": k, "n_observed": n, "n_targets": len(targets), "key_id": key.key_id,
                   "estimate_size": int(est.sum()),
                   "estimate_overlap_best_list": float(overlap.max()),
                   "estimate_overlap_mean_list": float(overlap.mean()),
                   "psnr_forged_db": float(np.mean(ps[np.isfinite(ps)])) if np.isfinite(ps).any() else None,
                   "median_log10_p_forged": float(np.median(lp))}
            for a, v in tpr_at_alpha(lp, cfg.alphas).items():
                row[f"success_at_alpha_{a:g}"] = v
            for a, v in tpr_at_alpha(base, cfg.alphas).items():
                row[f"fpr_unforged_at_alpha_{a:g}"] = v
            rows.append(row)
            progress(f"spoof K={k} N={n}", 1)
            _log(f"spoof K={k} N={n}: success@1e-2 {row['success_at_alpha_0.01']:.3f}, overlap best list "
                 f"{row['estimate_overlap_best_list']:.3f} (gamma {cfg.gamma})")
    rows.sort(key=lambda r: (r["n_lists"], r["n_observed"]))
    result = {"command_config": {"n_observed": cfg.n_observed, "n_lists": cfg.n_lists, "n_targets": cfg.n_targets,
                                 "n_clean": cfg.n_clean, "n_reference": cfg.n_clean - cfg.n_targets,
                                 "delta": None if cfg.hard else cfg.delta, "hard": cfg.hard, "gamma": cfg.gamma,
                                 "seed": cfg.seed, "cfg": cfg.cfg, "forge_rounds": cfg.forge_rounds},
              "generator_id": gen.id, "tokenizer_id": tok.id, "key_ids": keys_used, "guard_version": __version__,
              "rows": rows, "seconds": round(time.time() - t0, 1),
              "notes": ["success_at_alpha: share of forged clean images the real key's detector calls watermarked "
                        "(corrected p <= alpha)",
                        "estimate_overlap_*: share of the attacker's estimated codes that are green in the true "
                        "list(s); gamma means no information"]}
    (cfg.out / "spoof.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(cfg.out / "spoof.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return result
