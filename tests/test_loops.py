"""`guard.models.loops.hook_sampler` on two small self-contained loops written in the calling conventions
of LlamaGen (`autoregressive.models.generate.sample`, one token per call, guidance before sampling) and
VAR (`models.var.sample_with_top_k_top_p_`, one whole scale of pn*pn tokens per call, guidance ramped
over scales). The loops are real code in real modules imported by dotted path; only the networks are
tiny random ones."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch

from guard.detect import stats
from guard.errors import ConfigError
from guard.keys import WatermarkKey
from guard.models.loops import hook_sampler
from guard.watermark import GreenLists, WatermarkProcessor

V = 256

LLAMAGEN_GENERATE = '''
import torch
from torch import nn


class TinyGPT(nn.Module):
    """Class-conditional next-token model; class `n_classes` is the null (unconditional) class."""

    def __init__(self, vocab, n_classes=4, d=32):
        super().__init__()
        self.cls = nn.Embedding(n_classes + 1, d)
        self.tok = nn.Embedding(vocab, d)
        self.head = nn.Linear(d, vocab)

    def forward(self, cond, last):            # cond (N,), last (N,) or None -> (N, 1, V)
        h = self.cls(cond)
        if last is not None:
            h = h + self.tok(last)
        return self.head(torch.tanh(h))[:, None, :]


def sample(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, sample_logits=True):
    logits = logits[:, -1, :] / max(temperature, 1e-5)
    if top_k > 0:
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    idx = torch.multinomial(probs, num_samples=1) if sample_logits else torch.topk(probs, k=1, dim=-1)[1]
    return idx, probs


def prefill(model, cond, cfg_scale, **kw):
    logits = model(torch.cat([cond, torch.full_like(cond, model.cls.num_embeddings - 1)]), None)
    c, u = torch.split(logits, len(logits) // 2, dim=0)
    return sample(u + (c - u) * cfg_scale, **kw)[0]


def decode_one_token(model, cond, x, cfg_scale, **kw):
    logits = model(torch.cat([cond, torch.full_like(cond, model.cls.num_embeddings - 1)]), torch.cat([x, x])[:, 0])
    c, u = torch.split(logits, len(logits) // 2, dim=0)
    return sample(u + (c - u) * cfg_scale, **kw)


@torch.no_grad()
def generate(model, cond, max_new_tokens, cfg_scale=4.0, **kw):
    seq = [prefill(model, cond, cfg_scale, **kw)]
    for _ in range(max_new_tokens - 1):
        idx, _ = decode_one_token(model, cond, seq[-1], cfg_scale, **kw)
        seq.append(idx)
    return torch.cat(seq, dim=1)
'''

VAR_HELPERS = '''
import torch


def sample_with_top_k_top_p_(logits_BlV, top_k=0, top_p=0.0, rng=None, num_samples=1):
    B, l, V = logits_BlV.shape
    if top_k > 0:
        kth = logits_BlV.topk(top_k, largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth, -torch.inf)
    return torch.multinomial(logits_BlV.softmax(dim=-1).view(-1, V), num_samples=num_samples, replacement=True,
                             generator=rng).view(B, l, num_samples)
'''

VAR_MODEL = '''
import torch
from torch import nn

from models.helpers import sample_with_top_k_top_p_


class TinyVAR(nn.Module):
    def __init__(self, vocab, n_classes=4, d=32, patch_nums=(1, 2, 3, 4)):
        super().__init__()
        self.patch_nums = patch_nums
        self.cls = nn.Embedding(n_classes + 1, d)
        self.pos = nn.Embedding(sum(p * p for p in patch_nums), d)
        self.tok = nn.Embedding(vocab, d)
        self.head = nn.Linear(d, vocab)
        self.num_classes = n_classes

    @torch.no_grad()
    def autoregressive_infer_cfg(self, B, label_B, g_seed=None, cfg=1.5, top_k=0):
        rng = None if g_seed is None else torch.Generator().manual_seed(g_seed)
        labels = torch.cat([label_B, torch.full_like(label_B, self.num_classes)])
        ctx = self.cls(labels)[:, None, :]                      # (2B, 1, d)
        out, start, K = [], 0, len(self.patch_nums)
        for si, pn in enumerate(self.patch_nums):
            pos = self.pos.weight[start:start + pn * pn][None]  # (1, l, d)
            logits_BlV = self.head(torch.tanh(ctx.mean(1, keepdim=True) + pos))   # (2B, l, V)
            t = cfg * si / (K - 1)
            logits_BlV = (1 + t) * logits_BlV[:B] - t * logits_BlV[B:]
            idx_Bl = sample_with_top_k_top_p_(logits_BlV, rng=rng, top_k=top_k, num_samples=1)[:, :, 0]
            out.append(idx_Bl)
            ctx = torch.cat([ctx, self.tok(torch.cat([idx_Bl, idx_Bl]))], dim=1)
            start += pn * pn
        return torch.cat(out, dim=1)                            # (B, sum pn^2) codes, scale by scale
'''


class _Codebook:
    """What a key needs from a hand-written loop's VQ: an id, the codebook size and the geometry it binds."""

    id = "test-loop-vq-256@000000000000"
    vocab_size = V
    grid = (16, 16)
    image_size = 256
    alive = None


