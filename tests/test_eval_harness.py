"""`guard eval` end to end on the reference model (tiny N): files, rows, resume, detection parity, CLI, spoofing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from guard.cli import app
from guard.errors import ConfigError
from guard.eval.harness import EvalConfig, run_eval
from guard.eval.spoof import SpoofConfig, estimate_green, forge, run_spoof

N = 4
ATTACKS = [("jpeg", 50), ("hflip", 1)]


@pytest.fixture(scope="module")
def soft_run(tmp_path_factory, gen):
    out = tmp_path_factory.mktemp("eval") / "soft"
    summary = run_eval(EvalConfig(out=out, n=N, mode="soft", batch_size=N, attacks=ATTACKS))
    return out, summary


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_eval_writes_every_output(soft_run):
    out, summary = soft_run
    for name in ("config.json", "report.csv", "summary.json", "roc.png", "tpr_vs_strength.png", "summary_table.png",
                 "eval.key"):
        assert (out / name).exists(), name
    assert (out / "eval.key").stat().st_mode & 0o077 == 0
    assert "secret" not in (out / "config.json").read_text() and "secret" not in (out / "summary.json").read_text()
    for d in ("none__0", "jpeg__50", "hflip__1"):
        rows = _rows(out / d / "results.jsonl")
        assert sorted(r["path"] for r in rows) == sorted([f"watermarked/{i:05d}" for i in range(N)] +
                                                         [f"clean/{i:05d}" for i in range(N)])
        for r in rows:
            assert r["error"] is None and r["log10_p"] <= 0 and 0 <= r["token_match"] <= 1
            assert (r["list_index_true"] is None) == (r["population"] == "clean")
    none = {r["path"]: r for r in _rows(out / "none__0" / "results.jsonl")}
    assert all(r["token_match"] == 1.0 and r["psnr_attack"] is None for r in none.values())
    jpeg = _rows(out / "jpeg__50" / "results.jsonl")
    assert all(r["psnr_attack"] is not None and r["psnr_attack"] < 60 for r in jpeg)
    by = {(r["attack"], r["param"]): r for r in summary["attacks"]}
    assert set(by) == {("none", 0), ("jpeg", 50), ("hflip", 1)}
    for r in by.values():
        assert r["n_wm"] == N and r["n_clean"] == N and 0 <= r["auc"] <= 1
        for a in (0.01, 0.001, 0.0001, 1e-06):
            assert 0 <= r[f"tpr_at_alpha_{a:g}"] <= 1
    assert summary["table"][0]["row"] == "no attack"
    csv_lines = (out / "report.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("attack,param")


def test_eval_detection_equals_guard_detect_on_saved_png(soft_run, tmp_path):
    """A row's p-value is what `guard detect` gives for the attacked image saved as PNG."""
    from PIL import Image

    from guard.detect import Detector
    from guard.eval.attacks import apply_attack
    from guard.imageio import from_uint8
    from guard.keys import WatermarkKey
    from guard.models import load_tokenizer
    from guard.watermark import GreenLists

    out, _ = soft_run
    tok = load_tokenizer("reference")
    d = np.load(out / "populations" / "watermarked" / "chunk_00000.npz")
    x = apply_attack("jpeg", from_uint8(d["images"]), 50, seed=0, indices=range(N))
    paths = []
    for i, img in enumerate(x):
        p = tmp_path / f"{i}.png"
        Image.fromarray((img * 255).round().byte().permute(1, 2, 0).numpy()).save(p)
        paths.append(p)
    det = Detector(GreenLists(WatermarkKey.load(out / "eval.key"), tok), tok, alpha=1e-6)
    recs = det.detect_paths(paths)
    rows = {r["index"]: r for r in _rows(out / "jpeg__50" / "results.jsonl") if r["population"] == "watermarked"}
    for i, rec in enumerate(recs):
        assert rec.log10_p == pytest.approx(rows[i]["log10_p"], abs=1e-9)
        assert rec.n_green == rows[i]["n_green"] and rec.list_index == rows[i]["list_index"]


def test_eval_resume_after_crash_gives_the_same_rows(soft_run, gen):
    out, _ = soft_run
    path = out / "jpeg__50" / "results.jsonl"

    def content():                        # every field but the timing
        return sorted(json.dumps({k: v for k, v in r.items() if k != "elapsed_ms"}) for r in _rows(path))

    before = content()
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + lines[3][:25])           # 3 rows and a torn fourth
    run_eval(EvalConfig(out=out, n=N, mode="soft", batch_size=N, attacks=ATTACKS), plots=False)
    assert content() == before and len(_rows(path)) == 2 * N


def test_eval_refuses_to_resume_with_other_settings(soft_run):
    out, _ = soft_run
    with pytest.raises(ConfigError, match="another evaluation"):
        run_eval(EvalConfig(out=out, n=N, mode="hard", batch_size=N, attacks=ATTACKS), plots=False)


