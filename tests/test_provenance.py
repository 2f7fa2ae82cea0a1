"""guard.provenance: signing material checks, sign → read back, trust, tampering, stripping, the case table.

No private key is committed: every test makes a throwaway CA + signer with `cryptography` at test time.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guard.errors import ConfigError, ImageError
from guard.provenance import (ALG_ID, PROVENANCE_CASES, TRAINED_ALGORITHMIC_MEDIA, ImageSigner, ManifestReader,
                              ManifestSummary, SigningError, SigningMaterial, generation_manifest, posthoc_manifest,
                              provenance_case, record_fields)
from guard.provenance.testcerts import make_test_chain

KEY_ID = "0123456789abcdef"


# ---------------------------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return make_test_chain(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def other_chain(tmp_path_factory):
    return make_test_chain(tmp_path_factory.mktemp("other-ca"), common_name="someone else")


def write_png(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def manifest_for(title: str, key_id: str = KEY_ID) -> dict:
    return generation_manifest(title=title, model_id="reference-gpt@test", key_id=key_id,
                               tokenizer_id="reference-vq@test", gamma=0.25, n_lists=8, mode="hard")


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        out.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]))
        pos += 12 + n
    return out


def write_chunks(path: Path, chunks) -> None:
    body = b"".join(struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def tamper_pixels(src: Path, dst: Path) -> None:
    """Change one pixel (its red value) after signing; every other chunk, the C2PA manifest included,
    stays byte for byte (the new pixel data is PIL's IDAT for the edited array)."""
    with Image.open(src) as im:
        arr = np.asarray(im.convert("RGB")).copy()
    arr[0, 0, 0] ^= 0x40
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    fresh = png_chunks(buf.getvalue())
    chunks = png_chunks(src.read_bytes())
    assert dict(fresh)[b"IHDR"] == dict(chunks)[b"IHDR"]
    new_idat = [(t, d) for t, d in fresh if t == b"IDAT"]
    out, done = [], False
    for t, d in chunks:
        if t == b"IDAT":
            if not done:
                out += new_idat
                done = True
            continue
        out.append((t, d))
    write_chunks(dst, out)


def strip_by_reencoding(src: Path, dst: Path) -> None:
    with Image.open(src) as im:
        im.convert("RGB").save(dst)


# ---------------------------------------------------------------------------------------------- material

def test_signing_material_loads_and_never_shows_the_key(chain):
    m = SigningMaterial.load(chain.chain, chain.key)
    assert (m.alg, m.signer_name) == ("es256", "guard test signer")
    key_text = chain.key.read_text()
    body = "".join(key_text.strip().splitlines()[1:-1])
    assert body[:40] not in repr(m) and body[:40] not in str(m)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(m)


def test_signing_material_refusals_are_one_line_and_secret_free(chain, other_chain, tmp_path):
    secret_body = "".join(chain.key.read_text().strip().splitlines()[1:-1])

    def refused(match, *args, **kw):
        with pytest.raises(SigningError, match=match) as e:
            SigningMaterial.load(*args, **kw)
        msg = str(e.value)
        assert "\n" not in msg and secret_body[:32] not in msg
        assert isinstance(e.value, ConfigError)          # the CLI maps it to exit 2

    open_key = tmp_path / "open.key"
    open_key.write_bytes(chain.key.read_bytes())
    os.chmod(open_key, 0o644)
    refused(r"mode 0644.*chmod 600", chain.chain, open_key)
    refused("does not certify", other_chain.chain, chain.key)          # chain of another signer
    refused("not found", chain.chain, tmp_path / "missing.key")
    not_pem = tmp_path / "chain.txt"
    not_pem.write_text("hello")
    refused("not a PEM certificate chain", not_pem, chain.key)
    garbage = tmp_path / "garbage.key"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    os.chmod(garbage, 0o600)
    refused("not a PEM private key", chain.chain, garbage)

    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(chain.key.read_bytes(), None)
    enc = tmp_path / "enc.key"
    enc.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"pw")))
    os.chmod(enc, 0o600)
    refused("encrypted", chain.chain, enc)
    refused("http", chain.chain, chain.key, tsa_url="ftp://tsa.example")


def test_unreachable_timestamp_authority_fails_the_check(chain):
    with ImageSigner(SigningMaterial.load(chain.chain, chain.key, "http://127.0.0.1:9/tsa")) as s:
        with pytest.raises(SigningError, match="timestamp authority"):
            s.check()


