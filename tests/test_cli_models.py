"""Model specs on the command line (issue 19): --help lists every spec form, --tokenizer package.module:callable
makes keys and detects with a custom loop's tokenizer, bad tokenizers and bad checkpoints give one line and
exit 2, and Janus in its original release format is refused with the conversion command."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from guard.cli import app
from guard.models import kinds

# A real, exact tokenizer for a custom loop: each 4x4 cell's mean colour quantised to 8 levels per channel
# (512 codes); decode paints the level centres, so an 8-bit PNG re-encodes to the same codes.
TOKENIZER_MODULE = textwrap.dedent('''
    import torch
    import torch.nn.functional as F

    class CellTokenizer:
        id = "cells-512@test"
        vocab_size = 512
        grid = (16, 16)
        image_size = 64

        def encode(self, images):
            lv = (F.avg_pool2d(images.float(), 4) * 8).floor().clamp(0, 7).long()        # (B, 3, 16, 16)
            return lv[:, 0] * 64 + lv[:, 1] * 8 + lv[:, 2]

        def decode(self, codes):
            lv = torch.stack([codes // 64, codes // 8 % 8, codes % 8], 1).float()
            return ((lv + 0.5) / 8).repeat_interleave(4, -1).repeat_interleave(4, -2)

        def embeddings(self):
            c = torch.arange(512)
            return torch.stack([c // 64, c // 8 % 8, c % 8], 1).float()

    def make():
        return CellTokenizer()

    class NoGrid:
        id, vocab_size, image_size = "x@1", 512, 64
        def encode(self, images): ...
        def decode(self, codes): ...

    def broken():
        return NoGrid()
''')


@pytest.fixture()
def custom(tmp_path, monkeypatch):
    (tmp_path / "mytoks.py").write_text(TOKENIZER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    return tmp_path


def test_help_lists_every_registered_spec_form():
    specs = [k.spec for k in kinds().values()]
    for cmd in (["watermark", "generate"], ["watermark", "posthoc"], ["keygen"], ["detect", "folder"]):
        out = CliRunner().invoke(app, [*cmd, "--help"], env={"COLUMNS": "2000"}).output
        for s in specs:                                     # every registered kind, as rich renders it
            assert f"'{s}'" in out, (cmd, s)
        if cmd == ["watermark", "generate"]:
            assert "--device" in out and "--dtype" in out and "bfloat16" in out


def test_keygen_and_detect_with_a_custom_loops_tokenizer(custom):
    from guard.imageio import save_png
    from guard.keys import WatermarkKey
    from guard.watermark import GreenLists

    runner = CliRunner()
    key = custom / "k.json"
    r = runner.invoke(app, ["keygen", "--tokenizer", "mytoks:make", "--out", str(key), "--lists", "2"])
    assert r.exit_code == 0, r.output
    wk = WatermarkKey.load(key)
    assert wk.tokenizer_id == "cells-512@test" and wk.geometry.grid == (16, 16)
    # the custom loop: hard-green codes from list 1, decoded and saved as PNG
    import mytoks

    tok = mytoks.make()
    gl = GreenLists(wk, tok)
    green = gl.masks[1].nonzero().flatten()
    g = torch.Generator().manual_seed(0)
    codes = green[torch.randint(0, len(green), (2, 16, 16), generator=g)]
    out = custom / "imgs"
    out.mkdir()
    for i, img in enumerate(tok.decode(codes)):
        save_png(img, out / f"{i}.png")
    clean = torch.randint(0, 512, (1, 16, 16), generator=g)
    save_png(tok.decode(clean)[0], out / "clean.png")
    r = runner.invoke(app, ["detect", "folder", str(out), "--key", str(key), "--tokenizer", "mytoks:make",
                            "--format", "jsonl"])
    assert r.exit_code == 0, r.output
    recs = {json.loads(line)["path"].rsplit("/", 1)[-1]: json.loads(line) for line in r.stdout.splitlines()}
    assert recs["0.png"]["watermarked"] and recs["1.png"]["watermarked"] and not recs["clean.png"]["watermarked"]
    assert recs["0.png"]["list_index"] == 1 and recs["0.png"]["tokenizer_id"] == "cells-512@test"


@pytest.mark.parametrize("args, needle", [
    (["keygen", "--tokenizer", "mytoks:broken"], "lacks grid"),
    (["keygen", "--tokenizer", "mytoks:nothing"], "no attribute 'nothing'"),
    (["keygen", "--tokenizer", "nosuchpkg.mod:make"], "PYTHONPATH"),
    (["keygen", "--tokenizer", "mytoks:make", "--model", "janus:/x"], "exclusive"),
    (["watermark", "generate", "--model", "factory:mytoks:make", "--out", "o"], "not a generator"),
    (["watermark", "generate", "--dtype", "bfloat16", "--out", "o2"], "does not take a dtype option"),
])
def test_bad_tokenizers_and_options_give_one_line_and_exit_2(custom, args, needle):
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    err = r.stderr.strip().splitlines()
    assert needle in r.stderr and len(err) == 1 and "AttributeError" not in r.stderr and "Traceback" not in r.stderr


def test_janus_original_release_is_refused_with_the_conversion_command(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    d = tmp_path / "Janus-Pro-1B"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "multi_modality", "language_config": {}}))
    r = CliRunner().invoke(app, ["keygen", "--model", f"janus:{d}"])
    assert r.exit_code == 2
    line = r.stderr.strip()
    assert "\n" not in line and "multi_modality" in line
    assert "convert_janus_weights_to_hf.py" in line and f"--local_dir {d}" in line and f"janus:{d}-hf" in line
