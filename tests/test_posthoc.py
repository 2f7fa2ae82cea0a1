"""Post-hoc marking with the shipped reference VQ: raises the green share, respects the PSNR floor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guard.errors import ConfigError
from guard.keys import WatermarkKey
from guard.models.reference import shapes
from guard.watermark import GreenLists, psnr, watermark_image


@pytest.fixture(scope="module")
def lists(tok) -> GreenLists:
    key = WatermarkKey._from_secret(b"\x03" * 32, gamma=0.25, n_lists=8, tokenizer_id=tok.id,
                                    vocab_size=tok.vocab_size)
    return GreenLists(key, tok)


@pytest.fixture(scope="module")
def images(tok) -> torch.Tensor:
    """16 generated-like images: rendered scenes through the VQ round trip, at PNG (8-bit) levels."""
    x = torch.from_numpy(np.stack([shapes.render(shapes.sample_scene(i, split="any")) for i in range(16)]))
    x = x.permute(0, 3, 1, 2).float() / 255
    return (tok.decode(tok.encode(x)) * 255).round() / 255


def test_raises_green_share_and_keeps_psnr_above_floor(tok, lists, images):
    idx = [i % 8 for i in range(16)]
    res = watermark_image(images, lists, tok, list_index=idx, min_psnr=30.0)
    assert res.images.shape == images.shape and res.list_indices == idx
    assert res.images.min() >= 0 and res.images.max() <= 1
    marked = res.iterations > 0
    assert marked.float().mean() >= 0.5, res.iterations.tolist()
    assert (res.psnr[marked] >= 30.0).all()
    assert torch.isinf(res.psnr[~marked]).all() and torch.equal(res.images[~marked], images[~marked])
    assert (res.green_share_after >= res.green_share_before).all()
    gain = (res.green_share_after - res.green_share_before).mean()
    assert gain > 0.1, (res.green_share_before.mean(), res.green_share_after.mean())
    # The reported share is what a detector sees when it re-encodes the returned image.
    again = lists.green_share(tok.encode(res.images), idx)
    assert torch.allclose(again, res.green_share_after)
    assert torch.allclose(psnr(res.images, images)[marked], res.psnr[marked])


def test_lower_floor_marks_at_least_as_much(tok, lists, images):
    strict = watermark_image(images, lists, tok, list_index=2, min_psnr=30.0)
    loose = watermark_image(images, lists, tok, list_index=2, min_psnr=20.0)
    assert loose.green_share_after.mean() >= strict.green_share_after.mean()
    assert (loose.psnr >= 20.0).all()


def test_unreachable_floor_leaves_images_untouched(tok, lists, images):
    res = watermark_image(images[:4], lists, tok, list_index=0, min_psnr=99.0)
    assert (res.iterations == 0).all() and torch.equal(res.images, images[:4])
    assert torch.equal(res.green_share_after, res.green_share_before)


def test_single_image_and_random_lists(tok, lists, images):
    res = watermark_image(images[0], lists, tok, max_iters=1)
    assert res.images.shape == (1, 3, 64, 64)
    assert len(res.list_indices) == 1 and 0 <= res.list_indices[0] < 8
    assert int(res.iterations[0]) <= 1


def test_bad_arguments(tok, lists, images):
    with pytest.raises(ConfigError, match="max_iters"):
        watermark_image(images, lists, tok, max_iters=0)
    with pytest.raises(ConfigError, match="one per image"):
        watermark_image(images[:3], lists, tok, list_index=[0, 1])
    with pytest.raises(ConfigError, match="list index"):
        watermark_image(images[:1], lists, tok, list_index=8)
    with pytest.raises(ConfigError, match=r"\(3, H, W\)"):
        watermark_image(images[:, :1], lists, tok)
    with pytest.raises(ConfigError, match="max_drop"):
        watermark_image(images[:1], lists, tok, max_drop=-1.0)
    with pytest.raises(ConfigError, match="min_psnr"):
        watermark_image(images[:1], lists, tok, min_psnr="30")


def test_default_floor_follows_the_tokenizers_own_round_trip(tok, lists, tmp_path):
    """Rendered scenes (never decoded) come back from the VQ at ~25 dB, so an absolute 30 dB floor leaves them
    unmarked; the default floor (30 dB, or 3 dB below each image's round trip) marks them, the marks keep that
    floor, and they are found from the saved PNGs."""
    from guard.detect import Detector
    from guard.imageio import load_image, save_png

    x = torch.from_numpy(np.stack([shapes.render(shapes.sample_scene(40_000 + i, split="any")) for i in range(12)]))
    x = x.permute(0, 3, 1, 2).float() / 255
    idx = [i % 8 for i in range(12)]
    absolute = watermark_image(x, lists, tok, list_index=idx, min_psnr=30.0)
    default = watermark_image(x, lists, tok, list_index=idx)
    rt = default.roundtrip_psnr
    assert torch.equal(default.floor, torch.clamp(rt - 3.0, max=30.0))
    assert torch.isfinite(rt).all() and float(rt.median()) < 30.0          # off the decoder's manifold
    marked = default.iterations > 0
    assert int(marked.sum()) >= 9 > int((absolute.iterations > 0).sum())
    assert bool((default.psnr[marked] >= default.floor[marked]).all())
    paths = []
    for i in range(12):
        paths.append(tmp_path / f"{i}.png")
        save_png(default.images[i], paths[-1])
    det = Detector(lists, tok, provenance=False)
    found = [r.p_value <= 1e-4 for r in det.detect_images(torch.stack([load_image(p, 64).tensor for p in paths]))]
    assert sum(found) >= 8                     # of 12 marked PNGs at alpha 1e-4
    wider = watermark_image(x, lists, tok, list_index=idx, max_drop=10.0)
    assert bool((wider.floor <= default.floor).all()) and int((wider.iterations > 0).sum()) >= int(marked.sum())
