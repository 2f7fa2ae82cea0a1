"""Janus / Janus-Pro behind guard's `Tokenizer` / `Generator` protocols (local checkpoints only).

Generation runs transformers' `JanusForConditionalGeneration.generate(generation_mode="image")`; guard's
logits processors plug into it in either layout:

* ``processor_layout="2B"`` (default, Janus's own order): processors see the image head's logits for the
  conditional rows then the unconditional rows, *before* classifier-free guidance.
* ``processor_layout="B"``: guidance runs first and processors see the guided (B, V) logits.

A `WatermarkProcessor` gives the same sample distribution in both (guidance is affine with weights summing
to one, so a bias added to both halves passes through it). Janus's loop never grows `input_ids` (it keeps
passing the prompt), so the adapter records the sampled tokens and hands processors the generated-token
history `(B, t)` instead, as every other guard generator does.

The tokenizer is the checkpoint's VQ. Its encode quantises like the original Janus/LlamaGen
`VectorQuantizer` (`codebook_l2_norm=True`: cosine nearest code, both sides L2-normalised), not like
transformers' `JanusVQVAEVectorQuantizer.forward` (plain Euclidean argmin on raw vectors), because the
decoder (`get_codebook_entry`) uses normalised rows: only the cosine encode inverts it. Decode returns
channels-first images in [0, 1] (transformers' `decode_image_tokens` returns channels-last).

    >>> from guard.models import load
    >>> gen = load("janus:/models/Janus-Pro-1B")                      # doctest: +SKIP
    >>> codes = gen.generate(["a red fox in the snow"], n=2, seed=0)  # (2, 24, 24) codebook ids
    >>> images = gen.tokenizer.decode(codes)                          # (2, 3, 384, 384) in [0, 1]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ModelError
from ._hf_common import (HFGenerator, HFVQTokenizer, PixelRange, check_sampling_args, checkpoint_dir,
                         config_id, load_prefixed_state, offline, pick_device, pick_dtype, published_defaults, seeded,
                         weights_digest)
from .registry import ModelKind

__all__ = ["JanusTokenizer", "JanusGenerator", "KIND", "load_janus", "load_janus_tokenizer", "LAYOUTS"]

LAYOUTS = ("2B", "B")
PUBLISHED = {"cfg": 5.0, "temperature": 1.0, "top_k": None, "top_p": None}
"""Janus-Pro's own sampling (DeepSeek's generation example: cfg_weight 5, temperature 1, no top-k/top-p)."""
_VQ_PREFIXES = ("model.vqmodel.", "vqmodel.")


class JanusTokenizer(HFVQTokenizer):
    """The Janus VQ (codebook V x 8, L2-normalised) as a guard `Tokenizer`: (B,3,S,S) in [0,1] <-> (B,n,n).

    Args:
        vq: a `transformers` `JanusVQVAE` (kept in float32: codes must not depend on the generator's dtype).
        pixels: the checkpoint's pixel normalisation (usually [-1, 1]).
        digest: SHA-256 of the VQ weights (the `id` carries its first 12 hex digits).
        batch_size: images per encoder/decoder call.
    """

    def __init__(self, vq: Any, *, pixels: PixelRange, digest: str, batch_size: int = 16) -> None:
        self.vq = vq.float().eval()
        self.pixels = pixels
        self.batch_size = int(batch_size)
        n = int(vq.quantize.quant_state_dims[0])
        factor = 2 ** (len(vq.config.channel_multiplier) - 1)
        self._grid = (n, n)
        self._image_size = n * factor
        self._id = f"janus-vq-{int(vq.config.num_embeddings)}@{digest[:12]}"

    @property
    def vocab_size(self) -> int:
        return int(self.vq.config.num_embeddings)

    @torch.inference_mode()
    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latents z = quant_conv(encoder(x)): (B,3,S,S) in [0,1] -> float (B, 8, n, n)."""
        self._check_images(images)
        x = self.pixels.to_model(images.to(self.device))
        return self.vq.quant_conv(self.vq.encoder(x))

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Cosine nearest code (the original Janus quantiser): (B,3,S,S) in [0,1] -> long (B,n,n) on the CPU."""
        self._check_images(images)
        h, w = self._grid
        out = [self.quantize(self.latents(images[i:i + self.batch_size])).cpu()
               for i in range(0, len(images), self.batch_size)]
        return torch.cat(out) if out else torch.empty(0, h, w, dtype=torch.long)

    @torch.inference_mode()
    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """The original quantiser (`codebook_l2_norm=True`): argmax cosine of z against the codebook.

        z float (B, d, h, w) -> long (B, h, w). Equivalent to the Euclidean argmin after L2-normalising
        both z and the codebook rows, which is what the decoder's `get_codebook_entry` inverts.
        """
        book = F.normalize(self.vq.quantize.embedding.weight.float(), dim=-1)
        b, d, h, w = z.shape
        zf = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, d).float(), dim=-1)
        return (zf @ book.T).argmax(-1).view(b, h, w)

    @torch.inference_mode()
    def encode_euclidean(self, images: torch.Tensor) -> torch.Tensor:
        """transformers' `JanusVQVAE.encode` quantiser (raw Euclidean argmin), for comparison only."""
        self._check_images(images)
        h, w = self._grid
        x = self.pixels.to_model(images.to(self.device))
        return self.vq.encode(x).image_tokens.view(-1, h, w).cpu()

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B,n,n) codes -> float (B,3,S,S) in [0,1] on the CPU (channels first)."""
        self._check_codes(codes)
        out = []
        for i in range(0, len(codes), self.batch_size):
            chunk = codes[i:i + self.batch_size]
            pixels = self.vq.decode(chunk.reshape(len(chunk), -1).to(self.device))     # (b, 3, S, S), model space
            out.append(self.pixels.to_unit(pixels.float()).cpu())
        s = self._image_size
        return torch.cat(out) if out else torch.empty(0, 3, s, s)

    @torch.inference_mode()
    def embeddings(self) -> torch.Tensor:
        """The L2-normalised codebook (V, d): the vectors the decoder actually uses."""
        return F.normalize(self.vq.quantize.embedding.weight.detach().float(), dim=-1).cpu().clone()


# ------------------------------------------------------------------------------------------------- processors

def _logits_processor_base():
    from transformers import LogitsProcessor

    return LogitsProcessor


class _History:
    """The tokens Janus sampled so far, recorded from `prepare_embeddings_for_image_generation`.

    A preallocated (B, n_tokens) buffer on the model's device: appending is one copy, reading is a view
    (no host sync, no re-concatenation per step).
    """

    def __init__(self, batch: int, n_tokens: int, device: torch.device) -> None:
        self.buf = torch.zeros(batch, n_tokens, dtype=torch.long, device=device)
        self.t = 0

    def append(self, tokens: torch.Tensor) -> None:
        self.buf[:, self.t] = tokens
        self.t += 1

    def tensor(self) -> torch.Tensor:
        return self.buf[:, :self.t]


def _with_history(proc: Any, history: _History):
    base = _logits_processor_base()

    class WithHistory(base):  # type: ignore[misc, valid-type]
        """Calls `proc(history (B, t), scores)` instead of Janus's constant prompt ids.

        `history` is a view of a buffer that later steps fill: a processor that keeps it must clone it.
        """

        def __call__(self, input_ids, scores):
            return proc(history.tensor(), scores)

    return WithHistory()


def _cond_rows():
    base = _logits_processor_base()

    class CondRows(base):  # type: ignore[misc, valid-type]
        """No guidance (cfg = 1): keep the conditional half of Janus's doubled batch."""

        def __call__(self, input_ids, scores):
            return scores[: scores.shape[0] // 2]

    return CondRows()


class JanusGenerator(HFGenerator):
    """`JanusForConditionalGeneration` image generation behind guard's `Generator` protocol.

    Args:
        model: the loaded `JanusForConditionalGeneration` (eval mode).
        processor: its `JanusProcessor` (tokenizer + chat template) for the prompts.
        tokenizer: the `JanusTokenizer` over `model.model.vqmodel`.
        model_id: the generator's id (config and weight-file hash).
        batch_size: images per `generate` call (Janus doubles it for guidance).
    """

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Prompt ids for image generation: the chat template when the processor has one, then `<begin_of_image>`."""
        texts = list(prompts)
        if getattr(self.processor, "chat_template", None):
            texts = [self.processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": p}]}],
                                                        add_generation_prompt=True) for p in texts]
        enc = self.processor(text=texts, generation_mode="image", padding=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        seed: int | None = None,
        cfg: float = 5.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        logits_processor: Sequence | None = None,
        processor_layout: str = "2B",
    ) -> torch.Tensor:
        """Sample `n` images per prompt: codes long (len(prompts)*n, n_h, n_w) on the CPU, prompt-major.

        Args:
            prompts: text prompts.
            n: images per prompt, >= 1.
            seed: seeds torch's RNG for the call (restored afterwards); None draws fresh randomness.
            cfg: classifier-free guidance scale >= 1 (Janus-Pro's default is 5; 1 = no guidance).
            temperature: > 0 samples, 0 decodes greedily.
            top_k, top_p: optional filters (None = off).
            logits_processor: callables `(history (B, t), scores) -> scores` on codebook logits.
            processor_layout: "2B" (pre-guidance, conditional then unconditional rows) or "B" (post-guidance).
        """
        from transformers import ClassifierFreeGuidanceLogitsProcessor, LogitsProcessorList

        if processor_layout not in LAYOUTS:
            raise ConfigError(f"processor_layout must be one of {', '.join(LAYOUTS)}, got {processor_layout!r}")
        all_prompts = check_sampling_args(prompts, n, cfg, temperature, top_k, top_p)
        procs = list(logits_processor or [])
        h, w = self._tokenizer.grid
        out = []
        with seeded(seed, self.device), torch.inference_mode():
            for i in range(0, len(all_prompts), self.batch_size):
                chunk = all_prompts[i:i + self.batch_size]
                inputs = self.encode_prompts(chunk)
                history = _History(len(chunk), h * w, self.device)
                wrapped = [_with_history(p, history) for p in procs]
                if processor_layout == "2B":
                    guide = [] if cfg > 1 else [_cond_rows()]
                    plist, scale = wrapped + guide, float(cfg)
                else:
                    guide = ClassifierFreeGuidanceLogitsProcessor(float(cfg)) if cfg > 1 else _cond_rows()
                    plist, scale = [guide] + wrapped, 1.0
                original = self.model.prepare_embeddings_for_image_generation

                def spy(next_token: torch.Tensor, _orig=original, _h=history) -> torch.Tensor:
                    _h.append(next_token[: next_token.shape[0] // 2, 0])
                    return _orig(next_token)

                self.model.prepare_embeddings_for_image_generation = spy  # instance attribute, removed below
                try:
                    tokens = self.model.generate(
                        **inputs, generation_mode="image", logits_processor=LogitsProcessorList(plist),
                        guidance_scale=scale, do_sample=temperature > 0,
                        temperature=float(temperature) if temperature > 0 else 1.0,
                        top_k=0 if top_k is None else int(top_k), top_p=1.0 if top_p is None else float(top_p))
                finally:
                    del self.model.prepare_embeddings_for_image_generation
                out.append(tokens.view(len(chunk), h, w).to("cpu", torch.long))
        return torch.cat(out)


# ------------------------------------------------------------------------------------------------- loading

def _image_processor(ckpt: Path) -> Any:
    from transformers import AutoImageProcessor

    try:
        with offline():
            return AutoImageProcessor.from_pretrained(str(ckpt), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_janus_tokenizer(path: str | os.PathLike, *, device: str | torch.device | None = None,
                         spec: str | None = None) -> JanusTokenizer:
    """Only the VQ of a local Janus checkpoint (reads just its tensors from the safetensors files)."""
    from transformers import JanusConfig, JanusVQVAE

    ckpt = checkpoint_dir(path, "janus", spec or f"janus:{path}")
    dev = pick_device(device)
    with offline():
        try:
            config = JanusConfig.from_pretrained(str(ckpt), local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            raise ModelError(f"janus config unreadable in {ckpt}: {' '.join(str(e).split())[:160]}") from None
    state = load_prefixed_state(ckpt, _VQ_PREFIXES)
    vq = None
    if state is not None:
        vq = JanusVQVAE(config.vq_config)
        missing, _ = vq.load_state_dict(state, strict=False)
        if missing:
            vq = None
    if vq is None:  # legacy or .bin checkpoint: load the whole model and keep its VQ
        return load_janus(path, device=dev, spec=spec).tokenizer
    vq = vq.to(dev).float().eval()
    return JanusTokenizer(vq, pixels=PixelRange.from_image_processor(_image_processor(ckpt)),
                          digest=weights_digest(vq))


def load_janus(path: str | os.PathLike, *, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, spec: str | None = None, batch_size: int = 8) -> JanusGenerator:
    """A local Janus / Janus-Pro checkpoint (model + processor) as a guard `Generator`.

    Args:
        path: folder written by `save_pretrained` (model and `JanusProcessor`).
        device: default CUDA when available, else CPU. dtype: default bfloat16 on CUDA, float32 on CPU
            (the VQ always runs in float32).
    Raises:
        ModelError: a missing/wrong path, another architecture, or missing processor files (one line).
    """
    from transformers import GenerationConfig, JanusForConditionalGeneration, JanusProcessor

    ckpt = checkpoint_dir(path, "janus", spec or f"janus:{path}")
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    with offline():
        try:
            processor = JanusProcessor.from_pretrained(str(ckpt), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelError(f"no usable Janus processor/tokenizer files in {ckpt} ({type(e).__name__}); save the "
                             f"processor with processor.save_pretrained() next to the model") from None
        try:
            model = JanusForConditionalGeneration.from_pretrained(str(ckpt), local_files_only=True, dtype=dt)
        except (OSError, ValueError, RuntimeError, TypeError) as e:
            raise ModelError(f"janus weights unreadable in {ckpt}: {' '.join(str(e).split())[:160]}") from None
    model = model.to(dev).eval()
    model.model.vqmodel.float()
    tok = processor.tokenizer
    gc = model.generation_config if model.generation_config is not None else GenerationConfig()
    boi = tok.convert_tokens_to_ids(getattr(tok, "boi_token", None) or "<begin_of_image>")
    if boi is None or boi == tok.unk_token_id:
        raise ModelError(f"the tokenizer in {ckpt} has no <begin_of_image> token; is this a Janus checkpoint?")
    kwargs = dict(getattr(gc, "generation_kwargs", None) or {})
    kwargs.setdefault("boi_token_id", int(boi))
    gc.generation_kwargs = kwargs
    if gc.bos_token_id is None:
        gc.bos_token_id = tok.bos_token_id
    if gc.pad_token_id is None:
        gc.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if gc.bos_token_id is None or gc.pad_token_id is None:
        raise ModelError(f"the checkpoint in {ckpt} defines no bos/pad token ids (generation_config.json or tokenizer)")
    model.generation_config = gc
    vq = model.model.vqmodel
    tokenizer = JanusTokenizer(vq, pixels=PixelRange.from_image_processor(processor.image_processor),
                               digest=weights_digest(vq))
    gen = JanusGenerator(model, processor, tokenizer, f"janus@{config_id(ckpt)[:12]}", batch_size=batch_size)
    gen.sampling_defaults = published_defaults(model, PUBLISHED)
    return gen


def _ear_model(generator: JanusGenerator):
    from .janus_erasure import JanusEarModel

    return JanusEarModel(generator)


def _concept_stream(generator: JanusGenerator):
    from .janus_erasure import JanusConceptStream

    return JanusConceptStream(generator)


KIND = ModelKind(
    name="janus", spec="janus:PATH",
    load=lambda path, spec, **opts: load_janus(path, spec=spec, **opts),
    load_tokenizer=lambda path, spec, **opts: load_janus_tokenizer(path, spec=spec, **opts),
    owns=lambda generator: isinstance(generator, JanusGenerator),
    ear_model=_ear_model, concept_stream=_concept_stream, load_options=("device", "dtype"))
"""The `janus` model kind: generator, tokenizer, EAR and steering (no prompts or judge of its own)."""
