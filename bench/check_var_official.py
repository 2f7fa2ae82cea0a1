"""Check guard's VAR modules against the official code (FoundationVision/VAR checkout): the official
modules' state dicts load into guard's with strict=True and give the same codes, images and logits.

    python bench/check_var_official.py --var-repo /path/to/VAR      # e.g. a checkout at 78b9539

For each variant (share_quant_resi 4/0/1, attn_l2_norm on/off, shared_aln on/off) it builds a small
official VQVAE (its fixed ch_mult (1,1,2,2,4), ch 32) and VAR (d2 x 64, patch_nums 1,2,3,4), perturbs
every parameter, copies the state dicts into guard's classes (config read from the state dicts) and
compares: img_to_idxBl codes, idxBl_to_img images, autoregressive_infer_cfg images vs guard's sampled codes
decoded (same seed; VAR cfg 1.5 = guard cfg 2.5; top-k 20, top-p 0.9), teacher-forced logits.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--var-repo", required=True, help="a checkout of github.com/FoundationVision/VAR")
    a = ap.parse_args()
    sys.path.insert(0, a.var_repo)
    torch.set_num_threads(1)
    from models.var import VAR as OfficialVAR          # noqa: E402 - the user's checkout
    from models.vqvae import VQVAE as OfficialVQVAE

    from guard.models.var import VAR, VQVAE, VARGenerator, VARTokenizer, var_config, vqvae_config

    pn = (1, 2, 3, 4)
    rows = []
    for share, l2, shared in ((4, True, False), (0, True, True), (1, False, False)):
        torch.manual_seed(0)
        with contextlib.redirect_stdout(io.StringIO()):
            ovq = OfficialVQVAE(vocab_size=64, z_channels=8, ch=32, test_mode=True, share_quant_resi=share,
                                v_patch_nums=pn)
            ovar = OfficialVAR(vae_local=ovq, num_classes=10, depth=2, embed_dim=64, num_heads=2, attn_l2_norm=l2,
                               shared_aln=shared, patch_nums=pn, flash_if_available=False, fused_if_available=False)
        for p in list(ovq.parameters()) + list(ovar.parameters()):
            torch.nn.init.normal_(p, std=0.05)
        vs, rs = ovq.state_dict(), ovar.state_dict()
        vq = VQVAE(**vqvae_config(vs, var_config(rs)["patch_nums"]))
        vq.load_state_dict(vs, strict=True)
        var = VAR(**var_config(rs))
        var.load_state_dict(rs, strict=True)
        x = torch.rand(2, 3, 64, 64) * 2 - 1
        with torch.no_grad():
            a_codes, b_codes = ovq.img_to_idxBl(x), vq.img_to_idxBl(x)
            dec = (ovq.idxBl_to_img(a_codes, same_shape=True, last_one=True) - vq.idxBl_to_img(b_codes)).abs().max()
            labels = torch.tensor([3, 7])
            torch.manual_seed(5)
            with contextlib.redirect_stdout(io.StringIO()):
                img = ovar.autoregressive_infer_cfg(2, labels, cfg=1.5, top_k=20, top_p=0.9)
            tok = VARTokenizer(vq, digest="check")
            codes = VARGenerator(var, tok, "check").generate(["3", "7"], seed=5, cfg=2.5, top_k=20, top_p=0.9)
            ovar.cond_drop_rate = 0.0
            y = torch.randn(2, var.L - var.first_l, 8)
            logits = (ovar(labels, y) - var(labels, y)).abs().max()
        rows.append({"share_quant_resi": share, "attn_l2_norm": l2, "shared_aln": shared, "strict_load": True,
                     "encode_equal": all(torch.equal(i, j) for i, j in zip(a_codes, b_codes)),
                     "decode_max_abs_diff": float(dec),
                     "sample_image_max_abs_diff": float((img - tok.decode(codes)).abs().max()),
                     "teacher_forced_logits_max_abs_diff": float(logits)})
        print(json.dumps(rows[-1]), flush=True)
    ok = all(r["encode_equal"] and r["decode_max_abs_diff"] < 1e-4 and r["sample_image_max_abs_diff"] < 1e-4
             and r["teacher_forced_logits_max_abs_diff"] < 1e-4 for r in rows)
    print("OK: guard's VAR matches the official code" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