@pytest.fixture(scope="module")
def lists():
    return GreenLists(WatermarkKey.create(_Codebook(), gamma=0.25, n_lists=4), _Codebook())


@pytest.fixture()
def package(tmp_path, monkeypatch):
    """Write a loop's modules under tmp_path, import them, and forget them afterwards."""
    before = set(sys.modules)

    def write(files: dict[str, str]):
        for rel, text in files.items():
            f = tmp_path / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(textwrap.dedent(text))
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.invalidate_caches()

    yield write
    for name in set(sys.modules) - before:
        del sys.modules[name]


@pytest.fixture()
def llamagen(package):
    package({"autoregressive/__init__.py": "", "autoregressive/models/__init__.py": "",
             "autoregressive/models/generate.py": LLAMAGEN_GENERATE})
    return importlib.import_module("autoregressive.models.generate")


@pytest.fixture()
def var(package):
    package({"models/__init__.py": "", "models/helpers.py": VAR_HELPERS, "models/var.py": VAR_MODEL})
    return importlib.import_module("models.var")


def test_llamagen_hook_sees_every_token_and_hard_mode_is_all_green(llamagen, lists):
    torch.manual_seed(0)
    model = llamagen.TinyGPT(V).eval()
    original = llamagen.sample
    proc = WatermarkProcessor(lists, hard=True, seed=3)
    cond = torch.tensor([0, 2, 3])
    with hook_sampler("autoregressive.models.generate.sample", [proc]) as hook:
        assert llamagen.sample is not original
        codes = llamagen.generate(model, cond, max_new_tokens=64, cfg_scale=4.0, temperature=1.0, top_k=0)
    assert llamagen.sample is original
    assert len(hook.calls) == 64
    assert [c.history_shape for c in hook.calls] == [(3, t) for t in range(64)]
    assert {c.scores_shape for c in hook.calls} == {(3, V)}
    assert torch.equal(hook.history, codes)
    assert len(proc.list_indices) == 3
    assert gl_share(lists, codes, proc.list_indices).eq(1.0).all()
    masks = lists.masks[proc.list_indices]
    for i in range(3):
        r = stats.distinct_code_test(codes[i:i + 1], masks[i:i + 1])
        assert float(r.log10_p[0, 0]) < -6
        assert int(r.n_green[0, 0]) == int(r.n_distinct[0])


def gl_share(lists, codes, idx):
    return lists.green_share(codes, idx)


