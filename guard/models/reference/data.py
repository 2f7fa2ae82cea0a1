"""Batches of rendered scenes (cached as uint8 arrays) for training and evaluation."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .shapes import DATA_VERSION, prompt_for, render, sample_scene, scene_labels

# Seed ranges: training scenes use [0, n); held-out evaluation scenes start here.
HELDOUT_SEED_BASE = 10_000_000


def _render_chunk(args: tuple[int, int, str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    start, stop, split = args
    imgs, labels, prompts = [], [], []
    for seed in range(start, stop):
        scene = sample_scene(seed, split=split)
        imgs.append(render(scene))
        labels.append(scene_labels(scene))
        prompts.append(prompt_for(scene, seed=seed))
    return np.stack(imgs), np.stack(labels), prompts


def render_dataset(start: int, n: int, split: str, workers: int = 2) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Render scenes for seeds [start, start+n): (images uint8 (n,64,64,3), labels (n,4,3), prompts)."""
    chunk = 500
    jobs = [(s, min(s + chunk, start + n), split) for s in range(start, start + n, chunk)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as ex:
            parts = list(ex.map(_render_chunk, jobs))
    else:
        parts = [_render_chunk(j) for j in jobs]
    imgs = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    prompts = [q for p in parts for q in p[2]]
    return imgs, labels, prompts


def cached_dataset(cache_dir: Path, start: int, n: int, split: str, workers: int = 2):
    """`render_dataset` with an on-disk cache keyed by data version, range and split."""
    key = hashlib.sha256(f"{DATA_VERSION}/{start}/{n}/{split}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"shapes-{split}-{start}-{n}-{key}.npz"
    if path.exists():
        d = np.load(path, allow_pickle=False)
        return d["images"], d["labels"], [str(p) for p in d["prompts"]]
    imgs, labels, prompts = render_dataset(start, n, split, workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, images=imgs, labels=labels, prompts=np.array(prompts))
    os.replace(tmp, path)
    return imgs, labels, prompts