# ---------------------------------------------------------------------------------------------- sign / read

def test_sign_then_read_back_every_field(chain, tmp_path):
    png = write_png(tmp_path / "a.png")
    before = np.asarray(Image.open(png)).copy()
    with ImageSigner(SigningMaterial.load(chain.chain, chain.key)) as s:
        s.check()
        s.sign_file(png, manifest_for("a.png"))
    assert np.array_equal(np.asarray(Image.open(png)), before)           # pixels untouched
    assert not list(tmp_path.glob(".*signing*"))                        # no temp file left

    got = ManifestReader().read(png)
    assert got.present and got.state == "valid"
    assert got.status_codes == ("signingCredential.untrusted",)          # intact, signer on no trust list
    assert (got.signer, got.claim_generator, got.title) == ("guard test signer", f"guard/{__import__('guard').__version__}", "a.png")
    assert got.actions == ("c2pa.created", "c2pa.watermarked") and got.created and got.watermarked
    assert got.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert "reference-gpt@test" in got.software_agent
    assert (got.soft_binding_alg, got.key_id) == (ALG_ID, KEY_ID)
    assert got.watermark_params == {"tokenizer": "reference-vq@test", "gamma": "0.25", "lists": "8", "mode": "hard"}

    trusted = ManifestReader(trust_anchors=chain.anchors).read(png)
    assert (trusted.state, trusted.status_codes) == ("trusted", ())


def test_trust_anchors_of_another_ca_do_not_make_it_trusted(chain, other_chain, tmp_path):
    png = write_png(tmp_path / "a.png")
    with ImageSigner(SigningMaterial.load(chain.chain, chain.key)) as s:
        s.sign_file(png, manifest_for("a.png"))
    got = ManifestReader(trust_anchors=other_chain.anchors).read(png)
    assert got.state == "valid" and "signingCredential.untrusted" in got.status_codes


def test_tampered_pixels_read_invalid_with_the_data_hash_code(chain, tmp_path):
    png = write_png(tmp_path / "a.png")
    with ImageSigner(SigningMaterial.load(chain.chain, chain.key)) as s:
        s.sign_file(png, manifest_for("a.png"))
    bad = tmp_path / "tampered.png"
    tamper_pixels(png, bad)
    a, b = np.asarray(Image.open(png)), np.asarray(Image.open(bad))
    assert (a != b).sum() == 1                                           # one value of one pixel changed
    got = ManifestReader(trust_anchors=chain.anchors).read(bad)
    assert got.present and got.state == "invalid"
    assert "assertion.dataHash.mismatch" in got.status_codes
    assert provenance_case(got, watermarked=True, key_id=KEY_ID) == "invalid-manifest"


def test_reencoding_the_pixels_strips_the_manifest(chain, tmp_path):
    png = write_png(tmp_path / "a.png")
    with ImageSigner(SigningMaterial.load(chain.chain, chain.key)) as s:
        s.sign_file(png, manifest_for("a.png"))
    stripped = tmp_path / "stripped.png"
    strip_by_reencoding(png, stripped)
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(stripped)))
    assert ManifestReader().read(stripped) == ManifestSummary(present=False)


def test_posthoc_manifest_keeps_the_source_as_ingredient(chain, tmp_path):
    src = write_png(tmp_path / "source.png", seed=1)
    with ImageSigner(SigningMaterial.load(chain.chain, chain.key)) as s:
        s.sign_file(src, manifest_for("source.png", key_id="ffffffffffffffff"))    # the source has credentials
        out = write_png(tmp_path / "marked.png", seed=2)
        s.sign_file(out, posthoc_manifest(title="marked.png", key_id=KEY_ID, tokenizer_id="tok", gamma=0.25,
                                          n_lists=8, resized_from=(640, 480), size=64), parent=src)
    got = ManifestReader(trust_anchors=chain.anchors).read(out)
    assert got.state == "trusted" and got.key_id == KEY_ID
    assert got.actions == ("c2pa.opened", "c2pa.resized", "c2pa.watermarked") and not got.created
    assert got.ingredients == ("source.png",)