def test_llamagen_soft_mode_raises_green_share_and_unhooked_loop_does_not(llamagen, lists):
    torch.manual_seed(1)
    model = llamagen.TinyGPT(V).eval()
    cond = torch.arange(4)
    proc = WatermarkProcessor(lists, delta=4.0, list_index=1)
    torch.manual_seed(5)
    with hook_sampler("autoregressive.models.generate.sample", [proc]):
        marked = llamagen.generate(model, cond, max_new_tokens=64, cfg_scale=2.0)
    torch.manual_seed(5)
    plain = llamagen.generate(model, cond, max_new_tokens=64, cfg_scale=2.0)
    marked_share = float(lists.green_share(marked, 1).mean())
    plain_share = float(lists.green_share(plain, 1).mean())
    assert marked_share > 0.6 > plain_share


def test_var_hook_sees_every_scale_as_one_step(var, lists):
    torch.manual_seed(0)
    model = var.TinyVAR(V).eval()
    original = var.sample_with_top_k_top_p_
    proc = WatermarkProcessor(lists, hard=True, seed=11)
    with hook_sampler("models.var.sample_with_top_k_top_p_", [proc], convention="scale") as hook:
        codes = model.autoregressive_infer_cfg(2, torch.tensor([1, 3]), g_seed=0, cfg=4.0)
    assert var.sample_with_top_k_top_p_ is original
    assert [(c.history_shape, c.scores_shape) for c in hook.calls] == [
        ((2, 0), (2, 1, V)), ((2, 1), (2, 4, V)), ((2, 5), (2, 9, V)), ((2, 14), (2, 16, V))]
    assert codes.shape == (2, 30) and torch.equal(hook.history, codes)
    assert len(proc.list_indices) == 2          # one list per image, not per scale or per position
    assert lists.green_share(codes, proc.list_indices).eq(1.0).all()


def test_hook_is_removed_after_an_exception_in_the_loop_or_the_body(llamagen, lists):
    torch.manual_seed(0)
    model = llamagen.TinyGPT(V).eval()
    original = llamagen.sample

    def failing(history, scores):
        if history.shape[1] == 5:
            raise RuntimeError("processor failed at step 5")
        return scores

    with pytest.raises(RuntimeError, match="step 5"):
        with hook_sampler("autoregressive.models.generate.sample", [failing]) as hook:
            llamagen.generate(model, torch.tensor([0]), max_new_tokens=16)
    assert llamagen.sample is original and not hook.active
    assert len(hook.calls) == 6
    with pytest.raises(KeyError):
        with hook_sampler("autoregressive.models.generate.sample", []):
            raise KeyError("body")
    assert llamagen.sample is original


def test_bad_targets_and_conventions_give_clear_errors(llamagen):
    with pytest.raises(ConfigError, match="dotted path"):
        hook_sampler("sample", []).__enter__()
    with pytest.raises(ConfigError, match="cannot find a function at 'autoregressive.models.generate.nope'"):
        hook_sampler("autoregressive.models.generate.nope", []).__enter__()
    with pytest.raises(ConfigError, match="cannot find a function"):
        hook_sampler("no_such_package_xyz.sample", []).__enter__()
    with pytest.raises(ConfigError, match="convention must be one of token, scale"):
        hook_sampler("autoregressive.models.generate.sample", [], convention="pixel")
    with pytest.raises(ConfigError, match="callables"):
        hook_sampler("autoregressive.models.generate.sample", [3])


def test_two_generations_in_one_block_need_a_reset(llamagen, lists):
    torch.manual_seed(0)
    model = llamagen.TinyGPT(V).eval()
    proc = WatermarkProcessor(lists, hard=True, seed=4)
    with hook_sampler("autoregressive.models.generate.sample", [proc]) as hook:
        first = llamagen.generate(model, torch.tensor([0, 1]), max_new_tokens=8)
        assert torch.equal(hook.history, first)
        hook.reset()
        second = llamagen.generate(model, torch.tensor([2, 3, 1]), max_new_tokens=8)
        assert torch.equal(hook.history, second) and len(hook.calls) == 8
        with pytest.raises(ConfigError, match="call hook.reset"):
            llamagen.generate(model, torch.tensor([0]), max_new_tokens=2)
    assert len(proc.list_indices) == 5                            # 2 + 3 images, one list each
    assert lists.green_share(torch.cat([first, second]), proc.list_indices).eq(1.0).all()
