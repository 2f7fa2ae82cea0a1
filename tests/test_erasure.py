"""EAR on the shipped reference model: a small-budget erasure lowers the classifier's concept rate; the delta
holds only changed tensors and reloads to identical outputs; bad inputs fail clearly."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from guard.errors import ConfigError, ModelError
from guard.erasure import EarConfig, erase, load_erased, read_delta
from guard.erasure.evaluate import eval_prompts
from guard.erasure.pairs import FORMS, check_pair, swap_concept
from guard.imageio import quantize
from guard.models import capability, judge_for, prompts_for
from guard.models.reference.shapes import parse_prompt

# The budget measured on reference-gpt@f94059e5158b (red rate 0.96 -> 0.13 on these prompts); it still passes on
# the retrained reference-gpt@b6db181a6700.
# Plain EAR (no preservation term); the preservation test below adds it.
SMALL = EarConfig(candidates=16, epochs=2, min_pairs=4, seed=0, lr=1e-4, mu=0.001, preserve=0.0)


@pytest.fixture(scope="module")
def judge():
    return judge_for("reference")


@pytest.fixture(scope="module")
def erased_red(gen, judge, tmp_path_factory):
    path = tmp_path_factory.mktemp("ear") / "erase-red.safetensors"
    return erase(gen, "red", "blue", SMALL, out=path, judge=judge)


def concept_rate(generator, judge, prompts, concept, seed=11):
    codes = generator.generate(prompts, n=1, seed=seed)
    return float(judge.present(quantize(generator.tokenizer.decode(codes)), concept).float().mean())


def test_small_erasure_lowers_the_concept_rate(gen, judge, erased_red):
    red, blue = check_pair("red", "blue")
    prompts = eval_prompts(red, blue, 24, 1, seed=5).target  # incl. held-out synonym and paraphrase prompts
    erased = load_erased(gen, erased_red.delta_path)
    before = concept_rate(gen, judge, prompts, red)
    after = concept_rate(erased, judge, prompts, red)
    assert erased_red.card["steps"] > 0
    print(f"red rate before {before:.3f} after {after:.3f}")
    assert after <= before - 0.2, (before, after)


def _non_target_drift(gen, module, prompts, seed=23):
    """Relative MSE of a student's last hidden states against the base model's on the base's own rollouts."""
    model = capability(gen, "ear_model")(gen)
    codes = gen.generate(prompts, n=1, seed=seed).flatten(1)
    text = model.encode_prompts(prompts)
    with torch.no_grad():
        h0 = model.image_hidden(gen.gpt, text, codes)
        h1 = model.image_hidden(module, text, codes)
    return float((h1 - h0).pow(2).mean() / h0.pow(2).mean())


def test_preservation_keeps_non_target_prompts_closer_and_still_erases(gen, judge, erased_red, tmp_path):
    from dataclasses import replace

    red, blue = check_pair("red", "blue")
    kept = erase(gen, "red", "blue", replace(SMALL, preserve=4.0), out=tmp_path / "keep.safetensors", judge=judge)
    assert kept.card["preserve"] == 4.0 and kept.card["preserve_prompts"] == SMALL.preserve_prompts
    assert any("preserve_loss" in e for e in kept.log)
    others = prompts_for(gen).non_target_prompts([red, blue], 24, seed=77)  # not the training preservation prompts (other seed)
    plain, preserved = _non_target_drift(gen, erased_red.module, others), _non_target_drift(gen, kept.module, others)
    print(f"non-target hidden-state drift: plain {plain:.4f}, preserve {preserved:.4f}")
    assert preserved < 0.7 * plain, (plain, preserved)
    prompts = eval_prompts(red, blue, 24, 1, seed=5).target
    before, after = concept_rate(gen, judge, prompts, red), concept_rate(load_erased(gen, kept.delta_path), judge, prompts, red)
    assert after <= before - 0.2, (before, after)


def test_delta_holds_only_changed_attention_tensors(gen, erased_red):
    tensors, card = read_delta(erased_red.delta_path)
    allowed = {f"blocks.{i}.{m}.{p}" for i in SMALL.layers for m in ("qkv", "proj") for p in ("weight", "bias")}
    assert tensors and set(tensors) <= allowed
    base = gen.gpt.state_dict()
    for name, t in tensors.items():
        assert not torch.equal(t, base[name]), name
    student = erased_red.module.state_dict()
    for name, t in student.items():
        assert torch.equal(t, tensors[name] if name in tensors else base[name]), name
    sidecar = json.loads(erased_red.delta_path.with_suffix(".json").read_text())
    assert sidecar == card
    for key in ("concept", "replacement", "window", "mu", "eta", "layers", "steps", "seed", "time_s"):
        assert key in card
    assert card["concept"] == "red" and card["base_model"] == gen.id


