"""GPU check of a real-model adapter: load a local checkpoint, generate with the watermark, save PNGs,
detect them, and print timings and the processor's share of a generation step. Runs on CUDA when present
and falls back to the CPU (saying so) when not. Not a test; prints figures and writes a JSON record.

    python bench/gpu_check.py --model janus:/models/Janus-Pro-1B --n 4
    python bench/gpu_check.py --model emu3:/models/Emu3-Gen-hf@512 --n 1
    python bench/gpu_check.py --tiny janus --out bench/results/adapters_janus_tiny.json   # random tiny config
    python bench/gpu_check.py --model var:/models/var --prompt 980 --cfg 2.5 --clip clip:ViT-B-32@/models/clip/open_clip_pytorch_model.bin
    python bench/gpu_check.py --tiny var --wide --clip tiny            # VAR d4 x 1024 wide, 256 px, 680 tokens
    python bench/gpu_check.py --tiny var --clip tiny --device cpu      # the same plumbing on the CPU (small)

Figures (measured side by side in one run, interleaved, after a warm-up):
  * generate with a hard-mode `WatermarkProcessor` vs the same call without it (same seed): the ratio is
    the end-to-end cost of the watermark;
  * the processor's own time per call, synchronised on CUDA, as a share of the watermarked generate's time
    (the synchronisation itself slows the watermarked run a little: an upper bound);
  * green share of the generated codes (1.0 in hard mode), distinct-code p-values of the codes and of the
    saved PNGs re-encoded by the adapter's tokenizer, and that round trip's token agreement (meaningless on
    random tiny weights: their decoder is not inverted by their encoder);
  * VAR: one processor call per position of each scale (the "scale" loop convention), sampler steps = scales;
    per-scale round-trip agreement;
  * with --clip: the CLIP judge's load time, CLIPScore of the generated images against their prompts and
    its time per image (`clip:ARCH@PATH`, or `tiny` for a random tiny open_clip model).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedProcessor:
    """Wraps a processor and accumulates its own wall time per call (CUDA-synchronised)."""

    def __init__(self, proc, device: torch.device) -> None:
        self.proc, self.device = proc, device
        self.seconds, self.calls = 0.0, 0

    def __call__(self, input_ids, scores):
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.proc(input_ids, scores)
        _sync(self.device)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def _load(spec: str, device: torch.device, dtype: str | None = None):
    kind, _, path = spec.partition(":")
    if kind == "janus":
        from guard.models.janus import load_janus

        return load_janus(path, device=device, dtype=dtype, spec=spec)
    if kind == "emu3":
        from guard.models.emu3 import load_emu3

        return load_emu3(path, device=device, spec=spec)
    if kind == "var":
        from guard.models.var import load_var

        return load_var(path, device=device, dtype=dtype, spec=spec)
    from guard.models import load

    return load(spec)


def _tiny_var(folder: Path, wide: bool) -> str:
    """Save a random tiny VAR checkpoint (official layout); `wide`: released geometry (256 px, 680 tokens,
    4096 codes of width 32, 16x VQ) with a d4 x 1024 transformer, else a 16 px 30-token toy."""
    from guard.models.var import OFFICIAL_PATCH_NUMS, build_tiny_var, save_var_checkpoint

    if wide:
        vq, var = build_tiny_var(vocab_size=4096, patch_nums=OFFICIAL_PATCH_NUMS, ch=32, ch_mult=(1, 1, 2, 2, 4),
                                 num_res_blocks=1, z_channels=32, depth=4, embed_dim=1024, num_heads=16,
                                 num_classes=1000)
    else:
        vq, var = build_tiny_var()
    return f"var:{save_var_checkpoint(folder, vq, var)}"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="janus:PATH or emu3:PATH[@SIZE] (a local checkpoint)")
    src.add_argument("--tiny", choices=["janus", "emu3", "var"], help="build a tiny random checkpoint of this "
                                                                      "architecture")
    p.add_argument("--wide", action="store_true", help="--tiny var: real geometry, wide d4 transformer (for GPUs)")
    p.add_argument("--n", type=int, default=4, help="images per run")
    p.add_argument("--prompt", default=None, help="default: 'a red fox sitting in the snow' (VAR: class '1')")
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--dtype", default=None, help="janus/var: model dtype (default bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--clip", default=None, help="also time the CLIP judge: 'clip:ARCH@PATH' or 'tiny'")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed runs of each variant")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="JSON record (default: bench/results/adapters_<...>.json)")
    args = p.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    command = "python bench/gpu_check.py " + " ".join(shlex.quote(a) for a in given)
    if args.threads:
        torch.set_num_threads(args.threads)

    from guard.detect import Detector
    from guard.keys import WatermarkKey
    from guard.models._hf_common import pick_device
    from guard.watermark import GreenLists, WatermarkProcessor

    device = pick_device(args.device)
    cuda = torch.cuda.is_available()
    if device.type != "cuda":
        print(f"NOTE: no CUDA device {'requested' if cuda else 'available'}; running on the CPU "
              f"({torch.get_num_threads()} threads). Timings are CPU timings, not GPU ones.", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="guard-gpu-check-"))
    spec = args.model
    if args.tiny == "var":
        spec = _tiny_var(tmp / "tiny-var", args.wide)
    elif args.tiny:
        from guard.models._hf_tiny import save_tiny_emu3, save_tiny_janus

        path = (save_tiny_janus if args.tiny == "janus" else save_tiny_emu3)(tmp / f"tiny-{args.tiny}")
        spec = f"janus:{path}" if args.tiny == "janus" else f"emu3:{path}@64"
    is_var = spec.startswith("var:")
    prompt = args.prompt or ("1" if is_var else "a red fox sitting in the snow")

    t0 = time.perf_counter()
    gen = _load(spec, device, args.dtype)
    _sync(device)
    load_s = time.perf_counter() - t0
    tok = gen.tokenizer
    h, w = tok.grid
    print(f"loaded {gen.id} with tokenizer {tok.id} on {device} in {load_s:.2f} s; {h}x{w} tokens, "
          f"V={tok.vocab_size}, images {tok.image_size} px", flush=True)
    key = WatermarkKey.create(tok, gamma=0.25, n_lists=8)
    gl = GreenLists(key, tok)
    prompts = [prompt]

    def run(with_wm: bool, seed: int):
        proc = TimedProcessor(WatermarkProcessor(gl, hard=True, seed=seed), device) if with_wm else None
        _sync(device)
        t = time.perf_counter()
        codes = gen.generate(prompts, n=args.n, seed=seed, cfg=args.cfg, logits_processor=[proc] if proc else None)
        _sync(device)
        return codes, time.perf_counter() - t, proc

    run(True, 0)  # warm-up (kernels, caches)
    plain_s, wm_s, proc_s, calls = [], [], [], 0
    codes = proc = None
    for r in range(args.repeats):
        _, t_plain, _ = run(False, 100 + r)
        codes, t_wm, proc = run(True, 100 + r)
        plain_s.append(t_plain)
        wm_s.append(t_wm)
        proc_s.append(proc.seconds)
        calls = proc.calls
    share = [ps / ws for ps, ws in zip(proc_s, wm_s)]
    list_idx = proc.proc.list_indices
    green = gl.green_share(codes, list_idx)

    t = time.perf_counter()
    images = tok.decode(codes)
    _sync(device)
    decode_s = time.perf_counter() - t
    from guard.imageio import load_image, save_png

    paths = []
    for i, img in enumerate(images):
        paths.append(save_png(img, tmp / f"{i:03d}.png"))
    det = Detector(gl, tok)
    code_recs = det.detect_codes(codes)
    t = time.perf_counter()
    png_recs = det.detect_paths(paths)
    detect_s = time.perf_counter() - t
    re = tok.encode(torch.stack([load_image(p_, tok.image_size).tensor for p_ in paths]))
    agreement = float((re == codes).float().mean())

    steps = h * w
    per_scale = None
    if is_var:
        steps = len(tok.scales)          # one sampler step per scale
        per_scale = [round(float((a == b).float().mean()), 4) for a, b in zip(tok.split(codes), tok.split(re))]
    clip_rec = None
    if args.clip:
        from guard.models.clip_judge import load_clip_judge, save_tiny_clip

        clip_spec = args.clip
        if clip_spec == "tiny":
            config, weights = save_tiny_clip(tmp / "tiny-clip")
            clip_spec = f"clip:{config}@{weights}"
        _sync(device)
        t = time.perf_counter()
        judge = load_clip_judge(clip_spec, device=device)
        _sync(device)
        clip_load_s = time.perf_counter() - t
        judge.clip_score(images[:1], prompts[:1])       # warm-up
        _sync(device)
        t = time.perf_counter()
        scores = judge.clip_score(images, prompts * len(images))
        _sync(device)
        clip_s = time.perf_counter() - t
        clip_rec = {"spec": args.clip if args.clip == "tiny" else clip_spec, "judge": judge.description,
                    "load_s": round(clip_load_s, 3), "clipscore": [round(float(x), 3) for x in scores],
                    "ms_per_image": round(clip_s / max(len(images), 1) * 1e3, 3)}
        print(f"CLIP judge {judge.description}: load {clip_load_s:.2f} s, CLIPScore {clip_rec['clipscore']}, "
              f"{clip_rec['ms_per_image']:.2f} ms/image")
    record = {
        "command": command,
        "model": spec if not args.tiny else (f"tiny random {args.tiny}{' (wide)' if args.wide else ''} ("
                                             + ("guard.models.var.build_tiny_var)" if is_var else "guard.models._hf_tiny)")),
        "generator_id": gen.id, "tokenizer_id": tok.id, "grid": [h, w], "vocab_size": tok.vocab_size,
        "device": str(device), "cuda_available": cuda,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "n_images": len(codes), "cfg": args.cfg, "repeats": args.repeats,
        "load_s": round(load_s, 3),
        "generate_plain_s": [round(x, 4) for x in plain_s], "generate_watermarked_s": [round(x, 4) for x in wm_s],
        "watermark_overhead_ratio_median": round(statistics.median(wm_s) / statistics.median(plain_s), 4),
        "processor_calls_per_run": calls, "token_steps_per_image": steps,
        "processor_ms_per_call_median": round(statistics.median(proc_s) / max(calls, 1) * 1e3, 4),
        "processor_share_of_step_median": round(statistics.median(share), 5),
        "ms_per_token_step_watermarked": round(statistics.median(wm_s) / steps * 1e3, 3),
        "green_share_codes": [round(float(x), 4) for x in green],
        "log10_p_codes": [round(r.log10_p, 2) for r in code_recs],
        "decode_s": round(decode_s, 4), "detect_png_s": round(detect_s, 4),
        "log10_p_png": [round(r.log10_p, 2) for r in png_recs],
        "png_watermarked": [r.watermarked for r in png_recs],
        "roundtrip_token_agreement": round(agreement, 4),
        "roundtrip_agreement_per_scale": per_scale, "scales": list(tok.scales) if is_var else None,
        "dtype": args.dtype, "prompt": prompt, "clip": clip_rec,
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "transformers": __import__("transformers").__version__, "threads": torch.get_num_threads(),
                        "machine": platform.machine()},
    }
    print(f"generate x{len(codes)}: plain {statistics.median(plain_s):.3f} s, "
          f"watermarked {statistics.median(wm_s):.3f} s "
          f"(median of {args.repeats}; ratio {record['watermark_overhead_ratio_median']:.3f})")
    print(f"processor: {calls} calls/run, {record['processor_ms_per_call_median']:.3f} ms/call, "
          f"{100 * record['processor_share_of_step_median']:.2f}% of the watermarked generate time")
    print(f"green share of codes {record['green_share_codes']}; log10 p (codes) {record['log10_p_codes']}")
    print(f"decode {decode_s:.3f} s; detect {len(paths)} PNGs {detect_s:.3f} s; log10 p (PNG) {record['log10_p_png']}; "
          f"round-trip token agreement {agreement:.3f}")
    out = args.out or Path(__file__).parent / "results" / (
        f"adapters_{args.tiny or spec.split(':')[0]}_{'tiny_' if args.tiny else ''}{'wide_' if args.wide else ''}"
        f"{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
