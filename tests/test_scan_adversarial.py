"""The scanner against a hostile or careless user (issue 21): nothing hangs, nothing is lost, a crash is never "clean".

Every test here scans files it makes itself (random PNGs, FIFOs, sockets, odd names, big sparse PNGs), never
generated images, and is bounded: small images, small folders, subprocesses with a `timeout=`. The scans that
must be interrupted at a known point run guard through `_GATED`, which holds any file named `stuck*` in its
decode thread until the test creates a gate file: an interrupt then always lands mid-batch, whatever the speed
of the machine.

Numbered as the failures of the issue:
1. FIFOs, sockets and devices get an error row and never block; a second Ctrl-C aborts at once.
2. `--out` never names an input, a key or the path list; a second writer on the same `--out` is refused.
3. Crashes: a non-UTF-8 file name is written losslessly and resumed; other tracebacks are one line with exit 2;
   an unexpected exception is exit 4 (`ExitCode.INTERNAL`), never 0 or 1; keygen bounds --lists and --gamma.
4. Resume keys rows on the real path and refuses other settings; CSV resume cuts at a record boundary.
5. Decoding has a memory bound (peak per image, budget across workers, reduced decoding, error rows).
6. An unreadable subfolder is an error row (exit 3), not a log line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from guard.cli import app
from guard.detect import RECORD_FIELDS
from guard.errors import ExitCode
from guard.testfiles import random_rgb, write_bad_inputs

runner = CliRunner()
README = Path(__file__).resolve().parents[1] / "README.md"

# guard's CLI with every file named stuck* held in its decode thread until $GUARD_TEST_GATE exists.
_GATED = textwrap.dedent("""
    import os, time
    import guard.detect.detector as d
    _load = d.load_image
    def load_image(path, *args, **kwargs):
        if os.path.basename(os.fspath(path)).startswith("stuck"):
            gate = os.environ.get("GUARD_TEST_GATE", "")
            while not (gate and os.path.exists(gate)):
                time.sleep(0.02)
        return _load(path, *args, **kwargs)
    d.load_image = load_image
    from guard.cli import main
    main()
