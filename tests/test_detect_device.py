"""`--device` on `guard detect folder|image|manifest` and `guard calibrate` (and `DetectorSpec.device`).

What can fail here: the option not reaching the tokenizers (the key's or a `--fingerprint` calibration's),
records that change with it (images are read on the CPU and the statistics stay there, so `--device cpu`
must give the very records of a scan without it), a bad device that crashes (exit 4) instead of one
`error:` line and exit 2 (as `guard keygen --device` does), and the Ray engine silently ignoring a GPU it
cannot give its CPU-only actors (refused in one line instead).

The round trip runs on tiny LlamaGen checkpoints written by the test (the llamagen kind takes a device;
the reference kind takes `--device` as well).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from guard.cli import app
from guard.detect import RECORD_FIELDS, DetectorSpec
from guard.detect.fingerprint import FingerprintCalibration, Fingerprinter
from guard.detect.scan import find_images, open_writer, scan
from guard.errors import ConfigError
from guard.keys import WatermarkKey
from guard.models import llamagen as lg
from test_llamagen import VQ_ARGS, tiny_gpt

runner = CliRunner()
BATCH = 2


def _ok(r) -> None:
    assert r.exit_code == 0, r.output


def _stable(rows: list[dict]) -> list[tuple]:
    """Records without the one field that varies between runs (elapsed_ms)."""
    return [tuple((k, r[k]) for k in RECORD_FIELDS if k != "elapsed_ms") for r in rows]


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _one_error_line(r) -> str:
    """The single stderr line of a refused command (no traceback, no records on stdout)."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), r.output
    assert sum(line.startswith("error: ") for line in lines) == 1 and "Traceback" not in r.output, r.output
    assert not _jsonl(r.stdout), r.stdout
    return lines[-1]


