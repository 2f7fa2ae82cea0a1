"""Compare reference VQ *encoders* (decoder fixed) on VALIDATION scenes (seeds never used for reported figures).

An encoder fine-tuning (`train vq --freeze-decoder`, wmar's recipe) keeps every generated picture as it is and
changes only how pictures are read back. So the codes that matter are those the GPT was trained on and
samples: the shipped encoder's codes of rendered scenes, and the same with 30% of positions moved to a one-step
neighbour (as hard mode does) or to a random code. They are decoded by the SHIPPED decoder, attacked with the
evaluation's own attacks (guard.eval.attacks), and each candidate encoder reads them back; the figure is the
share of positions that get their code back. Real-image columns: PSNR of the candidate's codes of rendered
scenes through the shipped decoder (post-hoc marking and fingerprints encode real images) and the share of those
codes equal to the shipped encoder's.

    OMP_NUM_THREADS=1 python bench/compare_vq_encoders.py A.safetensors B.safetensors ... [--n 300]
"""
import argparse
import json

import torch
from safetensors.torch import load_file

from guard.eval.attacks import apply_attack
from guard.models.reference.data import render_dataset
from guard.models.reference.evaluate import to_uint8_png
from guard.models.reference.model import WEIGHTS_DIR
from guard.models.reference.train import vq_config_from_card
from guard.models.reference.vq import VQModel

VALIDATION_SEED_BASE = 30_000_000  # not the held-out base (10,000,000) nor training seeds
ATTACKS = [("png", None), ("jpeg", 90), ("jpeg", 75), ("jpeg", 50), ("jpeg", 25), ("blur", 9), ("noise", 0.1),
           ("brightness", 2.0)]

ap = argparse.ArgumentParser()
ap.add_argument("weights", nargs="+", help="VQ safetensors files; the shipped one is always the first row")
ap.add_argument("--n", type=int, default=300)
a = ap.parse_args()
imgs, _, _ = render_dataset(VALIDATION_SEED_BASE, a.n, "any", workers=1)
x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
cfg = vq_config_from_card(WEIGHTS_DIR)
shipped = VQModel(cfg).eval()
shipped.load_state_dict(load_file(str(WEIGHTS_DIR / "vq.safetensors")))
with torch.no_grad():
    codes = shipped.encode(x)
    g = torch.Generator().manual_seed(0)
    q = shipped.levels_of(codes)
    ch = torch.randint(0, q.shape[1], codes.shape, generator=g)
    cur = q.gather(1, ch[:, None])
    moved = q.clone().scatter_(1, ch[:, None], torch.where(cur < cfg.levels[0] - 1, cur + 1, cur - 1))
    nbr = torch.where(torch.rand(codes.shape, generator=g) < 0.3, shipped.ids_of(moved), codes)
    rnd = torch.where(torch.rand(codes.shape, generator=g) < 0.3,
                      torch.randint(0, cfg.codebook_size, codes.shape, generator=g), codes)
    pictures = {name: shipped.decode(c).clamp(0, 1) for name, c in (("rendered", codes), ("nbr30", nbr), ("rnd30", rnd))}
    targets = {"rendered": codes, "nbr30": nbr, "rnd30": rnd}
    attacked = {}
    for name, param in ATTACKS:
        key = "png" if name == "png" else f"{name}{param}"
        attacked[key] = (to_uint8_png(pictures["rendered"]) if name == "png"
                         else apply_attack(name, pictures["rendered"], param, seed=0))
    for extra in ("nbr30", "rnd30"):
        attacked[f"{extra}_png"] = to_uint8_png(pictures[extra])
        attacked[f"{extra}_jpeg75"] = apply_attack("jpeg", pictures[extra], 75, seed=0)
rows = []
for path in [str(WEIGHTS_DIR / "vq.safetensors")] + a.weights:
    vq = VQModel(cfg).eval()
    vq.load_state_dict(load_file(path))
    with torch.no_grad():
        row = {}
        for key, img in attacked.items():
            tgt = targets[key.split("_")[0]] if "_" in key else codes
            row[key] = round(float((vq.encode(img) == tgt).float().mean()), 4)
        valuemetric = [row[k] for k in ("jpeg25", "blur9", "noise0.1", "brightness2.0")]
        row["valuemetric_mean"] = round(sum(valuemetric) / 4, 4)
        own = vq.encode(x)
        rec = to_uint8_png(shipped.decode(own))
        row["real_psnr_db"] = round(float((10 * torch.log10(1 / (rec - x).pow(2).flatten(1).mean(1).clamp_min(1e-10))).mean()), 2)
        row["real_codes_as_shipped"] = round(float((own == codes).float().mean()), 4)
    print(json.dumps({"weights": path, "n": a.n, **row}), flush=True)
