"""EAR through the Janus adapter, on a tiny randomly initialised `JanusForConditionalGeneration`.

Random weights draw no concept, so this checks the plumbing on the real architecture: teacher-forced hidden
states are causal and match the adapter's own sampling positions, training touches only the chosen layers'
attention projections, and the delta reloads to identical generations."""

from __future__ import annotations

import pytest
import torch

from guard.erasure import EarConfig, changed_tensors, load_erased, save_delta, train_ear
from guard.erasure import ear_model_for
from guard.models.janus_erasure import JanusConceptStream, JanusEarModel
from guard.erasure.pairs import PromptPair


@pytest.fixture(scope="module")
def janus(tmp_path_factory):
    from guard.models import load
    from guard.models._hf_tiny import save_tiny_janus

    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        yield load(f"janus:{save_tiny_janus(tmp_path_factory.mktemp('janus') / 'tiny-janus')}")
    finally:
        mp.undo()


def test_hidden_states_are_causal_and_give_the_generation_logits(janus):
    model = ear_model_for(janus)
    assert isinstance(model, JanusEarModel)
    codes = janus.generate(["a red circle"], n=2, seed=0, cfg=1.0, temperature=0).flatten(1)
    text = model.encode_prompts(["a red circle"] * 2)
    with torch.no_grad():
        h = model.image_hidden(janus.model, text, codes)
        assert h.shape[:2] == codes.shape
        changed = codes.clone()
        changed[:, 10:] = (changed[:, 10:] + 1) % janus.tokenizer.vocab_size
        h2 = model.image_hidden(janus.model, text, changed)
        logits = janus.model.model.generation_head(h.to(next(janus.model.parameters()).dtype)).float()
    torch.testing.assert_close(h[:, :11], h2[:, :11], atol=1e-4, rtol=1e-4)  # position t sees codes < t only
    assert not torch.allclose(h[:, 12:], h2[:, 12:])
    # Greedy generation picked the argmax of exactly these teacher-forced logits.
    assert (logits.argmax(-1) == codes).float().mean() > 0.95


def test_ear_trains_only_attention_of_chosen_layers_and_delta_reloads(janus, tmp_path):
    model = ear_model_for(janus)
    prompts = ["a red circle", "a big red dog in the snow"]
    codes = janus.generate(prompts, n=1, seed=1, cfg=5.0).flatten(1)
    pairs = [PromptPair(p, p.replace("red", "blue"), c) for p, c in zip(prompts, codes)]
    student, log = train_ear(model, pairs, EarConfig(window=16, mu=None, layers=(0,), epochs=6, lr=2e-3, batch_size=2))
    delta = changed_tensors(model.module, student)
    assert delta and all(".layers.0.self_attn." in k for k in delta)
    assert {k.rsplit(".", 2)[-2] for k in delta} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    first = [e["loss"] for e in log if e["epoch"] == 0]
    last = [e["loss"] for e in log if e["epoch"] == 5]
    assert sum(last) < sum(first)
    path = save_delta(tmp_path / "janus-erase.safetensors", delta, {"concept": "red", "base_model": janus.id})
    erased = load_erased(janus, path)
    trained = model.with_module(student)
    assert torch.equal(erased.generate(prompts, n=1, seed=2), trained.generate(prompts, n=1, seed=2))
    assert erased.id != janus.id


def test_concept_steering_stream_matches_teacher_forcing_and_eta_zero_is_a_no_op(janus):
    from guard.erasure import ConceptSteering

    model = ear_model_for(janus)
    codes = janus.generate(["a big blue dog"], n=2, seed=3).flatten(1)
    stream = JanusConceptStream(janus)
    got = [stream.start(["a red circle", ""], 2)] + [stream.step(codes[:, t]) for t in range(5)]
    with torch.no_grad():
        h = model.image_hidden(janus.model, model.encode_prompts(["a red circle"] * 2), codes[:, :6])
        want = janus.model.model.generation_head(h.to(next(janus.model.parameters()).dtype)).float()
    for t in range(6):
        torch.testing.assert_close(got[t][:2], want[:, t], atol=1e-4, rtol=1e-4)
    plain = janus.generate(["a big blue dog"], n=2, seed=4)
    assert torch.equal(janus.generate(["a big blue dog"], n=2, seed=4,
                                      logits_processor=[ConceptSteering(janus, {"a red circle": 0.0})]), plain)
    steered = janus.generate(["a big blue dog"], n=2, seed=4,
                             logits_processor=[ConceptSteering(janus, {"a red circle": 5.0})])
    assert not torch.equal(steered, plain)
