"""Read and validate an image's Content Credentials and summarise what matters for guard.

    >>> from guard.provenance import ManifestReader
    >>> reader = ManifestReader(trust_anchors="anchors.pem")     # doctest: +SKIP
    >>> s = reader.read("00000.png")                             # doctest: +SKIP
    >>> s.present, s.state, s.status_codes, s.key_id             # doctest: +SKIP
    (True, 'trusted', (), '4b5f9dc83459dfbf')

Validation states follow c2pa: "invalid" (a failure: the pixels or the manifest changed after signing,
a broken signature, …), "valid" (intact and correctly signed, signer not on a trust list given to the
reader: the status codes then list `signingCredential.untrusted`) and "trusted" (valid, and the signer's
chain ends at one of the trust anchors). `status_codes` are c2pa's validation status codes for the
active manifest (failures; `assertion.dataHash.mismatch` is the code for changed pixels).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ImageError
from ..keys import read_file
from .manifest import ALG_ID, parse_alg_params

__all__ = ["ManifestSummary", "ManifestReader", "STATES", "summarize"]

STATES = ("trusted", "valid", "invalid")
UNREADABLE = "manifest.unreadable"   # guard's code for a manifest store c2pa could not parse


@dataclass(frozen=True)
class ManifestSummary:
    """The active manifest of one file, reduced to what a reviewer reads first.

    Attributes:
        present: a manifest store was found (None: not checked, e.g. a format c2pa cannot hold).
        state: "trusted", "valid" or "invalid" (None when absent).
        status_codes: c2pa validation status codes of the failures, in c2pa's order.
        signer: the signing certificate's common name (or issuer when it has none).
        issuer: the signing certificate's issuer.
        signed_at: the trusted timestamp (RFC 3339) when a TSA countersigned, else None.
        claim_generator: "name/version" of the tool that made the claim (e.g. "guard/0.1.0").
        title: the manifest's title (the file name at signing).
        created: the manifest records a `c2pa.created` action.
        digital_source_type: the created action's digitalSourceType URL.
        software_agent: the created action's softwareAgent ("name version model").
        actions: every action label, in order.
        watermarked: the manifest records a `c2pa.watermarked` action.
        soft_binding_alg: alg of the first soft-binding assertion (guard's is `ALG_ID`).
        key_id: the watermark key id in guard's soft binding (None without one).
        watermark_params: guard's soft-binding parameters (tokenizer, gamma, lists, mode).
        ingredients: titles of the manifest's ingredients (a post-hoc mark's source).
        error: why the manifest store could not be read (then state "invalid"), else None.
    """

    present: bool | None
    state: str | None = None
    status_codes: tuple[str, ...] = ()
    signer: str | None = None
    issuer: str | None = None
    signed_at: str | None = None
    claim_generator: str | None = None
    title: str | None = None
    created: bool = False
    digital_source_type: str | None = None
    software_agent: str | None = None
    actions: tuple[str, ...] = ()
    watermarked: bool = False
    soft_binding_alg: str | None = None
    key_id: str | None = None
    watermark_params: dict[str, str] = field(default_factory=dict)
    ingredients: tuple[str, ...] = ()
    error: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status_codes"] = list(self.status_codes)
        d["actions"] = list(self.actions)
        d["ingredients"] = list(self.ingredients)
        return d


def _agent_text(agent: Any) -> str | None:
    if isinstance(agent, str):
        return agent
    if isinstance(agent, dict):
        parts = [str(agent.get("name", "")), str(agent.get("version", ""))]
        parts += [f"{k}={v}" for k, v in agent.items() if k not in ("name", "version") and not k.startswith("org.")]
        return " ".join(p for p in parts if p) or None
    return None


def summarize(store: dict) -> ManifestSummary:
    """A `ManifestSummary` from c2pa's manifest-store JSON (`c2pa.Reader.json()`, parsed)."""
    manifests = store.get("manifests") or {}
    m = manifests.get(store.get("active_manifest") or "", {}) or {}
    codes = tuple(str(s.get("code")) for s in store.get("validation_status") or [] if s.get("code"))
    state = str(store.get("validation_state") or ("Invalid" if codes else "Valid")).lower()
    sig = m.get("signature_info") or {}
    gens = m.get("claim_generator_info") or []
    claim_gen = (f"{gens[0].get('name', '')}/{gens[0].get('version', '')}".rstrip("/") if gens
                 else m.get("claim_generator"))
    actions: list[dict] = []
    soft: dict | None = None
    for a in m.get("assertions") or []:
        label = str(a.get("label", ""))
        if label.startswith("c2pa.actions"):
            actions += list((a.get("data") or {}).get("actions") or [])
        elif label.startswith("c2pa.soft-binding") and soft is None:
            soft = a.get("data") or {}
    created = next((a for a in actions if a.get("action") == "c2pa.created"), None)
    key_id = None
    if soft and soft.get("alg") == ALG_ID and soft.get("blocks"):
        key_id = str(soft["blocks"][0].get("value") or "") or None
    return ManifestSummary(
        present=True, state=state, status_codes=codes, signer=sig.get("common_name") or sig.get("issuer"),
        issuer=sig.get("issuer"), signed_at=sig.get("time"), claim_generator=claim_gen or None, title=m.get("title"),
        created=created is not None, digital_source_type=(created or {}).get("digitalSourceType"),
        software_agent=_agent_text((created or {}).get("softwareAgent")),
        actions=tuple(str(a.get("action")) for a in actions),
        watermarked=any(a.get("action") == "c2pa.watermarked" for a in actions),
        soft_binding_alg=(soft or {}).get("alg"), key_id=key_id,
        watermark_params=parse_alg_params((soft or {}).get("alg_params")) if key_id else {},
        ingredients=tuple(str(i.get("title", "")) for i in m.get("ingredients") or []))


