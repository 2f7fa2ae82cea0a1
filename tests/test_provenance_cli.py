"""`guard provenance show|test-cert`, `guard watermark generate|posthoc --sign`, `guard detect … --trust-anchors`."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from guard.models.reference import shapes
from guard.provenance import ALG_ID, ManifestReader

from test_provenance import strip_by_reencoding, tamper_pixels

runner = CliRunner()


@pytest.fixture(scope="module")
def app():
    from guard.cli import app as guard_app

    return guard_app


@pytest.fixture(autouse=True)
def isolated_config(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def invoke(app, args):
    result = runner.invoke(app, [str(a) for a in args])
    return result, result.stdout, " ".join(result.stderr.split())


@pytest.fixture(scope="module")
def certs(app, tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    r, out, err = invoke(app, ["provenance", "test-cert", d])
    assert r.exit_code == 0, err
    return d


@pytest.fixture(scope="module")
def signed_run(app, gen, certs, tmp_path_factory):
    """`guard keygen` + `guard watermark generate --hard --sign` once for the module (2 images)."""
    root = tmp_path_factory.mktemp("run")
    previous = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(root / "xdg")   # module scope: the autouse fixture is per test
    try:
        r, _, err = invoke(app, ["keygen", "--out", root / "k.key"])
        assert r.exit_code == 0, err
        r, out, err = invoke(app, ["watermark", "generate", "--prompt", "a big red disc in the upper left",
                                   "--prompt", "a small blue square in the bottom right", "--hard", "--seed", "3",
                                   "--key", root / "k.key", "--out", root / "wm", "--sign", certs / "chain.pem",
                                   "--sign-key", certs / "signer.key"])
    finally:
        if previous is None:
            os.environ.pop("XDG_CONFIG_HOME", None)
        else:
            os.environ["XDG_CONFIG_HOME"] = previous
    assert r.exit_code == 0, err
    return root, [line for line in out.splitlines() if line.endswith(".png")], err


def test_test_cert_writes_a_private_key(certs):
    assert {p.name for p in certs.iterdir()} == {"chain.pem", "signer.key", "anchors.pem"}
    assert stat.S_IMODE((certs / "signer.key").stat().st_mode) == 0o600
    assert (certs / "chain.pem").read_text().count("BEGIN CERTIFICATE") == 2


def test_generate_sign_embeds_credentials_naming_the_key(signed_run, certs):
    root, pngs, err = signed_run
    assert len(pngs) == 2 and "signing Content Credentials as 'guard test signer'" in err
    rows = [json.loads(x) for x in (root / "wm" / "manifest.jsonl").read_text().splitlines()]
    secret = json.loads((root / "k.key").read_text())["secret"]
    reader = ManifestReader(certs / "anchors.pem")
    for row, png in zip(rows, pngs):
        s = reader.read(png)
        assert (s.state, s.key_id, s.soft_binding_alg) == ("trusted", row["key_id"], ALG_ID)
        assert row["c2pa_signer"] == "guard test signer" and s.title == row["file"]
        assert row["model"] in s.software_agent and s.watermark_params["tokenizer"] == row["tokenizer_id"]
        assert s.watermark_params["mode"] == "hard"
        assert secret not in json.dumps(s.to_dict())
    assert secret not in err


def test_provenance_show_table_json_and_exit_codes(app, signed_run, certs, tmp_path):
    _, pngs, _ = signed_run
    r, out, err = invoke(app, ["provenance", "show", pngs[0], "--trust-anchors", certs / "anchors.pem"])
    assert r.exit_code == 0, err
    assert "trusted" in out and "guard test signer" in out and "trainedAlgorithmicMedia" in out and ALG_ID in out
    r, out, _ = invoke(app, ["provenance", "show", pngs[0], "--format", "json"])
    d = json.loads(out)
    assert r.exit_code == 0 and d["state"] == "valid" and d["status_codes"] == ["signingCredential.untrusted"]
    assert d["actions"] == ["c2pa.created", "c2pa.watermarked"] and d["path"] == pngs[0]

    stripped = tmp_path / "stripped.png"
    strip_by_reencoding(pngs[0], stripped)
    r, out, _ = invoke(app, ["provenance", "show", stripped])
    assert r.exit_code == 1 and "none" in out
    bad = tmp_path / "tampered.png"
    tamper_pixels(__import__("pathlib").Path(pngs[0]), bad)
    r, out, _ = invoke(app, ["provenance", "show", bad, "--format", "json"])
    assert r.exit_code == 1 and json.loads(out)["state"] == "invalid"
    assert "assertion.dataHash.mismatch" in json.loads(out)["status_codes"]
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"nope")
    r, _, err = invoke(app, ["provenance", "show", junk])
    assert r.exit_code == 3 and err.startswith("error: cannot read image")
    r, _, err = invoke(app, ["provenance", "show", pngs[0], "--trust-anchors", tmp_path / "none.pem"])
    assert r.exit_code == 2 and "trust anchors file not found" in err


def test_generate_refuses_bad_signing_material_before_any_work(app, certs, tmp_path):
    key_copy = tmp_path / "open.key"
    key_copy.write_bytes((certs / "signer.key").read_bytes())
    os.chmod(key_copy, 0o644)
    cases = [
        (["--sign", certs / "chain.pem", "--sign-key", key_copy], "chmod 600"),
        (["--sign", certs / "chain.pem"], "go together"),
        (["--tsa", "http://127.0.0.1:9/"], "--tsa needs --sign"),
        (["--sign", certs / "chain.pem", "--sign-key", certs / "signer.key", "--tsa", "http://127.0.0.1:9/"],
         "timestamp authority"),
    ]
    key_text = (certs / "signer.key").read_text()
    for i, (extra, msg) in enumerate(cases):
        out_dir = tmp_path / f"out{i}"
        r, out, err = invoke(app, ["watermark", "generate", "-n", "1", "--out", out_dir, *extra])
        assert r.exit_code == 2 and msg in err, (extra, err)
        assert not list(out_dir.glob("*.png")) if out_dir.exists() else True
        assert key_text.strip().splitlines()[1] not in err + out


def test_posthoc_sign_records_the_source_as_ingredient(app, tok, certs, tmp_path):
    src = tmp_path / "scene.jpg"
    Image.fromarray(np.asarray(shapes.render(shapes.sample_scene(5, split="any")))).resize((96, 96)).save(src)
    r, out, err = invoke(app, ["watermark", "posthoc", src, "--out", tmp_path / "marked", "--sign", certs / "chain.pem",
                               "--sign-key", certs / "signer.key"])
    assert r.exit_code == 0, err
    row = json.loads((tmp_path / "marked" / "manifest.jsonl").read_text())
    s = ManifestReader(certs / "anchors.pem").read(out.strip())
    assert s.state == "trusted" and s.key_id == row["key_id"] and s.ingredients == ("scene.jpg",)
    assert s.actions == ("c2pa.opened", "c2pa.resized", "c2pa.watermarked") and s.watermark_params["mode"] == "posthoc"
    assert row["c2pa_signer"] == "guard test signer"


def test_detect_folder_adds_provenance_to_each_record(app, signed_run, certs, tmp_path):
    root, pngs, _ = signed_run
    folder = tmp_path / "scan"
    folder.mkdir()
    for p in pngs:
        (folder / os.path.basename(p)).write_bytes(open(p, "rb").read())
    strip_by_reencoding(pngs[0], folder / "stripped.png")
    tamper_pixels(__import__("pathlib").Path(pngs[1]), folder / "tampered.png")
    r, out, err = invoke(app, ["detect", "folder", folder, "--key", root / "k.key", "--trust-anchors",
                               certs / "anchors.pem"])
    rows = {os.path.basename(x["path"]): x for x in map(json.loads, out.splitlines())}
    assert r.exit_code == (0 if any(x["watermarked"] for x in rows.values()) else 1), err
    key_id = json.loads((root / "k.key").read_text())["key_id"]
    for name in ("00000.png", "00001.png"):
        x = rows[name]
        assert (x["c2pa_manifest"], x["c2pa_state"], x["c2pa_key_id"]) == (True, "trusted", key_id)
        assert x["c2pa_signer"] == "guard test signer" and x["c2pa_claim_generator"].startswith("guard/")
        assert x["provenance"] == ("agree" if x["watermarked"] else "manifest-only")
        assert x["c2pa_key_match"] is (True if x["watermarked"] else None)
    s = rows["stripped.png"]
    assert s["c2pa_manifest"] is False and s["provenance"] == ("watermark-only" if s["watermarked"] else "none")
    t = rows["tampered.png"]
    assert (t["c2pa_state"], t["provenance"]) == ("invalid", "invalid-manifest")
    assert "assertion.dataHash.mismatch" in t["c2pa_status"]

    r, out, err = invoke(app, ["detect", "image", folder / "tampered.png", "--key", root / "k.key", "--format", "table"])
    assert out.splitlines()[0].split()[6] == "provenance" and out.splitlines()[1].split()[6] == "invalid-manifest"

    r, out, err = invoke(app, ["detect", "image", pngs[0], "--key", root / "k.key", "--format", "csv"])
    header, row = out.splitlines()[:2]
    cols = dict(zip(header.split(","), row.split(",")))
    assert cols["c2pa_state"] == "valid" and cols["c2pa_status"] == "signingCredential.untrusted"
    r, _, err = invoke(app, ["detect", "image", pngs[0], "--key", root / "k.key", "--trust-anchors", tmp_path / "x.pem"])
    assert r.exit_code == 2 and "trust anchors file not found" in err


def test_trust_anchors_work_with_the_ray_engine(signed_run, certs, tmp_path):
    """Both engines build their detector with `DetectorSpec`: the reader and its anchors reach the Ray workers."""
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
    import subprocess
    import sys

    root, pngs, _ = signed_run
    folder = tmp_path / "scan"
    folder.mkdir()
    for p in pngs:
        (folder / os.path.basename(p)).write_bytes(open(p, "rb").read())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "XDG_CONFIG_HOME": str(tmp_path)}
    outputs = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.jsonl"
        extra = ["--num-workers", "1"] if engine == "ray" else []
        r = subprocess.run([sys.executable, "-c", "from guard.cli import main; main()", "detect", "folder", str(folder),
                            "--key", str(root / "k.key"), "--trust-anchors", str(certs / "anchors.pem"),
                            "--engine", engine, *extra, "--out", str(out)], env=env, capture_output=True, timeout=600)
        assert r.returncode in (0, 1), r.stderr.decode()
        outputs[engine] = [{k: v for k, v in json.loads(line).items() if k != "elapsed_ms"}
                           for line in out.read_text().splitlines()]
    assert outputs["ray"] == outputs["local"]
    assert {row["c2pa_state"] for row in outputs["ray"]} == {"trusted"}
