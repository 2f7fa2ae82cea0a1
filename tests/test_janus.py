"""The Janus adapter on a tiny randomly initialised `JanusForConditionalGeneration` (real architecture:
Llama LM, generation head, VQ with an 8x8 grid of a 1024-code codebook), saved with `save_pretrained`
and loaded back offline through `guard.models.load("janus:PATH")`. Random weights: images are noise,
so these tests check the plumbing and the watermark's statistics on codes, not image quality."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from guard.detect import Detector
from guard.errors import ConfigError, ModelError
from guard.keys import WatermarkKey
from guard.models import load, load_tokenizer
from guard.watermark import GreenLists, WatermarkProcessor

PROMPTS = ["a red circle", "a big blue dog in the snow"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from guard.models._hf_tiny import save_tiny_janus

    torch.set_num_threads(1)
    return save_tiny_janus(tmp_path_factory.mktemp("janus") / "tiny-janus")


@pytest.fixture(scope="module")
def janus(ckpt):
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        yield load(f"janus:{ckpt}")
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def lists(janus):
    return GreenLists(WatermarkKey.create(janus.tokenizer, gamma=0.25, n_lists=4), janus.tokenizer)


class Recorder:
    """Records (input_ids, scores) as the processor chain sees them; returns scores unchanged."""

    def __init__(self):
        self.calls = []

    def __call__(self, input_ids, scores):
        self.calls.append((input_ids.clone(), scores.clone()))
        return scores


def test_loads_offline_and_tokenizer_only_load_has_the_same_id(janus, ckpt, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = janus.tokenizer
    assert tok.id.startswith("janus-vq-1024@") and tok.vocab_size == 1024
    assert tok.grid == (8, 8) and tok.image_size == 64 and tok.alive is None
    alone = load_tokenizer(f"janus:{ckpt}")
    assert type(alone).__name__ == "JanusTokenizer" and alone.id == tok.id
    assert torch.equal(alone.embeddings(), tok.embeddings())
    assert torch.allclose(tok.embeddings().norm(dim=1), torch.ones(1024))


@pytest.mark.parametrize("layout", ["2B", "B"])
def test_hard_mode_gives_only_green_codes_and_a_tiny_p_value(janus, lists, layout):
    proc = WatermarkProcessor(lists, hard=True, seed=0)
    codes = janus.generate(PROMPTS, n=2, seed=1, cfg=5.0, logits_processor=[proc], processor_layout=layout)
    assert codes.shape == (4, 8, 8) and codes.dtype == torch.long
    assert len(proc.list_indices) == 4
    assert lists.green_share(codes, proc.list_indices).eq(1.0).all()
    records = Detector(lists, janus.tokenizer).detect_codes(codes)
    for rec, k in zip(records, proc.list_indices):
        assert rec.n_green == rec.n_distinct and rec.list_index == k
        assert rec.p_value < 1e-6 and rec.watermarked


def test_processors_see_the_generated_history_and_the_layout_they_asked_for(janus):
    seen = {}
    for layout in ("2B", "B"):
        rec = Recorder()
        codes = janus.generate(PROMPTS, seed=2, cfg=5.0, logits_processor=[rec], processor_layout=layout)
        assert len(rec.calls) == 64
        assert [ids.shape for ids, _ in rec.calls] == [(2, t) for t in range(64)]
        rows = {s.shape for _, s in rec.calls}
        assert rows == ({(4, 1024)} if layout == "2B" else {(2, 1024)})
        assert torch.equal(rec.calls[-1][0], codes.view(2, -1)[:, :63])
        seen[layout] = codes
    assert torch.equal(seen["2B"], seen["B"])          # a pass-through processor changes nothing


def test_soft_bias_before_or_after_guidance_gives_the_same_scores_and_samples(janus, lists):
    from transformers import ClassifierFreeGuidanceLogitsProcessor

    raw = Recorder()
    janus.generate(PROMPTS, seed=3, cfg=5.0, logits_processor=[raw], processor_layout="2B")
    cfg = ClassifierFreeGuidanceLogitsProcessor(5.0)
    for ids, scores in raw.calls:                     # the model's real (2B, V) head outputs, step by step
        before = cfg(ids, WatermarkProcessor(lists, delta=2.0, list_index=[1, 3])(ids, scores))
        after = WatermarkProcessor(lists, delta=2.0, list_index=[1, 3])(ids, cfg(ids, scores))
        assert torch.allclose(before, after, atol=1e-4, rtol=0)
        assert torch.allclose(before.softmax(-1), after.softmax(-1), atol=1e-6)
    out = {layout: janus.generate(PROMPTS, n=2, seed=4, cfg=5.0, processor_layout=layout,
                                  logits_processor=[WatermarkProcessor(lists, delta=2.0, seed=9)])
           for layout in ("2B", "B")}
    assert torch.equal(out["2B"], out["B"])


def test_encode_is_the_l2_normalised_quantiser_not_the_euclidean_one(janus):
    tok = janus.tokenizer
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 1024, (2, 8, 8), generator=g)
    book = tok.vq.quantize.embedding.weight.detach()
    scale = torch.rand(2, 1, 8, 8, generator=g) * 5 + 0.5        # any length: only the direction matters
    z = torch.nn.functional.normalize(book[codes], dim=-1).permute(0, 3, 1, 2) * scale
    assert torch.equal(tok.quantize(z), codes)
    _, _, euclid = tok.vq.quantize(z)                             # transformers' raw Euclidean argmin
    assert (euclid.view(2, 8, 8) == codes).float().mean() < 0.5   # ... which the decoder does not invert


def test_decode_is_channels_first_in_unit_range_and_matches_transformers(janus):
    codes = torch.randint(0, 1024, (3, 8, 8), generator=torch.Generator().manual_seed(1))
    images = janus.tokenizer.decode(codes)
    assert images.shape == (3, 3, 64, 64) and 0 <= float(images.min()) and float(images.max()) <= 1
    hf = janus.model.decode_image_tokens(codes.view(3, -1)).float()          # (B, H, W, 3) in model space
    assert hf.shape == (3, 64, 64, 3)
    assert torch.allclose(images, ((hf.permute(0, 3, 1, 2) + 1) / 2).clamp(0, 1), atol=1e-5)
    again = janus.tokenizer.encode((images * 255).round() / 255)             # the uint8 round trip runs
    assert again.shape == (3, 8, 8) and int(again.max()) < 1024


def test_missing_or_wrong_paths_give_one_line_model_errors(tmp_path, ckpt):
    with pytest.raises(ModelError, match="janus checkpoint not found"):
        load(f"janus:{tmp_path / 'nope'}")
    with pytest.raises(ModelError, match="has no path"):
        load("janus:")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="must be a folder"):
        load_tokenizer(f"janus:{tmp_path / 'file.bin'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load(f"janus:{tmp_path / 'empty'}")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "emu3"}))
    with pytest.raises(ModelError, match="holds a 'emu3' checkpoint, not 'janus'"):
        load(f"janus:{other}")
    no_proc = tmp_path / "no-proc"
    no_proc.mkdir()
    (no_proc / "config.json").write_text((ckpt / "config.json").read_text())
    with pytest.raises(ModelError, match="no usable Janus processor") as e:
        load(f"janus:{no_proc}")
    assert "\n" not in str(e.value)


def test_cli_generate_then_detect_folder_with_a_janus_checkpoint(ckpt, tmp_path, monkeypatch):
    from guard.cli import app

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runner = CliRunner()
    spec = f"janus:{ckpt}"
    key = tmp_path / "janus.key"
    r = runner.invoke(app, ["keygen", "--model", spec, "--out", str(key), "--lists", "4"])
    assert r.exit_code == 0, r.stderr
    out = tmp_path / "wm"
    r = runner.invoke(app, ["watermark", "generate", "--model", spec, "--key", str(key), "--hard", "--prompt",
                            "a red circle", "-n", "3", "--seed", "0", "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    tok = load_tokenizer(spec)
    assert len(rows) == 3 and {row["tokenizer_id"] for row in rows} == {tok.id} and all(row["applied"] for row in rows)
    r = runner.invoke(app, ["detect", "folder", str(out), "--model", spec, "--key", str(key), "--format", "jsonl"])
    assert r.exit_code in (0, 1), r.stderr                      # random VQ: whether PNGs re-encode to green varies
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(records) == 3 and all(rec["error"] is None for rec in records)
    assert {rec["tokenizer_id"] for rec in records} == {tok.id} and {rec["n_tokens"] for rec in records} == {64}
    # the CLI's numbers are those of the adapter's tokenizer on the saved PNGs
    from guard.imageio import load_image

    gl = GreenLists(WatermarkKey.load(key), tok)
    for rec in records:
        codes = tok.encode(load_image(rec["path"], tok.image_size).tensor[None])
        assert rec["n_distinct"] == int(codes.unique().numel())
        assert rec["n_green"] == int(gl.masks[rec["list_index"]][codes.unique()].sum())
    # a key bound to another tokenizer, and a bad path: one line, exit 2
    ref_key = tmp_path / "ref.key"
    assert runner.invoke(app, ["keygen", "--out", str(ref_key)]).exit_code == 0
    r = runner.invoke(app, ["detect", "folder", str(out), "--model", spec, "--key", str(ref_key)])
    assert r.exit_code == 2 and "is bound to tokenizer" in r.stderr and tok.id in " ".join(r.stderr.split())
    r = runner.invoke(app, ["watermark", "generate", "--model", f"janus:{tmp_path / 'missing'}", "--out",
                            str(tmp_path / "x")])
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("error: janus checkpoint not found") and r.stderr.strip().count("\n") == 0


def test_concept_steering_works_in_the_2b_layout_like_after_guidance(janus):
    steer = pytest.importorskip("guard.erasure.steer")             # issue 7: its Janus concept stream
    out = {}
    for layout in ("2B", "B"):
        proc = steer.ConceptSteering(janus, {"a dog": 4.0})
        out[layout] = janus.generate(PROMPTS, seed=6, cfg=5.0, logits_processor=[proc], processor_layout=layout)
    assert torch.equal(out["2B"], out["B"])
    assert not torch.equal(out["2B"], janus.generate(PROMPTS, seed=6, cfg=5.0))     # the steering did something


def test_no_guidance_greedy_and_chunked_batches(janus, lists):
    for layout in ("2B", "B"):                                     # cfg = 1: Janus still doubles the batch
        proc = WatermarkProcessor(lists, hard=True, seed=1)
        codes = janus.generate(PROMPTS, cfg=1.0, seed=0, logits_processor=[proc], processor_layout=layout)
        assert codes.shape == (2, 8, 8) and lists.green_share(codes, proc.list_indices).eq(1.0).all()
    a = janus.generate(PROMPTS, temperature=0, cfg=5.0)
    assert torch.equal(a, janus.generate(PROMPTS, temperature=0, cfg=5.0, seed=123))     # greedy: no randomness
    old = janus.batch_size
    janus.batch_size = 2                                           # 6 images in 3 generate calls
    try:
        proc = WatermarkProcessor(lists, hard=True, seed=2)
        codes = janus.generate(PROMPTS, n=3, seed=0, logits_processor=[proc])
    finally:
        janus.batch_size = old
    assert codes.shape == (6, 8, 8) and len(proc.list_indices) == 6
    assert lists.green_share(codes, proc.list_indices).eq(1.0).all()
    with pytest.raises(ConfigError, match="processor_layout"):
        janus.generate(PROMPTS, processor_layout="4B")
    with pytest.raises(ConfigError, match="cfg must be >= 1"):
        janus.generate(PROMPTS, cfg=0.5)


def test_tokenizer_only_load_reads_sharded_checkpoints(janus, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    janus.model.save_pretrained(tmp_path / "sharded", max_shard_size="1MB")
    janus.processor.save_pretrained(tmp_path / "sharded")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert load_tokenizer(f"janus:{tmp_path / 'sharded'}").id == janus.tokenizer.id
    (tmp_path / "sharded" / sorted((tmp_path / "sharded").glob("model-*.safetensors"))[-1].name).unlink()
    with pytest.raises(ModelError, match="shard missing"):
        load_tokenizer(f"janus:{tmp_path / 'sharded'}")
