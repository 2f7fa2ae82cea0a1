"""Signing material for Content Credentials: a certificate chain and its private key, read from files.

    >>> from guard.provenance import SigningMaterial
    >>> m = SigningMaterial.load("chain.pem", "signer.key")          # doctest: +SKIP
    >>> m.alg, m.signer_name                                           # doctest: +SKIP
    ('es256', 'guard test signer')

Checks made before any image is generated, each failing with one line (`SigningError`):
the key file is a regular file readable by its owner only (mode 0600 or stricter: no group/other bits),
an unencrypted PEM private key of a type C2PA signs with (EC P-256/P-384/P-521, RSA, Ed25519); the chain
file holds PEM certificates, the first of which certifies that key and is valid now; an optional TSA
URL is http(s). The private key's bytes are held in memory only, never logged or put into a message,
and `repr` shows the signer's name only.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ConfigError
from ..keys import read_file, read_private_file

__all__ = ["SigningError", "SigningMaterial"]


class SigningError(ConfigError):
    """Signing material is missing, too open, malformed or inconsistent, or a manifest could not be signed."""


def _read_private(path: Path) -> bytes:
    return read_private_file(path, "signing key", SigningError)


def _alg_for(key) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        algs = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name not in algs:
            raise SigningError(f"EC curve {key.curve.name} cannot sign C2PA manifests; use P-256, P-384 or P-521")
        return algs[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise SigningError(f"RSA key of {key.key_size} bits is too short for C2PA; use 2048 bits or more")
        return "ps256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise SigningError(f"{type(key).__name__} keys cannot sign C2PA manifests; use EC (P-256), RSA or Ed25519")


def _public_der(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class SigningMaterial:
    """A claim signer: certificate chain (PEM, signer first) + private key (PEM) + optional TSA URL.

    Build it with `SigningMaterial.load`; the fields are what `c2pa.C2paSignerInfo` takes.

    Attributes:
        alg: C2PA signing algorithm name ("es256", "es384", "es512", "ps256", "ed25519").
        chain_pem: the certificate chain file's bytes.
        signer_name: the signer certificate's common name (or its full subject when it has none).
        issuer_name: the signer certificate's issuer (common name or full subject).
        not_after: end of the signer certificate's validity (UTC).
        tsa_url: RFC 3161 timestamp authority, or None.
    """

    alg: str
    chain_pem: bytes
    signer_name: str
    issuer_name: str
    not_after: datetime.datetime
    tsa_url: str | None = None
    _key_pem: bytes = field(default=b"", repr=False, compare=False)

    def __repr__(self) -> str:
        return f"SigningMaterial(signer={self.signer_name!r}, issuer={self.issuer_name!r}, alg={self.alg!r})"

    __str__ = __repr__

    def __reduce__(self):  # never pickled: the private key stays in this process
        raise TypeError("SigningMaterial holds a private key and cannot be pickled; load it where it is used")

    @classmethod
    def load(cls, cert_chain: str | os.PathLike, key: str | os.PathLike, tsa_url: str | None = None
             ) -> "SigningMaterial":
        """Read and check a certificate chain and its private key (see the module docstring).

        Raises:
            SigningError: a missing/unreadable/too-open file, malformed PEM, an encrypted key, a key that
                the first certificate does not certify, an expired or not yet valid certificate, or a
                TSA URL that is not http(s).
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.x509.oid import NameOID

        chain_path, key_path = Path(cert_chain).expanduser(), Path(key).expanduser()
        if tsa_url is not None:
            u = urlparse(tsa_url)
            if u.scheme not in ("http", "https") or not u.netloc:
                raise SigningError(f"--tsa must be an http(s) URL, got {tsa_url!r}")
        chain_pem = read_file(chain_path, "certificate chain", SigningError)
        try:
            certs = x509.load_pem_x509_certificates(chain_pem)
        except ValueError:
            raise SigningError(f"{chain_path} is not a PEM certificate chain (expected -----BEGIN CERTIFICATE-----, "
                               f"signer first)") from None
        key_pem = _read_private(key_path)
        try:
            private = serialization.load_pem_private_key(key_pem, password=None)
        except TypeError:
            raise SigningError(f"signing key {key_path} is encrypted; give an unencrypted PEM key file "
                               f"(kept at mode 0600)") from None
        except Exception:  # noqa: BLE001 - cryptography raises several types; never echo the bytes
            raise SigningError(f"signing key {key_path} is not a PEM private key") from None
        alg = _alg_for(private)
        leaf = certs[0]
        if _public_der(leaf.public_key()) != _public_der(private.public_key()):
            raise SigningError(f"the first certificate in {chain_path} does not certify the key in {key_path}; "
                               f"put the signer's certificate first")
        now = datetime.datetime.now(datetime.timezone.utc)
        if not (leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc):
            raise SigningError(f"the signer certificate in {chain_path} is not valid now (valid "
                               f"{leaf.not_valid_before_utc:%Y-%m-%d} to {leaf.not_valid_after_utc:%Y-%m-%d})")

        def name_of(n) -> str:
            cn = n.get_attributes_for_oid(NameOID.COMMON_NAME)
            return str(cn[0].value) if cn else n.rfc4514_string()

        return cls(alg=alg, chain_pem=chain_pem, signer_name=name_of(leaf.subject),
                   issuer_name=name_of(leaf.issuer), not_after=leaf.not_valid_after_utc, tsa_url=tsa_url,
                   _key_pem=key_pem)
