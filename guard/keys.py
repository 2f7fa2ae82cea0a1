"""Watermark keys: a 32-byte secret plus the public parameters it is bound to.

A key file is JSON, written with mode 0600 and refused when group- or world-readable. The secret is
stored base64-encoded beside an HMAC over the metadata, so edits to gamma, n_lists or the tokenizer
binding are detected on load. The secret never appears in `repr`, `str`, logs, exceptions or results:
`derive()` is the only way to use it.

    >>> from guard.keys import WatermarkKey
    >>> from guard.models import load_tokenizer
    >>> tok = load_tokenizer("reference")
    >>> key = WatermarkKey.create(tok, gamma=0.25, n_lists=8)
    >>> key.save("my.key")                         # mode 0600; refuses to overwrite
    >>> WatermarkKey.load("my.key").key_id == key.key_id
    True
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._files import temp_beside
from .errors import ConfigError, KeyFileError
from .models.base import check_tokenizer_protocol

__all__ = ["SCHEME", "MAX_LISTS", "MIN_CODES_PER_SIDE", "Geometry", "WatermarkKey", "check_tokenizer_protocol",
           "default_key_path", "load_or_create_default", "resolve_key", "resolve_keys"]

SCHEME = "lbw-v1"
SECRET_BYTES = 32
MAX_LISTS = 1024                 # green lists K in one key's pool (each costs a V-bit mask and a factor K in p)
MIN_CODES_PER_SIDE = 16          # green codes, and red codes, each list must have among the codes in use
_KEY_ID_PREFIX = b"guard-key-id"
_MAC_PREFIX = b"guard/key-mac/v1/"
_META_FIELDS = ("created", "gamma", "key_id", "n_lists", "scheme", "tokenizer_id", "vocab_size")


_KEY_NEEDS = ("id", "vocab_size", "grid", "image_size")


@dataclass(frozen=True)
class Geometry:
    """What a tokenizer reads and writes, bound into a key: codes from other geometries are not comparable.

    Attributes:
        image_size: pixels per side the tokenizer encodes. grid: (h, w) tokens of one image.
        vocab_size: codebook size. scales: token-map sides per scale for multi-scale tokenizers (VAR), else None.
    """

    image_size: int
    grid: tuple[int, int]
    vocab_size: int
    scales: tuple[int, ...] | None = None

    @classmethod
    def of(cls, tokenizer: Any) -> "Geometry":
        """The geometry of a tokenizer (ConfigError naming what a duck-typed one lacks)."""
        check_tokenizer_protocol(tokenizer, _KEY_NEEDS)
        try:
            grid = tuple(int(g) for g in tokenizer.grid)
            scales = getattr(tokenizer, "scales", None)
            geo = cls(image_size=int(tokenizer.image_size), grid=grid, vocab_size=int(tokenizer.vocab_size),
                      scales=None if scales is None else tuple(int(v) for v in scales))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{type(tokenizer).__name__}: image_size, grid (h, w), vocab_size and scales must be "
                              f"integers ({e})") from None
        if len(geo.grid) != 2:
            raise ConfigError(f"{type(tokenizer).__name__}.grid must be (h, w), got {tokenizer.grid!r}")
        return geo

    def to_json(self) -> dict:
        d = {"image_size": self.image_size, "grid": list(self.grid), "vocab_size": self.vocab_size}
        if self.scales is not None:
            d["scales"] = list(self.scales)
        return d

    @classmethod
    def from_json(cls, d: Any) -> "Geometry":
        if not isinstance(d, dict):
            raise ConfigError(f"geometry must be a JSON object, got {type(d).__name__}")
        try:
            return cls(image_size=int(d["image_size"]), grid=tuple(int(g) for g in d["grid"]),
                       vocab_size=int(d["vocab_size"]),
                       scales=None if d.get("scales") is None else tuple(int(v) for v in d["scales"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"geometry is malformed ({type(e).__name__}: {e})") from None

    def __str__(self) -> str:
        h, w = self.grid
        s = f"{self.image_size} px, grid {h}x{w}, {self.vocab_size} codes"
        return s + (f", scales {'/'.join(map(str, self.scales))}" if self.scales else "")


def _key_id(secret: bytes) -> str:
    return hashlib.sha256(_KEY_ID_PREFIX + secret).hexdigest()[:16]


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")



def read_file(path: Path, what: str, error: type[Exception], *, missing_hint: str = "") -> bytes:
    """Bytes of a file the user named; a missing or unreadable file raises `error` with one line naming `what`."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} not found: {path}{missing_hint}") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from None


