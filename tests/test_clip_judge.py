"""The CLIP judge (`clip:ARCH@PATH`) on a tiny randomly initialised open_clip model built from a local config
JSON and saved as a state dict (nothing downloaded). Random weights: verdicts on real images are noise, so
the zero-shot logic is checked on embeddings placed where the text embeddings are."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from guard.errors import ConfigError, ModelError
from guard.models import Concept
from guard.models.clip_judge import ClipJudge, load_clip_judge, parse_clip_spec, save_tiny_clip

CAT = Concept("cat", "animal", ("cat",), ("kitty",))
DOG = Concept("dog", "animal", ("dog",), ("puppy",))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def judge(tiny):
    config, weights = tiny
    return load_clip_judge(f"clip:{config}@{weights}", contrasts=[DOG])


def test_loads_local_weights_strictly_and_embeds_images_of_any_size(judge):
    for size in (16, 64):
        pred = judge.predict(torch.rand(3, 3, size, size))
        assert pred.shape == (3, 32) and torch.allclose(pred.norm(dim=1), torch.ones(3), atol=1e-5)
    assert judge.predict(torch.rand(0, 3, 32, 32)).shape == (0, 32)
    assert "TinyGuardCLIP" in judge.description


def test_zero_shot_presence_is_concept_versus_replacement(judge):
    cat, dog = judge.concept_embedding(CAT), judge.concept_embedding(DOG)
    pred = torch.stack([cat, dog, F.normalize(cat + 0.1 * dog, dim=0)])
    assert judge.present_in(pred, CAT).tolist() == [True, False, True]
    other = ClipJudge(judge.model, judge.tokenizer, contrasts=[CAT])
    assert other.present_in(pred, DOG).tolist() == [False, True, False]


def test_replacement_is_read_only_where_the_prompt_asked_for_the_concept(judge):
    dog = judge.concept_embedding(DOG)
    pred = dog.expand(3, -1)
    got = judge.replaced_at_prompt(pred, ["a cat on a sofa", "a kitty, sleeping", "a tree"], CAT, DOG)
    assert got.tolist() == [True, True, False]


def test_clip_score_is_100_times_the_clamped_cosine(judge):
    images = torch.rand(4, 3, 32, 32)
    prompts = ["a cat", "a dog", "a red fox", "a tree"]
    score = judge.clip_score(images, prompts)
    manual = 100 * (judge.predict(images) * judge.text(prompts)).sum(1).clamp_min(0)
    assert score.shape == (4,) and torch.allclose(score, manual, atol=1e-4)
    assert bool(((score >= 0) & (score <= 100)).all())
    adh, per_image = judge.adherence(images, prompts)
    assert set(adh) == {"shape", "colour", "both"} and per_image.dtype == torch.bool and len(per_image) == 4
    with pytest.raises(ConfigError, match="4 images for 3 prompts"):
        judge.clip_score(images, prompts[:3])


def test_bad_specs_and_weights_fail_with_one_line(tmp_path, tiny):
    config, weights = tiny
    for spec in ("clip:ViT-B-32", "ViT-B-32@x.pt", "clip:@x.pt"):
        with pytest.raises(ConfigError, match="clip:ARCH@PATH"):
            parse_clip_spec(spec)
    with pytest.raises(ModelError, match="not found"):
        load_clip_judge(f"clip:{config}@{tmp_path / 'missing.pt'}")
    with pytest.raises(ModelError, match="unknown open_clip architecture"):
        load_clip_judge(f"clip:NoSuchArch-9@{weights}")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="unreadable"):
        load_clip_judge(f"clip:{config}@{bad}")
    state = torch.load(weights, weights_only=True)
    state.pop("logit_scale")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "partial.pt")
    with pytest.raises(ModelError, match="does not match") as e:
        load_clip_judge(f"clip:{config}@{tmp_path / 'partial.pt'}")
    assert "\n" not in str(e.value)


def test_guard_eval_reports_clipscore_of_both_populations(tmp_path, tiny):
    from guard.cli import app

    config, weights = tiny
    out = tmp_path / "ev"
    r = CliRunner().invoke(app, ["eval", "--out", str(out), "-n", "2", "--batch-size", "2", "--attacks", "none",
                                 "--no-plots", "--clip", f"clip:{config}@{weights}"])
    assert r.exit_code == 0, r.output
    q = json.loads((out / "summary.json").read_text())["clipscore"]
    assert q["n"] == 2 and 0 <= q["watermarked_mean"] <= 100 and 0 <= q["clean_mean"] <= 100
    assert q["difference_mean"] == pytest.approx(q["watermarked_mean"] - q["clean_mean"], abs=1e-3)
    r = CliRunner().invoke(app, ["eval", "--out", str(tmp_path / "ev2"), "-n", "2", "--mode", "posthoc",
                                 "--attacks", "none", "--clip", f"clip:{config}@{weights}"])
    assert r.exit_code == 2 and "modes soft and hard" in r.output


def test_erase_commands_take_the_clip_judge(tmp_path, tiny):
    """--judge builds a CLIP judge whose rival is the replacement; a malformed spec exits 2 before any generation."""
    from guard.cli import app
    from guard.cli.erase_cmd import _judge

    config, weights = tiny
    judge = _judge(f"clip:{config}@{weights}", DOG)
    assert isinstance(judge, ClipJudge) and judge.contrasts == [DOG] and _judge(None, DOG) is None
    for cmd in (["erase", "eval", "--steer", "2", "--out", str(tmp_path / "er")],
                ["erase", "train", "--out", str(tmp_path / "d.safetensors")]):
        r = CliRunner().invoke(app, [*cmd, "--concept", "circle", "--replacement", "square",
                                     "--judge", "clip:ViT-B-32"])
        assert r.exit_code == 2 and "clip:ARCH@PATH" in r.output
