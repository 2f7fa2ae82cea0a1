"""WatermarkProcessor: exact biasing, per-image lists, both score layouts, and real generation."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from guard.errors import ConfigError
from guard.keys import WatermarkKey
from guard.watermark import RED_LOGIT, GreenLists, WatermarkProcessor

GAMMA = 0.25
PROMPTS = ["a big red disc in the upper left", "a small blue box in the lower right",
           "a huge yellow star in the upper right and a tiny green plus in the lower left",
           "a little purple wedge at the bottom left"]


class Vocab:
    """A vocabulary-only tokenizer for processor unit tests (no weights needed)."""

    def __init__(self, v: int = 64) -> None:
        self.id, self.vocab_size, self.alive = f"unit-vq-{v}", v, None


@pytest.fixture(scope="module")
def unit_lists() -> GreenLists:
    tok = Vocab()
    key = WatermarkKey._from_secret(b"\x01" * 32, gamma=GAMMA, n_lists=4, tokenizer_id=tok.id, vocab_size=64)
    return GreenLists(key, tok)


@pytest.fixture(scope="module")
def lists(gen) -> GreenLists:
    key = WatermarkKey._from_secret(b"\x02" * 32, gamma=GAMMA, n_lists=8, tokenizer_id=gen.tokenizer.id,
                                    vocab_size=gen.tokenizer.vocab_size)
    return GreenLists(key, gen.tokenizer)


# ------------------------------------------------------------------------------------------ units
def test_is_a_transformers_logits_processor(unit_lists):
    proc = WatermarkProcessor(unit_lists, list_index=1)
    assert isinstance(proc, LogitsProcessor)
    scores = torch.randn(2, 64)
    out = LogitsProcessorList([proc])(torch.zeros(2, 3, dtype=torch.long), scores)
    assert torch.allclose(out, scores + 2.0 * unit_lists.masks[1].float())


@pytest.mark.parametrize("kwargs, message", [
    ({"delta": 0.0}, "delta must be a finite number > 0, got 0.0"),
    ({"delta": -1}, "delta must be"),
    ({"delta": float("nan")}, "delta must be"),
    ({"delta": float("inf")}, "delta must be"),
    ({"list_index": 4}, r"list index must be an int in \[0, 4\), got 4"),
    ({"list_index": [0, -1]}, "list index"),
    ({"list_index": []}, "empty"),
    ({"list_index": 1, "seed": 3}, "not both"),
    ({"seed": -1}, "seed must be an int >= 0"),
])
def test_arguments_are_checked_at_construction(unit_lists, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        WatermarkProcessor(unit_lists, **kwargs)


def test_returns_new_scores_with_the_exact_bias(unit_lists):
    proc = WatermarkProcessor(unit_lists, delta=1.5, list_index=[2, 0, 3])
    scores = torch.randn(3, 64)
    before = scores.clone()
    out = proc(torch.zeros(3, 0, dtype=torch.long), scores)
    assert out is not scores and torch.equal(scores, before)
    expected = scores + 1.5 * unit_lists.masks[[2, 0, 3]].float()
    assert torch.equal(out, expected)
    assert proc.list_indices == [2, 0, 3]


def test_two_b_layout_biases_cond_and_uncond_rows_alike(unit_lists):
    proc_b = WatermarkProcessor(unit_lists, seed=5)
    proc_2b = WatermarkProcessor(unit_lists, seed=5)
    cond, uncond = torch.randn(3, 64), torch.randn(3, 64)
    ids = torch.zeros(3, 7, dtype=torch.long)
    s = 4.0
    after_cfg = proc_b(ids, uncond + s * (cond - uncond))
    both = proc_2b(ids, torch.cat([cond, uncond]))
    before_cfg = both[3:] + s * (both[:3] - both[3:])
    assert proc_b.list_indices == proc_2b.list_indices
    assert torch.allclose(after_cfg, before_cfg, atol=1e-5)


def test_hard_mode_through_guidance_has_no_nan_in_any_dtype(unit_lists):
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        proc = WatermarkProcessor(unit_lists, hard=True, list_index=3)
        scores = (torch.randn(4, 64) * 8).to(dtype)
        scores[0, 5] = float("-inf")  # an earlier processor may already have masked a code
        both = proc(torch.zeros(2, 1, dtype=torch.long), scores)
        guided = both[2:] + 10.0 * (both[:2] - both[2:])
        finite_rows = guided[1]
        assert torch.isfinite(finite_rows).all(), dtype
        probs = torch.softmax(guided.float(), -1)
        assert not probs.isnan().any()
        assert probs[:, ~unit_lists.masks[3]].sum() == 0
        assert (both[1][~unit_lists.masks[3]] <= RED_LOGIT + 8 * 8).all()


def test_indices_are_lazy_seeded_and_extend_per_batch(unit_lists):
    a, b = WatermarkProcessor(unit_lists, seed=11), WatermarkProcessor(unit_lists, seed=11)
    assert a.list_indices == []
    for t in range(3):
        a(torch.zeros(5, t, dtype=torch.long), torch.randn(5, 64))
        b(torch.zeros(5, t, dtype=torch.long), torch.randn(5, 64))
    assert len(a.list_indices) == 5 and a.list_indices == b.list_indices
    assert all(0 <= k < 4 for k in a.list_indices)
    # A shorter input starts a new batch (a chunked generator); its images get the next indices.
    a(torch.zeros(2, 0, dtype=torch.long), torch.randn(2, 64))
    assert len(a.list_indices) == 7
    whole = WatermarkProcessor(unit_lists, seed=11)
    whole(torch.zeros(7, 0, dtype=torch.long), torch.randn(7, 64))
    assert whole.list_indices == a.list_indices                    # index i depends only on (seed, i)
    assert len(set(WatermarkProcessor(unit_lists, seed=12)._next_indices(40))) > 1


def test_csprng_indices_cover_the_pool(unit_lists):
    proc = WatermarkProcessor(unit_lists)
    proc(torch.zeros(400, 1, dtype=torch.long), torch.randn(400, 64))
    assert set(proc.list_indices) == {0, 1, 2, 3}


def test_constant_input_ids_keep_the_same_lists(unit_lists):
    """Janus passes the prompt as input_ids at every step: the lists must not be redrawn per token."""
    proc = WatermarkProcessor(unit_lists)
    prompt = torch.ones(3, 9, dtype=torch.long)
    outs = [proc(prompt, torch.zeros(6, 64)) for _ in range(20)]
    assert len(proc.list_indices) == 3
    assert all(torch.equal(o, outs[0]) for o in outs)


def test_given_indices_are_consumed_across_batches(unit_lists):
    proc = WatermarkProcessor(unit_lists, list_index=[3, 2, 1])
    proc(torch.zeros(2, 0, dtype=torch.long), torch.randn(2, 64))
    proc(torch.zeros(1, 0, dtype=torch.long), torch.randn(1, 64))
    proc(torch.zeros(1, 1, dtype=torch.long), torch.randn(1, 64))   # same batch, next token
    assert proc.list_indices == [3, 2, 1]
    with pytest.raises(ConfigError, match="one index per image"):
        proc(torch.zeros(1, 0, dtype=torch.long), torch.randn(1, 64))


def test_shape_errors_are_clear(unit_lists):
    proc = WatermarkProcessor(unit_lists)
    with pytest.raises(ConfigError, match="rows for a batch of 2"):
        proc(torch.zeros(2, 1, dtype=torch.long), torch.randn(3, 64))
    with pytest.raises(ConfigError, match="V=64"):
        proc(torch.zeros(2, 1, dtype=torch.long), torch.randn(2, 65))


def test_check_sampling_and_record(unit_lists):
    proc = WatermarkProcessor(unit_lists, delta=2.0, list_index=1)
    assert proc.applied is False                                   # never called yet
    proc(torch.zeros(1, 0, dtype=torch.long), torch.randn(1, 64))
    assert proc.record() == {"list_indices": [1], "delta": 2.0, "hard": False, "key_id": unit_lists.key_id,
                             "applied": True}
    for kwargs in ({"top_k": 1}, {"temperature": 0}, {"do_sample": False}):
        with pytest.warns(UserWarning, match="greedy"):
            assert proc.check_sampling(**kwargs) is False
        assert proc.record()["applied"] is False
    assert proc.check_sampling(temperature=1.0, top_k=50) is True and proc.applied
    with pytest.raises(ConfigError, match="top_k=1"):
        WatermarkProcessor(unit_lists, strict=True).check_sampling(top_k=1)
    hard = WatermarkProcessor(unit_lists, hard=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hard.check_sampling(temperature=0) is True          # argmax of hard scores is green
    assert hard.record()["delta"] is None and hard.record()["hard"] is True


# ------------------------------------------------------------------------------ real generation
def shares(lists: GreenLists, codes: torch.Tensor, proc: WatermarkProcessor) -> torch.Tensor:
    return lists.green_share(codes, proc.list_indices)


def test_hard_mode_generates_only_green_tokens(gen, lists):
    for layout in ("B", "2B"):
        proc = WatermarkProcessor(lists, hard=True, seed=1)
        codes = gen.generate(PROMPTS, n=2, seed=1, cfg=3.0, logits_processor=[proc], processor_layout=layout)
        assert codes.shape == (8, 16, 16)
        assert len(proc.list_indices) == 8 and proc.applied
        assert shares(lists, codes, proc).min() == 1.0, layout


def test_soft_bias_raises_the_green_share(gen, lists):
    proc = WatermarkProcessor(lists, delta=2.0, seed=2)
    wm = gen.generate(PROMPTS, n=4, seed=2, cfg=3.0, logits_processor=[proc])
    clean = gen.generate(PROMPTS, n=4, seed=2, cfg=3.0)
    s_wm, s_clean = shares(lists, wm, proc).mean(), shares(lists, clean, proc).mean()
    assert s_wm > GAMMA + 0.15, (float(s_wm), float(s_clean))
    assert s_wm > s_clean + 0.15, (float(s_wm), float(s_clean))


def test_two_b_layout_samples_the_same_images(gen, lists):
    out = {}
    for layout in ("B", "2B"):
        proc = WatermarkProcessor(lists, delta=2.0, seed=3)
        out[layout] = (gen.generate(PROMPTS, n=2, seed=3, cfg=3.0, logits_processor=[proc],
                                    processor_layout=layout), proc.list_indices)
    assert out["B"][1] == out["2B"][1]
    agree = (out["B"][0] == out["2B"][0]).float().mean()
    assert agree > 0.99, float(agree)


def test_chunked_generation_keeps_one_list_per_image(gen, lists):
    small = copy.copy(gen)
    small.batch_size = 3                                            # 7 images -> chunks of 3, 3, 1
    proc = WatermarkProcessor(lists, hard=True, list_index=[0, 1, 2, 3, 4, 5, 6])
    codes = small.generate(PROMPTS[:1], n=7, seed=4, cfg=3.0, logits_processor=[proc])
    assert proc.list_indices == [0, 1, 2, 3, 4, 5, 6]
    assert shares(lists, codes, proc).min() == 1.0


def test_greedy_generation_marks_soft_watermark_not_applied(gen, lists):
    proc = WatermarkProcessor(lists, delta=2.0, seed=5)
    with pytest.warns(UserWarning):
        proc.check_sampling(temperature=0)
    gen.generate(PROMPTS[:1], n=1, seed=5, temperature=0, logits_processor=[proc])
    assert proc.record()["applied"] is False
