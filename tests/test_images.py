"""Safe image loading: every mode, orientation and geometry policy, and one clear error per bad file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from guard.errors import ImageError
from guard.imageio import load_image, pil_to_rgb, to_square
from guard.testfiles import png_header_only, write_bad_inputs  # noqa: F401  (other test modules import it here)
from guard.testfiles import random_rgb as _rgb


# ---------------------------------------------------------------------------------------------- tests

def test_every_bad_input_gives_one_clear_error_line(tmp_path):
    kinds = write_bad_inputs(tmp_path)
    for name, bad in kinds.items():
        if bad:
            with pytest.raises(ImageError) as e:
                load_image(tmp_path / name, 64)
            msg = str(e.value)
            assert msg and "\n" not in msg and len(msg) < 400, (name, msg)
        else:
            img = load_image(tmp_path / name, 64)
            assert img.tensor.shape == (3, 64, 64) and img.tensor.dtype == torch.float32, name
            assert 0.0 <= float(img.tensor.min()) and float(img.tensor.max()) <= 1.0, name
            assert img.sha256 and img.size_bytes == (tmp_path / name).stat().st_size


@pytest.mark.parametrize("name,needle", [
    ("bomb_pil.png", "decompression bomb"), ("bomb_limit.png", "decompression bomb"), ("truncated.png", "truncated"),
    ("empty.png", "empty file"), ("notes.png", "not an image"), ("loop.png", "symbolic link loop"),
    ("dangling.png", "broken symbolic link"),
])
def test_error_messages_name_the_problem(tmp_path, name, needle):
    write_bad_inputs(tmp_path)
    with pytest.raises(ImageError, match=needle):
        load_image(tmp_path / name, 64)


def test_truncated_jpeg_is_an_error(tmp_path):
    write_bad_inputs(tmp_path)
    with pytest.raises(ImageError):
        load_image(tmp_path / "truncated.jpg", 64)


def test_bomb_check_emits_no_warning_and_leaves_pil_global_alone(tmp_path, recwarn):
    before = Image.MAX_IMAGE_PIXELS
    (tmp_path / "b.png").write_bytes(png_header_only(12_000, 12_000))      # above PIL's warning threshold
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(tmp_path / "b.png", 64)
    assert Image.MAX_IMAGE_PIXELS == before
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_pixel_and_byte_limits_are_configurable(tmp_path):
    _rgb(64, 64).save(tmp_path / "a.png")
    with pytest.raises(ImageError, match="exceeds the limit of 1000"):
        load_image(tmp_path / "a.png", 64, max_pixels=1000)
    with pytest.raises(ImageError, match="file too large"):
        load_image(tmp_path / "a.png", 64, max_bytes=100)


def test_directory_is_an_error(tmp_path):
    with pytest.raises(ImageError, match="directory|regular"):
        load_image(tmp_path, 64)


def test_transparency_is_composited_over_white(tmp_path):
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    im.save(tmp_path / "clear.png")
    t = load_image(tmp_path / "clear.png", 64).tensor
    assert torch.allclose(t, torch.ones_like(t))
    half = Image.new("RGBA", (64, 64), (0, 0, 0, 128))
    assert np.asarray(pil_to_rgb(half))[0, 0].tolist() == [127, 127, 127]
    la = Image.new("LA", (4, 4), (0, 0))
    assert np.asarray(pil_to_rgb(la))[0, 0].tolist() == [255, 255, 255]


def test_high_bit_depth_is_scaled_not_clipped(tmp_path):
    arr = np.zeros((64, 64), dtype=np.uint16)
    arr[:, 32:] = 65535
    arr[:32, :32] = 32896
    Image.fromarray(arr).save(tmp_path / "g16.png")
    t = load_image(tmp_path / "g16.png", 64).tensor
    assert float(t[0, 40, 40]) == 1.0 and float(t[0, 40, 0]) == 0.0
    assert float(t[0, 0, 0]) == pytest.approx(128 / 255)
    f = Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32))
    assert np.asarray(pil_to_rgb(f))[0, 0].tolist() == [128, 128, 128]
    i32 = Image.fromarray(np.full((8, 8), 200, dtype=np.int32))
    assert np.asarray(pil_to_rgb(i32))[0, 0].tolist() == [200, 200, 200]


def test_cmyk_and_palette_convert_to_rgb(tmp_path):
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    t = load_image(tmp_path / "c.jpg", 64).tensor
    assert float(t[0].mean()) > 0.9 and float(t[1].mean()) < 0.1          # red
    p = Image.new("P", (64, 64), 0)
    p.putpalette([0, 0, 255] + [0] * 765)
    p.save(tmp_path / "p.png")
    t = load_image(tmp_path / "p.png", 64).tensor
    assert float(t[2].mean()) == 1.0 and float(t[0].mean()) == 0.0


def test_multiframe_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=10)
    t = load_image(tmp_path / "a.gif", 64).tensor
    assert float(t[0].mean()) > 0.95 and float(t[1].mean()) < 0.05


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, :40] = (255, 0, 0)          # left half red in the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6                   # display = stored rotated 90° clockwise
    Image.fromarray(arr).save(tmp_path / "r.png", exif=exif.tobytes())
    img = load_image(tmp_path / "r.png", 40)
    assert (img.width, img.height) == (40, 80)
    assert img.resize == "center-crop"
    # after a 90° clockwise turn the red (stored left) half is on top; the centre crop keeps rows 20..60
    assert float(img.tensor[0, 0:19].mean()) == 1.0 and float(img.tensor[0, 21:].mean()) == 0.0


@pytest.mark.parametrize("size,policy", [((64, 64), "none"), ((128, 128), "resize"), ((64, 100), "center-crop"),
                                         ((200, 100), "center-crop+resize"), ((30, 30), "resize")])
def test_geometry_policy_is_recorded(tmp_path, size, policy):
    _rgb(*size).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png", 64)
    assert img.resize == policy and (img.width, img.height) == size and img.tensor.shape == (3, 64, 64)


def test_exact_size_is_bit_exact(tmp_path):
    im = _rgb(64, 64, 7)
    im.save(tmp_path / "a.png")
    t = load_image(tmp_path / "a.png", 64).tensor
    assert torch.equal((t * 255).round().byte().permute(1, 2, 0), torch.from_numpy(np.array(im)))


def test_to_square_centre_crop():
    arr = np.zeros((10, 30, 3), dtype=np.uint8)
    arr[:, 10:20] = 255
    out, policy = to_square(Image.fromarray(arr), 10)
    assert policy == "center-crop" and np.asarray(out).min() == 255