def read_private_file(path: Path, what: str, error: type[Exception], *, missing_hint: str = "",
                      force: bool = False) -> bytes:
    """Bytes of a secret-bearing file (key, signing key) after refusing one that group/others can access.

    Every failure raises `error` with one line naming `what` and the path, never the contents.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise error(f"{what} not found: {path}{missing_hint}") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if os.name == "posix" and mode & 0o077 and not force:
        raise error(f"{what} {path} is readable or writable by group/others (mode {mode:04o}); "
                    f"fix it with `chmod 600 {path}`")
    return read_file(path, what, error, missing_hint=missing_hint)

@dataclass(frozen=True, repr=False)
class WatermarkKey:
    """A watermark key: public parameters as fields, the secret held privately (never a field).

    Attributes:
        key_id: first 16 hex chars of SHA-256(b"guard-key-id" + secret); names the key publicly.
        gamma: green-list fraction, 0 < gamma < 1 (a created key: at least `MIN_CODES_PER_SIDE` green and
            red codes per list).
        n_lists: number of green lists K in the pool, 1 <= K <= `MAX_LISTS`.
        tokenizer_id: the `Tokenizer.id` the key is bound to.
        vocab_size: that tokenizer's vocabulary size.
        scheme: derivation version ("lbw-v1").
        created: creation time, ISO 8601 UTC.
        geometry: the tokenizer's `Geometry` (image size, grid, codebook, scales); None for keys made before
            guard bound it (their geometry is not checked).

    Build keys with `create()` or `load()`; the constructor alone gives a key without a secret.
    """

    key_id: str
    gamma: float
    n_lists: int
    tokenizer_id: str
    vocab_size: int
    scheme: str = SCHEME
    created: str = ""
    geometry: Geometry | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.gamma, (int, float)) and not isinstance(self.gamma, bool) and 0 < self.gamma < 1):
            raise ConfigError(f"gamma must be a number strictly between 0 and 1, got {self.gamma!r}")
        if not isinstance(self.n_lists, int) or isinstance(self.n_lists, bool) or not 1 <= self.n_lists <= MAX_LISTS:
            raise ConfigError(f"n_lists must be an int between 1 and {MAX_LISTS}, got {self.n_lists!r}")
        if not isinstance(self.vocab_size, int) or isinstance(self.vocab_size, bool) or self.vocab_size < 2:
            raise ConfigError(f"vocab_size must be an int >= 2, got {self.vocab_size!r}")
        if not isinstance(self.tokenizer_id, str) or not self.tokenizer_id:
            raise ConfigError(f"tokenizer_id must be a non-empty string, got {self.tokenizer_id!r}")
        if self.scheme != SCHEME:
            raise ConfigError(f"scheme must be {SCHEME!r}, got {self.scheme!r}")
        if self.geometry is not None and not isinstance(self.geometry, Geometry):
            raise ConfigError(f"geometry must be a Geometry or None, got {type(self.geometry).__name__}")
        if self.geometry is not None and self.geometry.vocab_size != self.vocab_size:
            raise ConfigError(f"geometry has {self.geometry.vocab_size} codes but vocab_size is {self.vocab_size}")
        object.__setattr__(self, "gamma", float(self.gamma))
        object.__setattr__(self, "_secret", None)

    # ------------------------------------------------------------------------------------ building
    @classmethod
    def _from_secret(cls, secret: bytes, *, gamma: float, n_lists: int, tokenizer_id: str, vocab_size: int,
                     created: str | None = None, geometry: Geometry | None = None) -> "WatermarkKey":
        """Build a key around a given secret (tests and reproducible benchmarks; use `create()` otherwise)."""
        if not isinstance(secret, (bytes, bytearray)) or len(secret) != SECRET_BYTES:
            raise ConfigError(f"secret must be {SECRET_BYTES} bytes")
        key = cls(key_id=_key_id(bytes(secret)), gamma=gamma, n_lists=n_lists, tokenizer_id=tokenizer_id,
                  vocab_size=vocab_size, created=created if created is not None else _now(), geometry=geometry)
        object.__setattr__(key, "_secret", bytes(secret))
        return key

    @classmethod
    def create(cls, tokenizer: Any, gamma: float = 0.25, n_lists: int = 8) -> "WatermarkKey":
        """A fresh key for `tokenizer` with a 32-byte secret from `secrets`.

        Args:
            tokenizer: a `guard.models.Tokenizer` (its `id`, `vocab_size` and `Geometry` are bound into the key).
            gamma: green-list fraction, 0 < gamma < 1 (default 0.25), such that each list has at least
                `MIN_CODES_PER_SIDE` green and red codes among the tokenizer's codes in use (`alive`).
            n_lists: number of green lists K, 1 <= K <= `MAX_LISTS` (default 8); each image draws one.

        Raises:
            ConfigError: one line naming the bad value and the range that works for this tokenizer.
        """
        geometry = Geometry.of(tokenizer)
        key = cls._from_secret(secrets.token_bytes(SECRET_BYTES), gamma=gamma, n_lists=n_lists,
                               tokenizer_id=tokenizer.id, vocab_size=geometry.vocab_size, geometry=geometry)
        _check_split(key.gamma, key.vocab_size, getattr(tokenizer, "alive", None))
        return key

    # ------------------------------------------------------------------------------------ secret use
    def derive(self, message: bytes) -> bytes:
        """HMAC-SHA256(secret, message): the only use of the secret."""
        secret = self._secret  # type: ignore[attr-defined]
        if secret is None:
            raise KeyFileError(f"key {self.key_id} has no secret; build keys with WatermarkKey.create() or .load()")
        return hmac.new(secret, bytes(message), hashlib.sha256).digest()

    def _metadata(self) -> dict:
        meta = {name: getattr(self, name) for name in _META_FIELDS}
        if self.geometry is not None:          # absent from keys made before geometry was bound: their MAC stands
            meta["geometry"] = self.geometry.to_json()
        return meta

    def _canonical_metadata(self) -> bytes:
        meta = self._metadata()
        return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    def _mac(self) -> str:
        return self.derive(_MAC_PREFIX + self._canonical_metadata()).hex()

    # ------------------------------------------------------------------------------------ checks
    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise KeyFileError unless the key was made for `tokenizer`: same id, vocabulary size and geometry.

        A duck-typed tokenizer lacking the protocol's attributes raises ConfigError naming them. A key made at
        another geometry (e.g. Emu3 at 64 px, detected with the default 720) is refused: its codes would be
        re-encoded on another grid and tested as if they were the same.
        """
        check_tokenizer_protocol(tokenizer, ("id", "vocab_size"))
        tid, vocab = tokenizer.id, int(tokenizer.vocab_size)
        if tid != self.tokenizer_id or vocab != self.vocab_size:
            raise KeyFileError(
                f"key {self.key_id} is bound to tokenizer {self.tokenizer_id!r} (vocab {self.vocab_size}), but the "
                f"model's tokenizer is {tid!r} (vocab {vocab}); create a key for this model with "
                f"`guard keygen --model ...` or pass the matching --key")
        if self.geometry is not None:
            got = Geometry.of(tokenizer)
            if got != self.geometry:
                hint = (f"load the model at {self.geometry.image_size} px (e.g. --model KIND:PATH@"
                        f"{self.geometry.image_size} for emu3 and llamagen)"
                        if got.image_size != self.geometry.image_size else "use the tokenizer the key was made for")
                raise KeyFileError(f"key {self.key_id} was made for {self.geometry} but the tokenizer reads {got}; "
                                   f"{hint}")

    # ------------------------------------------------------------------------------------ files
    def _to_json(self) -> str:
        """The key file's content, secret included: write it only through `save()`."""
        doc = self._metadata()
        doc["secret"] = base64.b64encode(self._secret_bytes()).decode("ascii")
        doc["mac"] = self._mac()
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    def _secret_bytes(self) -> bytes:
        secret = self._secret  # type: ignore[attr-defined]
        if secret is None:
            raise KeyFileError(f"key {self.key_id} has no secret and cannot be saved")
        return secret

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the key file atomically with mode 0600 (never readable by others, not even briefly).

        Missing parent directories are created with mode 0700. Raises KeyFileError when `path` exists
        and `overwrite` is False. Returns the path written.
        """
        path = Path(path).expanduser()
        if path.exists() and not overwrite:
            raise KeyFileError(f"key file {path} already exists; choose another path or pass --force / overwrite=True")
        _make_private_dirs(path.parent)
        data = self._to_json().encode()
        with temp_beside(path) as tmp:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            except OSError as e:
                raise KeyFileError(f"cannot write key file in {path.parent}: {e.strerror}") from None
            try:
                try:
                    if hasattr(os, "fchmod"):
                        os.fchmod(fd, 0o600)
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if overwrite:
                    os.replace(tmp, path)
                else:
                    _link_new(tmp, path)
            except OSError as e:
                raise KeyFileError(f"cannot write key file {path}: {e.strerror}") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, force: bool = False) -> "WatermarkKey":
        """Read and verify a key file.

        Refuses a group/world-readable file unless `force`; detects a key id that does not match the
        secret and metadata whose MAC does not verify (tampering). All failures raise KeyFileError.
        """
        path = Path(path).expanduser()
        raw = read_private_file(path, "key file", KeyFileError,
                                missing_hint=f"; create one with `guard keygen --out {path}`", force=force)
        try:
            doc = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise KeyFileError(f"key file {path} is not valid JSON; is it a guard key?") from None
        if not isinstance(doc, dict):
            raise KeyFileError(f"key file {path} is not a guard key (expected a JSON object)")
        missing = [f for f in (*_META_FIELDS, "secret", "mac") if f not in doc]
        if missing:
            raise KeyFileError(f"key file {path} lacks field(s) {', '.join(missing)}; is it a guard key?")
        if doc["scheme"] != SCHEME:
            raise KeyFileError(f"key file {path} has scheme {doc['scheme']!r}; this guard reads {SCHEME!r}")
        try:
            secret = base64.b64decode(str(doc["secret"]), validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"key file {path} is corrupt: the secret is not valid base64") from None
        if len(secret) != SECRET_BYTES:
            raise KeyFileError(f"key file {path} is corrupt: the secret is not {SECRET_BYTES} bytes")
        if not isinstance(doc["key_id"], str) or not hmac.compare_digest(doc["key_id"], _key_id(secret)):
            raise KeyFileError(f"key file {path} is corrupt or tampered with: its key_id does not match its secret")
        if isinstance(doc["n_lists"], int) and doc["n_lists"] > MAX_LISTS:
            raise KeyFileError(f"key file {path} has n_lists={doc['n_lists']}, more than guard supports "
                               f"({MAX_LISTS}); make a new key with `guard keygen --lists K`")
        try:
            geometry = Geometry.from_json(doc["geometry"]) if doc.get("geometry") is not None else None
            key = cls._from_secret(secret, gamma=doc["gamma"], n_lists=doc["n_lists"],
                                   tokenizer_id=doc["tokenizer_id"], vocab_size=doc["vocab_size"],
                                   created=str(doc["created"]), geometry=geometry)
        except ConfigError as e:
            raise KeyFileError(f"key file {path} is corrupt or tampered with: {e}") from None
        if not isinstance(doc["mac"], str) or not hmac.compare_digest(doc["mac"], key._mac()):
            raise KeyFileError(f"key file {path} is corrupt or tampered with: its metadata (gamma, n_lists, "
                               f"tokenizer_id, vocab_size, created, geometry) does not match its MAC")
        return key

    # ------------------------------------------------------------------------------------ display
    def __repr__(self) -> str:
        return (f"WatermarkKey(key_id={self.key_id!r}, gamma={self.gamma}, n_lists={self.n_lists}, "
                f"tokenizer_id={self.tokenizer_id!r})")

    __str__ = __repr__

    def __getstate__(self) -> dict:
        # Pickling (worker processes) keeps the secret; it is never part of repr or asdict().
        return dict(self.__dict__)

    def __setstate__(self, state: dict) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)


def _check_split(gamma: float, vocab_size: int, alive: Any = None) -> None:
    """Raise ConfigError unless gamma leaves >= MIN_CODES_PER_SIDE green and red codes among the codes in use."""
    if alive is not None:
        import numpy as np

        n = int(np.asarray(alive).astype(bool).sum())
    else:
        n = int(vocab_size)
    green = int(round(gamma * n))
    if green < MIN_CODES_PER_SIDE or n - green < MIN_CODES_PER_SIDE:
        lo, hi = MIN_CODES_PER_SIDE / n, 1 - MIN_CODES_PER_SIDE / n
        hint = f"choose gamma between {lo:.3g} and {hi:.3g}" if lo < hi else "this tokenizer has too few codes"
        raise ConfigError(f"gamma={gamma:g} gives {green} green and {n - green} red codes among the tokenizer's {n} "
                          f"codes in use; each list needs at least {MIN_CODES_PER_SIDE} of each: {hint}")


def _link_new(tmp: Path, path: Path) -> None:
    """Give `tmp` the name `path` atomically, refusing to clobber a file created meanwhile."""
    taken = f"key file {path} already exists; choose another path or pass --force"
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise KeyFileError(taken) from None
    except OSError:  # filesystems without hard links
        if path.exists():
            raise KeyFileError(taken) from None
        os.replace(tmp, path)


def default_key_path() -> Path:
    """`$XDG_CONFIG_HOME/guard/keys/default.json`, falling back to `~/.config/guard/keys/default.json`."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "guard" / "keys" / "default.json"