""")


# ---------------------------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def key(tok, tmp_path_factory) -> str:
    from guard.keys import WatermarkKey

    return str(WatermarkKey.create(tok, gamma=0.25, n_lists=8).save(tmp_path_factory.mktemp("keys") / "k.json"))


@pytest.fixture(scope="module")
def other_key(tok, tmp_path_factory) -> str:
    from guard.keys import WatermarkKey

    return str(WatermarkKey.create(tok, gamma=0.25, n_lists=8).save(tmp_path_factory.mktemp("keys2") / "b.json"))


@pytest.fixture(autouse=True)
def _config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def _pngs(folder: Path, n: int, prefix: str = "", seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"{prefix}{i:05d}.png"
        random_rgb(32 + 8 * (i % 3), 32 + 8 * (i % 3), seed + i).save(p)
        out.append(p)
    return out


def _penv(tmp: Path, **extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CONFIG_HOME": str(tmp / "config"), **extra}


def _guard(*args: str, gated: bool = False) -> list[str]:
    return [sys.executable, "-c", _GATED if gated else "from guard.cli import main; main()", *args]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _stable(rows: list[dict]) -> list[tuple]:
    return [tuple((k, r[k]) for k in RECORD_FIELDS if k not in ("elapsed_ms", "guard_version")) for r in rows]


def _flat(text: str) -> str:
    return " ".join(text.split())


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"guard exited early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{path} did not reach {n} lines in {timeout}s")


class _FifoWatchdog:
    """Unblock whoever blocks on opening `fifo` after `seconds` (by opening its other end), so no test can hang.

    `fired` says whether it had to: the code under test blocked on the FIFO.
    """

    def __init__(self, fifo: Path, seconds: float = 20.0) -> None:
        import threading

        self.fifo, self.fired = fifo, False
        self._timer = threading.Timer(seconds, self._release)
        self._timer.daemon = True

    def _release(self) -> None:
        self.fired = True
        for flags in (os.O_RDONLY | os.O_NONBLOCK, os.O_WRONLY | os.O_NONBLOCK):   # a blocked writer, a blocked reader
            try:
                os.close(os.open(self.fifo, flags))
            except OSError:
                pass

    def __enter__(self) -> "_FifoWatchdog":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


def _special_files(d: Path, monkeypatch) -> dict[str, str]:
    """A FIFO, a UNIX socket and a character device (through a symlink) with image names: {name: kind}."""
    os.mkfifo(d / "x.png")
    with monkeypatch.context() as m:
        m.chdir(d)                                          # AF_UNIX paths are short; bind a relative name
        s = socket.socket(socket.AF_UNIX)
        s.bind("sock.png")
        s.close()
    os.symlink("/dev/null", d / "null.png")
    return {"x.png": "FIFO", "sock.png": "socket", "null.png": "character device"}


# ---------------------------------------------------------------------------------------------- 1. FIFOs

def test_fifo_socket_and_device_get_error_rows_and_never_block(tmp_path, key, monkeypatch):
    d = tmp_path / "uploads"
    good = _pngs(d, 3)
    special = _special_files(d, monkeypatch)
    out = tmp_path / "out.jsonl"
    try:
        r = subprocess.run(_guard("detect", "folder", str(d), "--key", key, "--out", str(out)), env=_penv(tmp_path),
                           capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the scan hung on a FIFO (killed after 120 s)")
    assert r.returncode == ExitCode.UNREADABLE, r.stderr.decode()
    rows = {os.path.basename(x["path"]): x for x in _jsonl(out)}
    assert set(rows) == {p.name for p in good} | set(special)
    for name, kind in special.items():
        assert rows[name]["error"] == f"not a regular file ({kind})", rows[name]
    assert all(rows[p.name]["error"] is None and rows[p.name]["sha256"] for p in good)


def test_fifo_is_refused_without_being_opened():
    """The loader checks the file type first: opening a FIFO for reading would block until a writer comes."""
    from guard.errors import ImageError
    from guard.imageio import load_image

    import tempfile

    with tempfile.TemporaryDirectory() as t:
        fifo = Path(t) / "f.png"
        os.mkfifo(fifo)
        with _FifoWatchdog(fifo) as dog, pytest.raises(ImageError) as err:
            load_image(fifo, 64)
        assert not dog.fired, "load_image blocked on opening a FIFO"
        assert str(err.value) == "not a regular file (FIFO)"


def test_second_ctrl_c_aborts_at_once(tmp_path, key):
    d = tmp_path / "d"
    _pngs(d, 2)
    random_rgb(32, 32, 9).save(d / "stuck.png")             # sorted last: the third batch never finishes
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(_guard("detect", "folder", str(d), "--key", key, "--out", str(out), "--batch-size", "1",
                                   "--workers", "1", gated=True), env=_penv(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        _wait_for_lines(out, 2, proc)
        time.sleep(0.3)                                     # the main thread now waits for stuck.png
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert proc.poll() is None                          # the first Ctrl-C waits for the batch
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("a second Ctrl-C did not stop the scan within 30 s")
    assert proc.returncode == ExitCode.INTERRUPTED, err.decode()
    assert [os.path.basename(x["path"]) for x in _jsonl(out)] == ["00000.png", "00001.png"]
    assert out.read_bytes().endswith(b"\n")


# ---------------------------------------------------------------------------------------------- 2. --out

def test_out_never_names_an_input_a_key_or_the_path_list(tmp_path, tok):
    from guard.keys import WatermarkKey

    d = tmp_path / "d"
    imgs = _pngs(d, 2)
    k = str(WatermarkKey.create(tok).save(d / "k.json"))
    key_bytes, img_bytes = Path(k).read_bytes(), imgs[0].read_bytes()
    for out, what in ((k, "key"), (str(imgs[0]), "input"), (f"{d}/./{imgs[0].name}", "input"),
                      (str(tmp_path / "d" / ".." / "d" / "k.json"), "key")):
        r = runner.invoke(app, ["detect", "folder", str(d), "--key", k, "--out", out])
        assert r.exit_code == ExitCode.USAGE, (out, r.output)
        assert f"--out {Path(out)} is {'the key file' if what == 'key' else 'an input'}" in _flat(r.output), r.output
    link = tmp_path / "alias.jsonl"
    link.symlink_to(k)
    r = runner.invoke(app, ["detect", "image", str(imgs[1]), "--key", k, "--out", str(link)])
    assert r.exit_code == ExitCode.USAGE and "the key file" in _flat(r.output)
    r = runner.invoke(app, ["detect", "image", str(imgs[1]), "--key", k, "--heatmap", str(imgs[1])])
    assert r.exit_code == ExitCode.USAGE and "--heatmap" in _flat(r.output)
    lst = tmp_path / "list.txt"
    lst.write_text(f"{imgs[0]}\n")
    r = runner.invoke(app, ["detect", "manifest", str(lst), "--key", k, "--out", str(lst)])
    assert r.exit_code == ExitCode.USAGE and "the path list" in _flat(r.output)
    r = runner.invoke(app, ["calibrate", str(d), "--key", k, "--out-plot", str(imgs[0])])
    assert r.exit_code == ExitCode.USAGE and "--out-plot" in _flat(r.output)
    assert Path(k).read_bytes() == key_bytes and imgs[0].read_bytes() == img_bytes
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    with _FifoWatchdog(fifo) as dog:
        r = runner.invoke(app, ["detect", "folder", str(d), "--key", k, "--out", str(fifo)])
    assert not dog.fired, "--out blocked on opening a FIFO"
    assert r.exit_code == ExitCode.USAGE and "not a regular file" in _flat(r.output), r.output


def test_second_writer_on_the_same_out_is_refused(tmp_path, key):
    d = tmp_path / "d"
    _pngs(d, 2)
    random_rgb(32, 32, 9).save(d / "stuck.png")
    out, gate = tmp_path / "out.jsonl", tmp_path / "gate"
    proc = subprocess.Popen(_guard("detect", "folder", str(d), "--key", key, "--out", str(out), "--batch-size", "1",
                                   "--workers", "1", gated=True), env=_penv(tmp_path, GUARD_TEST_GATE=str(gate)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_lines(out, 2, proc)
        for extra in ([], ["--resume"], ["--format", "csv"]):
            r = runner.invoke(app, ["detect", "folder", str(d), "--key", key, "--out", str(out), *extra])
            assert r.exit_code == ExitCode.USAGE, (extra, r.output)
            assert "another guard scan is writing" in _flat(r.output)
        assert proc.poll() is None
        gate.touch()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (ExitCode.WATERMARKED, ExitCode.NONE), err.decode()
    assert [os.path.basename(x["path"]) for x in _jsonl(out)] == ["00000.png", "00001.png", "stuck.png"]


# ---------------------------------------------------------------------------------------------- 3. crashes

def _read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == RECORD_FIELDS
    assert all(len(r) == len(RECORD_FIELDS) for r in rows[1:]), rows
    return [dict(zip(RECORD_FIELDS, r)) for r in rows[1:]]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_non_utf8_file_name_is_written_losslessly_and_resumed(tmp_path, key, fmt):
    d = tmp_path / "d"
    _pngs(d, 3)
    raw = os.fsencode(d) + b"/caf\xe9-\xff.png"            # Latin-1 bytes: not UTF-8
    random_rgb(32, 32, 7).save(raw.decode("utf-8", "surrogateescape"))
    out = tmp_path / f"out.{fmt}"
    rows_of = _jsonl if fmt == "jsonl" else _read_csv
    r = runner.invoke(app, ["detect", "folder", str(d), "--key", key, "--out", str(out), "--format", fmt,
                            "--batch-size", "2"])
    assert r.exit_code in (ExitCode.WATERMARKED, ExitCode.NONE), r.output
    full = rows_of(out)
    assert len(full) == 4
    assert raw in {os.fsencode(x["path"]) for x in full}            # the exact bytes come back
    if fmt == "jsonl":
        out.read_bytes().decode("utf-8")                            # still a valid UTF-8 file
        assert "\\udce9" in out.read_text() and "\\udcff" in out.read_text()
    # cut after the first record, resume: the same rows, none twice; a second resume adds nothing
    lines = out.read_bytes().split(b"\n")
    keep = 1 + (fmt == "csv")
    out.write_bytes(b"\n".join(lines[:keep]) + b"\n")
    for _ in range(2):
        r = runner.invoke(app, ["detect", "folder", str(d), "--key", key, "--out", str(out), "--format", fmt,
                                "--resume"])
        assert r.exit_code in (ExitCode.WATERMARKED, ExitCode.NONE), r.output
        assert [x["path"] for x in rows_of(out)] == [x["path"] for x in full]


def test_unexpected_exception_is_internal_error_exit_4(tmp_path, key, monkeypatch):
    import guard.detect.scan as scan_mod

    d = tmp_path / "d"
    _pngs(d, 1)

    def boom(*a, **k):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(scan_mod, "scan", boom)
    r = runner.invoke(app, ["detect", "folder", str(d), "--key", key])
    assert r.exit_code == ExitCode.INTERNAL == 4, r.output
    assert "internal error: RuntimeError: a bug over two lines" in _flat(r.output)
    assert "Traceback" not in r.output


def test_ordinary_exits_are_not_internal_errors(tmp_path, key):
    """typer's own Exit/usage exceptions pass through the CLI boundary untouched (in-process and through main())."""
    img = _pngs(tmp_path / "d", 1)[0]
    r = runner.invoke(app, ["detect", "image", str(img), "--key", key])
    assert r.exit_code in (ExitCode.WATERMARKED, ExitCode.NONE), r.output
    assert runner.invoke(app, ["--help"]).exit_code == 0
    env = _penv(tmp_path)
    r = subprocess.run(_guard("keygen", "--no-such-option"), env=env, capture_output=True, timeout=120)
    assert r.returncode == ExitCode.USAGE and b"internal error" not in r.stderr, r.stderr.decode()
    r = subprocess.run(_guard("detect", "image", str(img), "--key", key), env=env, capture_output=True, timeout=120)
    assert r.returncode in (ExitCode.WATERMARKED, ExitCode.NONE), r.stderr.decode()


