"""Content Credentials (C2PA) bound to guard's watermark: sign at generation, verify at detection.

    >>> from guard.provenance import SigningMaterial, ImageSigner, ManifestReader, generation_manifest
    >>> material = SigningMaterial.load("chain.pem", "signer.key")                 # doctest: +SKIP
    >>> with ImageSigner(material) as s:                                            # doctest: +SKIP
    ...     s.sign_file("00000.png", generation_manifest(title="00000.png", model_id=gen.id, key_id=key.key_id,
    ...                 tokenizer_id=tok.id, gamma=key.gamma, n_lists=key.n_lists, mode="hard"))
    >>> ManifestReader().read("00000.png").state                                    # doctest: +SKIP
    'valid'

Modules: `material` (certificate chain + key from files, permission and consistency checks), `manifest`
(the manifest definitions: created/watermarked actions, soft binding with the key id), `sign`
(`ImageSigner`), `read` (`ManifestReader`, `ManifestSummary`), `binding` (watermark + manifest → the
provenance case and the detection-record fields), `testcerts` (a throwaway CA for trying it out).
Uses c2pa-python (the C2PA reference SDK) and cryptography.
"""

from .binding import PROVENANCE_CASES, PROVENANCE_FIELDS, key_match, provenance_case, record_fields
from .manifest import ALG_ID, TRAINED_ALGORITHMIC_MEDIA, generation_manifest, posthoc_manifest
from .material import SigningError, SigningMaterial
from .read import STATES, ManifestReader, ManifestSummary, summarize
from .sign import ImageSigner

__all__ = ["ALG_ID", "TRAINED_ALGORITHMIC_MEDIA", "PROVENANCE_CASES", "PROVENANCE_FIELDS", "STATES",
           "ImageSigner", "ManifestReader", "ManifestSummary", "SigningError", "SigningMaterial",
           "generation_manifest", "posthoc_manifest", "key_match", "provenance_case", "record_fields", "summarize"]