def test_metrics_have_the_same_columns_whatever_the_data(soft_run):
    """attack_metrics returns every column of metric_columns (None when not computable); report.csv has them."""
    from guard.eval.harness import REPORT_KEYS, attack_metrics, metric_columns

    out, summary = soft_run
    rows = _rows(out / "jpeg__50" / "results.jsonl")
    full = attack_metrics(rows)
    assert list(full) == metric_columns()
    one_clean = attack_metrics([r for r in rows if r["population"] == "watermarked"] + rows[-1:])
    no_clean = attack_metrics([r for r in rows if r["population"] == "watermarked"])
    for m in (one_clean, no_clean):
        assert list(m) == list(full)
    assert no_clean["auc"] is None and one_clean["tpr_at_fpr_0.01_split"] is None
    header = (out / "report.csv").read_text().splitlines()[0].split(",")
    assert header == [*REPORT_KEYS, *metric_columns()]
    assert all(list(r) == list(summary["table"][0]) for r in summary["table"])


def test_eval_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="mode"):
        EvalConfig(out=tmp_path, mode="medium")
    with pytest.raises(ConfigError, match="n must"):
        EvalConfig(out=tmp_path, n=1)
    with pytest.raises(ConfigError, match="wm_dir"):
        EvalConfig(out=tmp_path, mode="folders")
    with pytest.raises(ConfigError, match="unknown attack"):
        EvalConfig(out=tmp_path, attacks=[("sharpen", 1)])


def test_posthoc_mode_records_quality(tmp_path, tok):
    s = run_eval(EvalConfig(out=tmp_path / "ph", n=3, mode="posthoc", batch_size=3, attacks=[], min_psnr=25.0),
                 plots=False)
    q = s["posthoc_quality"]
    assert q["n"] == 3 and 0 < q["ssim_mean"] <= 1
    assert q["psnr_db_mean"] is None or q["psnr_db_mean"] >= 25.0


def test_cli_eval_and_bad_options(tmp_path, gen):
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--out", str(tmp_path / "c"), "-n", "2", "--batch-size", "2", "--attacks",
                              "brightness:1.5", "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "no attack" in res.stdout and "brightness" not in res.stdout.split("\n")[0]
    assert (tmp_path / "c" / "brightness__1.5" / "results.jsonl").exists()
    bad = runner.invoke(app, ["eval", "--out", str(tmp_path / "d"), "-n", "2", "--attacks", "jpeg:500"])
    assert bad.exit_code == 2 and "JPEG quality" in bad.output
    bad = runner.invoke(app, ["eval", "--out", str(tmp_path / "d"), "--alphas", "0.01,x"])
    assert bad.exit_code == 2 and "--alphas" in bad.output


# --------------------------------------------------------------------------------------- spoofing

def test_estimate_green_recovers_an_overused_set():
    g = torch.Generator().manual_seed(0)
    V, green = 64, torch.arange(16)                     # the "true" list: codes 0..15
    clean = torch.randint(0, V, (50, 8, 8), generator=g)
    wm = torch.where(torch.rand(50, 8, 8, generator=g) < 0.7, torch.randint(0, 16, (50, 8, 8), generator=g),
                     torch.randint(0, V, (50, 8, 8), generator=g))
    est = estimate_green(wm, clean, V, 0.25)
    assert int(est.sum()) == 16
    assert int(est[green].sum()) >= 15
    with pytest.raises(ConfigError, match="gamma"):
        estimate_green(wm, clean, V, 1.5)


def test_forge_moves_codes_into_the_estimate(tok):
    from guard.models.reference.shapes import render, sample_scene

    x = torch.from_numpy(np.stack([render(sample_scene(s, split="any")) for s in (1, 2)])).permute(0, 3, 1, 2) / 255
    est = torch.zeros(tok.vocab_size, dtype=torch.bool)
    est[torch.randperm(tok.vocab_size, generator=torch.Generator().manual_seed(1))[: tok.vocab_size // 4]] = True
    before = est[tok.encode(x)].float().mean()
    after = est[tok.encode(forge(x, est, tok, rounds=2))].float().mean()
    assert after > before


def test_spoof_run_tiny(tmp_path, gen):
    res = run_spoof(SpoofConfig(out=tmp_path / "sp", n_observed=(2, 4), n_lists=(1,), n_targets=2, n_clean=4,
                                batch_size=4))
    assert [(r["n_lists"], r["n_observed"]) for r in res["rows"]] == [(1, 2), (1, 4)]
    for r in res["rows"]:
        assert 0 <= r["success_at_alpha_0.01"] <= 1 and r["n_targets"] == 2
        assert 0 <= r["estimate_overlap_best_list"] <= 1
    assert (tmp_path / "sp" / "spoof.csv").exists() and (tmp_path / "sp" / "keys" / "K1.key").exists()
    with pytest.raises(ConfigError, match="n_targets"):
        SpoofConfig(out=tmp_path, n_targets=5, n_clean=5)