def test_former_tracebacks_are_one_line_exit_2(tmp_path, key):
    d = tmp_path / "d"
    _pngs(d, 2)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    ev = str(tmp_path / "ev")                                       # never the working directory's guard-eval/
    cases = [
        (["eval", "--out", ev, "--alphas", ""], "--alphas"),
        (["eval", "--out", ev, "--alphas", "0.5,2"], "alpha"),
        (["eval", "--out", str(not_a_folder), "--mode", "folders", "--wm-dir", str(d), "--clean-dir", str(d),
          "--attacks", "jpeg"], "not a folder"),
        (["calibrate", str(d), "--key", key, "--out-plot", str(tmp_path)], "--out-plot"),
        (["calibrate", str(d), "--key", key, "--out-plot", str(tmp_path / "no" / "such" / "qq.png")], "--out-plot"),
    ]
    for args, needle in cases:
        t0 = time.time()
        r = runner.invoke(app, args)
        assert r.exit_code == ExitCode.USAGE, (args, r.output, r.exception)
        assert r.exception is None or isinstance(r.exception, SystemExit)
        assert needle in _flat(r.output) and len(r.output.strip().splitlines()) == 1, (args, r.output)
        assert time.time() - t0 < 30, args                          # refused before any computation


def test_keygen_bounds_lists_and_gamma(tmp_path, tok):
    from guard.keys import MAX_LISTS, MIN_CODES_PER_SIDE, WatermarkKey

    for args, needle in ((["--lists", "1000000000"], "--lists"), (["--lists", str(MAX_LISTS + 1)], "--lists"),
                         (["--gamma", "0.001"], "gamma"), (["--gamma", "0.999"], "gamma"),
                         (["--gamma", "nan"], "gamma"), (["--lists", "0"], "--lists")):
        out = tmp_path / f"k{len(list(tmp_path.iterdir()))}.json"
        r = runner.invoke(app, ["keygen", "--out", str(out), *args])
        assert r.exit_code == ExitCode.USAGE, (args, r.output)
        assert needle in r.output and len(r.output.strip().splitlines()) == 1, (args, r.output)
        assert not out.exists()
    r = runner.invoke(app, ["keygen", "--out", str(tmp_path / "ok.json"), "--lists", str(MAX_LISTS), "--gamma", "0.5"])
    assert r.exit_code == 0, r.output
    v = int(tok.vocab_size)
    n_alive = int(np.asarray(tok.alive).sum()) if getattr(tok, "alive", None) is not None else v
    assert round(0.5 * n_alive) >= MIN_CODES_PER_SIDE
    # a key file written by an older guard with a huge pool: one line, exit 2, no allocation
    k = WatermarkKey.create(tok)
    object.__setattr__(k, "n_lists", 10 ** 9)
    k.save(tmp_path / "huge.json")
    img = _pngs(tmp_path / "i", 1)[0]
    r = runner.invoke(app, ["detect", "image", str(img), "--key", str(tmp_path / "huge.json")])
    assert r.exit_code == ExitCode.USAGE and "n_lists" in r.output, r.output


