"""Model-based regeneration attacks that run offline: stand-ins for the anchors' diffusion/VAE regeneration.

The seed paper's claim is robustness to regeneration (CtrlRegen, DiffPure, VAE round trips). None of
those models can be downloaded here, so guard ships three offline regenerations and names them for
what they are:

* ``vq2`` — **re-tokenize with a second VQ tokenizer**: encode and decode with a VQ of the reference
  architecture trained independently (other seed, own run; `guard/eval/weights/vq2/card.json`). The
  image is re-drawn from another codebook, the closest offline analogue of a VAE/VQ regeneration.
* ``ar_resample`` — **AR resampling**: the attacker (who has the open generator but no key) encodes the
  image with the generator's tokenizer, picks a random fraction of the token positions, and re-samples
  them in raster order with the generator and no watermark, every other token forced to its current
  value; then decodes. Conditioning: the image's prompt when the harness knows it (the strongest case,
  a known caption), otherwise a neutral prompt; guidance as in generation.
* ``autoencoder`` — **autoencoder round trip**: a small continuous convolutional autoencoder trained
  on rendered scenes (`guard.eval.autoencoder`), a stand-in for SD-VAE-style regeneration.

They are weaker stand-ins than diffusion regeneration; the report names them as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import ConfigError, ModelError
from ..imageio import quantize
from .attacks import AttackContext, AttackSpec, register

__all__ = ["ForceTokensProcessor", "VQ2_DIR", "load_vq2", "ar_resample", "NEUTRAL_PROMPT"]

VQ2_DIR = Path(__file__).parent / "weights" / "vq2"
NEUTRAL_PROMPT = "a shape"


def load_vq2(weights_dir: Path = VQ2_DIR):
    """The second, independently trained VQ tokenizer (reference architecture), hash-checked against its card.

    It loads as the reference kind's tokenizer from another folder: `guard.models.load_tokenizer("reference:DIR")`.
    """
    from ..models import load_tokenizer

    if not (Path(weights_dir) / "vq.safetensors").exists():
        raise ModelError(f"second VQ tokenizer missing: {weights_dir}/vq.safetensors; retrain it with the command in "
                         f"guard/eval/weights/vq2/card.json or reinstall ar-guard")
    return load_tokenizer(f"reference:{Path(weights_dir)}")


class ForceTokensProcessor:
    """Logits processor that forces every position except the chosen ones to a given code.

    Args:
        codes: long (B, N) target codes in raster order.
        resample: bool (B, N); True = sample this position freely, False = force `codes` there.

    Forced rows get 0 on the target code and -1e4 elsewhere (finite, so guidance never meets inf - inf;
    exp(-1e4) is exactly 0), so sampling returns the target with probability 1.
    """

    def __init__(self, codes: torch.Tensor, resample: torch.Tensor) -> None:
        if codes.shape != resample.shape or codes.ndim != 2:
            raise ConfigError(f"codes and resample must both be (B, N), got {tuple(codes.shape)} and "
                              f"{tuple(resample.shape)}")
        self.codes = codes.long()
        self.resample = resample.bool()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1] if input_ids.ndim > 1 else 0
        b = self.codes.shape[0]
        if scores.shape[0] != b:
            raise ConfigError(f"ForceTokensProcessor needs post-guidance scores (B={b} rows), got {scores.shape[0]}")
        force = ~self.resample[:, t]
        if not bool(force.any()):
            return scores
        forced = torch.full_like(scores, -1.0e4)
        forced.scatter_(1, self.codes[:, t:t + 1].to(scores.device), 0.0)
        return torch.where(force[:, None].to(scores.device), forced, scores)


@torch.no_grad()
def ar_resample(images: torch.Tensor, fraction: float, seeds: Sequence[int], generator, *,
                        prompts: Sequence[str] | None = None, cfg: float = 3.0) -> torch.Tensor:
    """Re-sample a random `fraction` of each image's tokens with `generator` (no watermark) and decode.

    Args:
        images: float (B, 3, S, S) in [0, 1].
        fraction: share of the h*w positions re-sampled, in (0, 1].
        seeds: one per image; image i's positions depend only on seeds[i]. The whole batch is sampled in
            one generation call seeded with seeds[0], so the sampled codes also depend on the batch's
            composition: the harness always attacks the same fixed chunks of images.
        generator: a `Generator`; its tokenizer encodes and decodes.
        prompts: one per image (default: a neutral prompt).
        cfg: guidance scale.

    Returns:
        float (B, 3, S, S) in [0, 1].
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction!r}")
    tok = generator.tokenizer
    codes = tok.encode(images).clone()
    B, h, w = codes.shape
    n = h * w
    k = max(1, round(fraction * n))
    masks = torch.zeros(B, n, dtype=torch.bool)
    for i in range(B):
        masks[i, torch.randperm(n, generator=torch.Generator().manual_seed(int(seeds[i])))[:k]] = True
    prompts = list(prompts) if prompts is not None else [NEUTRAL_PROMPT] * B
    proc = ForceTokensProcessor(codes.reshape(B, n), masks)
    out = generator.generate(prompts, n=1, seed=int(seeds[0]) % (2 ** 62), cfg=cfg, logits_processor=[proc])
    return tok.decode(out.reshape(B, h, w))


# ---------------------------------------------------------------------------------------------- registry

def _context_model(context: AttackContext, name: str, loader):
    if name not in context.cache:
        context.cache[name] = loader()
    return context.cache[name]


def _vq2(images, rounds, seeds, context, indices):
    tok2 = _context_model(context, "vq2", load_vq2)
    x = images
    for _ in range(int(rounds)):
        x = quantize(tok2.decode(tok2.encode(x)))
    return x


def _autoencoder(images, rounds, seeds, context, indices):
    from .autoencoder import load_autoencoder

    ae = _context_model(context, "autoencoder", load_autoencoder)
    x = images
    for _ in range(int(rounds)):
        x = quantize(ae.roundtrip(x))
    return x


def _ar(images, fraction, seeds, context, indices):
    if context.generator is None:
        raise ConfigError("ar_resample needs a generator (the harness passes the model it evaluates)")
    prompts = None
    if context.prompts is not None:
        prompts = [context.prompts[i] for i in indices]
    return ar_resample(images, float(fraction), seeds, context.generator, prompts=prompts, cfg=context.cfg)


register(AttackSpec("vq2", "regeneration", "rounds", (1,), 1,
                    "re-tokenize with a second, independently trained VQ (stand-in for VAE/VQ regeneration)", _vq2,
                    needs="vq2"))
register(AttackSpec("ar_resample", "regeneration", "fraction", (0.1, 0.25, 0.5), 0.25,
                    "re-sample a random fraction of the tokens with the generator, no watermark", _ar,
                    needs="generator"))
register(AttackSpec("autoencoder", "regeneration", "rounds", (1,), 1,
                    "round trip through a small convolutional autoencoder (stand-in for a VAE regeneration)",
                    _autoencoder, needs="autoencoder"))
