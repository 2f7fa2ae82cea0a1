"""The VAR adapter (`var:PATH`) on tiny configs of the official architecture, saved as the released files
are (`torch.save(state_dict)` → `vae_*.pth`, `var_d*.pth`) and loaded back offline with strict=True.

Random weights: the tiny random VQ does not re-encode its own images, so watermark statistics are checked
on codes here; saved-image round trips use the shipped trained tiny VQ (guard/models/weights/var_tiny)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from guard.detect import Detector
from guard.errors import ConfigError, KeyFileError, ModelError
from guard.keys import WatermarkKey
from guard.models import get_kind, load, load_tokenizer
from guard.models.loops import hook_sampler
from guard.models.var import (VAR, VQVAE, build_tiny_var, parse_label, save_var_checkpoint, var_config,
                              vqvae_config)
from guard.watermark import GreenLists, WatermarkProcessor

PNS = (1, 2, 3, 4)
L = sum(p * p for p in PNS)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    vq, var = build_tiny_var(patch_nums=PNS)
    return save_var_checkpoint(tmp_path_factory.mktemp("var") / "tiny", vq, var)


@pytest.fixture(scope="module")
def gen(ckpt):
    return load(f"var:{ckpt}")


@pytest.fixture(scope="module")
def lists(gen):
    return GreenLists(WatermarkKey.create(gen.tokenizer, gamma=0.25, n_lists=4), gen.tokenizer)


def test_saved_in_the_released_layout_and_read_back_strict(ckpt, gen):
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["vae_tiny.pth", "var_d2.pth"]
    vae_state = torch.load(ckpt / "vae_tiny.pth", weights_only=True)
    var_state = torch.load(ckpt / "var_d2.pth", weights_only=True)
    # the released files' names: the residual quantiser's partially shared Phi, VAR's buffers and AdaLN
    for k in ("quantize.quant_resi.qresi_ls.3.weight", "quantize.ema_vocab_hit_SV", "quantize.embedding.weight",
              "encoder.down.0.block.0.conv1.weight", "decoder.up.0.block.1.conv2.weight", "post_quant_conv.weight"):
        assert k in vae_state
    for k in ("lvl_1L", "attn_bias_for_masking", "pos_1LC", "pos_start", "class_emb.weight",
              "blocks.1.attn.scale_mul_1H11", "blocks.0.attn.zero_k_bias", "blocks.0.ada_lin.1.weight",
              "head_nm.ada_lin.1.weight", "head.weight"):
        assert k in var_state
    cfg = var_config(var_state)
    assert cfg["patch_nums"] == PNS and cfg["depth"] == 2 and cfg["num_heads"] == 2 and cfg["num_classes"] == 10
    VQVAE(**vqvae_config(vae_state, PNS)).load_state_dict(vae_state, strict=True)
    VAR(**cfg).load_state_dict(var_state, strict=True)
    tok = gen.tokenizer
    assert tok.grid == (1, L) and tok.scales == PNS and tok.image_size == 16 and tok.vocab_size == 256
    alone = load_tokenizer(f"var:{ckpt}")
    assert alone.id == tok.id and torch.equal(alone.embeddings(), tok.embeddings())
    assert get_kind("var").spec in ("var:PATH[@SCALES]",)


def test_generation_is_seeded_and_decodes_to_images(gen):
    a = gen.generate(["1", "class 2"], n=2, seed=3, cfg=3.0)
    b = gen.generate(["1", "class 2"], n=2, seed=3, cfg=3.0)
    assert a.shape == (4, 1, L) and a.dtype == torch.long and torch.equal(a, b)
    assert not torch.equal(a, gen.generate(["1", "class 2"], n=2, seed=4, cfg=3.0))
    images = gen.tokenizer.decode(a)
    assert images.shape == (4, 3, 16, 16) and 0 <= float(images.min()) and float(images.max()) <= 1
    assert gen.tokenizer.encode(images).shape == (4, 1, L)


def test_processors_see_one_scale_per_sampler_call_with_the_earlier_scales_as_history(gen):
    seen = []

    def rec(history, scores):
        seen.append((tuple(history.shape), tuple(scores.shape)))
        return scores

    gen.generate(["0", "1", "2"], seed=0, logits_processor=[rec])
    prefix = [sum(p * p for p in PNS[:k]) for k in range(len(PNS))]
    expected = [((3, t), (3, 256)) for t, p in zip(prefix, PNS) for _ in range(p * p)]
    assert seen == expected


def test_kv_cache_loop_matches_teacher_forcing(gen):
    """The scores the loop hands processors (cfg 1: conditional only) equal VAR.forward's on the same codes."""
    rows = []
    codes = gen.generate(["4", "7"], seed=1, cfg=1.0, logits_processor=[lambda h, s: rows.append(s.clone()) or s])
    quant = gen.tokenizer.vq.quantize
    with torch.no_grad():
        logits = gen.var(torch.tensor([4, 7]), quant.idx_to_var_input([m.reshape(2, -1)
                                                                        for m in gen.tokenizer.split(codes)]))
    assert torch.allclose(torch.stack(rows, 1), logits, atol=1e-4)