# ---------------------------------------------------------------------------------------------- 4. resume

def test_resume_keys_rows_on_the_real_path(tmp_path, key, monkeypatch):
    d = tmp_path / "imgs"
    _pngs(d, 6)
    (tmp_path / "alias").symlink_to(d)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.jsonl"
    r = runner.invoke(app, ["detect", "folder", "imgs", "--key", key, "--out", str(out), "--batch-size", "2"])
    assert r.exit_code in (0, 1), r.output
    full = _jsonl(out)
    out.write_text("".join(json.dumps(x) + "\n" for x in full[:2]))
    # another spelling of the same folder, from another working directory
    monkeypatch.chdir(tmp_path / "elsewhere")
    for spelling in ("../alias/", f"{tmp_path}/imgs/./", "../imgs"):
        r = runner.invoke(app, ["detect", "folder", spelling, "--key", key, "--out", str(out), "--resume"])
        assert r.exit_code in (0, 1), r.output
        rows = _jsonl(out)
        assert sorted(os.path.basename(x["path"]) for x in rows) == [f"{i:05d}.png" for i in range(6)], rows
        assert [x["path"] for x in rows[:2]] == ["imgs/00000.png", "imgs/00001.png"]


def test_resume_with_other_settings_is_refused(tmp_path, key, other_key):
    d = tmp_path / "d"
    _pngs(d, 4)
    out = tmp_path / "out.jsonl"
    base = ["detect", "folder", str(d), "--out", str(out), "--batch-size", "2"]
    r = runner.invoke(app, [*base, "--key", key])
    assert r.exit_code in (0, 1), r.output
    out.write_text(out.read_text().split("\n", 1)[0] + "\n")
    before = out.read_bytes()
    for extra, needle in ((["--key", other_key], "key"), (["--key", key, "--alpha", "0.001"], "alpha"),
                          (["--key", key, "--search"], "search"), (["--key", key, "--test", "tokens"], "test"),
                          (["--key", key, "--key", other_key], "key"), (["--key", key, "--format", "csv"], "format")):
        r = runner.invoke(app, [*base, *extra, "--resume"])
        assert r.exit_code == ExitCode.USAGE, (extra, r.output)
        errors = [line for line in r.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "cannot resume" in errors[0] and needle in errors[0], (extra, r.output)
        assert out.read_bytes() == before
    # without the settings file (an output written before it existed), the rows themselves still refuse a mix
    settings = [p for p in tmp_path.iterdir() if p.name.startswith("out.jsonl.")]
    assert len(settings) == 1
    settings[0].unlink()
    for extra, needle in ((["--key", other_key], "key"), (["--key", key, "--alpha", "0.001"], "alpha")):
        r = runner.invoke(app, [*base, *extra, "--resume"])
        assert r.exit_code == ExitCode.USAGE and needle in _flat(r.output), (extra, r.output)
    r = runner.invoke(app, [*base, "--key", key, "--resume"])
    assert r.exit_code in (0, 1), r.output
    assert len(_jsonl(out)) == 4


def test_csv_resume_cuts_at_a_record_boundary(tmp_path, key):
    d = tmp_path / "d"
    _pngs(d, 3)
    random_rgb(32, 32, 5).save(d / "a\nnewline.png")       # sorted last; its CSV record spans two lines
    out = tmp_path / "out.csv"
    args = ["detect", "folder", str(d), "--key", key, "--out", str(out), "--format", "csv"]
    r = runner.invoke(app, args)
    assert r.exit_code in (0, 1), r.output
    full = _read_csv(out)
    data = out.read_bytes()
    cut = data.index(b"a\nnewline.png") + 2                 # inside the quoted newline of the last record
    out.write_bytes(data[:cut])
    r = runner.invoke(app, [*args, "--resume"])
    assert r.exit_code in (0, 1), r.output
    assert [x["path"] for x in _read_csv(out)] == [x["path"] for x in full]


def test_manifest_naming_one_file_twice_scans_it_once(tmp_path, key):
    sub = tmp_path / "m" / "sub"
    _pngs(sub, 2)
    lst = tmp_path / "m" / "list.txt"
    lst.write_text("sub/../sub/00000.png\nsub/00000.png\n./sub/00001.png\nsub/00001.png\n")
    r = runner.invoke(app, ["detect", "manifest", str(lst), "--key", key])
    assert r.exit_code in (0, 1), r.output
    rows = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    assert len(rows) == 2, [x["path"] for x in rows]


# ---------------------------------------------------------------------------------------------- 5. memory

def _png_rgba16(path: Path, width: int, height: int) -> None:
    """A 16-bit RGBA PNG of width × height that compresses to almost nothing (a memory-bomb probe)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(1)
    row = b"\x00" + b"\x40\x00\x80\x00\xc0\x00\x80\x00" * width
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


_PEAK = textwrap.dedent("""
    # Peak anonymous memory while decoding (sampled; not ru_maxrss, which page-cache eviction of the
    # already-imported libraries would skew).
    import json, sys, threading, time
    from guard.imageio import load_image
    def anon():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))
    before, peak, done = anon(), [0], threading.Event()
    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], anon())
            time.sleep(0.001)
    t = threading.Thread(target=sample)
    t.start()
    img = load_image(sys.argv[1], 64)
    done.set()
    t.join()
    print(json.dumps({"extra": peak[0] - before, "resize": img.resize, "width": img.width}))
