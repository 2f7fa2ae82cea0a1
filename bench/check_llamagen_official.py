"""Check guard's LlamaGen architecture against a checkout of the official code (FoundationVision/LlamaGen).

    python bench/check_llamagen_official.py /path/to/LlamaGen-checkout

Builds small official models (`VQModel` with the official ch=128, `Transformer` c2i and t2i at dim 64),
then checks, for each: the state-dict names and shapes equal guard's (`guard.models.llamagen`), guard loads
the official weights with `strict=True`, and both compute the same thing (VQ latents, codes and decoded
pixels; GPT logits of a teacher-forced sequence and of the official cached sampler's first step). Prints
one line per check and exits 1 on any mismatch. Runs on the CPU in seconds; imports the checkout, never
copies it.
"""

from __future__ import annotations

import sys

import torch


def main(checkout: str) -> int:
    sys.path.insert(0, checkout)
    from autoregressive.models import gpt as og                           # the official modules
    from tokenizer.tokenizer_image import vq_model as ov

    from guard.models import llamagen as lg

    torch.manual_seed(0)
    bad = 0

    def report(name: str, ok: bool, detail: str = "") -> None:
        nonlocal bad
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")

    # ---- VQ (the official VQModel fixes ch=128 and 2 res blocks; a 3-level, 256-code variant keeps it small)
    off_vq = ov.VQModel(ov.ModelArgs(codebook_size=256, codebook_embed_dim=8, encoder_ch_mult=[1, 1, 2],
                                     decoder_ch_mult=[1, 1, 2], z_channels=64)).eval()
    state = off_vq.state_dict()
    ours = lg.VQModel(lg.vq_args_from_state(state)).eval()
    same = {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    report("VQ names and shapes", same)
    ours.load_state_dict(state, strict=True)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        q, _, (_, _, idx) = off_vq.encode(x)
        z = ours.latents(x)
        codes = ours.quantize.indices(z)
        report("VQ codes", torch.equal(codes.flatten(), idx.flatten()))
        dec_off = off_vq.decode_code(idx, [2, 8, 8, 8])
        dec_ours = ours.decode_code(codes)
        report("VQ decode", torch.allclose(dec_off, dec_ours, atol=1e-5), f"max diff {(dec_off - dec_ours).abs().max():.2e}")

    # ---- GPT, both condition types
    for kind, extra in (("c2i", dict(num_classes=10, cls_token_num=1)), ("t2i", dict(caption_dim=32, cls_token_num=120))):
        off = og.Transformer(og.ModelArgs(dim=64, n_layer=2, n_head=4, multiple_of=32, vocab_size=256, block_size=16,
                                          model_type=kind, **extra)).eval()
        torch.nn.init.normal_(off.output.weight, std=0.02)
        st = off.state_dict()
        args = lg.gpt_args_from_state(st, block_size=16, n_head=4)
        mine = lg.Transformer(args).eval()
        same = {k: tuple(v.shape) for k, v in st.items()} == {k: tuple(v.shape) for k, v in mine.state_dict().items()}
        report(f"GPT {kind} names and shapes", same)
        mine.load_state_dict(st, strict=True)
        cond = torch.tensor([3, 7]) if kind == "c2i" else torch.randn(2, 120, 32)
        codes = torch.randint(0, 256, (2, 16))
        with torch.no_grad():
            off.train(False)
            # the official forward with idx and cond_idx (the "naive inference" branch), all positions
            off.freqs_cis = off.freqs_cis
            lo, _ = off(codes[:, :-1], cond, input_pos=torch.arange(off.cls_token_num + 15))
            lm = mine.teacher_logits(cond, codes)
            t = off.cls_token_num
            report(f"GPT {kind} teacher-forced logits", torch.allclose(lo[:, t - 1:], lm, atol=1e-4),
                   f"max diff {(lo[:, t - 1:] - lm).abs().max():.2e}")
        # the official cached sampler (CFG on [cond; null], top-k) against guard's, same seed
        from autoregressive.models.generate import generate as official_generate

        vq_tok = lg.LlamaGenTokenizer(ours, image_size=16, digest="0" * 64)
        gen = lg.LlamaGenGenerator(mine, vq_tok, "check") if kind == "c2i" else None
        if gen is not None:
            torch.manual_seed(5)
            ref = official_generate(off, cond, 16, cfg_scale=4.0, temperature=1.0, top_k=50, top_p=1.0,
                                    sample_logits=True)
            with torch.random.fork_rng():
                torch.manual_seed(5)
                got = gen._sample(cond, None, 4.0, 1.0, 50, None, [])
            report("GPT c2i cached sampling = official generate (same seed)", torch.equal(ref.long(), got),
                   f"{int((ref.long() == got).sum())}/{got.numel()} tokens equal")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    sys.exit(main(sys.argv[1]))