def test_hard_mode_makes_every_scale_green_and_detects(gen, lists):
    proc = WatermarkProcessor(lists, hard=True, seed=0)
    codes = gen.generate(["1", "2", "3"], n=2, seed=5, logits_processor=[proc])
    assert len(proc.list_indices) == 6
    for img, k in zip(codes, proc.list_indices):
        assert lists.masks[k][img.flatten()].all()
    records = Detector(lists, gen.tokenizer, provenance=False).detect_codes(codes)
    for rec, k in zip(records, proc.list_indices):
        assert rec.watermarked and rec.list_index == k and rec.n_green == rec.n_distinct and rec.n_tokens == L
    clean = Detector(lists, gen.tokenizer, provenance=False).detect_codes(gen.generate(["1", "2"], seed=5))
    assert not any(r.watermarked for r in clean)


def test_soft_mode_raises_the_green_share_at_every_scale(gen, lists):
    proc = WatermarkProcessor(lists, delta=4.0, list_index=0)
    codes = gen.generate([str(i % 10) for i in range(24)], seed=2, logits_processor=[proc])
    clean = gen.generate([str(i % 10) for i in range(24)], seed=2)
    for marked, base in zip(gen.tokenizer.split(codes), gen.tokenizer.split(clean)):
        assert lists.masks[0][marked.flatten()].float().mean() > lists.masks[0][base.flatten()].float().mean() + 0.2


def test_detection_view_counts_only_the_chosen_scales(ckpt, gen, lists):
    view = load_tokenizer(f"var:{ckpt}@last2")
    assert view.detect_scales == (2, 3) and view.n_counted == 9 + 16
    assert view.grid == gen.tokenizer.grid == (1, L) and view.id == gen.tokenizer.id    # the key's geometry
    images = gen.tokenizer.decode(gen.generate(["1"], seed=0))
    full = gen.tokenizer.encode(images)
    assert torch.equal(view.encode(images), full[:, :, 1 + 4:])
    with pytest.raises(ConfigError, match="cannot decode"):
        view.decode(full)
    rec = Detector([GreenLists(WatermarkKey.create(gen.tokenizer), view)], view, provenance=False
                   ).detect_images(images)[0]
    assert rec.n_tokens == 25
    with pytest.raises(ConfigError, match="detect scales"):
        gen.tokenizer.view("last9")
    with pytest.raises(ConfigError, match="detect scales"):
        gen.tokenizer.view("1,1")


def test_a_key_for_another_pyramid_is_refused(tmp_path, gen, lists):
    vq, var = build_tiny_var(patch_nums=(1, 2, 4))       # same weights shape, other scales
    vq.load_state_dict({k: v for k, v in gen.tokenizer.vq.state_dict().items()}, strict=True)
    other = save_var_checkpoint(tmp_path / "other", vq, var)
    tok = load_tokenizer(f"var:{other}")
    assert tok.id != gen.tokenizer.id                    # the scales are part of the tokenizer id
    with pytest.raises(KeyFileError):
        Detector(lists, tok, provenance=False)


def test_prompts_are_class_labels():
    assert parse_label("980", 1000) == 980 and parse_label(" class 3 ", 10) == 3 and parse_label("", 10) == 10
    assert parse_label("volcano", 1000) == 980
    with pytest.raises(ConfigError, match="class-conditional"):
        parse_label("a red fox", 10)
    with pytest.raises(ConfigError, match="out of range"):
        parse_label("12", 10)


