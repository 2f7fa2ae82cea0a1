"""The four provenance cases on the reference generator; writes bench/results/provenance.json, prints tables.

    OMP_NUM_THREADS=1 .venv/bin/python bench/measure_provenance.py --threads 1               # 50 per case
    OMP_NUM_THREADS=1 .venv/bin/python bench/measure_provenance.py --n-per-case 8 --n-tamper 4 --out /tmp/p.json

True cases (--n-per-case images each, held-out prompts, a fixed benchmark key, a throwaway test CA):
  A  watermark + manifest         hard-mode generation, signed (manifest names the key)
  B  watermark, manifest stripped  as A, then the pixels re-encoded into a new PNG
  C  manifest, no watermark        unwatermarked generation signed with a manifest naming the key
  D  neither                       unwatermarked, unsigned
  T  tampered (extra)              --n-tamper A images with one pixel value changed after signing
Every file then goes through the detection library path of `guard detect folder` (a `Detector` whose
`ManifestReader` trusts the test CA; alpha 1e-4, distinct test, no search). Reported per true case:
the reported `provenance` cases, the watermark decision rate (Clopper-Pearson 95% CI), the c2pa states
and status codes; plus the same table with the watermark decision taken on the generated codes (what a
lossless tokenizer would give), to separate the provenance logic from the tokenizer's round trip.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.stats import binomtest

from guard import __version__
from guard.detect import Detector
from guard.imageio import load_image, save_png
from guard.keys import WatermarkKey
from guard.models import load
from guard.models.reference import shapes
from guard.provenance import ImageSigner, ManifestReader, SigningMaterial, generation_manifest, record_fields
from guard.provenance.testcerts import make_test_chain
from guard.watermark import GreenLists, WatermarkProcessor

OUT = Path(__file__).parent / "results" / "provenance.json"
CASES = {"A": "watermark + manifest", "B": "watermark, manifest stripped", "C": "manifest, no watermark",
         "D": "neither", "T": "watermark + manifest, pixels tampered after signing"}
EXPECTED = {"A": "agree", "B": "watermark-only", "C": "manifest-only", "D": "none", "T": "invalid-manifest"}


def strip(src: Path, dst: Path) -> None:
    """Re-encode the pixels into a new PNG (what most upload pipelines do): the manifest is gone."""
    with Image.open(src) as im:
        im.convert("RGB").save(dst)


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    import struct

    out, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        out.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]))
        pos += 12 + n
    return out


def tamper(src: Path, dst: Path) -> None:
    """Change one pixel value after signing, keeping every other PNG chunk (the manifest) byte for byte."""
    import struct
    import zlib

    with Image.open(src) as im:
        arr = np.asarray(im.convert("RGB")).copy()
    arr[0, 0, 0] ^= 0x40
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    new_idat = [c for c in _chunks(buf.getvalue()) if c[0] == b"IDAT"]
    out, done = [], False
    for t, d in _chunks(src.read_bytes()):
        if t == b"IDAT":
            if not done:
                out += new_idat
                done = True
            continue
        out.append((t, d))
    body = b"".join(struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in out)
    dst.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def rate(k: int, n: int) -> dict:
    ci = binomtest(k, n).proportion_ci(0.95, method="exact") if n else None
    return {"k": k, "n": n, "rate": round(k / n, 4) if n else None,
            "ci95": [round(ci.low, 4), round(ci.high, 4)] if ci else None}


def summarize(rows: list[dict]) -> dict:
    out = {}
    for case in CASES:
        rs = [r for r in rows if r["case"] == case]
        if not rs:
            continue
        out[case] = {
            "description": CASES[case], "expected": EXPECTED[case], "n": len(rs),
            "reported": dict(Counter(r["provenance"] for r in rs).most_common()),
            "correct": rate(sum(r["provenance"] == EXPECTED[case] for r in rs), len(rs)),
            "watermarked": rate(sum(bool(r["watermarked"]) for r in rs), len(rs)),
            "c2pa_state": dict(Counter(str(r["c2pa_state"]) for r in rs).most_common()),
            "c2pa_status": dict(Counter(str(r["c2pa_status"]) for r in rs).most_common()),
            "key_match": dict(Counter(str(r["c2pa_key_match"]) for r in rs).most_common()),
        }
    return out


def print_table(title: str, table: dict) -> None:
    print(f"\n{title}")
    print(f"{'case':<4} {'description':<34} {'n':>3} {'wm found':>9} {'expected':<17} {'correct':>8}  reported / states")
    for case, t in table.items():
        print(f"{case:<4} {t['description'][:34]:<34} {t['n']:>3} {t['watermarked']['rate']:>9.2f} {t['expected']:<17} "
              f"{t['correct']['rate']:>8.2f}  {t['reported']} / {t['c2pa_state']} {t['c2pa_status']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-per-case", type=int, default=50)
    ap.add_argument("--n-tamper", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alpha", type=float, default=1e-4)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n_per_case
    if args.n_tamper > n:
        sys.exit("--n-tamper must be <= --n-per-case (tampered files are copies of case A)")
    t_start = time.time()

    gen = load("reference")
    tok = gen.tokenizer
    secret = hashlib.sha256(b"guard/bench/measure_provenance/v1").digest()
    key = WatermarkKey._from_secret(secret, gamma=0.25, n_lists=8, tokenizer_id=tok.id, vocab_size=tok.vocab_size)
    gl = GreenLists(key, tok)
    seeds = [args.seed + i for i in range(2 * n)]
    prompts = [shapes.prompt_for(shapes.sample_scene(s, split="heldout"), s) for s in seeds]

    t0 = time.time()
    proc = WatermarkProcessor(gl, hard=True, seed=args.seed)
    wm_codes = gen.generate(prompts, n=1, seed=args.seed, cfg=args.cfg, logits_processor=[proc])
    clean_codes = gen.generate(prompts, n=1, seed=args.seed + 10_000, cfg=args.cfg, logits_processor=[])
    t_gen = time.time() - t0
    wm_img, clean_img = tok.decode(wm_codes), tok.decode(clean_codes)

    with tempfile.TemporaryDirectory(prefix="guard-provenance-") as tmp:
        root = Path(tmp)
        certs = make_test_chain(root / "certs")
        files, codes, case_of = [], [], {}
        plan = ([("A", wm_img[i], wm_codes[i], True) for i in range(n)]
                + [("B", wm_img[n + i], wm_codes[n + i], True) for i in range(n)]
                + [("C", clean_img[i], clean_codes[i], True) for i in range(n)]
                + [("D", clean_img[n + i], clean_codes[n + i], False) for i in range(n)])
        t0 = time.time()
        with ImageSigner(SigningMaterial.load(certs.chain, certs.key)) as signer:
            for j, (case, img, c, sign) in enumerate(plan):
                path = root / f"{case}_{j:04d}.png"
                save_png(img, path)
                if sign:
                    signer.sign_file(path, generation_manifest(
                        title=path.name, model_id=gen.id, key_id=key.key_id, tokenizer_id=tok.id, gamma=key.gamma,
                        n_lists=key.n_lists, mode="hard"))
                if case == "B":
                    stripped = root / f"B_{j:04d}_stripped.png"
                    strip(path, stripped)
                    path.unlink()
                    path = stripped
                files.append(path)
                codes.append(c)
                case_of[str(path)] = case
        for i in range(args.n_tamper):
            src = files[i]
            dst = root / f"T_{i:04d}.png"
            tamper(src, dst)
            files.append(dst)
            codes.append(wm_codes[i])
            case_of[str(dst)] = "T"
        t_files = time.time() - t0

        reader = ManifestReader(trust_anchors=certs.anchors)
        det = Detector(gl, tok, alpha=args.alpha, provenance=reader)
        t0 = time.time()
        recs = det.detect_paths([str(p) for p in files])
        t_detect = time.time() - t0
        rows = [{"case": case_of[r.path], **{k: getattr(r, k) for k in (
            "watermarked", "log10_p", "provenance", "c2pa_manifest", "c2pa_state", "c2pa_status", "c2pa_key_id",
            "c2pa_key_match", "error")}} for r in recs]

        # The same files with the watermark decision taken on the generated codes (no pixel round trip).
        code_det = Detector(gl, tok, alpha=args.alpha, provenance=False)
        code_recs = code_det.detect_codes(torch.stack(codes))
        rows_codes = []
        for p, cr in zip(files, code_recs):
            f = record_fields(reader.read(p), cr.watermarked, cr.key_id)
            rows_codes.append({"case": case_of[str(p)], "watermarked": cr.watermarked, **f})
        reenc = tok.encode(torch.stack([load_image(p, tok.image_size).tensor for p in files[:2 * n]]))
        agreement = float((reenc == torch.stack(codes[:2 * n])).float().mean())

    table = summarize(rows)
    table_codes = summarize(rows_codes)
    result = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python bench/measure_provenance.py " + " ".join(sys.argv[1:]),
        "guard_version": __version__, "generator_id": gen.id, "tokenizer_id": tok.id, "key_id": key.key_id,
        "gamma": key.gamma, "n_lists": key.n_lists, "mode": "hard", "cfg": args.cfg, "alpha": args.alpha,
        "test": det.test, "search": det.search, "n_per_case": n, "n_tamper": args.n_tamper,
        "n_images": len(files), "trust_anchors": "the throwaway test CA that signed (so intact manifests read 'trusted')",
        "roundtrip_token_agreement_watermarked_png": round(agreement, 4),
        "files_detection": table,
        "generated_codes_decision": table_codes,
        "errors": sum(r["error"] is not None for r in rows),
        "seconds": {"generation": round(t_gen, 1), "write_sign_strip_tamper": round(t_files, 1),
                    "detect_with_provenance": round(t_detect, 1), "total": round(time.time() - t_start, 1)},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "c2pa_python": __import__("c2pa").__version__, "threads": args.threads},
    }
    print_table(f"files, detected from pixels (tokenizer {tok.id}, round-trip agreement {agreement:.3f})", table)
    print_table("same files, watermark decision on the generated codes", table_codes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out} in {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
