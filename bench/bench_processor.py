"""Cost of the watermark processor, measured side by side in one run (not a test).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_processor.py
    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_processor.py --threads 2 --batch 16 --reps 5

Prints:
  (a) one reference-GPT sampling step (B images, CFG) with vs without `WatermarkProcessor`, and the
      processor call alone as a share of a step;
  (b) `WatermarkProcessor` vs transformers' `WatermarkLogitsProcessor` on the same (B=16, V=16384) scores.
The GPT uses the shipped weights when present, else a randomly initialised one of the same shape
(timings do not depend on the weights).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from guard.keys import WatermarkKey
from guard.watermark import GreenLists, WatermarkProcessor


class _Vocab:
    """Just enough of a tokenizer to derive green lists for a given vocabulary size."""

    def __init__(self, v: int, tid: str) -> None:
        self.id, self.vocab_size, self.alive = tid, v, None


def _key(tok) -> WatermarkKey:
    return WatermarkKey._from_secret(b"\x07" * 32, gamma=0.25, n_lists=8, tokenizer_id=tok.id,
                                     vocab_size=tok.vocab_size)


def per_call(fn, n: int, reps: int) -> float:
    """Median seconds per call of `fn` over `reps` timed loops of `n` calls (after a warm-up loop)."""
    for _ in range(max(1, n // 10)):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)


def reference_generator():
    from guard.models import load

    return load("reference"), "shipped weights"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    b = args.batch

    # (a) a reference sampling step with and without the processor.
    gen, source = reference_generator()
    tok = gen.tokenizer
    gl = GreenLists(_key(tok), tok)
    prompts = ["a big red disc in the upper left"] * b
    n_steps = gen.gpt.cfg.n_image_tokens

    def run(with_proc: bool) -> float:
        procs = [WatermarkProcessor(gl, delta=2.0, seed=0)] if with_proc else None
        t0 = time.perf_counter()
        gen.generate(prompts, n=1, seed=0, cfg=3.0, logits_processor=procs)
        return (time.perf_counter() - t0) / n_steps

    run(False)  # warm-up
    base, wm = [], []
    for _ in range(args.reps):  # interleaved so drift hits both equally
        base.append(run(False))
        wm.append(run(True))
    step_base, step_wm = statistics.median(base), statistics.median(wm)
    proc = WatermarkProcessor(gl, delta=2.0, seed=0)
    ids, scores = torch.zeros(b, 0, dtype=torch.long), torch.randn(b, tok.vocab_size)
    proc(ids, scores)
    t_proc_ref = per_call(lambda: proc(ids, scores), 2000, 5)

    # (b) the processor alone vs transformers' WatermarkLogitsProcessor, (16, 16384) scores.
    from transformers.generation.logits_process import WatermarkLogitsProcessor

    big = _Vocab(16384, "bench-vq-16384")
    gl_big = GreenLists(_key(big), big)
    scores_big = torch.randn(16, 16384)
    ids_big = torch.randint(0, 16384, (16, 8))
    ours = WatermarkProcessor(gl_big, delta=2.0, seed=0)
    ours(ids_big, scores_big)
    hf = WatermarkLogitsProcessor(vocab_size=16384, device="cpu", greenlist_ratio=0.25, bias=2.0)
    t_ours = per_call(lambda: ours(ids_big, scores_big), 1000, 5)
    t_hf = per_call(lambda: hf(ids_big, scores_big), 20, 5)

    print(f"threads={args.threads}  torch {torch.__version__}  reference GPT: {source}")
    print(f"(a) reference sampling step, B={b}, cfg=3, V={tok.vocab_size}, median of {args.reps} runs x {n_steps} steps")
    print(f"    {'without processor':<28}{step_base * 1e3:9.3f} ms/step")
    print(f"    {'with WatermarkProcessor':<28}{step_wm * 1e3:9.3f} ms/step   ratio {step_wm / step_base:.3f}")
    print(f"    {'processor call alone':<28}{t_proc_ref * 1e6:9.1f} us/call = {100 * t_proc_ref / step_base:.3f}% of a step")
    print(f"(b) one call on (16, 16384) scores")
    print(f"    {'guard WatermarkProcessor':<28}{t_ours * 1e6:9.1f} us/call")
    print(f"    {'transformers Watermark…':<28}{t_hf * 1e6:9.1f} us/call   guard is {t_hf / t_ours:.0f}x faster")


if __name__ == "__main__":
    main()
