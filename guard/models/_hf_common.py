"""Shared plumbing of the transformers adapters (Janus, Emu3): offline checkpoint loading, weight
hashing, pixel ranges, seeded sampling.

Every load is local: `local_files_only=True` and `HF_HUB_OFFLINE=1` for the duration of the load, so a
wrong path can never turn into a hub download. Errors are one-line `ModelError`s naming the path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ModelError
from .base import check_sampling_args

__all__ = ["checkpoint_dir", "janus_release_message", "published_defaults", "offline", "weights_digest", "load_prefixed_state", "pick_device", "pick_dtype",
           "seeded", "PixelRange", "check_sampling_args", "config_id", "HFVQTokenizer"]


def checkpoint_dir(path: str | os.PathLike, model_type: str, spec: str) -> Path:
    """Validate a local transformers checkpoint folder of `model_type` ('janus', 'emu3'); return it.

    Raises ModelError (one line) when the path is empty, missing, not a folder, has no config.json, or
    holds another architecture.
    """
    if not str(path).strip():
        raise ModelError(f"model spec {spec!r} has no path; use '{model_type}:/path/to/checkpoint'")
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"{model_type} checkpoint not found: {p} (no such file or directory)")
    if not p.is_dir():
        raise ModelError(f"{model_type} checkpoint must be a folder saved with save_pretrained, got a file: {p}")
    cfg = p / "config.json"
    if not cfg.is_file():
        raise ModelError(f"{p} is not a transformers checkpoint (no config.json); save one with "
                         f"model.save_pretrained({str(p)!r})")
    try:
        found = json.loads(cfg.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise ModelError(f"{cfg} is unreadable ({type(e).__name__})") from None
    if found == "multi_modality" and model_type == "janus":
        raise ModelError(janus_release_message(p))
    if found != model_type:
        hint = {"janus": "janus:PATH", "emu3": "emu3:PATH[@SIZE]"}.get(str(found))
        raise ModelError(f"{p} holds a {found!r} checkpoint, not {model_type!r}; "
                         + (f"load it with --model {hint}" if hint else f"guard's {model_type} adapter cannot load it"))
    return p


JANUS_CONVERTER = "src/transformers/models/janus/convert_janus_weights_to_hf.py"


def janus_release_message(path: Path) -> str:
    """One line for a Janus folder in DeepSeek's original release format (`model_type: multi_modality`).

    transformers ships the conversion as a script in its source tree only (no mapping in the installed
    package that could convert at load time), so the message names the exact command to run once.
    """
    import transformers

    out = f"{path}-hf"
    return (f"{path} is Janus in DeepSeek's original release format (model_type 'multi_modality'), which "
            f"transformers {transformers.__version__} cannot load; convert it once with transformers' script (in a "
            f"transformers {transformers.__version__} source checkout, with accelerate installed): python "
            f"{JANUS_CONVERTER} --repo_id deepseek-ai/Janus-Pro-1B --local_dir {path} --output_dir {out} "
            f"--safe_serialization   then use --model janus:{out}")


def published_defaults(model: Any, published: dict) -> dict:
    """Sampling defaults (cfg, temperature, top_k, top_p): what the checkpoint's generation_config.json sets
    explicitly (`guidance_scale`, `temperature`, `top_k`, `top_p`), else the model's published defaults."""
    gc = getattr(model, "generation_config", None)
    try:
        set_here = gc.to_diff_dict() if gc is not None else {}
    except (AttributeError, TypeError, ValueError):
        set_here = {}
    out = dict(published)
    for ours, theirs in (("cfg", "guidance_scale"), ("temperature", "temperature"), ("top_k", "top_k"),
                         ("top_p", "top_p")):
        v = set_here.get(theirs)
        if v is not None:
            out[ours] = v
    if out.get("top_k") == 0:
        out["top_k"] = None
    if out.get("top_p") == 1.0:
        out["top_p"] = None
    return out


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Forbid hub access while loading (HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1), restoring the env after."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and raw bytes, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _safetensors_files(ckpt: Path) -> list[Path]:
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ModelError(f"{index} is unreadable ({type(e).__name__})") from None
        return [ckpt / f for f in sorted(set(weight_map.values()))]
    single = ckpt / "model.safetensors"
    return [single] if single.is_file() else []


def load_prefixed_state(ckpt: Path, prefixes: Sequence[str]) -> dict[str, torch.Tensor] | None:
    """Tensors under the first of `prefixes` found in the checkpoint's safetensors, prefix stripped.

    Reads only those tensors (a detector needs the VQ, not the multi-GB language model). Returns None when
    the checkpoint has no safetensors or none of the prefixes occur (the caller then loads the full model).
    """
    from safetensors import SafetensorError, safe_open

    files = _safetensors_files(ckpt)
    if not files:
        return None
    for prefix in prefixes:
        state: dict[str, torch.Tensor] = {}
        for f in files:
            if not f.is_file():
                raise ModelError(f"checkpoint shard missing: {f}")
            try:
                with safe_open(str(f), framework="pt") as fh:
                    for k in fh.keys():
                        if k.startswith(prefix):
                            state[k[len(prefix):]] = fh.get_tensor(k)
            except (SafetensorError, OSError) as e:
                raise ModelError(f"checkpoint weights unreadable: {f} ({' '.join(str(e).split())[:120]})") from None
        if state:
            return state
    return None


