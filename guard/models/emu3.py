"""Emu3 (Emu3-Gen) behind guard's `Tokenizer` / `Generator` protocols (local checkpoints only).

Emu3 generates images with the standard transformers `generate`: visual tokens are ordinary text-vocabulary
entries named `<|visual token NNNNNN|>`, rows end with an EOL token (`<|extra_200|>`) and the image with EOF
(`<|extra_201|>`), EOI and EOS. This adapter

* maps visual-token ids <-> codebook ids through the checkpoint's `vocabulary_map` (never an assumed
  offset: the mapping is checked to cover every code exactly once);
* forces the image layout with transformers' `PrefixConstrainedLogitsProcessor` (W visual tokens then EOL
  per row, then EOF, EOI, EOS);
* hands guard processors only the visual steps, as codebook logits `(B, V)` gathered from the text-vocabulary
  scores, with the codebook-id history `(B, t)` (EOL tokens removed): EOL/EOF/EOI/EOS steps are never
  watermarked, and detection, which re-encodes pixels to codebook grids, never sees them;
* runs guidance with Emu3's own unbatched CFG (a second pass on a negative prompt, log-probabilities);
  processors run after it and after the prefix constraint. A soft bias gives the same distribution as it
  would before guidance: both log-softmax terms shift by the same per-row constant.

The image size is not stored in a checkpoint (Emu3-Gen's default is 720 x 720 = 90 x 90 tokens); pick
another with the spec `emu3:PATH@SIZE` (a multiple of the VQ's factor, 8) or `load_emu3(path, image_size=)`.
Images are square (ratio 1:1): guard's `Tokenizer` has one `image_size`. A key made with `emu3:PATH@SIZE`
binds that size (its `Geometry`) and the manifest records it; detecting with another size (e.g. the default
720 for a 64 px key) is refused in one line naming the `@SIZE` to use, instead of re-encoding the image on
another grid. Images of another pixel size are resized to SIZE first (`guard.imageio`; the record says so).

    >>> from guard.models import load
    >>> gen = load("emu3:/models/Emu3-Gen-hf@512")                      # doctest: +SKIP
    >>> codes = gen.generate(["a red fox in the snow"], n=1, seed=0)    # (1, 64, 64) codebook ids
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ModelError
from ._hf_common import (HFGenerator, HFVQTokenizer, PixelRange, check_sampling_args, checkpoint_dir,
                         config_id, load_prefixed_state, offline, pick_device, pick_dtype, published_defaults, seeded,
                         weights_digest)
from .registry import ModelKind

__all__ = ["Emu3Tokenizer", "Emu3Generator", "KIND", "VisualTokenMap", "load_emu3", "load_emu3_tokenizer", "DEFAULT_IMAGE_SIZE",
           "parse_spec_path"]

DEFAULT_IMAGE_SIZE = 720
PUBLISHED = {"cfg": 3.0, "temperature": 1.0, "top_k": 2048, "top_p": None}
"""Emu3-Gen's own sampling (BAAI's image-generation example: classifier_free_guidance 3.0, top_k 2048)."""
EOL_TOKEN, EOF_TOKEN = "<|extra_200|>", "<|extra_201|>"
_VISUAL = re.compile(r"^<\|visual token (\d+)\|>$")
_VQ_PREFIXES = ("model.vqmodel.", "vqmodel.")


def parse_spec_path(path: str) -> tuple[str, int | None]:
    """Split 'PATH@SIZE' into (PATH, SIZE); a path that exists as given is never split."""
    m = re.match(r"^(.*)@(\d+)$", path)
    if m and not Path(path).exists():
        return m.group(1), int(m.group(2))
    return path, None


class VisualTokenMap:
    """Visual-token BPE ids <-> codebook ids, from the checkpoint's `vocabulary_map`.

    Attributes:
        img2bpe: long (V,): BPE id of codebook id v.
        bpe2img: long (text_vocab,): codebook id of each BPE id, -1 for non-visual ids.
        eol_id, eof_id: BPE ids of the row and image terminators.
    """

    def __init__(self, vocabulary_map: dict[str, int], codebook_size: int, text_vocab: int) -> None:
        pairs = []
        for name, bpe in vocabulary_map.items():
            m = _VISUAL.match(name)
            if m:
                pairs.append((int(m.group(1)), int(bpe)))
        codes = sorted(c for c, _ in pairs)
        if codes != list(range(codebook_size)):
            raise ModelError(f"the vocabulary_map names {len(pairs)} visual tokens, not exactly codes "
                             f"0..{codebook_size - 1} "
                             f"of the VQ codebook; the checkpoint's text vocabulary and VQ do not match")
        self.img2bpe = torch.empty(codebook_size, dtype=torch.long)
        for c, b in pairs:
            self.img2bpe[c] = b
        if int(self.img2bpe.max()) >= text_vocab or self.img2bpe.unique().numel() != codebook_size:
            raise ModelError("visual-token ids in the vocabulary_map are duplicated or outside the text vocabulary")
        self.bpe2img = torch.full((text_vocab,), -1, dtype=torch.long)
        self.bpe2img[self.img2bpe] = torch.arange(codebook_size)
        self.eol_id = vocabulary_map.get(EOL_TOKEN)
        self.eof_id = vocabulary_map.get(EOF_TOKEN)
        if self.eol_id is None or self.eof_id is None:
            raise ModelError(f"the vocabulary_map lacks {EOL_TOKEN} (EOL) or {EOF_TOKEN} (EOF); "
                             f"not an Emu3 checkpoint?")

    def to_codes(self, bpe: torch.Tensor) -> torch.Tensor:
        """BPE ids of visual tokens -> codebook ids (ConfigError if any id is not a visual token)."""
        out = self.bpe2img.to(bpe.device)[bpe]
        if out.numel() and int(out.min()) < 0:
            raise ConfigError("a non-visual token sits where the image layout expects a visual token")
        return out


class Emu3Tokenizer(HFVQTokenizer):
    """The Emu3 VQ (Euclidean quantiser, spatial factor 8) as a guard `Tokenizer` at one square image size.

    Args:
        vq: a `transformers` `Emu3VQVAE` (kept in float32).
        image_size: pixels per side (a multiple of the VQ's spatial factor).
        pixels: the checkpoint's pixel normalisation. digest: SHA-256 of the VQ weights.
    """

    def __init__(self, vq: Any, *, image_size: int, pixels: PixelRange, digest: str, batch_size: int = 8) -> None:
        self.vq = vq.float().eval()
        self.factor = int(vq.vision_spatial_factor)
        if image_size < self.factor or image_size % self.factor:
            raise ConfigError(f"emu3 image size must be a positive multiple of {self.factor}, got {image_size}")
        self._image_size = int(image_size)
        n = self._image_size // self.factor
        self._grid = (n, n)
        self.pixels = pixels
        self.batch_size = int(batch_size)
        self._id = f"emu3-vq-{int(vq.config.codebook_size)}@{digest[:12]}"

    @property
    def vocab_size(self) -> int:
        return int(self.vq.config.codebook_size)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) in [0,1] -> long (B,n,n) codebook ids on the CPU (`Emu3VQVAE.encode`)."""
        self._check_images(images)
        s = self._image_size
        out = []
        for i in range(0, len(images), self.batch_size):
            x = self.pixels.to_model(images[i:i + self.batch_size].to(self.device))
            sizes = torch.tensor([[s, s]] * len(x))
            out.append(torch.stack(list(self.vq.encode(x, sizes).image_tokens)).long().cpu())
        h, w = self._grid
        return torch.cat(out) if out else torch.empty(0, h, w, dtype=torch.long)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B,n,n) codebook ids -> float (B,3,S,S) in [0,1] on the CPU."""
        self._check_codes(codes)
        out = [self.pixels.to_unit(self.vq.decode(codes[i:i + self.batch_size].to(self.device)).float()).cpu()
               for i in range(0, len(codes), self.batch_size)]
        s = self._image_size
        return torch.cat(out) if out else torch.empty(0, 3, s, s)

    @torch.inference_mode()
    def embeddings(self) -> torch.Tensor:
        return self.vq.quantize.embedding.weight.detach().float().cpu().clone()


# ------------------------------------------------------------------------------------------------- processors

class ImageLayout:
    """Where each new token of an Emu3 image sits: h rows of (w visual + EOL), then EOF, EOI, EOS."""

    def __init__(self, h: int, w: int, prompt_len: int) -> None:
        self.h, self.w, self.prompt_len = h, w, prompt_len
        self.image_len = h * (w + 1)
        self.total = self.image_len + 3

    def is_visual(self, j: int) -> bool:
        """Whether new token j (0-based) is a visual token."""
        return 0 <= j < self.image_len and j % (self.w + 1) < self.w

    def visual_history(self, input_ids: torch.Tensor) -> torch.Tensor:
        """BPE ids of the visual tokens generated so far, (B, t), EOL columns dropped."""
        new = input_ids[:, self.prompt_len:]
        keep = (torch.arange(new.shape[1], device=new.device) % (self.w + 1)) < self.w
        return new[:, keep]


def _visual_processor(procs: Sequence, vmap: VisualTokenMap, layout: ImageLayout):
    from transformers import LogitsProcessor

    img2bpe = vmap.img2bpe

    class VisualTokenProcessor(LogitsProcessor):
        """Runs guard processors on codebook logits at visual steps only; other steps pass through."""

        def __init__(self) -> None:
            self.visual_steps = 0
            self.other_steps = 0

        def __call__(self, input_ids, scores):
            j = input_ids.shape[1] - layout.prompt_len
            if not layout.is_visual(j):
                self.other_steps += 1
                return scores
            self.visual_steps += 1
            if not procs:
                return scores
            cols = img2bpe.to(scores.device)
            history = vmap.to_codes(layout.visual_history(input_ids))
            sub = scores.index_select(1, cols)
            for p in procs:
                sub = p(history, sub)
            out = scores.clone()
            out[:, cols] = sub.to(out.dtype)
            return out

    return VisualTokenProcessor()


class Emu3Generator(HFGenerator):
    """`Emu3ForConditionalGeneration` image generation behind guard's `Generator` protocol.

    Args:
        model: the loaded model (eval). processor: its `Emu3Processor`. tokenizer: the `Emu3Tokenizer`.
        vmap: the `VisualTokenMap`. model_id: generator id. batch_size: images per `generate` call.
    """

    def __init__(self, model: Any, processor: Any, tokenizer: Emu3Tokenizer, vmap: VisualTokenMap, model_id: str,
                 batch_size: int = 4) -> None:
        super().__init__(model, processor, tokenizer, model_id, batch_size)
        self.vmap = vmap
        self.last_visual_steps = 0

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Left-padded prompt ids ending in `<|image start|>{h}*{w}<|image token|>` (what Emu3Processor appends)."""
        tok = self.processor.tokenizer
        h, w = self._tokenizer.grid
        suffix = f"{tok.boi_token}{h}*{w}{tok.image_wrapper_token}"
        enc = self.processor(text=[f"{p}{suffix}" for p in prompts], padding=True, padding_side="left",
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def _allowed(self, layout: ImageLayout):
        tok = self.processor.tokenizer
        dev = self.device

        def ids_(*xs: int) -> torch.Tensor:
            return torch.tensor(xs, dtype=torch.long, device=dev)

        visual = self.vmap.img2bpe.to(dev)          # tensors: no list -> tensor conversion at every step
        eol = ids_(self.vmap.eol_id)
        tail = [ids_(self.vmap.eof_id), ids_(tok.eoi_token_id), ids_(tok.eos_token_id)]
        pad = ids_(tok.pad_token_id)

        def fn(batch_id: int, ids: torch.Tensor) -> torch.Tensor:
            j = ids.shape[-1] - layout.prompt_len
            if j < layout.image_len:
                return visual if j % (layout.w + 1) < layout.w else eol
            k = j - layout.image_len
            return tail[k] if k < 3 else pad

        return fn

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
        negative_prompt: str = "",
    ) -> torch.Tensor:
        """Sample `n` images per prompt: codebook ids long (len(prompts)*n, n_h, n_w) on the CPU, prompt-major.

        Args: as `guard.models.Generator.generate`; `cfg` > 1 runs Emu3's unbatched guidance against
        `negative_prompt`; processors see post-guidance codebook logits (B, V) and the codebook-id history.
        """
        from transformers import LogitsProcessorList

        all_prompts = check_sampling_args(prompts, n, cfg, temperature, top_k, top_p)
        procs = list(logits_processor or [])
        h, w = self._tokenizer.grid
        out = []
        self.last_visual_steps = 0
        with seeded(seed, self.device), torch.inference_mode():
            for i in range(0, len(all_prompts), self.batch_size):
                chunk = all_prompts[i:i + self.batch_size]
                inputs = self.encode_prompts(chunk)
                layout = ImageLayout(h, w, inputs["input_ids"].shape[1])
                vis = _visual_processor(procs, self.vmap, layout)
                extra: dict[str, Any] = {}
                if cfg > 1:
                    neg = self.encode_prompts([negative_prompt] * len(chunk))
                    extra = dict(guidance_scale=float(cfg), negative_prompt_ids=neg["input_ids"],
                                 negative_prompt_attention_mask=neg["attention_mask"])
                seqs = self.model.generate(
                    **inputs, max_new_tokens=layout.total,
                    prefix_allowed_tokens_fn=self._allowed(layout), logits_processor=LogitsProcessorList([vis]),
                    do_sample=temperature > 0, temperature=float(temperature) if temperature > 0 else 1.0,
                    top_k=0 if top_k is None else int(top_k), top_p=1.0 if top_p is None else float(top_p),
                    pad_token_id=self.processor.tokenizer.pad_token_id, **extra)
                self.last_visual_steps += vis.visual_steps
                new = seqs[:, layout.prompt_len:layout.prompt_len + layout.image_len].view(len(chunk), h, w + 1)
                if not bool((new[:, :, w] == self.vmap.eol_id).all()):
                    raise ModelError("emu3 generation broke the image layout (a row without EOL)")
                out.append(self.vmap.to_codes(new[:, :, :w]).to("cpu", torch.long))
        return torch.cat(out)


