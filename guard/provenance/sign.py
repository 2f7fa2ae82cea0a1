"""Sign image files with a C2PA manifest (c2pa-python), in place or to a new file.

    >>> from guard.provenance import ImageSigner, SigningMaterial, generation_manifest
    >>> with ImageSigner(SigningMaterial.load("chain.pem", "signer.key")) as signer:     # doctest: +SKIP
    ...     signer.check()                                    # fail fast: signs a tiny image in memory
    ...     signer.sign_file("00000.png", generation_manifest(...))

One native c2pa signer is made per `ImageSigner` and reused for every image. Manifests carry no
thumbnail (the images are small and the hard binding already covers every byte of the pixels). A file is
signed into a temporary file beside it and moved over the target atomically, so an interrupted run
never leaves a half-written image.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from .._files import temp_beside
from .manifest import PARENT_LABEL, TRAINED_ALGORITHMIC_MEDIA
from .material import SigningError, SigningMaterial

__all__ = ["ImageSigner"]

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
         ".tif": "image/tiff", ".tiff": "image/tiff", ".gif": "image/gif", ".bmp": "image/bmp",
         ".avif": "image/avif", ".heic": "image/heic"}


def mime_for(path: str | os.PathLike) -> str | None:
    """The MIME type c2pa needs for `path`, by suffix (None when c2pa cannot embed a manifest in it)."""
    return _MIME.get(Path(path).suffix.lower())


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


class ImageSigner:
    """Signs files with one signer; a context manager (closes the native signer).

    Args:
        material: the checked `SigningMaterial` (certificate chain, key, TSA URL).

    Raises:
        SigningError: c2pa refuses the material.
    """

    def __init__(self, material: SigningMaterial) -> None:
        import c2pa

        self.material = material
        self._c2pa = c2pa
        try:
            info = c2pa.C2paSignerInfo(material.alg, material.chain_pem, material._key_pem, material.tsa_url)
            self._signer = c2pa.Signer.from_info(info)
            self._context = c2pa.Context(settings=c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": False}}}))
        except c2pa.C2paError as e:
            raise SigningError(f"c2pa refused the signing material ({material.signer_name}): {_one_line(e)}") from None

    def __enter__(self) -> "ImageSigner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for obj in (getattr(self, "_signer", None), getattr(self, "_context", None)):
            if obj is not None:
                obj.close()

    def __repr__(self) -> str:
        return f"ImageSigner({self.material!r})"

    def check(self) -> None:
        """Sign a tiny in-memory PNG and read it back, so bad material or an unreachable TSA fails before any work."""
        from PIL import Image

        src = io.BytesIO()
        Image.new("RGB", (8, 8), (128, 128, 128)).save(src, format="PNG")
        src.seek(0)
        dst = io.BytesIO()
        manifest = {"claim_generator_info": [{"name": "guard", "version": "check"}], "title": "check.png",
                    "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": [
                        {"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA}]}}]}
        try:
            with self._c2pa.Builder(manifest, context=self._context) as b:
                b.sign(self._signer, "image/png", src, dst)
        except self._c2pa.C2paError as e:
            where = f" (timestamp authority {self.material.tsa_url})" if self.material.tsa_url else ""
            raise SigningError(f"test signature failed{where}: {_one_line(e)}") from None

    def sign_file(self, path: str | os.PathLike, manifest: dict, *, out: str | os.PathLike | None = None,
                  parent: str | os.PathLike | None = None) -> Path:
        """Embed a signed manifest in `path` (in place) or write the signed copy to `out`.

        Args:
            path: the image to sign (PNG, JPEG, WebP, TIFF, … by suffix).
            manifest: a definition from `generation_manifest` / `posthoc_manifest` (or any c2pa definition).
            out: where to write; default: replace `path` atomically.
            parent: the source image of a post-hoc edit, added as the parentOf ingredient (its own
                Content Credentials, if any, come along).

        Returns:
            The path written.

        Raises:
            SigningError: an unsupported format, an unreadable file or c2pa failing to sign.
        """
        src = Path(path)
        dst = Path(out) if out is not None else src
        mime = mime_for(src)
        if mime is None:
            raise SigningError(f"cannot embed Content Credentials in {src.name}: unsupported suffix {src.suffix!r}")
        c2pa = self._c2pa
        try:
            with temp_beside(dst, f".signing{dst.suffix}") as tmp:
                with c2pa.Builder(manifest, context=self._context) as b:
                    if parent is not None:
                        pmime = mime_for(parent)
                        if pmime is None:
                            raise SigningError(f"cannot add {parent} as an ingredient: unsupported suffix")
                        with open(parent, "rb") as f:
                            b.add_ingredient({"title": Path(parent).name, "relationship": "parentOf",
                                              "label": PARENT_LABEL}, pmime, f)
                    with open(src, "rb") as fin, open(tmp, "wb") as fout:
                        b.sign(self._signer, mime, fin, fout)
                os.replace(tmp, dst)
        except c2pa.C2paError as e:
            raise SigningError(f"cannot sign {src}: {_one_line(e)}") from None
        except OSError as e:
            raise SigningError(f"cannot sign {src}: {e.strerror or _one_line(e)}") from None
        return dst