def test_sign_to_another_file_and_unsupported_inputs(chain, tmp_path):
    png = write_png(tmp_path / "a.png")
    with ImageSigner(SigningMaterial.load(chain.chain, chain.key)) as s:
        out = s.sign_file(png, manifest_for("a.png"), out=tmp_path / "signed.png")
        assert out.exists() and ManifestReader().read(png).present is False
        with pytest.raises(SigningError, match="unsupported suffix"):
            s.sign_file(tmp_path / "a.xyz", manifest_for("a.xyz"))
        with pytest.raises(SigningError, match="cannot sign"):
            s.sign_file(tmp_path / "missing.png", manifest_for("missing.png"))
    assert ManifestReader().read(out).key_id == KEY_ID


def test_reader_on_formats_and_broken_files(tmp_path):
    bmp = tmp_path / "a.bmp"
    Image.new("RGB", (8, 8)).save(bmp)
    assert ManifestReader().read(bmp).present is None                    # c2pa cannot hold a manifest in BMP
    jpg = tmp_path / "a.jpg"
    Image.new("RGB", (8, 8)).save(jpg)
    assert ManifestReader().read(jpg).present is False
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="cannot read image"):
        ManifestReader().read(junk)
    with pytest.raises(ImageError, match="not found"):
        ManifestReader().read(tmp_path / "missing.png")
    with pytest.raises(ConfigError, match="not found"):
        ManifestReader(trust_anchors=tmp_path / "nope.pem")
    (tmp_path / "bad.pem").write_text("nope")
    with pytest.raises(ConfigError, match="not a PEM certificate list"):
        ManifestReader(trust_anchors=tmp_path / "bad.pem")


def test_reader_pickles_without_its_native_context(chain, tmp_path):
    png = write_png(tmp_path / "a.png")
    with ImageSigner(SigningMaterial.load(chain.chain, chain.key)) as s:
        s.sign_file(png, manifest_for("a.png"))
    r = ManifestReader(trust_anchors=chain.anchors)
    assert r.read(png).state == "trusted"                                # builds the native context
    clone = pickle.loads(pickle.dumps(r))
    assert clone.read(png).state == "trusted"


# ---------------------------------------------------------------------------------------------- cases

@pytest.mark.parametrize("present,state,manifest_key,watermarked,wm_key,case,match", [
    (True, "trusted", KEY_ID, True, KEY_ID, "agree", True),
    (True, "valid", KEY_ID, True, KEY_ID, "agree", True),
    (True, "valid", "ffffffffffffffff", True, KEY_ID, "mismatch", False),
    (True, "valid", None, True, KEY_ID, "mismatch", False),               # a manifest without guard's binding
    (False, None, None, True, KEY_ID, "watermark-only", None),
    (True, "trusted", KEY_ID, False, KEY_ID, "manifest-only", None),
    (True, "valid", None, False, KEY_ID, "other-manifest", None),          # another tool's credentials
    (True, "invalid", KEY_ID, True, KEY_ID, "invalid-manifest", True),
    (True, "invalid", KEY_ID, False, KEY_ID, "invalid-manifest", None),
    (False, None, None, False, KEY_ID, "none", None),
])
def test_case_table(present, state, manifest_key, watermarked, wm_key, case, match):
    s = ManifestSummary(present=present, state=state, key_id=manifest_key,
                        status_codes=("assertion.dataHash.mismatch",) if state == "invalid" else ())
    f = record_fields(s, watermarked, wm_key)
    assert f["provenance"] == case and case in PROVENANCE_CASES
    assert f["c2pa_key_match"] is match
    assert f["c2pa_manifest"] is present
    assert f["c2pa_status"] == ("assertion.dataHash.mismatch" if state == "invalid" else None)


def test_unchecked_manifest_gives_empty_fields():
    assert set(record_fields(None, True, KEY_ID).values()) == {None}
    assert set(record_fields(ManifestSummary(present=None), False, None).values()) == {None}


def test_credentials_of_another_tool_are_not_a_transplant(chain, tmp_path):
    png = write_png(tmp_path / "camera.png")
    foreign = {"claim_generator_info": [{"name": "some-camera-app", "version": "2.0"}], "title": "camera.png",
               "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": [
                   {"action": "c2pa.created",
                    "digitalSourceType": "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"}]}}]}
    with ImageSigner(SigningMaterial.load(chain.chain, chain.key)) as s:
        s.sign_file(png, foreign)
    got = ManifestReader().read(png)
    assert (got.claim_generator, got.key_id, got.watermarked) == ("some-camera-app/2.0", None, False)
    assert record_fields(got, False, KEY_ID)["provenance"] == "other-manifest"
    assert record_fields(got, True, KEY_ID)["provenance"] == "mismatch"