def load_or_create_default(tokenizer: Any, *, gamma: float = 0.25, n_lists: int = 8) -> WatermarkKey:
    """The default key for `tokenizer`: loaded from `default_key_path()`, created there (0600) on first use.

    Raises KeyFileError when the existing default key is bound to another tokenizer (pass an explicit
    key instead) or is unreadable, too open or tampered with.
    """
    path = default_key_path()
    if not path.exists():
        try:
            WatermarkKey.create(tokenizer, gamma=gamma, n_lists=n_lists).save(path)
        except KeyFileError:
            if not path.exists():  # lost a race to another process: fall through and load its key
                raise
    key = WatermarkKey.load(path)
    key.check_tokenizer(tokenizer)
    return key


def resolve_key(path: str | os.PathLike | None, tokenizer: Any, *, create_at: str | os.PathLike | None = None,
                gamma: float = 0.25, n_lists: int = 8, log: Callable[[str], None] | None = None) -> WatermarkKey:
    """The key a command embeds or evaluates with; the one place that chooses, creates and checks it.

    Args:
        path: an explicit key file (`--key`); loaded, never created.
        tokenizer: the model's tokenizer; the key must be bound to it (`WatermarkKey.check_tokenizer`).
        create_at: without `path`, the key file to use, created (0600, `gamma`, `n_lists`) on first use;
            None means the default key (`default_key_path()`, created there on first use).
        gamma, n_lists: parameters of a created key.
        log: called with one line naming the key id and its file (never the secret).

    Raises:
        KeyFileError: unreadable, too open, tampered with, or bound to another tokenizer.
    """
    if path is not None:
        where, created = Path(path), False
        key = WatermarkKey.load(where)
    elif create_at is None:
        where = default_key_path()
        created = not where.exists()
        key = load_or_create_default(tokenizer, gamma=gamma, n_lists=n_lists)
    else:
        where = Path(create_at)
        created = not where.exists()
        if created:
            WatermarkKey.create(tokenizer, gamma=gamma, n_lists=n_lists).save(where)
        key = WatermarkKey.load(where)
    key.check_tokenizer(tokenizer)
    if log is not None:
        log(f"key {key.key_id} ({where}{', created' if created else ''})")
    return key


def resolve_keys(paths: Sequence[str | os.PathLike] | None, *,
                 log: Callable[[str], None] | None = None) -> list[WatermarkKey]:
    """The keys a detection tests: the given key files, or the default key, which must exist (never created).

    The tokenizer binding is checked where the keys meet a tokenizer (`guard.detect.Detector`).

    Raises:
        KeyFileError: no key given and no default key, or a key file that cannot be used.
    """
    if not paths:
        default = default_key_path()
        if not default.exists():
            raise KeyFileError(f"no --key given and no default key at {default}; pass --key FILE or create the "
                               f"default with `guard keygen`")
        paths = [default]
    keys = []
    for p in paths:
        key = WatermarkKey.load(p)
        keys.append(key)
        if log is not None:
            log(f"key {key.key_id} ({p}, K={key.n_lists}, gamma={key.gamma})")
    return keys


def _make_private_dirs(directory: Path) -> None:
    """Create missing directories (and missing parents) with mode 0700; leave existing ones alone."""
    missing = []
    d = directory
    while not d.exists():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
            os.chmod(d, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise KeyFileError(f"cannot create key directory {d}: {e.strerror}") from None
