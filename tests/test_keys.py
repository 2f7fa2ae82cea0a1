"""WatermarkKey: file permissions, tamper detection, tokenizer binding, and keeping the secret secret."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import pickle
import stat
from types import SimpleNamespace

import pytest

from guard.errors import KeyFileError
from guard.keys import SCHEME, WatermarkKey, default_key_path, load_or_create_default

SECRET = bytes(range(32))
TOK = SimpleNamespace(id="synthetic-vq-4096@0123456789ab", vocab_size=4096, grid=(16, 16), image_size=64)


def secret_forms(key: WatermarkKey) -> list[str]:
    """Every textual form the secret could leak in."""
    raw = key._secret  # noqa: SLF001 - the test needs the secret to look for it
    return [base64.b64encode(raw).decode(), raw.hex(), repr(raw)]


def fixed_key(**kw) -> WatermarkKey:
    args = dict(gamma=0.25, n_lists=8, tokenizer_id=TOK.id, vocab_size=TOK.vocab_size, created="2026-01-01T00:00:00Z")
    args.update(kw)
    return WatermarkKey._from_secret(SECRET, **args)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_key_id_is_sha256_of_prefixed_secret():
    key = fixed_key()
    assert key.key_id == hashlib.sha256(b"guard-key-id" + SECRET).hexdigest()[:16]
    assert key.scheme == SCHEME == "lbw-v1"


def test_create_draws_a_fresh_secret():
    a, b = WatermarkKey.create(TOK), WatermarkKey.create(TOK)
    assert a.key_id != b.key_id
    assert (a.gamma, a.n_lists, a.tokenizer_id, a.vocab_size) == (0.25, 8, TOK.id, 4096)


def test_save_load_round_trip_with_mode_0600(tmp_path):
    key = WatermarkKey.create(TOK, gamma=0.3, n_lists=5)
    path = key.save(tmp_path / "k.json")
    assert mode(path) == 0o600
    back = WatermarkKey.load(path)
    assert back == key
    assert back.derive(b"m") == key.derive(b"m")
    assert not [p for p in tmp_path.iterdir() if p.name != "k.json"], "temporary file left behind"


def test_save_is_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        path = fixed_key().save(tmp_path / "sub" / "dir" / "k.json")
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert mode(tmp_path / "sub") == 0o700 and mode(tmp_path / "sub" / "dir") == 0o700


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
    path = tmp_path / "k.json"
    fixed_key().save(path)
    other = WatermarkKey.create(TOK)
    with pytest.raises(KeyFileError, match="already exists"):
        other.save(path)
    assert WatermarkKey.load(path).key_id == fixed_key().key_id
    other.save(path, overwrite=True)
    assert WatermarkKey.load(path).key_id == other.key_id and mode(path) == 0o600


def test_load_refuses_group_or_world_readable_key_unless_forced(tmp_path):
    path = fixed_key().save(tmp_path / "k.json")
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match=r"chmod 600") as err:
        WatermarkKey.load(path)
    assert "0644" in str(err.value)
    assert WatermarkKey.load(path, force=True).key_id == fixed_key().key_id
    os.chmod(path, 0o640)
    with pytest.raises(KeyFileError):
        WatermarkKey.load(path)


@pytest.mark.parametrize("field, value, message", [
    ("gamma", 0.5, "MAC"),
    ("n_lists", 1, "MAC"),
    ("tokenizer_id", "other-vq@000000000000", "MAC"),
    ("vocab_size", 8192, "MAC"),
    ("key_id", "0000000000000000", "key_id does not match"),
    ("secret", base64.b64encode(bytes(32)).decode(), "key_id does not match"),
    ("gamma", 7, "tampered"),
])
def test_tampered_key_file_is_detected(tmp_path, field, value, message):
    path = fixed_key().save(tmp_path / "k.json")
    doc = json.loads(path.read_text())
    doc[field] = value
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match=message):
        WatermarkKey.load(path)


@pytest.mark.parametrize("content, message", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"scheme": "lbw-v1"}', "lacks field"),
])
def test_malformed_key_files(tmp_path, content, message):
    path = tmp_path / "k.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content.encode())
    os.close(fd)
    with pytest.raises(KeyFileError, match=message):
        WatermarkKey.load(path)


def test_missing_key_file_names_the_fix(tmp_path):
    with pytest.raises(KeyFileError, match="guard keygen"):
        WatermarkKey.load(tmp_path / "absent.json")


def test_check_tokenizer_names_both_ids():
    key = fixed_key()
    key.check_tokenizer(TOK)
    other = SimpleNamespace(id="reference-vq-1024@fedcba987654", vocab_size=1024)
    with pytest.raises(KeyFileError) as err:
        key.check_tokenizer(other)
    assert TOK.id in str(err.value) and other.id in str(err.value)
    with pytest.raises(KeyFileError, match="vocab 4096"):
        key.check_tokenizer(SimpleNamespace(id=TOK.id, vocab_size=4000))


def test_secret_never_in_repr_str_asdict_or_errors(tmp_path):
    key = fixed_key()
    texts = [repr(key), str(key), f"{key}", json.dumps(dataclasses.asdict(key))]
    assert repr(key) == (f"WatermarkKey(key_id='{key.key_id}', gamma=0.25, n_lists=8, "
                         f"tokenizer_id='{TOK.id}')")
    path = key.save(tmp_path / "k.json")
    for broken in (0o644, None):
        if broken:
            os.chmod(path, broken)
        else:
            os.chmod(path, 0o600)
            doc = json.loads(path.read_text())
            doc["gamma"] = 0.4
            path.write_text(json.dumps(doc))
        with pytest.raises(KeyFileError) as err:
            WatermarkKey.load(path)
        texts.append(str(err.value))
    with pytest.raises(KeyFileError) as err:
        key.check_tokenizer(SimpleNamespace(id="x", vocab_size=2))
    texts.append(str(err.value))
    for text in texts:
        for form in secret_forms(key):
            assert form not in text


def test_pickle_keeps_the_secret_for_worker_processes():
    key = fixed_key()
    back = pickle.loads(pickle.dumps(key))
    assert back == key and back.derive(b"x") == key.derive(b"x")


def test_invalid_parameters_are_rejected():
    from guard.errors import ConfigError

    with pytest.raises(ConfigError, match="gamma"):
        WatermarkKey.create(TOK, gamma=1.0)
    with pytest.raises(ConfigError, match="n_lists"):
        WatermarkKey.create(TOK, n_lists=0)


def test_default_key_path_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_key_path() == tmp_path / "xdg" / "guard" / "keys" / "default.json"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_key_path() == tmp_path / "home" / ".config" / "guard" / "keys" / "default.json"


def test_default_key_is_created_once_and_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    first = load_or_create_default(TOK)
    path = default_key_path()
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700 and mode(path.parent.parent) == 0o700
    assert load_or_create_default(TOK).key_id == first.key_id
    with pytest.raises(KeyFileError, match="bound to tokenizer"):
        load_or_create_default(SimpleNamespace(id="other@1", vocab_size=4096))


# ------------------------------------------------------------------------------------------ geometry (issue 19)
def _tok(**kw):
    base = dict(id=TOK.id, vocab_size=4096, grid=(16, 16), image_size=64)
    base.update(kw)
    return SimpleNamespace(**base)


def test_created_key_binds_geometry_and_file_keeps_it(tmp_path):
    from guard.keys import Geometry

    key = WatermarkKey.create(_tok(), gamma=0.25, n_lists=2)
    assert key.geometry == Geometry(image_size=64, grid=(16, 16), vocab_size=4096)
    path = key.save(tmp_path / "k.json")
    assert json.loads(path.read_text())["geometry"] == {"image_size": 64, "grid": [16, 16], "vocab_size": 4096}
    assert WatermarkKey.load(path).geometry == key.geometry


def test_geometry_edit_breaks_the_mac(tmp_path):
    path = WatermarkKey.create(_tok(), n_lists=2).save(tmp_path / "k.json")
    doc = json.loads(path.read_text())
    doc["geometry"]["image_size"] = 720
    path.write_text(json.dumps(doc))
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="geometry"):
        WatermarkKey.load(path)


def test_other_geometry_is_refused_in_one_line_with_the_fix():
    key = WatermarkKey.create(_tok(image_size=64, grid=(8, 8)), n_lists=2)
    with pytest.raises(KeyFileError) as err:
        key.check_tokenizer(_tok(image_size=720, grid=(90, 90)))
    msg = str(err.value)
    assert "\n" not in msg and "64 px, grid 8x8" in msg and "720 px, grid 90x90" in msg and "@64" in msg
    key.check_tokenizer(_tok(image_size=64, grid=(8, 8)))           # the same geometry passes


def test_scales_are_part_of_the_geometry():
    key = WatermarkKey.create(_tok(scales=(1, 2, 4, 16)), n_lists=2)
    assert key.geometry.scales == (1, 2, 4, 16)
    with pytest.raises(KeyFileError, match="scales 1/2/4/16"):
        key.check_tokenizer(_tok(scales=(1, 2, 3, 16)))


def test_key_without_geometry_still_loads_and_is_not_geometry_checked(tmp_path):
    legacy = fixed_key()                                            # as written before geometry was bound
    path = legacy.save(tmp_path / "old.json")
    assert "geometry" not in json.loads(path.read_text())
    loaded = WatermarkKey.load(path)
    assert loaded.geometry is None
    loaded.check_tokenizer(_tok(image_size=720, grid=(90, 90)))


def test_duck_typed_tokenizer_missing_attributes_gets_one_clear_line():
    from guard.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        WatermarkKey.create(SimpleNamespace(id="mine@1", vocab_size=4096), n_lists=2)
    msg = str(err.value)
    assert "\n" not in msg and "lacks grid, image_size" in msg and "AttributeError" not in msg


def test_green_lists_take_a_tokenizer_without_alive():
    from guard.watermark import GreenLists

    tok = _tok()                                                    # no `alive`: optional in the protocol
    gl = GreenLists(WatermarkKey.create(tok, n_lists=2), tok)
    assert not gl.stratified and gl.masks.shape == (2, 4096)
