"""Watermark + manifest → one provenance verdict per image (the fields `guard detect` adds to a record).

    >>> from guard.provenance.binding import provenance_case
    >>> from guard.provenance.read import ManifestSummary
    >>> provenance_case(ManifestSummary(present=False), watermarked=True, key_id="4b5f9dc83459dfbf")
    'watermark-only'

Cases (`PROVENANCE_CASES`):

| case | watermark | manifest | reading |
|---|---|---|---|
| agree | found, key K | valid/trusted, soft binding names K | the two credentials confirm each other |
| mismatch | found, key K | valid/trusted, names another key or none | re-signed or mixed up: investigate |
| watermark-only | found | absent | credentials stripped (re-encoded, screenshot, upload pipeline) |
| manifest-only | not found | valid/trusted, names a guard key | watermark destroyed, never applied, or a manifest transplanted onto other pixels |
| other-manifest | not found | valid/trusted, names no guard key | Content Credentials of another tool; nothing of guard's to check |
| invalid-manifest | either | present but invalid | pixels or manifest changed after signing (see the status codes) |
| none | not found | absent | no guard credential |

The watermark side is the detector's decision at its corrected alpha; "not found" is not proof of
absence. The manifest side is only as strong as its state: "valid" means intact and signed by the
certificate shown, "trusted" also that the chain ends at a trust anchor you gave.
"""

from __future__ import annotations

from .read import ManifestSummary

__all__ = ["PROVENANCE_CASES", "PROVENANCE_FIELDS", "provenance_case", "key_match", "record_fields",
           "empty_record_fields"]

PROVENANCE_CASES = ("agree", "mismatch", "watermark-only", "manifest-only", "other-manifest", "invalid-manifest",
                    "none")
PROVENANCE_FIELDS = ("c2pa_manifest", "c2pa_state", "c2pa_status", "c2pa_signer", "c2pa_claim_generator",
                     "c2pa_key_id", "c2pa_key_match", "provenance")


def key_match(summary: ManifestSummary | None, watermarked: bool, key_id: str | None) -> bool | None:
    """Whether the manifest's soft-binding key id is the key whose watermark was found.

    None when there is nothing to compare: no watermark found, or no manifest.
    """
    if summary is None or not summary.present or not watermarked:
        return None
    return summary.key_id is not None and summary.key_id == key_id


def provenance_case(summary: ManifestSummary | None, watermarked: bool, key_id: str | None) -> str | None:
    """One of `PROVENANCE_CASES` (None when the manifest was not checked)."""
    if summary is None or summary.present is None:
        return None
    if not summary.present:
        return "watermark-only" if watermarked else "none"
    if summary.state == "invalid":
        return "invalid-manifest"
    if not watermarked:
        return "manifest-only" if summary.key_id is not None else "other-manifest"
    return "agree" if key_match(summary, watermarked, key_id) else "mismatch"


def empty_record_fields() -> dict:
    """The provenance fields of a record where no manifest was checked (all None)."""
    return dict.fromkeys(PROVENANCE_FIELDS)


def record_fields(summary: ManifestSummary | None, watermarked: bool, key_id: str | None) -> dict:
    """The detection-record fields for one image (`PROVENANCE_FIELDS`, flat scalars for JSONL/CSV/Parquet).

    `c2pa_status` joins the status codes with ";" (None when there are none).
    """
    if summary is None or summary.present is None:
        return empty_record_fields()
    present = bool(summary.present)
    return {
        "c2pa_manifest": present,
        "c2pa_state": summary.state if present else None,
        "c2pa_status": ";".join(summary.status_codes) or None,
        "c2pa_signer": summary.signer,
        "c2pa_claim_generator": summary.claim_generator,
        "c2pa_key_id": summary.key_id,
        "c2pa_key_match": key_match(summary, watermarked, key_id),
        "provenance": provenance_case(summary, watermarked, key_id),
    }