def test_delta_reloads_to_identical_outputs_and_leaves_the_base_alone(gen, erased_red):
    before = {k: v.clone() for k, v in gen.gpt.state_dict().items()}
    reloaded = load_erased(gen, erased_red.delta_path)
    trained = type(gen)(erased_red.module, gen.tokenizer, "0" * 64)
    prompts = ["a big crimson circle in the upper left"]
    assert torch.equal(reloaded.generate(prompts, n=2, seed=1), trained.generate(prompts, n=2, seed=1))
    assert all(torch.equal(v, before[k]) for k, v in gen.gpt.state_dict().items())
    assert reloaded.id.startswith(gen.id + "+erase-red@") and reloaded.id != gen.id


def test_delta_for_another_base_or_corrupt_file_is_refused(gen, erased_red, tmp_path):
    from safetensors.torch import save_file

    tensors, card = read_delta(erased_red.delta_path)
    other = tmp_path / "other.safetensors"
    save_file(tensors, str(other), metadata={"guard.erasure.card": json.dumps({**card, "base_model": "reference-gpt@x"})})
    with pytest.raises(ModelError, match="trained on 'reference-gpt@x'"):
        load_erased(gen, other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="unreadable"):
        load_erased(gen, junk)
    with pytest.raises(ModelError, match="not found"):
        load_erased(gen, tmp_path / "missing.safetensors")


@pytest.mark.parametrize("concept, replacement, message", [
    ("dragon", "square", "unknown concept 'dragon'"),
    ("circle", "dragon", "replacement: unknown concept 'dragon'"),
    ("circle", "disc", "is the concept"),
    ("circle", "red", "is a colour but concept 'circle' is a shape"),
    ("", "square", "non-empty"),
])
def test_bad_concept_or_replacement_is_a_clear_error(gen, concept, replacement, message):
    with pytest.raises(ConfigError, match=message):
        erase(gen, concept, replacement, SMALL)


def test_prompt_forms_keep_held_out_synonyms_out_of_training():
    source = prompts_for("reference")
    circle = source.concept("disc")
    assert circle.name == "circle" and circle.heldout_words == ("round shape",)
    train = source.target_prompts(circle, 40, seed=1, form="train", exclude=["square"])
    held = source.target_prompts(circle, 40, seed=1, form="heldout_synonym")
    para = source.target_prompts(circle, 40, seed=1, form="paraphrase")
    assert not any("round shape" in p for p in train)
    assert all("round shape" in p for p in held)
    assert any(" and " in p for p in para)
    for p in train + held + para:
        assert any(obj[0] == "circle" for obj in parse_prompt(p))
    assert not any(obj[0] == "square" for p in train for obj in parse_prompt(p))
    assert swap_concept("a big red disc in the upper left", circle, source.concept("square")) == \
        "a big red square in the upper left"
    assert set(FORMS) == {"train", "heldout_synonym", "paraphrase"}


def test_bad_ear_settings_are_rejected():
    for kwargs in ({"window": 0}, {"mu": -1.0}, {"eta": float("inf")}, {"layers": ()}, {"lr": 0.0}, {"epochs": 0},
                   {"preserve": -1.0}, {"preserve": float("nan")}, {"preserve_prompts": 0}):
        with pytest.raises(ConfigError):
            EarConfig(**kwargs)


def test_cli_errors_exit_2(tmp_path, monkeypatch):
    from guard.cli import app

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))  # never touch the user's default key
    runner = CliRunner()
    res = runner.invoke(app, ["erase", "train", "--concept", "dragon", "--replacement", "square",
                              "--out", str(tmp_path / "d.safetensors")])
    assert res.exit_code == 2 and "unknown concept 'dragon'" in " ".join(res.stderr.split())
    res = runner.invoke(app, ["erase", "eval", "--concept", "circle", "--replacement", "square",
                              "--out", str(tmp_path / "ev")])
    assert res.exit_code == 2 and "nothing to evaluate" in res.stderr
    res = runner.invoke(app, ["watermark", "generate", "-n", "1", "--out", str(tmp_path / "wm"),
                              "--erased", str(tmp_path / "missing.safetensors")])
    assert res.exit_code == 2 and "erasure delta not found" in " ".join(res.stderr.split())


def test_cli_eval_runs_anchored_steering(tmp_path):
    from guard.cli import app

    res = CliRunner().invoke(app, ["erase", "eval", "--concept", "circle", "--replacement", "square", "-n", "3",
                                   "--steer", "2", "--steer-anchor", "a square", "--out", str(tmp_path / "ev"),
                                   "--threads", "1"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert {r["variant"] for r in report["rows"]} == {"original", "steer:2-anchored"}
    assert (tmp_path / "ev" / "grid.png").stat().st_size > 0