def test_bad_checkpoints_give_one_line_errors(tmp_path, ckpt):
    with pytest.raises(ModelError, match="not found"):
        load(f"var:{tmp_path / 'nope'}")
    with pytest.raises(ModelError, match="has no path"):
        load("var:")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="one VQ-VAE file"):
        load(f"var:{tmp_path / 'empty'}")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("vae_tiny.pth", "var_d2.pth"):
        (two / name).write_bytes((ckpt / name).read_bytes())
    (two / "var_d4.pth").write_bytes((ckpt / "var_d2.pth").read_bytes())
    with pytest.raises(ModelError, match="name one"):
        load(f"var:{two}")
    assert load(f"var:{two / 'var_d2.pth'}").var.depth == 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "vae_tiny.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="unreadable") as e:
        load_tokenizer(f"var:{bad}")
    assert "\n" not in str(e.value)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    state = torch.load(ckpt / "var_d2.pth", weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "head.bias"}, wrong / "var_d2.pth")
    (wrong / "vae_tiny.pth").write_bytes((ckpt / "vae_tiny.pth").read_bytes())
    with pytest.raises(ModelError, match="does not match the VAR transformer"):
        load(f"var:{wrong}")


def test_cli_keygen_generate_detect_on_codes_path(tmp_path, ckpt, monkeypatch):
    """keygen → watermark generate (hard) through the CLI; the manifest names the list of every image."""
    from guard.cli import app

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    runner = CliRunner()
    key = tmp_path / "var.key"
    r = runner.invoke(app, ["keygen", "--model", f"var:{ckpt}", "--out", str(key), "--lists", "4"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "wm"
    r = runner.invoke(app, ["watermark", "generate", "--model", f"var:{ckpt}", "--key", str(key), "--hard",
                            "--prompt", "3", "--prompt", "5", "-n", "2", "--seed", "0", "--out", str(out),
                            "--device", "cpu", "--dtype", "float32"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(row["applied"] and row["hard"] for row in rows)
    # VAR's published sampling defaults (its FID setting) when none is given
    assert all((row["cfg"], row["top_k"], row["top_p"]) == (2.5, 900, 0.96) for row in rows)
    for spec, n_tokens in ((f"var:{ckpt}", L), (f"var:{ckpt}@last2", 25)):
        r = runner.invoke(app, ["detect", "folder", str(out), "--model", spec, "--key", str(key)])
        assert r.exit_code in (0, 1), r.output          # random VQ: PNGs are not re-encoded faithfully
        recs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        assert len(recs) == 4 and all(rec["n_tokens"] == n_tokens and rec["error"] is None for rec in recs)
    r = runner.invoke(app, ["watermark", "generate", "--model", f"var:{ckpt}", "--key", str(key),
                            "--prompt", "a red fox", "--out", str(tmp_path / "wm2")])
    assert r.exit_code == 2 and "class-conditional" in r.output


def test_shipped_tiny_vq_round_trips_real_scenes_through_png():
    """The trained tiny VAR VQ-VAE (bench/train_var_vq.py, 16 px scenes, the released 10-scale pyramid) gives
    back most of the canonical pyramid of its own decoded, 8-bit-rounded images; a random one gives ~1/V."""
    from pathlib import Path

    import numpy as np
    import torch.nn.functional as F

    import guard.models as gm
    from guard.models.reference.shapes import render, sample_scene
    from guard.models.var import OFFICIAL_PATCH_NUMS

    folder = Path(gm.__file__).parent / "weights" / "var_tiny"
    tok = load_tokenizer(f"var:{folder}")                # the VQ alone: scales default to the released ones
    assert tok.scales == OFFICIAL_PATCH_NUMS and tok.image_size == 16 and tok.vocab_size == 512
    x = torch.from_numpy(np.stack([render(sample_scene(90_000 + i)) for i in range(12)])).permute(0, 3, 1, 2)
    x = F.interpolate(x.float() / 255, size=(16, 16), mode="area")
    codes = tok.encode(x)
    again = tok.encode((tok.decode(codes) * 255).round() / 255)
    assert float((again == codes).float().mean()) > 0.45
    assert float((tok.split(again)[0] == tok.split(codes)[0]).float().mean()) > 0.8     # the coarsest scale
    rec = tok.decode(codes)
    assert float(10 * torch.log10(1 / ((rec - x) ** 2).mean())) > 22
