"""Hooks for hand-written sampling loops (LlamaGen, VAR, your own): guard processors in one `with` line.

Many AR image generators are not `transformers` models: they sample in their own loop and call a
module-level sampling function at every step. `hook_sampler` replaces that function, found by dotted
path, with a wrapper that hands the step's logits to guard processors as `(history, scores)` and records
what was sampled, then restores the original on exit — also when the loop raises.

Two calling conventions:

* ``"token"`` — one token per call, LlamaGen's `autoregressive.models.generate.sample(logits, temperature,
  top_k, top_p, sample_logits)`: `logits` (B, T, V) (the last position is sampled) or (B, V), already
  guided; returns `(idx (B, 1), probs)`. Processors see `history` (B, t) and `scores` (B, V).
* ``"scale"`` — one whole scale per call, VAR's `models.var.sample_with_top_k_top_p_(logits_BlV, ...)`:
  `logits_BlV` (B, pn², V), already guided (VAR ramps guidance over scales); returns (B, pn², 1). A scale
  is one step: its pn² positions are sampled jointly, so each is processed with the same history (the
  codes of all earlier scales, (B, Σ earlier pn²)) — the processor is called once per position with
  `(history, scores[:, j])`, which keeps per-image processors (one green list per image) correct.

The dotted path must name the function *where the loop looks it up*: LlamaGen's `prefill` and
`decode_one_token` read the global `sample` of `autoregressive.models.generate`; VAR's loop reads
`sample_with_top_k_top_p_` from `models.var` (imported there from `models.helpers`), so wrap
`models.var.sample_with_top_k_top_p_`, not the helpers module.

    >>> from guard.models.loops import hook_sampler
    >>> proc = WatermarkProcessor(GreenLists(key, vq_tokenizer), delta=2.0)         # doctest: +SKIP
    >>> with hook_sampler("autoregressive.models.generate.sample", [proc]) as hook:  # doctest: +SKIP
    ...     codes = generate(gpt, cond, max_new_tokens=256, cfg_scale=4.0)
    >>> hook.history.shape, len(hook.calls)                                         # doctest: +SKIP
    (torch.Size([8, 256]), 256)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["SamplerHook", "HookCall", "hook_sampler", "CONVENTIONS"]

CONVENTIONS = ("token", "scale")


@dataclass(frozen=True)
class HookCall:
    """One call of the wrapped sampler: step index, history (B, t) and logits shapes as the sampler got them."""

    step: int
    history_shape: tuple[int, ...]
    scores_shape: tuple[int, ...]


def _resolve(target: str) -> tuple[Any, str]:
    """'pkg.mod.func' or 'pkg.mod.Class.method' -> (owner object, attribute name)."""
    if not isinstance(target, str) or "." not in target or not all(target.split(".")):
        raise ConfigError(f"target must be a dotted path like 'autoregressive.models.generate.sample', got {target!r}")
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            owner: Any = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as e:
            if e.name and not ".".join(parts[:i]).startswith(e.name):
                raise ConfigError(f"importing {'.'.join(parts[:i])!r} failed: missing module {e.name!r}") from None
            continue
        try:
            for name in parts[i:-1]:
                owner = getattr(owner, name)
        except AttributeError:
            break
        if not callable(getattr(owner, parts[-1], None)):
            break
        return owner, parts[-1]
    raise ConfigError(f"cannot find a function at {target!r}: import the loop's package (is it on sys.path?) and "
                      f"name the function where the loop looks it up")


class SamplerHook:
    """Context manager wrapping a loop's sampling function so `processors` see `(history, scores)`.

    Args:
        target: dotted path of the sampling function as the loop looks it up.
        processors: callables `(history long (B, t), scores float (B, V)) -> scores`, applied in order
            (guard's `WatermarkProcessor`, any transformers `LogitsProcessor`).
        convention: "token" (LlamaGen-style, one token per call) or "scale" (VAR-style, one scale per call).

    Attributes:
        calls: a `HookCall` per sampler call. history: long (B, t) codes sampled so far in this run.

    One generation per `with` block, or `reset()` between generations (the history restarts; a
    `WatermarkProcessor` then starts a new batch of images).
    """

    def __init__(self, target: str, processors: Sequence[Callable] = (), *, convention: str = "token") -> None:
        if convention not in CONVENTIONS:
            raise ConfigError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
        procs = list(processors)
        for p in procs:
            if not callable(p):
                raise ConfigError(f"processors must be callables (input_ids, scores) -> scores, got {type(p).__name__}")
        self.target = target
        self.processors = procs
        self.convention = convention
        self._owner: Any = None
        self._name = ""
        self._original: Callable | None = None
        self.reset()

    def reset(self) -> None:
        """Start a new run: empty history and call log."""
        self.calls: list[HookCall] = []
        self._hist: torch.Tensor | None = None

    @property
    def history(self) -> torch.Tensor:
        """Codes sampled so far, long (B, t) on the sampler's device (t = 0 before the first call)."""
        return self._hist if self._hist is not None else torch.zeros(0, 0, dtype=torch.long)

    def _history_like(self, b: int, device: torch.device) -> torch.Tensor:
        if self._hist is None:
            self._hist = torch.zeros(b, 0, dtype=torch.long, device=device)
        if self._hist.shape[0] != b:
            raise ConfigError(f"the sampler got a batch of {b} after {self._hist.shape[0]} in the same run; call "
                              f"hook.reset() between generations")
        return self._hist

    def _record(self, idx: torch.Tensor) -> None:
        self._hist = torch.cat([self._hist, idx.detach().long().to(self._hist.device)], dim=1)

    def _apply(self, history: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for p in self.processors:
            scores = p(history, scores)
        return scores

    # ------------------------------------------------------------------------------------ wrappers
    def _token(self, logits: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if logits.ndim not in (2, 3):
            raise ConfigError(f"'token' convention expects logits (B, T, V) or (B, V), got {tuple(logits.shape)}")
        scores = logits[:, -1, :] if logits.ndim == 3 else logits
        history = self._history_like(scores.shape[0], scores.device)
        self.calls.append(HookCall(len(self.calls), tuple(history.shape), tuple(scores.shape)))
        new = self._apply(history, scores)
        out = self._original(new[:, None, :] if logits.ndim == 3 else new, *args, **kwargs)
        idx = out[0] if isinstance(out, (tuple, list)) else out
        self._record(idx.reshape(scores.shape[0], -1)[:, -1:])
        return out

    def _scale(self, logits: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if logits.ndim != 3:
            raise ConfigError(f"'scale' convention expects logits (B, pn*pn, V), got {tuple(logits.shape)}")
        b, l, _ = logits.shape
        history = self._history_like(b, logits.device)
        self.calls.append(HookCall(len(self.calls), tuple(history.shape), tuple(logits.shape)))
        new = torch.stack([self._apply(history, logits[:, j, :]) for j in range(l)], dim=1) if self.processors \
            else logits
        out = self._original(new, *args, **kwargs)
        idx = out[0] if isinstance(out, (tuple, list)) else out
        self._record(idx.reshape(b, l, -1)[:, :, 0])
        return out

    # ------------------------------------------------------------------------------------ context
    def __enter__(self) -> "SamplerHook":
        if self._original is not None:
            raise ConfigError(f"this hook on {self.target!r} is already active; use one `with` block at a time")
        self._owner, self._name = _resolve(self.target)
        self._original = getattr(self._owner, self._name)
        impl = self._token if self.convention == "token" else self._scale

        def wrapper(logits, *args, **kwargs):
            return impl(logits, *args, **kwargs)

        wrapper.__wrapped__ = self._original  # type: ignore[attr-defined]
        wrapper.__guard_hook__ = self  # type: ignore[attr-defined]
        self._wrapper = wrapper
        setattr(self._owner, self._name, wrapper)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            setattr(self._owner, self._name, self._original)
        finally:
            self._original = None
            self._wrapper = None

    @property
    def active(self) -> bool:
        return self._original is not None


def hook_sampler(target: str, processors: Sequence[Callable] = (), *, convention: str = "token") -> SamplerHook:
    """`with hook_sampler("pkg.mod.sample", [proc]) as hook:` — see `SamplerHook`."""
    return SamplerHook(target, processors, convention=convention)
