"""Compare reference VQ weight files on VALIDATION scenes (seeds never used for reported figures): PSNR after
8-bit saving, decode -> PNG -> encode agreement on rendered codes and on codes with 30% random / one-step
neighbour substitutions, agreement after JPEG 90 / 75. Used to choose a decoder fine-tuning checkpoint.

    OMP_NUM_THREADS=1 python bench/compare_vq_decoders.py A.safetensors B.safetensors ... [--n 300]
"""
import argparse
import json

import torch
from safetensors.torch import load_file

from guard.models.reference.data import render_dataset
from guard.models.reference.evaluate import to_uint8_png
from guard.models.reference.train import vq_config_from_card
from guard.models.reference.model import WEIGHTS_DIR
from guard.models.reference.vq import VQModel

VALIDATION_SEED_BASE = 30_000_000  # not the held-out base (10,000,000) nor training seeds

ap = argparse.ArgumentParser()
ap.add_argument("weights", nargs="+")
ap.add_argument("--n", type=int, default=300)
a = ap.parse_args()
imgs, _, _ = render_dataset(VALIDATION_SEED_BASE, a.n, "any", workers=1)
x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
cfg = vq_config_from_card(WEIGHTS_DIR)
first = None
for path in a.weights:
    vq = VQModel(cfg).eval()
    vq.load_state_dict(load_file(path))
    with torch.no_grad():
        codes = vq.encode(x)
        first = codes if first is None else first
        rec = to_uint8_png(vq.decode(codes))
        psnr = 10 * torch.log10(1 / (rec - x).pow(2).flatten(1).mean(1).clamp_min(1e-10))
        agree = lambda c, img: round(float((vq.encode(img) == c).float().mean()), 4)  # noqa: E731
        g = torch.Generator().manual_seed(0)
        mixed = torch.where(torch.rand(codes.shape, generator=g) < 0.3,
                            torch.randint(0, cfg.codebook_size, codes.shape, generator=g), codes)
        q = vq.levels_of(codes)
        ch = torch.randint(0, q.shape[1], codes.shape, generator=g)
        cur = q.gather(1, ch[:, None])
        moved = q.clone().scatter_(1, ch[:, None], torch.where(cur < cfg.levels[0] - 1, cur + 1, cur - 1))
        nbr = torch.where(torch.rand(codes.shape, generator=g) < 0.3, vq.ids_of(moved), codes)
        row = {"psnr_db": round(float(psnr.mean()), 2),
               "codes_as_first_file": round(float((codes == first).float().mean()), 4),
               "rt_rendered": agree(codes, rec),
               "rt_30pct_random": agree(mixed, to_uint8_png(vq.decode(mixed))),
               "rt_30pct_neighbour": agree(nbr, to_uint8_png(vq.decode(nbr))),
               "jpeg90": agree(codes, to_uint8_png(vq.decode(codes), "JPEG", quality=90)),
               "jpeg75": agree(codes, to_uint8_png(vq.decode(codes), "JPEG", quality=75))}
    print(json.dumps({"weights": path, "n": a.n, **row}), flush=True)