# ------------------------------------------------------------------------------------------------- loading

def _image_processor(ckpt: Path) -> Any:
    from transformers import AutoImageProcessor

    try:
        with offline():
            return AutoImageProcessor.from_pretrained(str(ckpt), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, ImportError):
        return None


def _split(path: str | os.PathLike, image_size: int | None) -> tuple[str, int]:
    p, size = parse_spec_path(str(path))
    if image_size is not None:
        size = image_size
    return p, DEFAULT_IMAGE_SIZE if size is None else int(size)


def load_emu3_tokenizer(path: str | os.PathLike, *, image_size: int | None = None,
                        device: str | torch.device | None = None, spec: str | None = None) -> Emu3Tokenizer:
    """Only the VQ of a local Emu3 checkpoint (reads just its tensors), at `image_size` (or PATH@SIZE, else 720)."""
    from transformers import Emu3Config, Emu3VQVAE

    p, size = _split(path, image_size)
    ckpt = checkpoint_dir(p, "emu3", spec or f"emu3:{path}")
    dev = pick_device(device)
    with offline():
        try:
            config = Emu3Config.from_pretrained(str(ckpt), local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            raise ModelError(f"emu3 config unreadable in {ckpt}: {' '.join(str(e).split())[:160]}") from None
    state = load_prefixed_state(ckpt, _VQ_PREFIXES)
    vq = None
    if state is not None:
        vq = Emu3VQVAE(config.vq_config)
        missing, _ = vq.load_state_dict(state, strict=False)
        if missing:
            vq = None
    if vq is None:
        return load_emu3(p, image_size=size, device=dev, spec=spec).tokenizer
    vq = vq.to(dev).float().eval()
    return Emu3Tokenizer(vq, image_size=size, pixels=PixelRange.from_image_processor(_image_processor(ckpt)),
                         digest=weights_digest(vq))


def load_emu3(path: str | os.PathLike, *, image_size: int | None = None, device: str | torch.device | None = None,
              dtype: str | torch.dtype | None = None, spec: str | None = None, batch_size: int = 4) -> Emu3Generator:
    """A local Emu3 checkpoint (model + `Emu3Processor`) as a guard `Generator` at `image_size` pixels.

    Raises:
        ModelError: a missing/wrong path, another architecture, missing processor files, or a vocabulary
            whose visual tokens do not match the VQ codebook (one line).
    """
    from transformers import Emu3ForConditionalGeneration, Emu3Processor

    p, size = _split(path, image_size)
    ckpt = checkpoint_dir(p, "emu3", spec or f"emu3:{path}")
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    with offline():
        try:
            processor = Emu3Processor.from_pretrained(str(ckpt), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError) as e:
            raise ModelError(f"no usable Emu3 processor/tokenizer files in {ckpt} ({type(e).__name__}); save the "
                             f"processor with processor.save_pretrained() next to the model") from None
        try:
            model = Emu3ForConditionalGeneration.from_pretrained(str(ckpt), local_files_only=True, dtype=dt)
        except (OSError, ValueError, RuntimeError, TypeError) as e:
            raise ModelError(f"emu3 weights unreadable in {ckpt}: {' '.join(str(e).split())[:160]}") from None
    model = model.to(dev).eval()
    vq = model.model.vqmodel.float()
    vmap = VisualTokenMap(model.config.vocabulary_map, int(vq.config.codebook_size),
                          int(model.config.text_config.vocab_size))
    tokenizer = Emu3Tokenizer(vq, image_size=size, pixels=PixelRange.from_image_processor(processor.image_processor),
                              digest=weights_digest(vq))
    gen = Emu3Generator(model, processor, tokenizer, vmap, f"emu3@{config_id(ckpt)[:12]}", batch_size=batch_size)
    gen.sampling_defaults = published_defaults(model, PUBLISHED)
    return gen


KIND = ModelKind(
    name="emu3", spec="emu3:PATH[@SIZE]",
    load=lambda path, spec, **opts: load_emu3(path, spec=spec, **opts),
    load_tokenizer=lambda path, spec, **opts: load_emu3_tokenizer(path, spec=spec, **opts),
    owns=lambda generator: isinstance(generator, Emu3Generator), load_options=("device", "dtype"))
"""The `emu3` model kind: generator and tokenizer (no EAR, steering, prompts or judge yet)."""
