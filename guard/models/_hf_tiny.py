"""Tiny randomly initialised Janus and Emu3 checkpoints (real transformers architectures, no download).

They exist to exercise the adapters end to end (save_pretrained -> guard.models.load -> generate ->
decode -> encode -> detect) on machines without the real weights: tests, `bench/gpu_check.py --tiny`.
Their images are noise and their token statistics mean nothing about real models.

    >>> from guard.models._hf_tiny import save_tiny_janus
    >>> path = save_tiny_janus("/tmp/janus-tiny")          # then: guard.models.load(f"janus:{path}")
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

__all__ = ["save_tiny_janus", "save_tiny_emu3", "tiny_word_tokenizer"]

_WORDS = ("a an the of in on at and with big small large tiny huge red blue green yellow purple orange black white "
          "circle square triangle star cross disc cat dog fox bird tree house car boat snow sky sea field "
          "upper lower left right top bottom middle").split()


def tiny_word_tokenizer(vocab: dict[str, int], bos: str, eos: str, pad: str, unk: str, specials: dict[str, str],
                        digits: bool = False):
    """A word-level `PreTrainedTokenizerFast` over `vocab` with named special tokens (`specials`)."""
    from tokenizers import Tokenizer, models
    from tokenizers import pre_tokenizers as pt
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tk.pre_tokenizer = pt.Sequence([pt.Whitespace(), pt.Digits(individual_digits=True)]) if digits else pt.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk,
                                  extra_special_tokens=specials)
    tok.add_special_tokens({"additional_special_tokens": list(specials.values())})
    return tok


def save_tiny_janus(path: str | os.PathLike, *, codebook: int = 1024, grid: int = 8, seed: int = 0,
                    hidden: int = 64, layers: int = 2) -> Path:
    """Write a tiny `JanusForConditionalGeneration` + `JanusProcessor` to `path`; returns the folder.

    The VQ downsamples by 8, so images are `8 * grid` pixels square; the codebook has `codebook` codes of
    dimension 8 (as in Janus); the language model is a `hidden`-wide Llama with `layers` layers.
    """
    from transformers import (GenerationConfig, JanusConfig, JanusForConditionalGeneration, JanusImageProcessor,
                              JanusProcessor, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig)

    path = Path(path)
    specials = ["<pad>", "<bos>", "<eos>", "<begin_of_image>", "<end_of_image>", "<image_placeholder>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + list(_WORDS))}
    tok = tiny_word_tokenizer(vocab, "<bos>", "<eos>", "<pad>", "<unk>",
                              {"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
                               "eoi_token": "<end_of_image>"})
    from tokenizers import processors

    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    size = 8 * grid
    text_cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                           max_position_embeddings=grid * grid + 64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    vision_cfg = JanusVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=size,
                                   patch_size=8, projection_dim=hidden, num_image_tokens=grid * grid)
    vq_cfg = JanusVQVAEConfig(embed_dim=8, num_embeddings=codebook, latent_channels=32, base_channels=32,
                              channel_multiplier=[1, 1, 2, 2], num_res_blocks=1, projection_dim=hidden,
                              image_token_embed_dim=hidden)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = JanusForConditionalGeneration(JanusConfig(text_config=text_cfg, vision_config=vision_cfg,
                                                          vq_config=vq_cfg, image_token_id=5)).eval()
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                               generation_kwargs={"boi_token_id": 3})
    ip = JanusImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = JanusProcessor(image_processor=ip, tokenizer=tok, num_image_tokens=grid * grid)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_tiny_emu3(path: str | os.PathLike, *, codebook: int = 1024, seed: int = 0, hidden: int = 64,
                   layers: int = 2) -> Path:
    """Write a tiny `Emu3ForConditionalGeneration` + `Emu3Processor` to `path`; returns the folder.

    The visual tokens `<|visual token NNNNNN|>` get *shuffled, non-contiguous* BPE ids among the text words,
    so an adapter that assumed a fixed offset would fail. The VQ downsamples by 8 (as the processor
    assumes); load it as `emu3:PATH@SIZE` with SIZE a multiple of 8.
    """
    from transformers import (Emu3Config, Emu3ForConditionalGeneration, Emu3ImageProcessor, Emu3Processor,
                              Emu3TextConfig, Emu3VQVAEConfig, GenerationConfig)

    path = Path(path)
    specials = ["<pad>", "<bos>", "<eos>", "<unk>", "<|image start|>", "<|image end|>", "<|image token|>", "<image>",
                "<|extra_200|>", "<|extra_201|>", "*"]
    rest = [str(d) for d in range(10)] + list(_WORDS) + [f"<|visual token {i:06d}|>" for i in range(codebook)]
    random.Random(seed).shuffle(rest)
    vocab = {w: i for i, w in enumerate(specials + rest)}
    tok = tiny_word_tokenizer(vocab, "<bos>", "<eos>", "<pad>", "<unk>",
                              {"image_token": "<image>", "boi_token": "<|image start|>", "eoi_token": "<|image end|>",
                               "image_wrapper_token": "<|image token|>", "eof_token": "<|extra_201|>"}, digits=True)
    vq = Emu3VQVAEConfig(codebook_size=codebook, embed_dim=4, latent_channels=4, base_channels=32,
                         channel_multiplier=[1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[], hidden_size=32,
                         temporal_downsample_factor=4)
    text = Emu3TextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                          max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Emu3ForConditionalGeneration(Emu3Config(vq_config=vq, text_config=text, vocabulary_map=vocab)).eval()
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    processor = Emu3Processor(image_processor=Emu3ImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3),
                              tokenizer=tok)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