""")


def test_16bit_rgba_png_decodes_within_a_memory_bound(tmp_path):
    w = h = 3000
    big = tmp_path / "big.png"
    _png_rgba16(big, w, h)
    assert big.stat().st_size < 2_000_000
    r = subprocess.run([sys.executable, "-c", _PEAK, str(big)], env=_penv(tmp_path), capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    res = json.loads(r.stdout)
    assert res["width"] == w
    # decoded RGBA (4 B/px) + the RGB result (3 B/px) + slack; the old pipeline peaked at ~23 B/px
    assert res["extra"] < 10 * w * h, res["extra"] / (w * h)


def test_decode_memory_budget_per_image_and_reduced_jpeg_decoding(tmp_path):
    from guard.errors import ImageError
    from guard.imageio import decode_estimate, load_image

    big = tmp_path / "big.png"
    _png_rgba16(big, 2000, 1000)
    est = decode_estimate("RGBA", (2000, 1000), big.stat().st_size, target=64)
    assert 7 * 2000 * 1000 <= est <= 12 * 2000 * 1000
    with pytest.raises(ImageError, match="memory budget"):
        load_image(big, 64, max_decode_bytes=est // 2)
    assert load_image(big, 64, max_decode_bytes=est).resize == "center-crop+resize"
    jpg = tmp_path / "big.jpg"
    random_rgb(2048, 2048, 3).save(jpg, quality=90)
    full = decode_estimate("RGB", (2048, 2048), jpg.stat().st_size, target=64)
    img = load_image(jpg, 64, max_decode_bytes=full // 3)           # a reduced scale (1/2..1/8) fits
    assert img.resize == "reduced+resize" and (img.width, img.height) == (2048, 2048)
    with pytest.raises(ImageError, match="memory budget"):
        load_image(jpg, 64, max_decode_bytes=jpg.stat().st_size + 1000)   # not even 1/8 scale fits


def test_decode_budget_is_shared_across_workers():
    import threading

    from guard.errors import ImageError
    from guard.imageio import DecodeBudget

    budget = DecodeBudget(100)
    with pytest.raises(ImageError, match="memory budget"):
        with budget.reserve(101):
            pass
    order, held = [], []
    with budget.reserve(70):
        def second():
            held.append(budget.reserve(50))
            held[0].__enter__()
            order.append("second")

        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.2)
        order.append("first released")
    t.join(5)
    assert order == ["first released", "second"] and budget.in_use == 50


# ---------------------------------------------------------------------------------------------- 6. folders

def test_unreadable_subfolder_is_an_error_row(tmp_path, key, monkeypatch):
    d = tmp_path / "d"
    _pngs(d, 2)
    _pngs(d / "locked", 1)
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).rstrip("/").endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    r = runner.invoke(app, ["detect", "folder", str(d), "--key", key, "--recursive"])
    assert r.exit_code == ExitCode.UNREADABLE, r.output
    rows = {os.path.basename(x["path"]): x for x in map(json.loads, r.stdout.splitlines())}
    assert rows["locked"]["error"] == "cannot list folder: Permission denied"
    assert rows["00000.png"]["error"] is None


# ---------------------------------------------------------------------------------------------- all together

def test_every_bad_kind_interrupted_killed_and_resumed_gives_each_file_once(tmp_path, key, monkeypatch):
    d = tmp_path / "bad"
    bad = write_bad_inputs(d)
    special = _special_files(d, monkeypatch)
    _pngs(d, 6)
    random_rgb(32, 32, 8).save(os.fsencode(d) + b"/\xff-latin.png")
    random_rgb(32, 32, 9).save(d / "two\nlines.png")
    random_rgb(32, 32, 10).save(d / "stuck.png")
    gate = tmp_path / "gate"
    common = ["detect", "folder", str(d), "--key", key, "--recursive", "--batch-size", "2", "--workers", "2"]
    env = _penv(tmp_path, GUARD_TEST_GATE=str(gate))

    gate.touch()
    full = tmp_path / "full.jsonl"
    r = subprocess.run(_guard(*common, "--out", str(full), gated=True), env=env, capture_output=True, timeout=180)
    assert r.returncode == ExitCode.UNREADABLE, r.stderr.decode()
    expected = _stable(_jsonl(full))
    n_unreadable = sum(bad.values()) + len(special)
    assert len(expected) == len(bad) + len(special) + 6 + 3
    assert sum(x["error"] is not None for x in _jsonl(full)) == n_unreadable
    assert len({os.fsencode(x["path"]) for x in _jsonl(full)}) == len(expected)

    for how in ("sigint", "sigkill"):
        gate.unlink()
        part = tmp_path / f"{how}.jsonl"
        proc = subprocess.Popen(_guard(*common, "--out", str(part), gated=True), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            _wait_for_lines(part, 4, proc)
            time.sleep(0.5)
            if how == "sigint":
                proc.send_signal(signal.SIGINT)             # stop after the current batch...
                time.sleep(0.3)
                gate.touch()                                # ...which can now finish
                _, err = proc.communicate(timeout=60)
                assert proc.returncode == ExitCode.INTERRUPTED, err.decode()
            else:
                proc.kill()
                proc.communicate(timeout=60)
                with open(part, "ab") as f:
                    f.write(b'{"path": "half a reco')       # a write cut by the kill
                gate.touch()
        finally:
            if proc.poll() is None:
                proc.kill()
        n_part = len(_jsonl(part)) if how == "sigint" else part.read_bytes().count(b"\n")
        assert 4 <= n_part < len(expected)
        r = subprocess.run(_guard(*common, "--out", str(part), "--resume", gated=True), env=env,
                           capture_output=True, timeout=180)
        assert r.returncode == ExitCode.UNREADABLE, r.stderr.decode()
        assert _stable(_jsonl(part)) == expected, how


# ---------------------------------------------------------------------------------------------- README

def test_readme_exit_code_table_is_exitcode():
    text = README.read_text()
    section = text.split("### Exit codes", 1)[1].split("\n### ", 1)[0]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", section, flags=re.M)}
    assert documented == {int(c) for c in ExitCode}
    assert "internal error" in section.lower()
