"""The Emu3 adapter on a tiny randomly initialised `Emu3ForConditionalGeneration` (real architecture: Emu3
text model, video VQ with temporal factor 4, a 1024-code codebook) whose visual tokens have *shuffled,
non-contiguous* ids in the text vocabulary, saved with `save_pretrained` and loaded back offline through
`guard.models.load("emu3:PATH@64")` (8 x 8 tokens). Random weights: the tests check the plumbing and the
watermark's statistics on codes, not image quality."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from guard.detect import Detector
from guard.errors import ConfigError, ModelError
from guard.keys import WatermarkKey
from guard.models import load, load_tokenizer
from guard.models.emu3 import VisualTokenMap
from guard.watermark import GreenLists, WatermarkProcessor

PROMPTS = ["a red circle", "a big blue dog in the snow"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from guard.models._hf_tiny import save_tiny_emu3

    torch.set_num_threads(1)
    return save_tiny_emu3(tmp_path_factory.mktemp("emu3") / "tiny-emu3")


@pytest.fixture(scope="module")
def emu3(ckpt):
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        yield load(f"emu3:{ckpt}@64")
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def lists(emu3):
    return GreenLists(WatermarkKey.create(emu3.tokenizer, gamma=0.25, n_lists=4), emu3.tokenizer)


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, input_ids, scores):
        self.calls.append((input_ids.clone(), scores.clone()))
        return scores


def test_loads_offline_at_the_requested_size(emu3, ckpt, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = emu3.tokenizer
    assert tok.id.startswith("emu3-vq-1024@") and tok.vocab_size == 1024 and tok.alive is None
    assert tok.grid == (8, 8) and tok.image_size == 64
    alone = load_tokenizer(f"emu3:{ckpt}@64")
    assert type(alone).__name__ == "Emu3Tokenizer" and alone.id == tok.id
    assert load_tokenizer(f"emu3:{ckpt}@128").grid == (16, 16)          # same VQ, another size, same id
    assert load_tokenizer(f"emu3:{ckpt}@128").id == tok.id


def test_visual_ids_map_to_codes_through_the_vocabulary_not_an_offset(emu3):
    vm, hf_tok = emu3.vmap, emu3.processor.tokenizer
    ids = [hf_tok.convert_tokens_to_ids(f"<|visual token {c:06d}|>") for c in range(1024)]
    assert vm.img2bpe.tolist() == ids
    assert len(set((vm.img2bpe - torch.arange(1024)).tolist())) > 1          # no single offset exists
    assert dict(emu3.model.vocabulary_mapping.img2bpe) == {c: b for c, b in enumerate(ids)}
    assert vm.eol_id == hf_tok.convert_tokens_to_ids("<|extra_200|>")
    broken = dict(emu3.model.config.vocabulary_map)
    del broken["<|visual token 000007|>"]
    with pytest.raises(ModelError, match="not exactly codes 0..1023"):
        VisualTokenMap(broken, 1024, len(broken) + 1)


def test_hard_mode_gives_only_green_codes_and_a_tiny_p_value(emu3, lists):
    proc = WatermarkProcessor(lists, hard=True, seed=0)
    rec = Recorder()
    codes = emu3.generate(PROMPTS, n=2, seed=1, cfg=3.0, logits_processor=[proc, rec])
    assert codes.shape == (4, 8, 8) and len(proc.list_indices) == 4
    assert lists.green_share(codes, proc.list_indices).eq(1.0).all()
    for r, k in zip(Detector(lists, emu3.tokenizer).detect_codes(codes), proc.list_indices):
        assert r.n_green == r.n_distinct and r.list_index == k and r.p_value < 1e-6
    # processors ran at the 64 visual steps only (not at the 8 EOL, EOF, EOI, EOS steps), on codebook logits
    assert len(rec.calls) == 64 and emu3.last_visual_steps == 64
    assert [ids.shape for ids, _ in rec.calls] == [(4, t) for t in range(64)]
    assert {s.shape for _, s in rec.calls} == {(4, 1024)}
    assert torch.equal(rec.calls[-1][0], codes.view(4, -1)[:, :63])        # history = codebook ids, EOL removed


def test_soft_bias_before_or_after_unbatched_guidance_gives_the_same_distribution(emu3, lists):
    """Capture the real conditional and unconditional logits of every step of a guided generation, then
    compare the watermarked distribution with the bias applied after Emu3's guidance (what the adapter does)
    and before it (to both branches)."""
    model, s = emu3.model, 3.0
    cols = emu3.vmap.img2bpe
    logits = []
    handle = model.register_forward_hook(lambda m, a, out: logits.append(out.logits[:, -1].detach().float().clone()))
    rec = Recorder()
    try:
        emu3.generate(PROMPTS, seed=2, cfg=s, logits_processor=[rec])
    finally:
        handle.remove()
    cond, uncond = logits[0::2], logits[1::2]                                # main pass, then the CFG pass
    wm = WatermarkProcessor(lists, delta=2.0, list_index=[0, 2])
    bias = lists.bias(2.0)[[0, 2]]
    ls = torch.log_softmax
    visual = [j for j in range(len(cond)) if j % 9 < 8][:64]
    for (ids, post), j in zip(rec.calls, visual):
        guided = s * (ls(cond[j], -1) - ls(uncond[j], -1)) + ls(uncond[j], -1)
        assert torch.allclose(post, guided[:, cols], atol=1e-4)              # the capture is the real guidance
        after = wm(ids, post).softmax(-1)
        c, u = cond[j].clone(), uncond[j].clone()
        c[:, cols] += bias
        u[:, cols] += bias
        before = (s * (ls(c, -1) - ls(u, -1)) + ls(u, -1))[:, cols].softmax(-1)
        assert torch.allclose(before, after, atol=1e-6)


def test_decode_and_encode_agree_with_transformers_emu3_paths(emu3):
    tok, model, vm = emu3.tokenizer, emu3.model, emu3.vmap
    codes = torch.randint(0, 1024, (2, 8, 8), generator=torch.Generator().manual_seed(0))
    bpe = torch.cat([vm.img2bpe[codes], torch.full((2, 8, 1), vm.eol_id)], dim=2).view(2, -1)
    seq = torch.cat([bpe, torch.zeros(2, 3, dtype=torch.long)], dim=1)       # + EOF, EOI, EOS (dropped by HF)
    with torch.no_grad():
        hf = model.decode_image_tokens(image_tokens=seq, height=8, width=8).float()
    images = tok.decode(codes)
    assert images.shape == (2, 3, 64, 64)
    assert torch.allclose(images, ((hf + 1) / 2).clamp(0, 1), atol=1e-5)
    x = (images * 255).round() / 255
    with torch.no_grad():
        flat = model.model.get_image_tokens(x * 2 - 1, torch.tensor([[64, 64]] * 2))   # BPE ids with an EOL column
    hf_codes = vm.to_codes(flat.view(2, 8, 9)[:, :, :8])
    assert torch.equal(tok.encode(x), hf_codes)
    assert bool((flat.view(2, 8, 9)[:, :, 8] == vm.eol_id).all())


def test_bad_specs_give_one_line_errors(tmp_path, ckpt):
    with pytest.raises(ModelError, match="emu3 checkpoint not found"):
        load(f"emu3:{tmp_path / 'nope'}")
    with pytest.raises(ConfigError, match="multiple of 8, got 30"):
        load_tokenizer(f"emu3:{ckpt}@30")
    other = tmp_path / "janusish"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "janus"}))
    with pytest.raises(ModelError, match="holds a 'janus' checkpoint, not 'emu3'"):
        load_tokenizer(f"emu3:{other}")


def test_cli_generate_then_detect_folder_with_an_emu3_checkpoint(ckpt, tmp_path, monkeypatch):
    from guard.cli import app

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runner = CliRunner()
    spec = f"emu3:{ckpt}@64"
    out = tmp_path / "wm"
    r = runner.invoke(app, ["watermark", "generate", "--model", spec, "--hard", "--prompt", "a red circle", "-n", "2",
                            "--seed", "0", "--out", str(out)])          # default key: created for this tokenizer
    assert r.exit_code == 0, r.stderr
    tok = load_tokenizer(spec)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {row["tokenizer_id"] for row in rows} == {tok.id}
    r = runner.invoke(app, ["detect", "folder", str(out), "--model", spec, "--format", "jsonl"])
    assert r.exit_code in (0, 1), r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(records) == 2 and all(rec["error"] is None and rec["n_tokens"] == 64 for rec in records)
    r = runner.invoke(app, ["detect", "folder", str(out), "--model", f"emu3:{ckpt}@30"])
    assert r.exit_code == 2 and "multiple of 8" in r.stderr
    # issue 19: the size is in the key and the manifest; the default @720 no longer re-encodes 64 px images
    # on a 90x90 grid (8,100 tokens, p = 0.08) in silence: it is refused in one line naming @64
    assert rows[0]["geometry"] == {"image_size": 64, "grid": [8, 8], "vocab_size": tok.vocab_size}
    r = runner.invoke(app, ["detect", "folder", str(out), "--model", f"emu3:{ckpt}"])
    assert r.exit_code == 2 and "@64" in r.stderr and "720 px, grid 90x90" in r.stderr
    assert len(r.stderr.strip().splitlines()[-1]) > 40 and "Traceback" not in r.stderr


def test_no_guidance_and_chunked_batches(emu3, lists):
    old = emu3.batch_size
    emu3.batch_size = 1                                            # 2 images in 2 generate calls, no CFG pass
    try:
        proc = WatermarkProcessor(lists, hard=True, seed=5)
        codes = emu3.generate(PROMPTS, cfg=1.0, seed=0, logits_processor=[proc])
    finally:
        emu3.batch_size = old
    assert codes.shape == (2, 8, 8) and len(proc.list_indices) == 2 and emu3.last_visual_steps == 128
    assert lists.green_share(codes, proc.list_indices).eq(1.0).all()