def config_id(ckpt: Path) -> str:
    """Cheap stable id of a checkpoint: SHA-256 of config.json plus the weight files' names and sizes."""
    h = hashlib.sha256((ckpt / "config.json").read_bytes())
    for f in sorted(ckpt.glob("*.safetensors")) + sorted(ckpt.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()


def pick_device(device: str | torch.device | None) -> torch.device:
    """`device`, or CUDA when available, else CPU.

    Raises ConfigError (one line) for a name torch does not know and for a device this machine lacks
    (CUDA without a driver or a GPU, `cuda:N` past the last GPU, an unavailable backend such as mps), before
    any weights are moved there.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r}: CUDA is not available on this machine (no GPU or driver, "
                              f"or a CPU-only torch); use 'cpu'")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"device {str(device)!r}: this machine has {n} CUDA device{'s' if n != 1 else ''} "
                              f"(cuda:0 to cuda:{n - 1})")
        return dev
    try:                                    # other backends (mps, xpu, ...): can a tensor live there?
        torch.empty(0, device=dev)
    except Exception:  # noqa: BLE001 - torch raises RuntimeError, AssertionError... per backend
        raise ConfigError(f"device {str(device)!r} is not available on this machine; use 'cpu', 'cuda' or "
                          f"'cuda:N'") from None
    return dev


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`dtype`, or bfloat16 on CUDA and float32 on CPU."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run with torch's global RNG (which transformers' samplers use) seeded, then restore it; no-op for None."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


class PixelRange:
    """The checkpoint's pixel normalisation: unit [0, 1] <-> model space `(x - mean) / std` (per channel).

    Taken from the saved image processor (`image_mean`, `image_std`) when there is one, else 0.5 / 0.5,
    i.e. [-1, 1] as the original Janus and Emu3 code use.
    """

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        self.mean = torch.tensor(list(mean) if mean is not None else [0.5] * 3, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(list(std) if std is not None else [0.5] * 3, dtype=torch.float32).view(1, 3, 1, 1)

    @classmethod
    def from_image_processor(cls, ip: Any) -> "PixelRange":
        if ip is None:
            return cls()
        return cls(getattr(ip, "image_mean", None), getattr(ip, "image_std", None))

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean.to(x.device)) / self.std.to(x.device)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * self.std.to(x.device) + self.mean.to(x.device)).clamp(0, 1)

    def to_dict(self) -> dict:
        return {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}


class HFVQTokenizer:
    """What the Janus and Emu3 tokenizer adapters share: `id`, `grid`, `image_size`, `alive` (None: every
    code counts), `device`, and the input checks. Subclasses set `vq`, `_id`, `_grid`, `_image_size`,
    `batch_size` and define `vocab_size`, `encode`, `decode` and `embeddings`."""

    vq: Any
    _id: str
    _grid: tuple[int, int]
    _image_size: int

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self._id!r}, grid={self._grid}, image_size={self._image_size})"

    @property
    def id(self) -> str:
        return self._id

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def grid(self) -> tuple[int, int]:
        return self._grid

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def alive(self) -> torch.Tensor | None:
        return None

    @property
    def device(self) -> torch.device:
        return self.vq.quantize.embedding.weight.device

    def _check_images(self, images: torch.Tensor) -> None:
        s = self._image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ConfigError(f"images must be float (B,3,{s},{s}) in [0,1], got shape {tuple(images.shape)}")

    def _check_codes(self, codes: torch.Tensor) -> None:
        h, w = self._grid
        if codes.ndim != 3 or tuple(codes.shape[1:]) != (h, w):
            raise ConfigError(f"codes must be long (B,{h},{w}), got shape {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.vocab_size):
            raise ConfigError(f"codes must lie in [0, {self.vocab_size}), got range [{int(codes.min())}, "
                              f"{int(codes.max())}]")


class HFGenerator:
    """What the Janus and Emu3 generator adapters share: the transformers model, its processor, the guard
    tokenizer, the generator id and the device. Subclasses define `encode_prompts` and `generate`."""

    def __init__(self, model: Any, processor: Any, tokenizer: HFVQTokenizer, model_id: str,
                 batch_size: int = 8) -> None:
        self.model = model
        self.processor = processor
        self._tokenizer = tokenizer
        self._id = model_id
        self.batch_size = int(batch_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self._id!r}, tokenizer={self._tokenizer.id!r})"

    id = property(lambda self: self._id, doc="The generator id (config and weight-file hash).")
    tokenizer = property(lambda self: self._tokenizer, doc="The guard `Tokenizer` over the checkpoint's VQ.")
    device = property(lambda self: next(self.model.parameters()).device, doc="Where the model runs.")
