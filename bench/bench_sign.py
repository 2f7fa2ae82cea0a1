"""Signing and verification overhead of Content Credentials, measured side by side with generation and detection.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_sign.py --threads 1            # writes bench/results/provenance_sign.json

Each round (interleaved, so machine load hits every step alike): generate a batch of hard-watermarked
images (GPT sampling + VQ decode), save them as PNG, sign each PNG in place (c2pa, ES256, no thumbnail,
no TSA), then detect the batch from the files with manifest reading off and on (a Detector whose
ManifestReader trusts the signing CA). Prints per-image medians over rounds and the ratios
sign / generate and detect-with-provenance / detect-without. Not a test: figures only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from guard import __version__
from guard.detect import Detector
from guard.imageio import save_png
from guard.keys import WatermarkKey
from guard.models import load
from guard.models.reference import shapes
from guard.provenance import ImageSigner, ManifestReader, SigningMaterial, generation_manifest
from guard.provenance.testcerts import make_test_chain
from guard.watermark import GreenLists, WatermarkProcessor

OUT = Path(__file__).parent / "results" / "provenance_sign.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = load("reference")
    tok = gen.tokenizer
    key = WatermarkKey._from_secret(hashlib.sha256(b"guard/bench/bench_sign/v1").digest(), gamma=0.25, n_lists=8,
                                    tokenizer_id=tok.id, vocab_size=tok.vocab_size)
    gl = GreenLists(key, tok)
    per: dict[str, list[float]] = {k: [] for k in ("generate", "save_png", "sign", "detect_plain", "detect_provenance",
                                                  "read_manifest")}
    sizes: list[tuple[int, int]] = []
    with tempfile.TemporaryDirectory(prefix="guard-bench-sign-") as tmp:
        root = Path(tmp)
        certs = make_test_chain(root / "certs")
        reader = ManifestReader(trust_anchors=certs.anchors)
        det_plain = Detector(gl, tok, provenance=False)
        det_prov = Detector(gl, tok, provenance=reader)
        with ImageSigner(SigningMaterial.load(certs.chain, certs.key)) as signer:
            signer.check()                                                          # warm-up: native signer
            gen.generate(["a red disc"], n=1, seed=0, logits_processor=[WatermarkProcessor(gl, hard=True, seed=0)])
            for r in range(args.rounds + 1):                                        # round 0 is a warm-up
                prompts = [shapes.prompt_for(shapes.sample_scene(s, split="heldout"), s)
                           for s in range(r * args.batch, (r + 1) * args.batch)]
                t0 = time.perf_counter()
                codes = gen.generate(prompts, n=1, seed=r, logits_processor=[WatermarkProcessor(gl, hard=True, seed=r)])
                images = tok.decode(codes)
                t1 = time.perf_counter()
                paths = []
                for i, img in enumerate(images):
                    p = root / f"r{r}_{i:03d}.png"
                    save_png(img, p)
                    paths.append(p)
                t2 = time.perf_counter()
                for p in paths:
                    before = p.stat().st_size
                    signer.sign_file(p, generation_manifest(title=p.name, model_id=gen.id, key_id=key.key_id,
                                                            tokenizer_id=tok.id, gamma=key.gamma,
                                                            n_lists=key.n_lists, mode="hard"))
                    sizes.append((before, p.stat().st_size))
                t3 = time.perf_counter()
                det_plain.detect_paths(paths)
                t4 = time.perf_counter()
                recs = det_prov.detect_paths(paths)
                t5 = time.perf_counter()
                for p in paths:
                    reader.read(p)
                t6 = time.perf_counter()
                assert all(x.c2pa_state == "trusted" for x in recs)
                if r == 0:
                    continue
                b = len(paths)
                for k, dt in (("generate", t1 - t0), ("save_png", t2 - t1), ("sign", t3 - t2),
                              ("detect_plain", t4 - t3), ("detect_provenance", t5 - t4), ("read_manifest", t6 - t5)):
                    per[k].append(dt / b * 1e3)
                print(f"round {r}: ms/image " + "  ".join(f"{k} {v[-1]:.1f}" for k, v in per.items()), file=sys.stderr)
    med = {k: round(statistics.median(v), 2) for k, v in per.items()}
    result = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python bench/bench_sign.py " + " ".join(sys.argv[1:]),
        "guard_version": __version__, "generator_id": gen.id, "tokenizer_id": tok.id, "threads": args.threads,
        "rounds": args.rounds, "batch": args.batch, "signing": "ES256 (P-256), no thumbnail, no TSA",
        "ms_per_image_median": med,
        "ms_per_image_rounds": {k: [round(x, 2) for x in v] for k, v in per.items()},
        "ratio_sign_to_generate": round(med["sign"] / med["generate"], 4),
        "ratio_sign_to_generate_plus_save": round(med["sign"] / (med["generate"] + med["save_png"]), 4),
        "ratio_detect_with_to_without_provenance": round(med["detect_provenance"] / med["detect_plain"], 3),
        "bytes_added_per_png_median": int(statistics.median(a - b for b, a in sizes)),
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "c2pa_python": __import__("c2pa").__version__},
    }
    print(f"per image (median of {args.rounds} rounds of {args.batch}, {args.threads} thread(s)): "
          + ", ".join(f"{k} {v} ms" for k, v in med.items()))
    print(f"sign / generate = {result['ratio_sign_to_generate']:.4f}   "
          f"detect with / without provenance = {result['ratio_detect_with_to_without_provenance']:.2f}   "
          f"+{result['bytes_added_per_png_median']} bytes per PNG")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
