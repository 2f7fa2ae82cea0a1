"""Key-free detection (issue 20): fingerprint score, conformal p, calibration file, attribution, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from guard.cli import app
from guard.detect import RECORD_FIELDS, DetectorSpec
from guard.detect.fingerprint import (FINGERPRINT_FIELDS, FingerprintCalibration, Fingerprinter,
                                      calibrate_fingerprint, code_agreement, conformal_p, fingerprint_scores)
from guard.errors import ConfigError
from guard.imageio import from_uint8, quantize
from test_detector import save_pngs

runner = CliRunner()
N_REAL = 20                       # calibration images in these tests: smallest p = 1/21


def _rendered(n: int, start: int) -> torch.Tensor:
    """n held-out rendered scenes (never VQ-decoded) of the reference world, float (n, 3, 64, 64)."""
    from guard.models import prompts_for

    return from_uint8(prompts_for("reference").eval_images(n, seed=start))


@pytest.fixture(scope="module")
def images(tok):
    real = _rendered(N_REAL, 7)
    probe = _rendered(4, 8)
    decoded = quantize(tok.decode(tok.encode(probe)))
    return {"real": real, "probe": probe, "decoded": decoded}


@pytest.fixture(scope="module")
def folders(images, tmp_path_factory):
    root = tmp_path_factory.mktemp("fp")
    save_pngs(images["real"], root / "real", "real")
    save_pngs(images["decoded"], root / "decoded", "dec")
    save_pngs(images["probe"], root / "probe", "probe")
    return root


@pytest.fixture()
def no_default_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture(scope="module")
def calibs(folders):
    """Calibration files made through the CLI: on the rendered scenes ("real") and on decoded ones ("dec")."""
    out = {}
    for name, folder in (("real", "real"), ("dec", "decoded")):
        out[name] = folders / f"{name}.json"
        r = _calibrate(folders / folder, out[name], "--format", "json")
        assert r.exit_code == 0, r.output
        out[name + "_result"] = r
    return out


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _flat(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------- statistics

def test_conformal_p_formula_counts_ties_against_the_image():
    cal = [1.0, 2.0, 2.0, 3.0]
    assert conformal_p([0.5, 1.0, 2.0, 2.5, 9.0], cal).tolist() == pytest.approx([1 / 5, 2 / 5, 4 / 5, 4 / 5, 1.0])
    with pytest.raises(ConfigError):
        conformal_p([1.0], [])


def test_conformal_p_is_uniform_on_its_grid_under_exchangeability():
    # n calibration scores and one test score, all iid: P(p <= k/(n+1)) = k/(n+1) exactly (finite sample).
    rng = np.random.default_rng(0)
    n, trials = 19, 40_000
    draws = rng.lognormal(size=(trials, n + 1))
    p = (1.0 + (draws[:, 1:] <= draws[:, :1]).sum(1)) / (n + 1)
    assert np.array_equal(p[:50], [conformal_p(d[:1], d[1:])[0] for d in draws[:50]])
    for k in (1, 2, 5, 10):
        assert abs(np.mean(p <= k / (n + 1)) - k / (n + 1)) < 4 * np.sqrt(0.25 / trials) + 1e-3
    assert p.min() == pytest.approx(1 / (n + 1))


def test_decoded_images_score_below_every_rendered_one(tok, images):
    real = fingerprint_scores(tok, images["real"])
    dec = fingerprint_scores(tok, images["decoded"])
    assert real.shape == (N_REAL,) and dec.shape == (4,)
    assert dec.max() < real.min() / 10, (dec, real.min())
    # the detector's own codes give the same scores (one decode saved)
    again = fingerprint_scores(tok, images["decoded"], codes=tok.encode(images["decoded"]))
    assert np.array_equal(again, dec)
    agree = code_agreement(tok, images["decoded"])
    assert agree.shape == (4,) and ((agree >= 0) & (agree <= 1)).all()


def test_scores_refuse_images_of_another_size(tok):
    with pytest.raises(ConfigError, match="64, 64"):
        fingerprint_scores(tok, torch.zeros(1, 3, 32, 32))


# ---------------------------------------------------------------------------------------------- calibration

def test_calibration_file_round_trip_and_damage(tok, folders, tmp_path):
    from guard.detect.scan import find_images

    cal = calibrate_fingerprint(tok, find_images(folders / "real"), model="reference", agreement=False)
    assert cal.n == N_REAL and cal.tokenizer_id == tok.id and cal.image_size == 64 and cal.n_errors == 0
    assert list(cal.scores) == sorted(cal.scores) and cal.min_p == pytest.approx(1 / (N_REAL + 1))
    assert cal.image_policy["resize_counts"] == {"none": N_REAL}
    path = cal.save(tmp_path / "calib.json")
    assert FingerprintCalibration.load(path) == cal
    doc = json.loads(path.read_text())
    assert doc["n"] == N_REAL and doc["format"] == "guard-fingerprint-calibration"

    cases = {"not JSON": "{oops", "a key": json.dumps({"secret": "x"}),
             "other statistic": json.dumps({**doc, "statistic": "rgb-mse/v0"}),
             "n mismatch": json.dumps({**doc, "n": 3}), "negative score": json.dumps({**doc, "scores": [-1.0] * N_REAL})}
    for what, text in cases.items():
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ConfigError) as e:
            FingerprintCalibration.load(bad)
        assert "\n" not in str(e.value), what


def test_fingerprinter_refuses_an_alpha_no_p_can_reach(tok, images):
    cal = FingerprintCalibration(tokenizer_id=tok.id, model="reference", image_size=64,
                                 scores=tuple(fingerprint_scores(tok, images["real"])))
    with pytest.raises(ConfigError, match="below the smallest corrected p-value"):
        Fingerprinter([cal], [tok], alpha=0.01)
    with pytest.raises(ConfigError, match="same tokenizer"):
        Fingerprinter([cal, cal], [tok, tok], alpha=0.5)


def test_attribution_between_reference_and_vq2(tok, images):
    # Two independently trained tokenizers, each calibrated on the same real images: images decoded by
    # each are attributed to their own decoder, with p corrected for the 2 compared.
    from guard.eval.regeneration import load_vq2

    tok2 = load_vq2()
    assert tok2.id != tok.id
    cals = [FingerprintCalibration(tokenizer_id=t.id, model="x", image_size=64,
                                   scores=tuple(fingerprint_scores(t, images["real"]))) for t in (tok, tok2)]
    fp = Fingerprinter(cals, [tok, tok2], alpha=0.1)
    dec2 = quantize(tok2.decode(tok2.encode(images["probe"])))
    for x, owner in ((images["decoded"], tok.id), (dec2, tok2.id)):
        rows = fp.fields(x)
        assert [r["fingerprint_tokenizer"] for r in rows] == [owner] * len(x)
        _, p, _ = fp.table(x)
        j = [t.id for t in fp.tokenizers].index(owner)
        assert [r["fingerprint_p"] for r in rows] == pytest.approx(np.minimum(1, 2 * p[:, j]).tolist())
    # the reference VQ is idempotence-trained: its decodes sit below every real image (p at the floor)
    assert all(r["fingerprint_p"] == pytest.approx(2 / (N_REAL + 1)) for r in fp.fields(images["decoded"]))


# ---------------------------------------------------------------------------------------------- CLI

def _calibrate(folder: Path, out: Path, *extra: str):
    return runner.invoke(app, ["calibrate", "--fingerprint", str(folder), "--out", str(out), *extra])


def test_cli_calibrate_then_detect_without_a_key(tok, folders, calibs, no_default_key):
    calib = calibs["real"]
    r = calibs["real_result"]
    summary = json.loads(r.stdout)
    assert summary["n"] == N_REAL and summary["tokenizer_id"] == tok.id
    assert "warning" in _flat(r.stderr) and "1/(n+1)" in _flat(r.stderr)        # N < 99
    doc = json.loads(calib.read_text())
    assert doc["n"] == N_REAL and len(doc["scores"]) == N_REAL and doc["image_policy"]["size"] == 64

    r = runner.invoke(app, ["detect", "folder", str(folders / "decoded"), "--fingerprint", str(calib),
                            "--fingerprint-alpha", "0.05"])
    assert r.exit_code == 0, r.output                                   # a fingerprint hit counts as flagged
    rows = _jsonl(r.stdout)
    assert len(rows) == 4 and list(rows[0]) == list(RECORD_FIELDS)
    for row in rows:
        assert row["fingerprint_p"] == pytest.approx(1 / (N_REAL + 1)) and row["fingerprint_hit"] is True
        assert row["fingerprint_tokenizer"] == tok.id and row["fingerprint_score"] < 1e-3
        assert row["key_id"] is None and row["p_value"] is None and row["watermarked"] is False

    # Calibrated on decoded images instead, rendered scenes are farther from the manifold than all of
    # them: p = 1, nothing flagged, exit 1; the table format shows rows without a watermark test.
    dec_calib = calibs["dec"]
    r = runner.invoke(app, ["detect", "folder", str(folders / "probe"), "--fingerprint", str(dec_calib),
                            "--fingerprint-alpha", "0.5"])
    assert r.exit_code == 1, r.output
    assert all(row["fingerprint_p"] == 1.0 and row["fingerprint_hit"] is False for row in _jsonl(r.stdout))
    r = runner.invoke(app, ["detect", "folder", str(folders / "decoded"), "--fingerprint", str(calib),
                            "--fingerprint-alpha", "0.05", "--format", "table"])
    assert r.exit_code == 0, r.output
    assert "fp_p" in r.stdout and "0.0476*" in r.stdout


@pytest.fixture(scope="module")
def key_file(tok, folders):
    from guard.keys import WatermarkKey

    return WatermarkKey.create(tok).save(folders / "a.key")


def test_cli_fingerprint_with_a_key_fills_both(folders, calibs, key_file, no_default_key):
    key = key_file
    calib = calibs["real"]
    r = runner.invoke(app, ["detect", "folder", str(folders / "decoded"), "--key", str(key), "--fingerprint",
                            str(calib), "--fingerprint-alpha", "0.05", "--format", "csv"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split(",") == list(RECORD_FIELDS) and len(lines) == 5
    import csv
    import io
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert all(row["key_id"] and row["p_value"] and row["fingerprint_hit"] == "true" for row in rows)


def test_cli_without_fingerprint_leaves_the_fields_null(folders, key_file, no_default_key):
    key = key_file
    r = runner.invoke(app, ["detect", "folder", str(folders / "decoded"), "--key", str(key)])
    assert r.exit_code in (0, 1), r.output
    assert all(row[f] is None for row in _jsonl(r.stdout) for f in FINGERPRINT_FIELDS)


def test_cli_bad_fingerprint_inputs_exit_2_with_one_line(folders, calibs, tmp_path, no_default_key):
    not_calib = tmp_path / "other.json"
    not_calib.write_text(json.dumps({"hello": 1}))
    calib = calibs["real"]
    cases = [
        (["detect", "folder", str(folders / "decoded"), "--fingerprint", str(not_calib)],
         "is not a fingerprint calibration file"),
        (["detect", "folder", str(folders / "decoded"), "--fingerprint", str(tmp_path / "missing.json")],
         "cannot read fingerprint calibration"),
        (["detect", "folder", str(folders / "decoded"), "--fingerprint", str(calib)],          # alpha 0.01 < 1/21
         "below the smallest corrected p-value"),
        (["detect", "folder", str(folders / "decoded"), "--fingerprint", str(calib), "--fingerprint-alpha", "0.1",
          "--out", str(calib)], "is a fingerprint calibration file"),
        (["calibrate", "--fingerprint", str(folders / "real")], "needs --out"),
        (["calibrate", "--fingerprint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c.json")],
         "cannot open folder"),
        (["calibrate", str(folders / "real"), "--fingerprint", str(folders / "real"), "--out", str(tmp_path / "c")],
         "takes no DIR"),
        (["detect", "image", str(folders / "decoded" / "dec_000.png"), "--fingerprint", str(calib),
          "--fingerprint-alpha", "0.1", "--heatmap", str(tmp_path / "h.png")], "needs a --key"),
    ]
    for argv, message in cases:
        r = runner.invoke(app, argv)
        assert r.exit_code == 2, (argv, r.output)
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in r.stderr, (argv, r.stderr)
    assert json.loads(calib.read_text())["n"] == N_REAL                 # --out never overwrote the calibration


def test_resume_refuses_another_calibration(folders, calibs, tmp_path, no_default_key):
    a, b = calibs["real"], calibs["dec"]
    out = tmp_path / "out.jsonl"
    base = ["detect", "folder", str(folders / "decoded"), "--fingerprint-alpha", "0.5", "--out", str(out)]
    assert runner.invoke(app, [*base, "--fingerprint", str(a)]).exit_code == 0
    r = runner.invoke(app, [*base, "--fingerprint", str(b), "--resume"])
    assert r.exit_code == 2 and "fingerprint calibrations" in _flat(r.stderr), r.output
    r = runner.invoke(app, [*base, "--fingerprint", str(a), "--resume"])
    assert r.exit_code == 0, r.output                                     # same settings: nothing to add, hits kept
    assert len(_jsonl(out.read_text())) == 4


def test_detector_spec_builds_without_keys(tok, images):
    cal = FingerprintCalibration(tokenizer_id=tok.id, model="reference", image_size=64,
                                 scores=tuple(fingerprint_scores(tok, images["real"])))
    det = DetectorSpec(keys=(), fingerprints=(cal,), fingerprint_alpha=0.1).build()
    recs = det.detect_images(torch.cat([images["decoded"], images["probe"]]))
    assert [r.fingerprint_hit for r in recs[:4]] == [True] * 4
    assert all(r.flagged == r.fingerprint_hit for r in recs) and not any(r.watermarked for r in recs)
    with pytest.raises(ConfigError, match="at least one key or one fingerprint"):
        DetectorSpec(keys=()).build()


# ---------------------------------------------------------------------------------------------- guard eval

def test_eval_detector_fingerprint_folders(folders, calibs, tmp_path):
    out = tmp_path / "ev"
    r = runner.invoke(app, ["eval", "--out", str(out), "-n", "4", "--mode", "folders", "--wm-dir",
                            str(folders / "decoded"), "--clean-dir", str(folders / "probe"), "--detector", "fingerprint",
                            "--fingerprint", str(calibs["real"]), "--attacks", "jpeg:90", "--no-plots",
                            "--batch-size", "4"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    by = {(a["attack"], a["param"]): a for a in summary["attacks"]}
    none = by[("none", 0)]
    assert none["auc"] == 1.0 and none["tpr_at_alpha_0.01"] == 0.0        # 1/21 > 0.01: no p can reach it
    rows = [json.loads(line) for line in (out / "none__0" / "results.jsonl").read_text().splitlines()]
    assert all(row["detector"] == "fingerprint" and row["fingerprint_p"] is not None for row in rows)
    assert ("jpeg", 90) in by and by[("jpeg", 90)]["n_wm"] == 4
    # a calibration file is required for folders; the watermark detector takes none
    r = runner.invoke(app, ["eval", "--out", str(tmp_path / "e2"), "-n", "4", "--mode", "folders", "--wm-dir",
                            str(folders / "decoded"), "--clean-dir", str(folders / "probe"), "--detector", "fingerprint"])
    assert r.exit_code == 2 and "needs a calibration file" in _flat(r.stderr), r.output


def test_eval_detector_fingerprint_soft_uses_rendered_negatives(tmp_path):
    from guard.eval.harness import EvalConfig, run_eval

    cfg = EvalConfig(out=tmp_path / "ev", n=2, mode="soft", detector="fingerprint", attacks=[], batch_size=2)
    summary = run_eval(cfg, plots=False)
    cal = FingerprintCalibration.load(tmp_path / "ev" / "fingerprint_calibration.json")
    assert cal.n == 2
    none = summary["attacks"][0]
    assert none["attack"] == "none" and none["auc"] == 1.0       # generated images vs rendered scenes
    assert not (tmp_path / "ev" / "populations" / "clean").exists()  # the negatives are rendered, not generated
