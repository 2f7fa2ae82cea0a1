"""Throwaway signing material for trying Content Credentials out: a root CA and a signer it certifies.

    >>> from guard.provenance.testcerts import make_test_chain
    >>> paths = make_test_chain("certs/")                # doctest: +SKIP
    >>> paths.chain, paths.key, paths.anchors           # doctest: +SKIP

The signer certificate has what C2PA validators ask of a claim signer (digitalSignature key usage, the
emailProtection extended key usage, not a CA, issued by a CA with keyCertSign). Nobody trusts this root
but you: pass `anchors` as `--trust-anchors` to see a "trusted" state; without it signatures read as
"valid" (intact, signer not on a trust list). Never use it for real provenance.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TestChain", "make_test_chain"]


@dataclass(frozen=True)
class TestChain:
    """Paths written by `make_test_chain`.

    Attributes:
        chain: signer certificate followed by the root (PEM), for `--sign`.
        key: the signer's private key (PKCS#8 PEM, unencrypted, mode 0600), for `--sign-key`.
        anchors: the root certificate alone (PEM), for `--trust-anchors`.
    """

    __test__ = False  # not a pytest class

    chain: Path
    key: Path
    anchors: Path


def _name(common_name: str, org: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])


def _key_usage(*, signer: bool):
    from cryptography import x509

    return x509.KeyUsage(digital_signature=signer, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=not signer,
                         crl_sign=not signer, encipher_only=False, decipher_only=False)


def make_test_chain(out_dir: str | os.PathLike, *, common_name: str = "guard test signer",
                    organization: str = "guard test CA (untrusted)", days: int = 30) -> TestChain:
    """Write a fresh P-256 root CA and signer into `out_dir` (created 0700 if missing).

    Args:
        out_dir: folder for chain.pem, signer.key (0600) and anchors.pem; existing files are replaced.
        common_name: the signer's CN (shown as the manifest's signer).
        organization: O of both certificates (shown as the issuer).
        days: validity from one day ago.

    Returns:
        `TestChain` with the three paths.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    out = Path(out_dir)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{organization} root", organization)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(_key_usage(signer=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(common_name, organization)).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signer=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = TestChain(chain=out / "chain.pem", key=out / "signer.key", anchors=out / "anchors.pem")
    paths.chain.write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
    paths.anchors.write_bytes(ca.public_bytes(pem))
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    if paths.key.exists():
        paths.key.unlink()
    fd = os.open(paths.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key_pem)
    finally:
        os.close(fd)
    return paths
