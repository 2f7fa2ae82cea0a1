"""Attacks: every named attack is deterministic under a seed, changes the image, keeps shape and 8-bit levels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guard.errors import ConfigError
from guard.eval.attacks import ATTACKS, apply_attack, parse_attack_list
from guard.eval.regeneration import ForceTokensProcessor, ar_resample

PIXEL_ATTACKS = [(name, p) for name, spec in ATTACKS.items() if spec.needs is None and name != "none"
                 for p in spec.grid]


@pytest.fixture(scope="module")
def scenes() -> torch.Tensor:
    """Three rendered reference scenes (natural-looking content, not noise)."""
    from guard.models.reference.shapes import render, sample_scene

    arr = np.stack([render(sample_scene(s, split="any")) for s in (11, 12, 13)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("name,param", PIXEL_ATTACKS, ids=[f"{n}-{p}" for n, p in PIXEL_ATTACKS])
def test_pixel_attack_deterministic_and_changes_image(scenes, name, param):
    a = apply_attack(name, scenes, param, seed=7)
    b = apply_attack(name, scenes, param, seed=7)
    assert torch.equal(a, b)
    assert a.shape == scenes.shape
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, (a * 255).round() / 255), "attacked images must sit on 8-bit levels"
    changed = (a - scenes).abs().flatten(1).amax(1)
    assert bool((changed > 1.5 / 255).all()), f"{name} {param} left an image unchanged"


def test_none_is_identity(scenes):
    assert torch.equal(apply_attack("none", scenes, 0), scenes)


@pytest.mark.parametrize("name", ["noise", "erase", "combined"] if "combined" in ATTACKS else ["noise", "erase"])
def test_random_attacks_depend_on_seed_and_index_not_on_batch(scenes, name):
    p = ATTACKS[name].summary or ATTACKS[name].grid[-1]
    full = apply_attack(name, scenes, p, seed=3, indices=[10, 11, 12])
    alone = apply_attack(name, scenes[1:2], p, seed=3, indices=[11])
    assert torch.equal(full[1:2], alone)
    if name != "combined":  # combined's only randomness-free parts are crop/brightness/JPEG
        assert not torch.equal(full, apply_attack(name, scenes, p, seed=4, indices=[10, 11, 12]))


def test_stronger_attacks_move_further(scenes):
    """Distance to the original grows along the grids (listed mildest first)."""
    for name in ("jpeg", "noise", "blur", "rotate", "resize", "crop", "median", "erase"):
        d = [float((apply_attack(name, scenes, p) - scenes).abs().mean()) for p in ATTACKS[name].grid]
        assert d == sorted(d), (name, d)


def test_bad_attack_inputs(scenes):
    with pytest.raises(ConfigError, match="unknown attack"):
        apply_attack("jpg", scenes, 50)
    with pytest.raises(ConfigError, match="JPEG quality"):
        apply_attack("jpeg", scenes, 0)
    with pytest.raises(ConfigError, match="odd"):
        apply_attack("blur", scenes, 4)
    with pytest.raises(ConfigError, match="float"):
        apply_attack("jpeg", scenes[0], 50)
    with pytest.raises(ConfigError, match="unknown attack"):
        parse_attack_list("jpeg,sharpen", full=False)


def test_parse_attack_list():
    got = parse_attack_list("jpeg,rotate:5|45", full=False)
    assert got == [("none", 0), ("jpeg", 25), ("rotate", 5), ("rotate", 45)]
    full = parse_attack_list("blur", full=True)
    assert full == [("none", 0)] + [("blur", k) for k in ATTACKS["blur"].grid]


# --------------------------------------------------------------------------------------- regeneration

def test_autoencoder_roundtrip_deterministic_changes_image_keeps_content(scenes):
    a = apply_attack("autoencoder", scenes, 1)
    assert torch.equal(a, apply_attack("autoencoder", scenes, 1))
    err = (a - scenes).pow(2).flatten(1).mean(1)
    psnr = 10 * torch.log10(1 / err)
    assert bool((psnr > 20).all()) and bool((psnr < 60).all()), psnr   # a real round trip, not identity or noise


def test_vq2_is_an_independent_tokenizer(scenes, tok):
    from guard.eval.regeneration import load_vq2

    vq2 = load_vq2()
    assert vq2.id != tok.id
    a = apply_attack("vq2", scenes, 1)
    assert torch.equal(a, apply_attack("vq2", scenes, 1))
    psnr = 10 * torch.log10(1 / (a - scenes).pow(2).flatten(1).mean(1))
    assert bool((psnr > 18).all()) and bool((psnr < 60).all()), psnr


def test_force_tokens_processor_forces_kept_positions(gen):
    tok = gen.tokenizer
    target = gen.generate(["a big red disc in the upper left"], n=2, seed=1).reshape(2, -1)
    resample = torch.zeros_like(target, dtype=torch.bool)
    resample[:, 100:130] = True
    out = gen.generate(["a small blue square in the lower right"] * 2, n=1, seed=5,
                       logits_processor=[ForceTokensProcessor(target, resample)]).reshape(2, -1)
    assert torch.equal(out[~resample], target[~resample])
    assert not torch.equal(out[resample], target[resample])
    assert tok.vocab_size > int(out.max())


def test_ar_resample_deterministic_and_changes_image(gen):
    tok = gen.tokenizer
    x = tok.decode(gen.generate(["a big red disc in the upper left"], n=2, seed=2)).float()
    x = (x * 255).round() / 255
    a = ar_resample(x, 0.25, [1, 2], gen)
    assert torch.equal(a, ar_resample(x, 0.25, [1, 2], gen))
    assert bool(((a - x).abs().flatten(1).amax(1) > 0.05).all())
    with pytest.raises(ConfigError, match="fraction"):
        ar_resample(x, 0.0, [1, 2], gen)
