"""ConceptSteering on the shipped reference GPT: exact no-op at eta 0, exact direction, both layouts agree."""

from __future__ import annotations

import pytest
import torch

from guard.errors import ConfigError
from guard.erasure import ConceptSteering
from guard.models import capability
from guard.models.reference.gpt import null_prompt, tokenize_prompts

PROMPTS = ["a large red circle in the top left", "a small blue square in the bottom right"]


def test_eta_zero_is_an_exact_no_op(gen):
    plain = gen.generate(PROMPTS, n=1, seed=3)
    steer = ConceptSteering(gen, {"a circle": 0.0})
    assert steer.stream is None  # no extra pass is even built
    assert torch.equal(gen.generate(PROMPTS, n=1, seed=3, logits_processor=[steer]), plain)


def test_stream_matches_teacher_forced_logits(gen):
    codes = gen.generate(PROMPTS, n=1, seed=4).flatten(1)
    stream = capability(gen, "concept_stream")(gen)          # the reference kind's stream over its GPT
    got = [stream.start(["a circle", ""], 2)] + [stream.step(codes[:, t]) for t in range(7)]
    text = torch.cat([tokenize_prompts(["a circle"] * 2), null_prompt(2)])
    with torch.no_grad():
        want = gen.gpt(text, torch.cat([codes, codes])[:, :8])
    for t in range(8):
        torch.testing.assert_close(got[t], want[:, t].float(), atol=1e-4, rtol=1e-4)


def test_direction_is_eta_times_concept_minus_uncond(gen):
    codes = gen.generate(PROMPTS[:1], n=2, seed=5).flatten(1)
    text = torch.cat([tokenize_prompts(["a circle"] * 2), tokenize_prompts(["a red shape"] * 2), null_prompt(2)])
    with torch.no_grad():
        tf = gen.gpt(text, torch.cat([codes, codes, codes])[:, :4]).float()
    steer = ConceptSteering(gen, {"a circle": 2.0, "a red shape": 0.5})
    scores = torch.randn(2, gen.tokenizer.vocab_size)
    for t in range(4):
        out = steer(codes[:, :t], scores)
        want = scores - 2.0 * (tf[0:2, t] - tf[4:6, t]) - 0.5 * (tf[2:4, t] - tf[4:6, t])
        torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
    assert scores.abs().sum() > 0 and not torch.equal(out, scores)


def test_both_layouts_give_the_same_guided_logits(gen):
    codes = gen.generate(PROMPTS, n=1, seed=6).flatten(1)
    b_layout, two_b = ConceptSteering(gen, {"a circle": 3.0}), ConceptSteering(gen, {"a circle": 3.0})
    v = gen.tokenizer.vocab_size
    cond, uncond = torch.randn(2, v), torch.randn(2, v)
    for t in range(3):
        guided_first = b_layout(codes[:, :t], uncond + 3.0 * (cond - uncond))
        rows = two_b(codes[:, :t], torch.cat([cond, uncond]))
        guided_after = rows[2:] + 3.0 * (rows[:2] - rows[2:])
        torch.testing.assert_close(guided_first, guided_after, atol=1e-4, rtol=1e-4)


def test_steering_changes_generation(gen):
    plain = gen.generate(PROMPTS, n=1, seed=7)
    steered = gen.generate(PROMPTS, n=1, seed=7, logits_processor=[ConceptSteering(gen, {"a circle": 3.0})])
    assert (steered != plain).float().mean() > 0.3


@pytest.mark.parametrize("concepts", [{}, {"": 1.0}, {"a circle": -1.0}, {"a circle": float("nan")},
                                      {"a circle": True}, ["a circle"]])
def test_bad_concepts_are_rejected(gen, concepts):
    with pytest.raises(ConfigError):
        ConceptSteering(gen, concepts)


def test_joining_mid_generation_is_an_error(gen):
    steer = ConceptSteering(gen, {"a circle": 1.0})
    with pytest.raises(ConfigError, match="step 5"):
        steer(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 1024))


def test_anchor_replaces_the_null_prompt_in_the_direction(gen):
    codes = gen.generate(PROMPTS[:1], n=2, seed=8).flatten(1)
    text = torch.cat([tokenize_prompts(["a circle"] * 2), tokenize_prompts(["a red shape"] * 2),
                      tokenize_prompts(["a square"] * 2), null_prompt(2)])
    with torch.no_grad():
        tf = gen.gpt(text, torch.cat([codes] * 4)[:, :3]).float()
    steer = ConceptSteering(gen, {"a circle": 2.0, "a red shape": 0.5}, anchors={"a circle": "a square"})
    scores = torch.randn(2, gen.tokenizer.vocab_size)
    for t in range(3):
        want = scores - 2.0 * (tf[0:2, t] - tf[4:6, t]) - 0.5 * (tf[2:4, t] - tf[6:8, t])
        torch.testing.assert_close(steer(codes[:, :t], scores), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("anchors, match", [({"a disc": "a square"}, "not one of the concepts"),
                                            ({"a circle": ""}, "non-empty prompt"),
                                            ({"a circle": "a circle"}, "other than the concept"),
                                            (["a square"], "must map")])
def test_bad_anchors_are_rejected(gen, anchors, match):
    with pytest.raises(ConfigError, match=match):
        ConceptSteering(gen, {"a circle": 1.0}, anchors=anchors)
