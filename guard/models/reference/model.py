"""Loading the shipped reference weights (hash-verified) behind the `Tokenizer`/`Generator` protocols."""

from __future__ import annotations

import copy

import hashlib
import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch

from ...errors import ConfigError, ModelError
from ..base import check_sampling_args
from .classifier import SceneClassifier
from .gpt import GPTConfig, ShapesGPT, tokenize_prompts
from .vq import VQConfig, VQModel

# GUARD_REFERENCE_WEIGHTS points every command at another weights folder (weights + card.json), e.g. a
# freshly trained candidate, before it is copied into the package.
WEIGHTS_DIR = Path(os.environ.get("GUARD_REFERENCE_WEIGHTS") or Path(__file__).parent / "weights")
RETRAIN_HINT = "retrain with `python -m guard.models.reference.train all` or reinstall ar-guard"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_card(weights_dir: Path = WEIGHTS_DIR) -> dict:
    path = Path(weights_dir) / "card.json"
    if not path.exists():
        raise ModelError(f"reference model card missing: {path}; {RETRAIN_HINT}")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"reference model card unreadable: {path} ({type(e).__name__}); {RETRAIN_HINT}") from None


def load_weights(name: str, weights_dir: Path = WEIGHTS_DIR) -> tuple[dict[str, torch.Tensor], str]:
    """Load `<name>.safetensors` after checking its SHA-256 against the card. Returns (state, sha256)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(weights_dir) / f"{name}.safetensors"
    if not path.exists():
        raise ModelError(f"reference weights missing: {path}; {RETRAIN_HINT}")
    expected = read_card(weights_dir).get("files", {}).get(path.name)
    digest = _sha256(path)
    if expected is None:
        raise ModelError(f"reference card has no hash for {path.name}; {RETRAIN_HINT}")
    if digest != expected:
        raise ModelError(f"reference weights corrupt or modified: {path} (sha256 {digest[:12]}…, card says "
                         f"{expected[:12]}…); {RETRAIN_HINT}")
    try:
        return load_file(str(path)), digest
    except (SafetensorError, OSError) as e:
        raise ModelError(f"reference weights unreadable: {path} ({e}); {RETRAIN_HINT}") from None


def _moved(owner, attr: str, device: str | torch.device):
    """`owner` itself when its module `attr` is on `device`, else a shallow copy holding a moved deep copy."""
    dev = torch.device(device)
    if dev == next(getattr(owner, attr).parameters()).device:
        return owner
    other = copy.copy(owner)
    setattr(other, attr, copy.deepcopy(getattr(owner, attr)).to(dev).eval())
    return other


class ReferenceTokenizer:
    """The reference VQ behind the `Tokenizer` protocol: 64x64 RGB <-> 16x16 codes (codebook size from its card)."""

    def __init__(self, vq: VQModel, sha256: str, alive: torch.Tensor | None = None, batch_size: int = 256) -> None:
        self.vq = vq.eval()
        self._id = f"reference-vq-{vq.cfg.codebook_size}@{sha256[:12]}"
        self._alive = alive
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"ReferenceTokenizer(id={self._id!r})"

    @property
    def id(self) -> str:
        return self._id

    @property
    def vocab_size(self) -> int:
        return self.vq.cfg.codebook_size

    @property
    def grid(self) -> tuple[int, int]:
        return (16, 16)

    @property
    def image_size(self) -> int:
        return 64

    @property
    def alive(self) -> torch.Tensor | None:
        return self._alive

    @property
    def device(self) -> torch.device:
        """Where the VQ runs; images and codes go in and come back on the CPU."""
        return next(self.vq.parameters()).device

    def to(self, device: str | torch.device) -> "ReferenceTokenizer":
        """A copy of this tokenizer on `device` (this one, and the cached one it came from, stay put)."""
        return _moved(self, "vq", device)

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1:] != (3, 64, 64):
            raise ConfigError(f"images must be float (B,3,64,64) in [0,1], got shape {tuple(images.shape)}")

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._check_images(images)
        images, dev = images.float(), self.device
        return torch.cat([self.vq.encode(images[i:i + self.batch_size].to(dev)).cpu()
                          for i in range(0, len(images), self.batch_size)]) if len(images) else \
            torch.empty(0, 16, 16, dtype=torch.long)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.ndim != 3 or codes.shape[1:] != (16, 16):
            raise ConfigError(f"codes must be long (B,16,16), got shape {tuple(codes.shape)}")
        if len(codes) and (codes.min() < 0 or codes.max() >= self.vocab_size):
            raise ConfigError(f"codes must lie in [0, {self.vocab_size}), got range "
                              f"[{int(codes.min())}, {int(codes.max())}]")
        dev = self.device
        return torch.cat([self.vq.decode(codes[i:i + self.batch_size].to(dev)).cpu()
                          for i in range(0, len(codes), self.batch_size)])

    @torch.inference_mode()
    def embeddings(self) -> torch.Tensor:
        return self.vq.normalized_codebook().detach().clone()


class ReferenceGenerator:
    """The shapes GPT behind the `Generator` protocol."""

    def __init__(self, gpt: ShapesGPT, tokenizer: ReferenceTokenizer, sha256: str, batch_size: int = 64) -> None:
        self.gpt = gpt.eval()
        self._tokenizer = tokenizer
        self._id = f"reference-gpt@{sha256[:12]}"
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"ReferenceGenerator(id={self._id!r}, tokenizer={self._tokenizer.id!r})"

    @property
    def id(self) -> str:
        return self._id

    @property
    def tokenizer(self) -> ReferenceTokenizer:
        return self._tokenizer

    @property
    def device(self) -> torch.device:
        """Where the GPT samples; prompts go in and codes come back on the CPU."""
        return next(self.gpt.parameters()).device

    def to(self, device: str | torch.device) -> "ReferenceGenerator":
        """A copy of this generator (GPT and tokenizer) on `device`; the cached one stays put."""
        other = _moved(self, "gpt", device)
        if other is not self:
            other._tokenizer = self._tokenizer.to(device)
        return other

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        seed: int | None = None,
        cfg: float = 3.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        logits_processor: Sequence | None = None,
        processor_layout: str = "B",
    ) -> torch.Tensor:
        """Sample `n` images per prompt: codes (len(prompts)*n, 16, 16), prompt-major.

        Args:
            prompts: text prompts (see `guard.models.reference.shapes` for the vocabulary).
            n: images per prompt, >= 1.
            seed: makes sampling reproducible; None draws fresh randomness.
            cfg: classifier-free guidance scale, >= 1 (1 = no guidance).
            temperature: > 0, or 0 for greedy decoding.
            top_k, top_p: optional filters (top_k >= 1, 0 < top_p <= 1).
            logits_processor: callables `(input_ids, scores) -> scores`, called once per token.
            processor_layout: "B" (processors see guided scores) or "2B" (cond then uncond rows, pre-guidance).
        """
        all_prompts = check_sampling_args(prompts, n, cfg, temperature, top_k, top_p, allow_empty=True)
        text = tokenize_prompts(all_prompts).to(self.device)
        gen = torch.Generator(device=self.device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(seed))
        out = []
        for i in range(0, len(text), self.batch_size):
            codes = self.gpt.sample(text[i:i + self.batch_size], cfg_scale=cfg, temperature=temperature, top_k=top_k,
                                    top_p=top_p, generator=gen, logits_processor=logits_processor,
                                    processor_layout=processor_layout)
            out.append(codes.view(-1, 16, 16).cpu())
        return torch.cat(out) if out else torch.empty(0, 16, 16, dtype=torch.long)


@lru_cache(maxsize=2)
def load_tokenizer(weights_dir: Path = WEIGHTS_DIR) -> ReferenceTokenizer:
    card = read_card(weights_dir)
    state, sha = load_weights("vq", weights_dir)
    vq = VQModel(VQConfig(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in card["components"]["vq"]["config"].items()}))
    vq.load_state_dict(state)
    alive = None
    if (Path(weights_dir) / "vq_alive.safetensors").exists():
        alive = load_weights("vq_alive", weights_dir)[0]["alive"].bool()
    return ReferenceTokenizer(vq, sha, alive)


@lru_cache(maxsize=2)
def load_reference(weights_dir: Path = WEIGHTS_DIR) -> ReferenceGenerator:
    """The reference generator with its tokenizer, weights verified against the card."""
    card = read_card(weights_dir)
    tok = load_tokenizer(weights_dir)
    state, sha = load_weights("gpt", weights_dir)
    gpt = ShapesGPT(GPTConfig(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in card["components"]["gpt"]["config"].items()}))
    gpt.load_state_dict(state)
    return ReferenceGenerator(gpt, tok, sha)


@lru_cache(maxsize=2)
def load_classifier(weights_dir: Path = WEIGHTS_DIR) -> SceneClassifier:
    state, _ = load_weights("classifier", weights_dir)
    clf = SceneClassifier()
    clf.load_state_dict(state)
    return clf.eval()