@pytest.fixture(autouse=True)
def _config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))     # no default key of the user's


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny LlamaGen folder; a key; 2 watermarked PNGs from `guard watermark generate --device cpu`; 4 "real"
    noise PNGs and their fingerprint calibration (`guard calibrate --fingerprint ... --device cpu`)."""
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("detect-device")
    ckpt = d / "llamagen"
    ckpt.mkdir()
    torch.manual_seed(0)
    lg.save_checkpoint(lg.VQModel(VQ_ARGS), ckpt / "vq_ds4_tiny.pt", steps=10, args=argparse.Namespace(lr=1e-4))
    lg.save_checkpoint(tiny_gpt(), ckpt / "c2i_tiny_32.pt", steps=10)
    (ckpt / "llamagen.json").write_text(json.dumps({"n_head": 4}))
    spec = f"llamagen:{ckpt}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(d / "config"))
        key = d / "k.json"
        _ok(runner.invoke(app, ["keygen", "--model", spec, "--out", str(key), "--lists", "2", "--device", "cpu"]))
        wm = d / "wm"
        _ok(runner.invoke(app, ["watermark", "generate", "--model", spec, "--key", str(key), "--hard", "--prompt",
                                "3", "-n", "2", "--seed", "0", "--out", str(wm), "--device", "cpu"]))
        real = d / "real"
        real.mkdir()
        rng = np.random.default_rng(0)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(real / f"real_{i}.png")
        cal = d / "calib.json"
        _ok(runner.invoke(app, ["calibrate", "--fingerprint", str(real), "--model", spec, "--out", str(cal),
                                "--device", "cpu"]))
    assert len(find_images(wm)) == 2
    return dict(spec=spec, key=str(key), wm=wm, real=real, cal=str(cal), dir=d)


def _detect(world, *extra: str) -> tuple[int, list[dict]]:
    r = runner.invoke(app, ["detect", "folder", str(world["wm"]), "--key", world["key"], "--model", world["spec"],
                            "--fingerprint", world["cal"], "--fingerprint-alpha", "0.5",
                            "--batch-size", str(BATCH), *extra])
    assert r.exit_code in (0, 1), r.output
    return r.exit_code, _jsonl(r.stdout)


# ---------------------------------------------------------------------------------------------- same records

def test_folder_with_device_cpu_gives_the_records_of_a_scan_without_it(world):
    code, rows = _detect(world)
    code_cpu, rows_cpu = _detect(world, "--device", "cpu")
    assert len(rows) == 2 and all(r["n_tokens"] == 64 and r["error"] is None for r in rows)
    assert all(r["fingerprint_score"] is not None for r in rows)           # the fingerprint tokenizer ran too
    assert code_cpu == code and _stable(rows_cpu) == _stable(rows)


def test_image_heatmap_and_manifest_take_device_cpu(world, tmp_path):
    one = sorted(find_images(world["wm"]))[0]
    base = ["--key", world["key"], "--model", world["spec"]]
    plain = runner.invoke(app, ["detect", "image", one, *base])
    heat = tmp_path / "heat.png"
    cpu = runner.invoke(app, ["detect", "image", one, *base, "--device", "cpu", "--heatmap", str(heat)])
    assert plain.exit_code == cpu.exit_code and plain.exit_code in (0, 1), cpu.output
    assert _stable(_jsonl(cpu.stdout)) == _stable(_jsonl(plain.stdout)) and heat.stat().st_size > 0
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(sorted(find_images(world["wm"]))) + "\n")
    r = runner.invoke(app, ["detect", "manifest", str(listing), *base, "--batch-size", str(BATCH), "--device", "cpu"])
    assert r.exit_code in (0, 1), r.output
    assert len(_jsonl(r.stdout)) == 2


def test_calibrate_with_device_cpu_gives_the_same_numbers(world, tmp_path):
    base = ["calibrate", str(world["real"]), "--key", world["key"], "--model", world["spec"], "--format", "json"]
    plain, cpu = runner.invoke(app, base), runner.invoke(app, [*base, "--device", "cpu"])
    _ok(plain)
    _ok(cpu)
    assert json.loads(cpu.stdout) == json.loads(plain.stdout)
    out = tmp_path / "calib.json"
    _ok(runner.invoke(app, ["calibrate", "--fingerprint", str(world["real"]), "--model", world["spec"],
                            "--out", str(out)]))
    assert FingerprintCalibration.load(out).scores == FingerprintCalibration.load(world["cal"]).scores


def test_detector_spec_device_reaches_every_tokenizer(world):
    """The typed API: `DetectorSpec.device` loads the key's tokenizer there, and a fingerprint-only spec's;
    a bad name is refused by both paths (it reaches `load_tokenizer`, not just the CLI)."""
    key = WatermarkKey.load(world["key"])
    cal = FingerprintCalibration.load(world["cal"])
    det = DetectorSpec(keys=(key,), model=world["spec"], fingerprints=(cal,), fingerprint_alpha=0.5,
                       batch_size=BATCH, device="cpu").build()
    assert det.tokenizer.device == torch.device("cpu")
    assert [t.device for t in det.fingerprints.tokenizers] == [torch.device("cpu")]
    paths = sorted(find_images(world["wm"]))
    buf, ref = io.StringIO(), io.StringIO()
    scan(det, paths, open_writer(buf, "jsonl"), workers=1)
    scan(DetectorSpec(keys=(key,), model=world["spec"], fingerprints=(cal,), fingerprint_alpha=0.5,
                      batch_size=BATCH).build(), paths, open_writer(ref, "jsonl"), workers=1)
    assert _stable(_jsonl(buf.getvalue())) == _stable(_jsonl(ref.getvalue()))
    for spec in (DetectorSpec(keys=(key,), model=world["spec"], device="nonsense"),
                 DetectorSpec(keys=(), fingerprints=(cal,), fingerprint_alpha=0.5, device="nonsense")):
        with pytest.raises(ConfigError, match="unknown device 'nonsense'"):
            spec.build()
    with pytest.raises(ConfigError, match="unknown device 'nonsense'"):
        Fingerprinter([cal], alpha=0.5, device="nonsense")


# ---------------------------------------------------------------------------------------------- refusals

BAD_DEVICES = ["nonsense", "cuda:99",
               pytest.param("cuda", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here"))]


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_a_bad_device_exits_2_in_one_line_like_keygen(world, device):
    line = _one_error_line(r := runner.invoke(app, ["detect", "folder", str(world["wm"]), "--key", world["key"],
                                                    "--model", world["spec"], "--device", device]))
    assert r.exit_code == 2 and f"'{device}'" in line and "internal error" not in r.output
    k = runner.invoke(app, ["keygen", "--model", world["spec"], "--out", str(world["dir"] / "never.json"),
                            "--device", device])
    assert k.exit_code == 2 and _one_error_line(k) == line                  # the very message keygen gives
    fp = runner.invoke(app, ["detect", "folder", str(world["wm"]), "--fingerprint", world["cal"],
                             "--fingerprint-alpha", "0.5", "--device", device])     # key-free: calibration's model
    assert fp.exit_code == 2 and _one_error_line(fp) == line
    cal = runner.invoke(app, ["calibrate", str(world["real"]), "--key", world["key"], "--model", world["spec"],
                              "--device", device])
    assert cal.exit_code == 2 and _one_error_line(cal) == line


def test_reference_takes_device_cpu_and_refuses_a_missing_gpu_in_one_line(world, tmp_path):
    """The reference kind takes `--device` too: on the CPU the records equal a scan without it, and the
    generator's codes equal the default's; a device this machine lacks is one line, exit 2 (or, with a GPU,
    the records are the same there)."""
    from guard.models import load

    ref_key = tmp_path / "ref.json"
    _ok(runner.invoke(app, ["keygen", "--out", str(ref_key), "--lists", "2", "--device", "cpu"]))
    wm = tmp_path / "wm"
    _ok(runner.invoke(app, ["watermark", "generate", "--key", str(ref_key), "--prompt", "a red circle", "-n", "2",
                            "--seed", "0", "--out", str(wm), "--device", "cpu"]))
    rows = {}
    for extra in ((), ("--device", "cpu")):
        r = runner.invoke(app, ["detect", "folder", str(wm), "--key", str(ref_key), "--format", "jsonl", *extra])
        assert r.exit_code in (0, 1), r.output
        rows[extra] = [{k: v for k, v in json.loads(line).items() if k != "elapsed_ms"}
                       for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(rows[()]) == 2 and rows[()] == rows[("--device", "cpu")]
    a = load("reference").generate(["a red circle"], n=2, seed=3)
    b = load("reference", device="cpu").generate(["a red circle"], n=2, seed=3)
    assert torch.equal(a, b) and b.device.type == "cpu"
    if not torch.cuda.is_available():
        r = runner.invoke(app, ["detect", "folder", str(wm), "--key", str(ref_key), "--device", "cuda"])
        assert r.exit_code == 2 and "CUDA is not available" in _one_error_line(r)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "nonsense"])
def test_ray_engine_refuses_a_device_other_than_the_cpu(world, tmp_path, device):
    r = runner.invoke(app, ["detect", "folder", str(world["wm"]), "--key", world["key"], "--model", world["spec"],
                            "--engine", "ray", "--out", str(tmp_path / "o.jsonl"), "--device", device])
    assert r.exit_code == 2 and "ray engine" in _one_error_line(r) and not (tmp_path / "o.jsonl").exists()
    from guard.detect.ray_engine import ray_scan

    spec = DetectorSpec(keys=(WatermarkKey.load(world["key"]),), model=world["spec"], device=device)
    with pytest.raises(ConfigError, match="ray engine runs its detection actors on CPUs only"):
        ray_scan(find_images(world["wm"]), spec, stream=io.StringIO())


def test_ray_engine_forwards_device_cpu_to_its_actors(world):
    ray = pytest.importorskip("ray")
    from guard.detect.ray_engine import ray_scan

    key = WatermarkKey.load(world["key"])
    spec = DetectorSpec(keys=(key,), model=world["spec"], batch_size=BATCH, device="cpu")
    paths = sorted(find_images(world["wm"]))
    ref = io.StringIO()
    scan(spec.build(), paths, open_writer(ref, "jsonl"), workers=1)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, _system_config={"worker_niceness": 0})
    try:
        buf = io.StringIO()
        res = ray_scan(paths, spec, stream=buf, num_workers=1)
    finally:
        ray.shutdown()
    assert res.summary.n_rows == 2
    assert _stable(_jsonl(buf.getvalue())) == _stable(_jsonl(ref.getvalue()))