def _load_anchors(trust_anchors: str | os.PathLike) -> str:
    from cryptography import x509

    path = Path(trust_anchors).expanduser()
    pem = read_file(path, "trust anchors file", ConfigError)
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(f"{path} is not a PEM certificate list (expected -----BEGIN CERTIFICATE-----)") from None
    return pem.decode("ascii", errors="replace")


def _check_image(path: str) -> None:
    """Raise ImageError unless PIL recognises `path` as an image (tells a broken file from a broken manifest)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"cannot read image {path}: {type(e).__name__}") from None


class ManifestReader:
    """Reads Content Credentials from files; one per scan (it keeps c2pa's context, built lazily).

    Args:
        trust_anchors: a PEM file of root certificates whose chains count as trusted (e.g. your signing CA).
            Without it, correctly signed manifests are "valid" but never "trusted".

    Raises:
        ConfigError: the trust anchors file is missing or not PEM certificates.

    Picklable (a Ray actor or worker process rebuilds the native context on first use).
    """

    def __init__(self, trust_anchors: str | os.PathLike | None = None) -> None:
        self.trust_anchors = None if trust_anchors is None else os.fspath(trust_anchors)
        self._anchors_pem = None if trust_anchors is None else _load_anchors(trust_anchors)
        self._context = None

    def __repr__(self) -> str:
        return f"ManifestReader(trust_anchors={self.trust_anchors!r})"

    def __getstate__(self) -> dict:
        return {"trust_anchors": self.trust_anchors, "_anchors_pem": self._anchors_pem, "_context": None}

    def _ctx(self):
        import c2pa

        if self._context is None:
            settings: dict = {"verify": {"verify_trust": True}}
            if self._anchors_pem:
                settings["trust"] = {"trust_anchors": self._anchors_pem}
            self._context = c2pa.Context(settings=c2pa.Settings.from_dict(settings))
        return self._context

    def read(self, path: str | os.PathLike) -> ManifestSummary:
        """The summary of `path`'s active manifest (present=False when it has none).

        Raises:
            ImageError: the file is missing or unreadable.
        """
        import c2pa

        p = os.fspath(path)
        if not os.path.isfile(p):
            raise ImageError(f"file not found: {p}" if not os.path.exists(p) else f"not a file: {p}")
        try:
            reader = c2pa.Reader.try_create(p, context=self._ctx())
            if reader is None:
                return ManifestSummary(present=False)
            with reader:
                return summarize(json.loads(reader.json()))
        except c2pa.C2paError.NotSupported:
            return ManifestSummary(present=None, error="format not supported by c2pa")
        except c2pa.C2paError as e:
            _check_image(p)
            msg = " ".join(str(e).split())[:200]
            return ManifestSummary(present=True, state="invalid", status_codes=(UNREADABLE,), error=msg)
        except OSError as e:
            raise ImageError(f"cannot read {p}: {e.strerror}") from None
